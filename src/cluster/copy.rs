//! Copying a shard's committed index from a peer: a replica that opens a shard it never held
//! takes a ready peer's committed state (a snapshot, streamed as a tar archive) and consumes the
//! stream only from the sequence after it, instead of replaying the shard's whole history.
//!
//! The route (`/peer/shards/<n>/copy`) takes the cluster's peer token, derived from the key the
//! nodes share in etcd, since a copy holds every user's logs of the shard.

use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use subtle::ConstantTimeEq as _;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::indexer::{Replicas, shard_dir};
use super::tls::HttpClient;
use crate::lifecycle::snapshot;

/// The header of a copy that tells the last sequence number its commit holds.
const COMMITTED_HEADER: &str = "logbridge-committed";

/// Bytes of the archive sent at a time.
const CHUNK: usize = 256 * 1024;

/// A copy that sends or receives nothing for this long is given up.
const STALL: Duration = Duration::from_secs(30);

/// A copy that takes longer than this is given up (the replica then replays its stream).
const PATIENCE: Duration = Duration::from_secs(30 * 60);

#[derive(Clone)]
struct Serving {
    replicas: Replicas,
    dir: PathBuf,
    token: String,
}

/// The route peers copy a shard's committed index from.
pub fn router(replicas: Replicas, dir: PathBuf, token: String) -> Router {
    Router::new()
        .route("/peer/shards/{shard}/copy", axum::routing::get(serve_copy))
        .with_state(Serving {
            replicas,
            dir,
            token,
        })
}

/// Whether a peer's request shows the cluster's peer token.
pub(super) fn peer_authorized(headers: &HeaderMap, token: &str) -> bool {
    let shown = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(shown.as_bytes().ct_eq(token.as_bytes()))
}

/// A snapshot of this node's ready replica of `shard`, as a tar archive.
async fn serve_copy(
    State(serving): State<Serving>,
    UrlPath(shard): UrlPath<u32>,
    headers: HeaderMap,
) -> Response {
    if !peer_authorized(&headers, &serving.token) {
        return (StatusCode::UNAUTHORIZED, "a peer token is required").into_response();
    }
    if !serving.replicas.is_ready(shard) {
        return (
            StatusCode::CONFLICT,
            "no caught-up replica of that shard here",
        )
            .into_response();
    }
    let source = shard_dir(&serving.dir, shard);
    let taken = serving
        .dir
        .join(format!("copy-{shard}-{}", rand::random::<u64>()));
    let snapshot_dir = taken.clone();
    let report = tokio::task::spawn_blocking(move || snapshot(&source, &snapshot_dir)).await;
    let report = match report {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            let _ = std::fs::remove_dir_all(&taken);
            tracing::error!(shard, error = %e, "cannot snapshot a replica for a peer");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot snapshot the replica",
            )
                .into_response();
        }
        Err(e) => {
            tracing::error!(shard, error = %e, "snapshot task failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let (chunks, body) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut writer = ChannelWriter {
            chunks,
            buffer: Vec::with_capacity(CHUNK),
            handle,
        };
        let written = (|| {
            let mut archive = tar::Builder::new(&mut writer);
            archive.append_dir_all(".", &taken)?;
            archive.finish()?;
            drop(archive);
            writer.flush()
        })();
        if let Err(e) = written {
            tracing::warn!(shard, error = %e, "a copy for a peer broke off");
            let _ = writer.chunks.try_send(Err(e));
        }
        let _ = std::fs::remove_dir_all(&taken);
    });
    let mut response = Body::from_stream(ReceiverStream::new(body)).into_response();
    response
        .headers_mut()
        .insert(COMMITTED_HEADER, HeaderValue::from(report.last_seq));
    response
}

/// Writes into the response body, a chunk at a time; a peer that takes nothing for [`STALL`]
/// ends the copy.
struct ChannelWriter {
    chunks: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buffer: Vec<u8>,
    handle: tokio::runtime::Handle,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        let sent = self
            .handle
            .block_on(tokio::time::timeout(STALL, self.chunks.send(Ok(chunk))));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::other("the peer went away")),
            Err(_) => Err(std::io::Error::other("the peer took nothing for 30 s")),
        }
    }
}

