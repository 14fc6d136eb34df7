//! Every user's rules and their states, in memory and kept by a [`Keeper`]: a single node's in
//! one JSON file beside the index, written whole under a temporary name and renamed, so that a
//! crash leaves the last complete version; a cluster's in etcd.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::rule::{Rule, RuleSpec};
use super::state::RuleState;
use super::time;
use crate::store::ALERT_RULES_FILE as FILE;

/// How a spec is checked as a rule of a user: the filters are read by the API's parser.
pub type CheckRule = dyn Fn(RuleSpec, &str) -> Result<Rule, String> + Send + Sync;

/// A rule of a user and its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub user_id: String,
    pub spec: RuleSpec,
    #[serde(with = "time::required")]
    pub created_at: u64,
    #[serde(with = "time::required")]
    pub updated_at: u64,
    pub state: RuleState,
    /// The spec checked; none when it no longer passes the checks (its state says why).
    #[serde(skip)]
    pub rule: Option<Rule>,
}

#[derive(Serialize, Deserialize)]
struct Document {
    rules: Vec<Entry>,
}

/// Where the rules are kept.
pub trait Keeper: Send + Sync + 'static {
    /// Makes `entries`, every rule there is, durable; done once the future is.
    fn keep(&self, entries: Vec<Entry>) -> Keeping;
}

/// A [`Keeper`] at work.
pub type Keeping = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Why a keeper wrote nothing: the rules are another's to keep now (a cluster's moved to
/// another gateway).
#[derive(Debug, thiserror::Error)]
#[error("the alert rules are kept by another gateway now")]
pub struct NotKeeper;

/// A single node's rules: one file, replaced whole.
struct File {
    path: PathBuf,
}

impl Keeper for File {
    fn keep(&self, entries: Vec<Entry>) -> Keeping {
        let path = self.path.clone();
        Box::pin(async move {
            let bytes = serde_json::to_vec(&Document { rules: entries })?;
            tokio::task::spawn_blocking(move || {
                crate::durable::replace(&path, &bytes, |_| Ok(()))
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
            })
            .await?
        })
    }
}

/// The rules, shared by the API, the evaluation and the deliveries.
#[derive(Clone)]
pub struct Book {
    inner: Arc<Mutex<Rules>>,
    /// Held while the rules are kept: one writer at a time, newest version last.
    writing: Arc<tokio::sync::Mutex<u64>>,
    keeper: Arc<dyn Keeper>,
}

/// The rules by id, and how many versions of them there have been.
pub struct Rules {
    pub entries: BTreeMap<String, Entry>,
    version: u64,
    max_per_user: usize,
}

impl Rules {
    /// The rule `id` of `user_id`'s; another user's is as missing as one that never was.
    pub fn of_user(&mut self, user_id: &str, id: &str) -> Option<&mut Entry> {
        self.entries.get_mut(id).filter(|e| e.user_id == user_id)
    }

    /// Adds a rule of `user_id`'s, within the bound of rules per user.
    pub fn add(&mut self, user_id: &str, rule: Rule, now: u64) -> Result<&Entry, String> {
        let held = self
            .entries
            .values()
            .filter(|e| e.user_id == user_id)
            .count();
        if held >= self.max_per_user {
            return Err(format!(
                "a user has at most {} alert rules: delete one first",
                self.max_per_user
            ));
        }
        let id = hex::encode(rand::random::<[u8; 8]>());
        let entry = Entry {
            id: id.clone(),
            user_id: user_id.to_owned(),
            spec: rule.spec.clone(),
            created_at: now,
            updated_at: now,
            state: RuleState::default(),
            rule: Some(rule),
        };
        self.changed();
        Ok(self.entries.entry(id).or_insert(entry))
    }

    /// Marks the rules changed: the next save writes them.
    pub fn changed(&mut self) {
        self.version += 1;
    }
}

