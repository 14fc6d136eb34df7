//! What a connection has in flight: requests until their response's body has ended, and
//! whether a response waits for its client to take what it sent.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

/// When a connection last did something, and how much it is doing.
pub(super) struct Activity {
    pub(super) started: Instant,
    /// Requests received so far.
    pub(super) requests: AtomicU64,
    /// Requests whose response has not ended yet (its body included).
    in_flight: AtomicUsize,
    /// When the last request ended, in milliseconds since `started`.
    last_end_ms: AtomicU64,
    /// Response bodies that handed a frame on and were not asked for the next one yet: they
    /// wait for their client to take what they sent.
    waiting_on_client: AtomicUsize,
    /// When a response body last handed a frame on or was asked for one, or the client last
    /// took bytes, in milliseconds since `started`.
    last_progress_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            waiting_on_client: AtomicUsize::new(0),
            last_progress_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn begin(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            activity: self.clone(),
            waiting_on_client: false,
        }
    }

    /// Milliseconds since `started`, for the atomics.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The client took bytes, or a response moved.
    fn progressed(&self) {
        self.last_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    fn at(&self, ms: &AtomicU64) -> Instant {
        self.started + Duration::from_millis(ms.load(Ordering::Relaxed))
    }

    /// When the connection became idle, if it is.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::Relaxed) == 0).then(|| self.at(&self.last_end_ms))
    }

    /// Since when a response has waited for its client to take what it sent, with no response
    /// of the connection moving meanwhile, if one waits.
    pub(super) fn waiting_on_client_since(&self) -> Option<Instant> {
        (self.waiting_on_client.load(Ordering::Relaxed) > 0)
            .then(|| self.at(&self.last_progress_ms))
    }
}

/// Marks a request in flight until dropped: when its response's body ends or is dropped.
pub(super) struct RequestGuard {
    activity: Arc<Activity>,
    /// Whether its body handed a frame on and was not asked for the next one yet.
    waiting_on_client: bool,
}

impl RequestGuard {
    /// The body is asked for its next frame: what it handed on before was taken.
    fn asked(&mut self) {
        self.activity.progressed();
        if std::mem::take(&mut self.waiting_on_client) {
            self.activity
                .waiting_on_client
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The body handed a frame on: until it is asked for the next, the client has it to take.
    fn handed(&mut self) {
        self.activity.progressed();
        if !std::mem::replace(&mut self.waiting_on_client, true) {
            self.activity
                .waiting_on_client
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let activity = &self.activity;
        if self.waiting_on_client {
            activity.waiting_on_client.fetch_sub(1, Ordering::Relaxed);
        }
        activity
            .last_end_ms
            .store(activity.now_ms(), Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until the body ends or is dropped (hyper's
/// service future completes with the head, long before a streamed body is sent).
pub(super) struct TrackedBody {
    pub(super) body: Body,
    /// `None` once the body has ended.
    pub(super) request: Option<RequestGuard>,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Some(request) = &mut this.request {
            request.asked();
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) => {
                if let Some(request) = &mut this.request {
                    request.handed();
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.request = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's stream, noting when the client takes bytes: a response waits on its client
/// only while nothing it sent is taken.
pub(super) struct MeteredIo<S> {
    pub(super) stream: S,
    pub(super) activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for MeteredIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MeteredIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.progressed();
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.progressed();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
