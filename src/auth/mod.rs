//! API keys: the keys file, bearer-token checks and scopes.
//!
//! Secrets are never stored, only their SHA-256; a presented secret is hashed and compared with
//! every known hash in constant time.

mod keyfile;

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use keyfile::{
    KeyFileError, KeyRecord, NewKey, add_key, ensure_keys_file, load_keys, parse_keys, revoke_key,
};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Export logs over OTLP.
    Ingest,
    /// Read logs through `/logs`.
    Read,
    /// Erase logs through `DELETE /logs`.
    Delete,
    /// Manage the user's alert rules through `/alerts`.
    Alerts,
}

impl Scope {
    /// The name used in the keys file.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Delete => "delete",
            Scope::Alerts => "alerts",
        }
    }

    /// Parses a scope name from the keys file or the command line.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ingest" => Some(Scope::Ingest),
            "read" => Some(Scope::Read),
            "delete" => Some(Scope::Delete),
            "alerts" => Some(Scope::Alerts),
            _ => None,
        }
    }
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// A fresh random secret: `lb_` and 43 characters of URL-safe base64 (256 bits).
    pub fn generate() -> Self {
        use base64::Engine as _;
        let bytes: [u8; 32] = rand::random();
        Self(format!(
            "lb_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// The secret itself, for printing once to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 of the secret, as stored in the keys file.
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's name, for logs.
    pub key_name: String,
    /// The user the key is bound to; `None` for a platform ingest key.
    pub user_id: Option<String>,
}

/// Why a request was not allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send Authorization: Bearer <key>")]
    Missing,
    #[error("unknown API key")]
    Unknown,
    #[error("this API key expired at {0}")]
    Expired(String),
    #[error("this API key lacks the {0} scope")]
    Forbidden(&'static str),
}

/// The known keys; cheap to clone, and every clone sees [`KeyStore::replace`]. A request checks
/// its key against one set, whole: a swap never half-applies to it.
#[derive(Debug, Clone)]
pub struct KeyStore {
    keys: Arc<ArcSwap<Vec<KeyRecord>>>,
}

impl KeyStore {
    /// A store of the given, already validated, keys.
    pub fn new(keys: Vec<KeyRecord>) -> Self {
        Self {
            keys: Arc::new(ArcSwap::from_pointee(keys)),
        }
    }

    /// Replaces the set of keys for every request that starts from now on.
    pub fn replace(&self, keys: Vec<KeyRecord>) {
        self.keys.store(Arc::new(keys));
    }

    /// The names of the keys in use.
    pub fn names(&self) -> Vec<String> {
        self.keys.load().iter().map(|k| k.name.clone()).collect()
    }

    /// Checks an `Authorization` header value and the scope the request needs.
    pub fn authorize(
        &self,
        authorization: Option<&[u8]>,
        scope: Scope,
    ) -> Result<Principal, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let secret = bearer_token(header).ok_or(AuthError::Unknown)?;
        let hash: [u8; 32] = Sha256::digest(secret).into();
        // Compare with every key, so the time taken does not tell which key came close.
        let keys = self.keys.load();
        let mut found: Option<&KeyRecord> = None;
        for key in keys.iter() {
            if bool::from(key.sha256.ct_eq(&hash)) {
                found = Some(key);
            }
        }
        let key = found.ok_or(AuthError::Unknown)?;
        if let Some(expires_at) = key.expires_at
            && Utc::now() >= expires_at
        {
            return Err(AuthError::Expired(
                expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            ));
        }
        if !key.scopes.contains(&scope) {
            return Err(AuthError::Forbidden(scope.as_str()));
        }
        Ok(Principal {
            key_name: key.name.clone(),
            user_id: key.user_id.clone(),
        })
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive, as in RFC 7235.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let header = header.trim_ascii();
    let (scheme, rest) = header.split_at_checked(6)?;
    let separated = rest.first().is_some_and(|&b| b == b' ' || b == b'\t');
    if !scheme.eq_ignore_ascii_case(b"bearer") || !separated {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (KeyStore, Secret, Secret) {
        let reader = Secret::generate();
        let platform = Secret::generate();
        let store = KeyStore::new(vec![
            KeyRecord {
                name: "dash".into(),
                sha256: reader.sha256(),
                scopes: vec![Scope::Read],
                user_id: Some("user-a".into()),
                expires_at: None,
            },
            KeyRecord {
                name: "fleet".into(),
                sha256: platform.sha256(),
                scopes: vec![Scope::Ingest],
                user_id: None,
                expires_at: None,
            },
        ]);
        (store, reader, platform)
    }

    #[test]
    fn bearer_keys_are_checked_with_their_scope() {
        let (store, reader, platform) = store();
        let header = |s: &Secret| format!("Bearer {}", s.expose()).into_bytes();
        assert_eq!(
            store.authorize(Some(&header(&reader)), Scope::Read),
            Ok(Principal {
                key_name: "dash".into(),
                user_id: Some("user-a".into())
            })
        );
        assert_eq!(
            store.authorize(Some(&header(&platform)), Scope::Ingest),
            Ok(Principal {
                key_name: "fleet".into(),
                user_id: None
            })
        );
        let lower = format!("bearer  {} ", platform.expose());
        assert!(
            store
                .authorize(Some(lower.as_bytes()), Scope::Ingest)
                .is_ok()
        );
        assert_eq!(
            store.authorize(Some(&header(&platform)), Scope::Read),
            Err(AuthError::Forbidden("read"))
        );
        assert_eq!(store.authorize(None, Scope::Read), Err(AuthError::Missing));
        for bad in [
            "Bearer nope",
            "Basic abc",
            "Bearer",
            "Bearer ",
            "",
            "Bearerlb_x",
        ] {
            assert_eq!(
                store.authorize(Some(bad.as_bytes()), Scope::Read),
                Err(AuthError::Unknown),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn expired_keys_and_replaced_sets_are_refused() {
        let (store, reader, platform) = store();
        let header = |s: &Secret| format!("Bearer {}", s.expose()).into_bytes();
        let clone = store.clone();
        let expired = Secret::generate();
        let past = chrono::DateTime::parse_from_rfc3339("2020-01-02T03:04:05Z").unwrap();
        store.replace(vec![
            KeyRecord {
                name: "old".into(),
                sha256: expired.sha256(),
                scopes: vec![Scope::Read],
                user_id: Some("user-a".into()),
                expires_at: Some(past.to_utc()),
            },
            KeyRecord {
                name: "fleet".into(),
                sha256: platform.sha256(),
                scopes: vec![Scope::Ingest],
                user_id: None,
                expires_at: Some(Utc::now() + chrono::Duration::hours(1)),
            },
        ]);
        // every clone sees the new set
        assert_eq!(
            clone.authorize(Some(&header(&reader)), Scope::Read),
            Err(AuthError::Unknown)
        );
        let err = clone
            .authorize(Some(&header(&expired)), Scope::Read)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "this API key expired at 2020-01-02T03:04:05Z"
        );
        assert!(
            clone
                .authorize(Some(&header(&platform)), Scope::Ingest)
                .is_ok()
        );
        assert_eq!(clone.names(), ["old", "fleet"]);
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::generate();
        assert!(secret.expose().starts_with("lb_"));
        assert_eq!(secret.expose().len(), 46);
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
    }
}