impl Book {
    /// The rules of the file in `dir`, or none if it does not exist (see [`Book::new`]).
    pub fn open(dir: &Path, max_per_user: usize, check: &CheckRule) -> anyhow::Result<Self> {
        let path = dir.join(FILE);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                let document: Document = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!("{} is not a file of alert rules: {e}", path.display())
                })?;
                document.rules
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        Ok(Self::new(
            entries,
            max_per_user,
            check,
            Arc::new(File { path }),
        ))
    }

    /// The rules `entries`, kept by `keeper` from now on, each checked again by `check` (of a
    /// spec and its user); at most `max_per_user` rules of one user are taken from now on.
    pub fn new(
        entries: Vec<Entry>,
        max_per_user: usize,
        check: &CheckRule,
        keeper: Arc<dyn Keeper>,
    ) -> Self {
        let entries = entries
            .into_iter()
            .map(|mut entry| {
                match check(entry.spec.clone(), &entry.user_id) {
                    Ok(rule) => entry.rule = Some(rule),
                    Err(e) => {
                        entry.state.error = Some(format!("the rule is not valid: {e}"));
                    }
                }
                (entry.id.clone(), entry)
            })
            .collect();
        Self {
            inner: Arc::new(Mutex::new(Rules {
                entries,
                version: 0,
                max_per_user,
            })),
            writing: Arc::new(tokio::sync::Mutex::new(0)),
            keeper,
        }
    }

    /// The rules, to read or change; call [`Book::save`] after a change.
    pub fn lock(&self) -> MutexGuard<'_, Rules> {
        // a panic while the lock was held leaves whole entries: take them as they are
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the rules if they changed since they were last kept, and returns once they are
    /// durable. A write goes on to its end even when the caller is gone (a client that left),
    /// and the next waits for it.
    pub async fn save(&self) -> anyhow::Result<()> {
        let mut written = self.writing.clone().lock_owned().await;
        let (version, entries) = {
            let rules = self.lock();
            if rules.version == *written {
                return Ok(());
            }
            (rules.version, rules.entries.values().cloned().collect())
        };
        let keeping = self.keeper.keep(entries);
        tokio::spawn(async move {
            keeping.await?;
            *written = version;
            Ok(())
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spec: RuleSpec, user: &str) -> Result<Rule, String> {
        let query = crate::store::LogQuery {
            user_id: user.to_owned(),
            ..Default::default()
        };
        Rule::new(spec, query)
    }

    fn rule(user: &str) -> Rule {
        let spec = serde_json::from_value(serde_json::json!({
            "name": "errors", "window": "1m", "measure": "error_count",
            "comparison": ">", "threshold": 0,
        }))
        .unwrap();
        check(spec, user).unwrap()
    }

    #[tokio::test]
    async fn rules_and_states_survive_a_reopen_and_users_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let book = Book::open(dir.path(), 2, &check).unwrap();
        let id = {
            let mut rules = book.lock();
            rules.add("a", rule("a"), 7).unwrap();
            // times are kept to the millisecond
            let id = rules.add("a", rule("a"), 8_000_000).unwrap().id.clone();
            let refused = rules.add("a", rule("a"), 9).unwrap_err();
            assert_eq!(
                refused,
                "a user has at most 2 alert rules: delete one first"
            );
            rules.add("b", rule("b"), 9).unwrap();
            rules.of_user("a", &id).unwrap().state.value = Some(4.0);
            assert!(rules.of_user("b", &id).is_none());
            id
        };
        book.save().await.unwrap();
        let reopened = Book::open(dir.path(), 2, &check).unwrap();
        let mut rules = reopened.lock();
        assert_eq!(rules.entries.len(), 3);
        let entry = rules.of_user("a", &id).unwrap();
        assert_eq!(entry.state.value, Some(4.0));
        assert_eq!(entry.created_at, 8_000_000);
        assert!(entry.rule.is_some());
    }

    #[test]
    fn a_damaged_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{\"rules\": [").unwrap();
        let error = Book::open(dir.path(), 2, &check).err().unwrap().to_string();
        assert!(
            error.contains("alerts.json is not a file of alert rules"),
            "{error}"
        );
    }
}
