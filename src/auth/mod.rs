//! API keys: the keys file, bearer-token checks and scopes.
//!
//! Secrets are never stored, only their SHA-256; a presented secret is hashed and compared with
//! every known hash in constant time.

mod keyfile;

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use keyfile::{KeyFileError, KeyRecord, NewKey, add_key, ensure_keys_file, load_keys};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Export logs over OTLP.
    Ingest,
    /// Read logs through `/logs`.
    Read,
}

impl Scope {
    /// The name used in the keys file.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
        }
    }

    /// Parses a scope name from the keys file or the command line.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "ingest" => Some(Scope::Ingest),
            "read" => Some(Scope::Read),
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
    #[error("this API key lacks the {0} scope")]
    Forbidden(&'static str),
}

/// The known keys.
#[derive(Debug, Clone)]
pub struct KeyStore {
    keys: Arc<[KeyRecord]>,
}

impl KeyStore {
    /// A store of the given, already validated, keys.
    pub fn new(keys: Vec<KeyRecord>) -> Self {
        Self { keys: keys.into() }
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
        let mut found: Option<&KeyRecord> = None;
        for key in self.keys.iter() {
            if bool::from(key.sha256.ct_eq(&hash)) {
                found = Some(key);
            }
        }
        let key = found.ok_or(AuthError::Unknown)?;
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
            },
            KeyRecord {
                name: "fleet".into(),
                sha256: platform.sha256(),
                scopes: vec![Scope::Ingest],
                user_id: None,
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
    fn secrets_never_print() {
        let secret = Secret::generate();
        assert!(secret.expose().starts_with("lb_"));
        assert_eq!(secret.expose().len(), 46);
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
    }
}
