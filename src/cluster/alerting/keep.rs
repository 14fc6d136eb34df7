//! The cluster's alert rules in etcd, one key per rule (`/logbridge-alerts/<cluster>/<id>`, each
//! an [`Entry`] with its state), written only by the gateway that keeps them, and only what
//! changed.

use std::collections::HashMap;
use std::sync::Arc;

use crate::alerts::{Entry, Keeper, Keeping};
use crate::cluster::etcd::Etcd;
use crate::cluster::membership::{Keys, alerts_keeper, read_nodes};

/// Keeps the rules in etcd for the gateway `node_id`, while etcd names it the keeper.
pub(super) struct EtcdKeeper {
    etcd: Etcd,
    keys: Keys,
    node_id: String,
    /// What etcd holds, as last read or written: a save writes only what differs.
    written: Arc<tokio::sync::Mutex<HashMap<String, Vec<u8>>>>,
}

/// The rules etcd holds, and their keeper for the gateway `node_id` from now on.
pub(super) async fn load(
    etcd: &Etcd,
    keys: &Keys,
    node_id: &str,
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
        node_id: node_id.to_owned(),
        written: Arc::new(tokio::sync::Mutex::new(written)),
    };
    Ok((entries, keeper))
}

impl Keeper for EtcdKeeper {
    fn keep(&self, entries: Vec<Entry>) -> Keeping {
        let (etcd, keys, node_id) = (self.etcd.clone(), self.keys.clone(), self.node_id.clone());
        let written = self.written.clone();
        Box::pin(async move {
            // a gateway that lost the rules to another (it was cut off from etcd a while)
            // writes nothing over what the other wrote since
            let nodes = read_nodes(&etcd, &keys).await?;
            let keeper = alerts_keeper(&nodes).map(|(id, _)| id);
            anyhow::ensure!(
                keeper == Some(node_id.as_str()),
                "this gateway no longer keeps the cluster's alert rules (etcd names {})",
                keeper.unwrap_or("no gateway")
            );
            let mut written = written.lock().await;
            let mut kept = HashMap::with_capacity(entries.len());
            for entry in &entries {
                kept.insert(entry.id.clone(), serde_json::to_vec(entry)?);
            }
            for (id, bytes) in &kept {
                if written.get(id) != Some(bytes) {
                    etcd.put(&format!("{}{id}", keys.alerts()), bytes, 0)
                        .await?;
                    written.insert(id.clone(), bytes.clone());
                }
            }
            let gone: Vec<String> = written
                .keys()
                .filter(|id| !kept.contains_key(*id))
                .cloned()
                .collect();
            for id in gone {
                etcd.delete(&format!("{}{id}", keys.alerts())).await?;
                written.remove(&id);
            }
            Ok(())
        })
    }
}
