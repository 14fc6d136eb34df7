//! Files the server re-reads while it runs (the keys file, TLS certificates): polled for changes,
//! and re-read at once on `SIGHUP`.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often watched files are compared with what was last loaded. A change is applied once it
/// has stayed the same for one more poll, so within two polls (and never half written).
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// How long after a `SIGHUP` the files are read a second time, to be sure they are not being
/// written.
const HANGUP_SETTLE: Duration = Duration::from_millis(50);

/// The contents of watched files, in the order of their paths.
pub type Contents = Vec<Vec<u8>>;

/// Reads every file of `paths`.
pub fn read_all(paths: &[PathBuf]) -> io::Result<Contents> {
    paths
        .iter()
        .map(|path| {
            std::fs::read(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        })
        .collect()
}

/// Reads every file of `paths` on a blocking thread.
async fn read_off_runtime(paths: &[PathBuf]) -> io::Result<Contents> {
    let paths = paths.to_vec();
    tokio::task::spawn_blocking(move || read_all(&paths))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// Whether two reads found the same: the same contents, or the same error.
fn same(a: &io::Result<Contents>, b: &io::Result<Contents>) -> bool {
    match (a, b) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => a.kind() == b.kind() && a.to_string() == b.to_string(),
        _ => false,
    }
}

/// Why watched files are re-read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// They changed on disk.
    Changed,
    /// The process received `SIGHUP`.
    Hangup,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trigger::Changed => "changed",
            Trigger::Hangup => "sighup",
        })
    }
}

/// Counts the `SIGHUP`s the process receives, from now until `stop`.
pub fn hangups(stop: CancellationToken) -> io::Result<watch::Receiver<u64>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut signals = signal(SignalKind::hangup())?;
    let (count, hangups) = watch::channel(0u64);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                received = signals.recv() => match received {
                    Some(()) => {
                        count.send_modify(|n| *n += 1);
                    }
                    None => return,
                },
            }
        }
    });
    Ok(hangups)
}

/// Watches `paths`, whose contents were `loaded`: calls `reload` with their new contents (or
/// why they could not be read) after they change, and on every `SIGHUP` counted by `hangups`
/// (once two reads 50 ms apart agree), until `stop`. The calls are made on the runtime: keep them short.
pub fn watch_files(
    paths: Vec<PathBuf>,
    loaded: Contents,
    mut hangups: watch::Receiver<u64>,
    stop: CancellationToken,
    mut reload: impl FnMut(Trigger, io::Result<Contents>) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut applied = Some(loaded);
        // contents seen once, applied if the next poll sees them again
        let mut pending: Option<io::Result<Contents>> = None;
        // a test hook: with polls far apart, only `SIGHUP` can explain a reload
        let poll = std::env::var("LB_TEST_WATCH_POLL_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .filter(|&ms| ms > 0);
        let mut ticks = tokio::time::interval(poll.map_or(POLL_INTERVAL, Duration::from_millis));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup = tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => false,
                changed = hangups.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    true
                }
            };
            let mut read = read_off_runtime(&paths).await;
            if hangup {
                // one more read a moment later: a file caught mid-write is left to the polls,
                // which apply it once it has settled
                tokio::time::sleep(HANGUP_SETTLE).await;
                let again = read_off_runtime(&paths).await;
                let settled = same(&read, &again);
                read = again;
                if !settled {
                    pending = Some(read);
                    continue;
                }
                pending = None;
            } else {
                let unchanged = match (&read, &applied) {
                    (Ok(now), Some(applied)) => now == applied,
                    _ => false,
                };
                let settled = pending.as_ref().is_some_and(|p| same(p, &read));
                if unchanged || !settled {
                    pending = (!unchanged).then_some(read);
                    continue;
                }
                pending = None;
            }
            // a file that cannot be read is tried again on every change, and reported once
            let failed_before = applied.is_none();
            let trigger = if hangup {
                Trigger::Hangup
            } else {
                Trigger::Changed
            };
            match read {
                Ok(contents) => {
                    applied = Some(contents.clone());
                    reload(trigger, Ok(contents));
                }
                Err(e) => {
                    applied = None;
                    if hangup || !failed_before {
                        reload(trigger, Err(e));
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn a_change_is_applied_once_settled_and_a_hangup_rereads_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watched");
        std::fs::write(&path, "a").unwrap();
        let paths = vec![path.clone()];
        let loaded = read_all(&paths).unwrap();
        let (count, hangups) = watch::channel(0u64);
        let stop = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = watch_files(
            paths,
            loaded,
            hangups,
            stop.clone(),
            move |trigger, read| {
                let text = String::from_utf8(read.unwrap().remove(0)).unwrap();
                record.lock().unwrap().push((trigger, text));
            },
        );
        let wait_for = |n: usize| {
            let seen = seen.clone();
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while seen.lock().unwrap().len() < n {
                    assert!(std::time::Instant::now() < deadline, "never reloaded");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };

        std::fs::write(&path, "b").unwrap();
        wait_for(1).await;
        count.send_modify(|n| *n += 1);
        wait_for(2).await;
        stop.cancel();
        task.await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [
                (Trigger::Changed, "b".to_owned()),
                (Trigger::Hangup, "b".to_owned())
            ]
        );
    }
}