/// Copies `shard`'s committed index from the peer at `peer` (its API URL) into `dest`, which
/// must not exist; the last sequence number the copy holds. Nothing is left at `dest` unless
/// the whole copy arrived and unpacked; a copy that fails, or is cancelled through `cancel`,
/// removes what it received at once.
pub async fn fetch(
    client: &HttpClient<Body>,
    peer: &str,
    token: &str,
    shard: u32,
    dest: &Path,
    cancel: &CancellationToken,
) -> anyhow::Result<u64> {
    let parent = dest.parent().context("a shard folder has a parent")?;
    let partial = parent.join(format!("incoming-{shard}-{}", rand::random::<u64>()));
    let archive = partial.with_extension("tar");
    let _received = Received([archive.clone(), partial.clone()]);
    // however this ends (cancelled, timed out, failed, dropped), an unpack still running stops
    let cancel = cancel.child_token();
    let _stop_unpacking = cancel.clone().drop_guard();
    let copied = async {
        let request = http::Request::get(format!("{peer}/peer/shards/{shard}/copy"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())?;
        let response = tokio::time::timeout(STALL, client.request(request))
            .await
            .map_err(|_| anyhow::anyhow!("{peer} did not answer in time"))?
            .with_context(|| format!("cannot reach {peer}"))?;
        if response.status() != StatusCode::OK {
            bail!("{peer} answered {}", response.status());
        }
        let committed: u64 = response
            .headers()
            .get(COMMITTED_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .context("the copy does not say what it holds")?;
        // (the first replica a joining indexer opens may be a copy)
        tokio::fs::create_dir_all(parent).await?;
        let mut file = tokio::fs::File::create(&archive).await?;
        let mut body = response.into_body();
        while let Some(frame) = tokio::time::timeout(STALL, body.frame())
            .await
            .map_err(|_| anyhow::anyhow!("the copy stalled"))?
        {
            if let Ok(data) = frame?.into_data() {
                file.write_all(&data).await?;
            }
        }
        file.sync_all().await?;
        let (archive, partial, dest) = (archive.clone(), partial.clone(), dest.to_owned());
        let cancel = cancel.clone();
        // (what it unpacked goes if it fails, even after this future was dropped)
        tokio::task::spawn_blocking(move || {
            let unpacked = unpack(&archive, &partial, &dest, &cancel);
            if unpacked.is_err() {
                let _ = std::fs::remove_dir_all(&partial);
            }
            unpacked
        })
        .await??;
        anyhow::Ok(committed)
    };
    tokio::select! {
        copied = tokio::time::timeout(PATIENCE, copied) => copied.map_err(|_| {
            anyhow::anyhow!("the copy took longer than {} s", PATIENCE.as_secs())
        })?,
        () = cancel.cancelled() => bail!("the copy was cancelled"),
    }
}

/// What a copy received, removed when it ends: the archive always, the unpacked folder unless
/// it was renamed into place.
struct Received([PathBuf; 2]);

impl Drop for Received {
    fn drop(&mut self) {
        let [archive, partial] = &self.0;
        let _ = std::fs::remove_file(archive);
        let _ = std::fs::remove_dir_all(partial);
    }
}

/// Unpacks the archive into `partial`, makes every file durable, and renames it to `dest`,
/// unless `cancel` is cancelled first. An index is a flat folder of regular files: any other
/// entry (a link, a device, a path with a folder in it) is refused.
fn unpack(
    archive: &Path,
    partial: &Path,
    dest: &Path,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(partial)?;
    let mut archive = tar::Archive::new(std::fs::File::open(archive)?);
    for entry in archive.entries()? {
        if cancel.is_cancelled() {
            bail!("the copy was cancelled");
        }
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_dir() && path.components().all(|c| c == Component::CurDir) {
            continue;
        }
        let mut names = path.components().filter(|c| *c != Component::CurDir);
        let name = match (names.next(), names.next()) {
            (Some(Component::Normal(name)), None) if kind.is_file() => name.to_owned(),
            _ => bail!(
                "the copy holds an entry that is not a file of an index: {}",
                path.display()
            ),
        };
        let target = partial.join(&name);
        entry.unpack(&target)?;
        std::fs::File::open(&target)?.sync_all()?;
    }
    std::fs::File::open(partial)?.sync_all()?;
    if cancel.is_cancelled() {
        bail!("the copy was cancelled");
    }
    std::fs::rename(partial, dest)?;
    std::fs::File::open(dest.parent().context("a parent")?)?.sync_all()?;
    Ok(())
}
