//! The keys file, re-read while the server runs: a file that no longer parses keeps the last
//! good set in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::watch::{Contents, read_all, watch_files};
use crate::auth::{KeyFileError, KeyRecord, KeyStore, parse_keys};
use crate::metrics::Metrics;

/// Reads the keys file and returns the keys with the contents they came from.
pub fn load(path: &Path) -> Result<(Vec<KeyRecord>, Contents), KeyFileError> {
    let contents = read_all(&[path.to_owned()]).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let keys = parse(path, &contents)?;
    Ok((keys, contents))
}

fn parse(path: &Path, contents: &Contents) -> Result<Vec<KeyRecord>, KeyFileError> {
    parse_keys(contents.first().map_or(&[][..], Vec::as_slice), path)
}

/// Keeps `keys` in step with the keys file at `path`, whose contents were `loaded`.
pub fn watch_keys(
    path: PathBuf,
    loaded: Contents,
    keys: KeyStore,
    metrics: Arc<Metrics>,
    hangups: watch::Receiver<u64>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    metrics.keys_loaded.set(keys.names().len() as i64);
    let paths = vec![path.clone()];
    watch_files(paths, loaded, hangups, stop, move |trigger, read| {
        let parsed = read
            .map_err(|source| KeyFileError::Read {
                path: path.clone(),
                source,
            })
            .and_then(|contents| parse(&path, &contents));
        match parsed {
            Ok(new) => {
                let before = keys.names();
                let added = new.iter().filter(|k| !before.contains(&k.name)).count();
                let removed = before
                    .iter()
                    .filter(|name| !new.iter().any(|k| &k.name == *name))
                    .count();
                metrics.keys_loaded.set(new.len() as i64);
                metrics.keys_file_invalid.set(0);
                tracing::info!(
                    keys = new.len(),
                    added,
                    removed,
                    %trigger,
                    path = %path.display(),
                    "keys file reloaded"
                );
                keys.replace(new);
            }
            Err(e) => {
                metrics.keys_reload_failures.inc();
                metrics.keys_file_invalid.set(1);
                tracing::error!(
                    error = %e,
                    %trigger,
                    "keys file not reloaded; the last good keys stay in use"
                );
            }
        }
    })
}
