//! Keyset cursors: an opaque token for "the page after this one", bound to the filters it was
//! made for and checksummed against tampering.

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::store::{LogQuery, SortKey};

const VERSION: u8 = 1;
const BODY_LEN: usize = 1 + 8 + 8 + 8 + 8;
const CHECK_LEN: usize = 8;

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

    /// The opaque token.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(BODY_LEN + CHECK_LEN);
        bytes.push(VERSION);
        bytes.extend_from_slice(&self.after.timestamp.to_be_bytes());
        bytes.extend_from_slice(&self.after.seq.to_be_bytes());
        bytes.extend_from_slice(&self.page.to_be_bytes());
        bytes.extend_from_slice(&self.filters);
        let check = checksum(&bytes);
        bytes.extend_from_slice(&check);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token; `None` when it is not one this server made.
    pub fn decode(token: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()?;
        if bytes.len() != BODY_LEN + CHECK_LEN || bytes[0] != VERSION {
            return None;
        }
        let (body, check) = bytes.split_at(BODY_LEN);
        if checksum(body) != check {
            return None;
        }
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

fn checksum(body: &[u8]) -> [u8; CHECK_LEN] {
    let digest = Sha256::new()
        .chain_update(b"logbridge cursor\0")
        .chain_update(body)
        .finalize();
    digest[..CHECK_LEN]
        .try_into()
        .expect("a digest is longer than 8 bytes")
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

    #[test]
    fn round_trips_and_binds_to_filters() {
        let after = SortKey {
            timestamp: 1_773_134_142_000_000_000,
            seq: 77,
        };
        let cursor = Cursor::next(&query(), after, 3);
        let decoded = Cursor::decode(&cursor.encode()).unwrap();
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
    fn tampered_tokens_are_refused() {
        let token = Cursor::next(
            &query(),
            SortKey {
                timestamp: 5,
                seq: 6,
            },
            2,
        )
        .encode();
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .unwrap();
        bytes[3] ^= 1;
        let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(Cursor::decode(&tampered), None);
        assert_eq!(Cursor::decode(&token[1..]), None);
        assert_eq!(Cursor::decode("not a cursor!"), None);
        assert_eq!(Cursor::decode(""), None);
    }
}
