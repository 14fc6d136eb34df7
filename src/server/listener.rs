//! Serving one listener: accept connections up to a cap, serve each with hyper under timeouts,
//! and on shutdown let in-flight requests finish up to a deadline, then drop what is left.
//!
//! The same code serves all three listeners; they differ in protocol (HTTP/1.1 for the REST API
//! and OTLP/HTTP, HTTP/2 for OTLP/gRPC) and in the router they serve. With TLS, each connection
//! first completes its handshake (within the header timeout); one that speaks plaintext instead
//! is answered with an error saying TLS is expected.
//!
//! A request is in flight until its response's body has ended, not only its head: a tail or an
//! export that is still being sent keeps its connection open for as long as its client reads,
//! through the idle timeout and up to the drain deadline. A client that takes nothing of a
//! response for the idle timeout leaves an idle connection all the same, and it is dropped.

mod in_flight;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::tls::{Acceptor, plaintext_refusal};
use crate::api::ConnectionCut;
use crate::config::ServerConfig;
use in_flight::{Activity, MeteredIo, TrackedBody};

/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// TLS on a listener.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: Acceptor,
    /// Counts handshakes that failed (bad or missing client certificates, plaintext).
    pub handshake_failures: Counter,
}

/// The protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1: the REST API and OTLP/HTTP.
    Http1,
    /// HTTP/2 with prior knowledge: OTLP/gRPC.
    Http2,
}

/// While the server drains, a connection whose client has taken nothing of a response for this
/// long (or the idle timeout, if shorter) is dropped rather than waited for.
const DRAIN_STALL: Duration = Duration::from_secs(1);

/// How long to wait before accepting again after `accept` failed (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Runs the tasks hyper spawns (one per HTTP/2 stream) among the listener's own, so that
/// shutdown waits for them and stops them at the drain deadline, like their connections.
#[derive(Clone)]
struct TrackedExecutor {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let stop = self.stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = future => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled; returns once every connection
/// and every request has ended, at most `drain_timeout` after that.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    protocol: Protocol,
    tls: Option<Tls>,
    limits: ServerConfig,
    shutdown: CancellationToken,
) {
    let connections = TaskTracker::new();
    // cancelled when the drain is over: what is left is dropped
    let stop = CancellationToken::new();
    let executor = TrackedExecutor {
        tasks: connections.clone(),
        stop: stop.clone(),
    };
    let builder = Arc::new(builder(protocol, &limits, executor));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // at the cap, new connections wait in the kernel's backlog
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // small responses must not wait for Nagle's algorithm
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            router: router.clone(),
            protocol,
            limits: limits.clone(),
            signals: Signals {
                shutdown: shutdown.clone(),
                stop: stop.clone(),
            },
            _slot: permit,
        };
        match &tls {
            None => connections.spawn(connection.serve(stream)),
            Some(tls) => connections.spawn(connection.secure(stream, tls.clone())),
        };
    }
    // new connections are refused from here on
    drop(listener);
    connections.close();
    if tokio::time::timeout(limits.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        stop.cancel();
        connections.wait().await;
    }
}

fn builder(
    protocol: Protocol,
    limits: &ServerConfig,
    executor: TrackedExecutor,
) -> auto::Builder<TrackedExecutor> {
    let mut builder = auto::Builder::new(executor);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(limits.http2_keepalive_interval)
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    match protocol {
        Protocol::Http1 => builder.http1_only(),
        Protocol::Http2 => builder.http2_only(),
    }
}

/// What a connection listens to: shutdown begins (finish what is in flight), and the drain is
/// over (drop it all).
struct Signals {
    shutdown: CancellationToken,
    stop: CancellationToken,
}

