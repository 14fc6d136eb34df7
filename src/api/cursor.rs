//! Keyset cursors: an opaque token for "the page after this one", bound to the filters it was
//! made for and signed with an HMAC under a per-install secret, so that a client can neither
//! forge one nor move one to another position.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::store::CURSOR_KEY_FILE;
use crate::store::{LogQuery, SortKey};

const VERSION: u8 = 2;
const BODY_LEN: usize = 1 + 8 + 8 + 8 + 8;
const SIGNATURE_LEN: usize = 16;

/// The secret cursors are signed with; never printed.
#[derive(Clone)]
pub struct CursorKey([u8; 32]);

impl std::fmt::Debug for CursorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorKey([redacted])")
    }
}

/// Why the cursor secret could not be read or created.
#[derive(Debug, thiserror::Error)]
#[error("cursor secret {path}: {message}")]
pub struct CursorKeyError {
    path: PathBuf,
    message: String,
}

impl CursorKey {
    /// A fresh random key, in the hex form [`CursorKey::from_hex`] reads: the nodes of a cluster
    /// share one.
    pub fn random_hex() -> String {
        hex::encode(rand::random::<[u8; 32]>())
    }

    /// The token the nodes of a cluster show each other on their internal routes (copies of a
    /// shard's index): derived from the shared key, never the key itself.
    pub fn peer_token(&self) -> String {
        let tag = self.mac(b"logbridge peer").finalize().into_bytes();
        hex::encode(tag)
    }

    /// A key from its hex form; `None` unless it is 64 hexadecimal characters.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).ok()?;
        Some(Self(key))
    }

    /// Reads the secret in `dir`, creating it (readable by its owner only) on first start.
    pub fn load_or_create(dir: &Path) -> Result<Self, CursorKeyError> {
        let path = dir.join(CURSOR_KEY_FILE);
        let fail = |message: String| CursorKeyError {
            path: path.clone(),
            message,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut key = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut key)
                    .map_err(|_| fail("must hold 64 hexadecimal characters".to_owned()))?;
                owner_only(&path).map_err(|e| fail(e.to_string()))?;
                return Ok(Self(key));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(e.to_string())),
        }
        let key: [u8; 32] = rand::random();
        // written whole under a temporary name, then renamed: never a half-written secret
        crate::durable::replace(&path, hex::encode(key).as_bytes(), |_| Ok(()))
            .map_err(|e| fail(format!("cannot create it: {e}")))?;
        Ok(Self(key))
    }

    /// A key of the given bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    fn mac(&self, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(body);
        mac
    }
}

/// Makes the secret's file readable by its owner only, if it was more open than that.
fn owner_only(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "cursor secret was readable by others; made it owner-only");
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Where the next page starts and which page number it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The sort key of the last log of the previous page.
    pub after: SortKey,
    /// The page number of the page this cursor asks for.
    pub page: u64,
    /// Digest of the filters of the query that made it.
    pub filters: [u8; 8],
}

impl Cursor {
    /// The cursor for the page after one that ended at `after`.
    pub fn next(query: &LogQuery, after: SortKey, page: u64) -> Self {
        Self {
            after,
            page,
            filters: filters_digest(query),
        }
    }

    /// Whether this cursor was made for the filters of `query`.
    pub fn matches(&self, query: &LogQuery) -> bool {
        self.filters == filters_digest(query)
    }

