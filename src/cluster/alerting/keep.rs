//! The cluster's alert rules in etcd, one key per rule (`/logbridge-alerts/<cluster>/<id>`, each
//! an [`Entry`] with its state), written only by the gateway that keeps them: every write is a
//! transaction fenced by the keeper key this gateway created, so that one that lost it (its
//! lease expired while it was cut off from etcd) writes nothing over its successor's.

use std::collections::HashMap;
use std::sync::Arc;

use crate::alerts::{Entry, Keeper, Keeping, NotKeeper};
use crate::cluster::etcd::{Etcd, Write};
use crate::cluster::membership::Keys;

/// Writes of one transaction at most: etcd takes 128.
const WRITES_PER_TRANSACTION: usize = 100;

/// Keeps the rules in etcd while the keeper key created at revision `term` stands.
pub(super) struct EtcdKeeper {
    etcd: Etcd,
    keys: Keys,
    term: i64,
    /// What etcd holds of each rule, as last read or written, less what each evaluation changes
    /// (the value and when it was taken): a save writes only what differs.
    written: Arc<tokio::sync::Mutex<HashMap<String, Vec<u8>>>>,
}

/// What of `entry` is written: all but the last evaluation's value and time, which change every
/// round and which the next keeper takes anew.
fn kept(entry: &Entry) -> anyhow::Result<Vec<u8>> {
    let mut entry = entry.clone();
    entry.state.value = None;
    entry.state.evaluated_at = None;
    Ok(serde_json::to_vec(&entry)?)
}

/// The rules etcd holds, and their keeper for the term that began at revision `term`.
pub(super) async fn load(
    etcd: &Etcd,
    keys: &Keys,
    term: i64,
) -> anyhow::Result<(Vec<Entry>, EtcdKeeper)> {
    let (_, listed) = etcd.list(keys.alerts()).await?;
    let mut entries = Vec::with_capacity(listed.len());
    let mut written = HashMap::with_capacity(listed.len());
    for kv in listed {
        // a damaged rule stays in etcd, untouched, for an operator to see: it is not taken
        match serde_json::from_slice::<Entry>(&kv.value) {
            Ok(entry) => {
                written.insert(entry.id.clone(), kv.value);
                entries.push(entry);
            }
            Err(e) => tracing::error!(key = %kv.key, error = %e, "not an alert rule; left out"),
        }
    }
    let keeper = EtcdKeeper {
        etcd: etcd.clone(),
        keys: keys.clone(),
        term,
        written: Arc::new(tokio::sync::Mutex::new(written)),
    };
    Ok((entries, keeper))
}

impl Keeper for EtcdKeeper {
    fn keep(&self, entries: Vec<Entry>) -> Keeping {
        let (etcd, keys, term) = (self.etcd.clone(), self.keys.clone(), self.term);
        let written = self.written.clone();
        Box::pin(async move {
            let mut written = written.lock().await;
            let mut now = HashMap::with_capacity(entries.len());
            for entry in &entries {
                now.insert(format!("{}{}", keys.alerts(), entry.id), kept(entry)?);
            }
            let prefix = keys.alerts();
            let mut changes: Vec<(String, Option<&Vec<u8>>)> = now
                .iter()
                .filter(|(key, bytes)| written.get(&key[prefix.len()..]) != Some(*bytes))
                .map(|(key, bytes)| (key.clone(), Some(bytes)))
                .collect();
            changes.extend(
                (written.keys())
                    .map(|id| format!("{prefix}{id}"))
                    .filter(|key| !now.contains_key(key))
                    .map(|key| (key, None)),
            );
            let fence = keys.alerts_keeper();
            for batch in changes.chunks(WRITES_PER_TRANSACTION) {
                let writes: Vec<Write> = batch
                    .iter()
                    .map(|(key, bytes)| match bytes {
                        Some(value) => Write::Put { key, value },
                        None => Write::Delete { key },
                    })
                    .collect();
                if !etcd.fenced(&fence, term, &writes).await? {
                    return Err(NotKeeper.into());
                }
                for (key, bytes) in batch {
                    let id = key[prefix.len()..].to_owned();
                    match bytes {
                        Some(bytes) => written.insert(id, (*bytes).clone()),
                        None => written.remove(&id),
                    };
                }
            }
            Ok(())
        })
    }
}