/// One accepted connection and what serving it takes.
struct Connection {
    builder: Arc<auto::Builder<TrackedExecutor>>,
    router: Router,
    protocol: Protocol,
    limits: ServerConfig,
    signals: Signals,
    /// Its place among the listener's connections, given back when it ends.
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    /// The TLS handshake, then the connection; a plaintext client is told TLS is expected. A
    /// handshake is abandoned at its deadline (the header timeout) or when shutdown begins: it
    /// has no request in flight to finish.
    async fn secure(mut self, stream: TcpStream, tls: Tls) {
        let deadline = tokio::time::Instant::now() + self.limits.header_read_timeout;
        let shutdown = self.signals.shutdown.clone();
        let mut first = [0u8; 1];
        let peeked = tokio::select! {
            peeked = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => peeked,
            () = shutdown.cancelled() => return,
        };
        match peeked {
            Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
            Ok(Ok(1)) => {
                tls.handshake_failures.inc();
                self.router = plaintext_refusal(self.protocol);
                return self.serve(stream).await;
            }
            _ => return,
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.acceptor.load_full());
        let accepted = tokio::select! {
            accepted = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => accepted,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok(Ok(stream)) => self.serve(stream).await,
            Ok(Err(e)) => {
                tls.handshake_failures.inc();
                tracing::debug!(error = %e, "TLS handshake failed");
            }
            Err(_) => {
                tls.handshake_failures.inc();
            }
        }
    }

    /// Serves the connection: until it ends, it idles past the idle timeout, an HTTP/2
    /// connection brings no request within the header timeout, or shutdown's drain is over.
    async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            builder,
            router,
            protocol,
            limits,
            signals,
            _slot,
        } = self;
        let activity = Arc::new(Activity::new());
        let tracked = activity.clone();
        // a handler may drop the connection (an export cut off): what it had to send goes too
        let cut = CancellationToken::new();
        let handle = ConnectionCut(cut.clone());
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            let guard = tracked.begin();
            request.extensions_mut().insert(handle.clone());
            let response = router.clone().oneshot(request.map(Body::new));
            async move {
                let response: Result<_, Infallible> = response.await;
                // a response whose head is ready is still in flight until its body ends
                response.map(|response| {
                    response.map(|body| TrackedBody {
                        body,
                        request: Some(guard),
                    })
                })
            }
        });
        let stream = MeteredIo {
            stream,
            activity: activity.clone(),
        };
        let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
        // hyper has no timer for an HTTP/2 handshake: a connection must bring its first request in time
        let first_request_by = activity.started + limits.header_read_timeout;
        // set once the connection is asked to close: it is dropped if still open by then
        let mut drain_deadline: Option<Instant> = None;
        loop {
            let check_at = match drain_deadline {
                // a client that stops taking its response must not hold the drain up: looked
                // at every so often
                Some(deadline) => deadline.min(Instant::now() + DRAIN_STALL / 4),
                None if protocol == Protocol::Http2
                    && activity.requests.load(Ordering::Relaxed) == 0 =>
                {
                    first_request_by
                }
                None => activity
                    .idle_since()
                    .or_else(|| activity.waiting_on_client_since())
                    .map_or(Instant::now() + limits.idle_timeout, |since| {
                        since + limits.idle_timeout
                    }),
            };
            tokio::select! {
                _ = connection.as_mut() => return,
                () = signals.stop.cancelled() => return,
                () = cut.cancelled() => return,
                () = signals.shutdown.cancelled(), if drain_deadline.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    drain_deadline = Some(Instant::now() + limits.drain_timeout);
                }
                () = tokio::time::sleep_until(check_at.into()) => {
                    if let Some(deadline) = drain_deadline {
                        let stalled = activity
                            .waiting_on_client_since()
                            .is_some_and(|since| since.elapsed() >= DRAIN_STALL.min(limits.idle_timeout));
                        if Instant::now() >= deadline || stalled {
                            // the drain is over, or its client stalls it: drop what is left
                            return;
                        }
                        continue;
                    }
                    if protocol == Protocol::Http2 && activity.requests.load(Ordering::Relaxed) == 0 {
                        return;
                    }
                    if activity
                        .idle_since()
                        .is_some_and(|since| since.elapsed() >= limits.idle_timeout)
                    {
                        connection.as_mut().graceful_shutdown();
                        drain_deadline = Some(Instant::now() + limits.drain_timeout);
                    }
                    if activity
                        .waiting_on_client_since()
                        .is_some_and(|since| since.elapsed() >= limits.idle_timeout)
                    {
                        // a client that takes nothing of its response holds the connection
                        // for nothing: a graceful close would wait for it to read
                        tracing::debug!("a client took nothing of a response; connection dropped");
                        return;
                    }
                }
            }
        }
    }
}