    /// The opaque token, signed with `key`.
    pub fn encode(&self, key: &CursorKey) -> String {
        let mut bytes = Vec::with_capacity(BODY_LEN + SIGNATURE_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.after.timestamp.to_be_bytes());
        bytes.extend_from_slice(&self.after.seq.to_be_bytes());
        bytes.extend_from_slice(&self.page.to_be_bytes());
        bytes.extend_from_slice(&self.filters);
        let tag = key.mac(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag[..SIGNATURE_LEN]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token; `None` when it is not one signed with `key`.
    pub fn decode(token: &str, key: &CursorKey) -> Option<Self> {
        // longer than any token: not worth decoding
        if token.len() > 2 * (BODY_LEN + SIGNATURE_LEN) {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        if bytes.len() != BODY_LEN + SIGNATURE_LEN || bytes[0] != VERSION {
            return None;
        }
        let (body, signature) = bytes.split_at(BODY_LEN);
        // constant time, so the answer's timing does not guide a forger
        key.mac(body).verify_truncated_left(signature).ok()?;
        let u64_at = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        Some(Self {
            after: SortKey {
                timestamp: u64_at(1),
                seq: u64_at(9),
            },
            page: u64_at(17),
            filters: body[25..33].try_into().expect("8 bytes"),
        })
    }
}

/// A digest of everything that selects logs (user, filters, text, time range), not of the page.
fn filters_digest(query: &LogQuery) -> [u8; 8] {
    let canonical = format!(
        "{}\0{:?}\0{:?}",
        query.selection_key(),
        query.start,
        query.end
    );
    let digest = Sha256::digest(canonical.as_bytes());
    digest[..8]
        .try_into()
        .expect("a digest is longer than 8 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> LogQuery {
        LogQuery {
            user_id: "user-a".into(),
            room_name: Some("room-1".into()),
            limit: 20,
            ..Default::default()
        }
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn round_trips_and_binds_to_filters() {
        let key = CursorKey::from_bytes([1; 32]);
        let after = SortKey {
            timestamp: 1_773_134_142_000_000_000,
            seq: 77,
        };
        let cursor = Cursor::next(&query(), after, 3);
        let decoded = Cursor::decode(&cursor.encode(&key), &key).unwrap();
        assert_eq!(decoded, cursor);
        assert!(decoded.matches(&query()));

        let mut other_page_size = query();
        other_page_size.limit = 100;
        other_page_size.offset = 40;
        assert!(decoded.matches(&other_page_size));

        let mut other_user = query();
        other_user.user_id = "user-b".into();
        assert!(!decoded.matches(&other_user));
        let mut other_room = query();
        other_room.room_name = None;
        assert!(!decoded.matches(&other_room));
    }

    #[test]
    fn tampered_and_forged_tokens_are_refused() {
        let key = CursorKey::from_bytes([1; 32]);
        let cursor = Cursor::next(
            &query(),
            SortKey {
                timestamp: 5,
                seq: 6,
            },
            2,
        );
        let token = cursor.encode(&key);
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .unwrap();
        // every single flipped bit is caught
        for at in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[at] ^= 1;
            assert_eq!(Cursor::decode(&b64(&tampered), &key), None, "byte {at}");
        }
        // a token signed under another install's secret
        assert_eq!(
            Cursor::decode(&cursor.encode(&CursorKey::from_bytes([2; 32])), &key),
            None
        );
        // a forger who knows the format but not the secret: an unkeyed SHA-256 in place of the HMAC
        let mut forged = bytes[..BODY_LEN].to_vec();
        forged[1..9].copy_from_slice(&u64::MAX.to_be_bytes());
        let digest = Sha256::digest(&forged);
        forged.extend_from_slice(&digest[..SIGNATURE_LEN]);
        assert_eq!(Cursor::decode(&b64(&forged), &key), None);
        assert_eq!(Cursor::decode(&token[1..], &key), None);
        assert_eq!(Cursor::decode("not a cursor!", &key), None);
        assert_eq!(Cursor::decode("", &key), None);
        assert_eq!(Cursor::decode(&"A".repeat(100_000), &key), None);
    }

    #[test]
    fn the_secret_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let key = CursorKey::load_or_create(dir.path()).unwrap();
        let again = CursorKey::load_or_create(dir.path()).unwrap();
        assert_eq!(key.0, again.0);
        let path = dir.path().join(CURSOR_KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let token = Cursor::next(
            &query(),
            SortKey {
                timestamp: 1,
                seq: 1,
            },
            2,
        )
        .encode(&key);
        assert!(Cursor::decode(&token, &again).is_some());

        // a secret others could read is made owner-only
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            CursorKey::load_or_create(dir.path()).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        std::fs::write(&path, "short").unwrap();
        let err = CursorKey::load_or_create(dir.path()).err().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "cursor secret {}: must hold 64 hexadecimal characters",
                path.display()
            )
        );
    }
}
