//! An export body to an `ExportLogsServiceRequest`: decompression and decoding, each refusing
//! to produce more than the limit, with the memory they take reserved against the budget first.
//! Blocking: runs on a blocking thread.

use std::io::Read as _;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message as _;

use super::{Refusal, json};
use crate::ingest::Reservation;

/// How an export body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

/// How an export body is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Identity,
    Gzip,
}

/// Memory a decoded request holds per byte of its encoding, at most: protobuf structures keep
/// each string in its own allocation beside vectors of attributes; OTLP/JSON is first parsed into
/// a JSON tree, then converted.
const PROTOBUF_EXPANSION: usize = 3;
const JSON_EXPANSION: usize = 8;

/// What one export holds at most per byte of its decompressed size: the body as received, the
/// decompressed bytes, and the decoded form.
pub const MAX_BYTES_HELD_PER_BYTE: usize = 2 + JSON_EXPANSION;

/// Decompressed in steps of this many bytes, each reserved before it is produced.
const INFLATE_STEP: usize = 1 << 20;

/// Decodes `body`, which may decompress to at most `limit` bytes.
pub fn decode(
    body: Bytes,
    format: Format,
    compression: Compression,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<ExportLogsServiceRequest, Refusal> {
    let bytes = match compression {
        Compression::Identity if body.len() > limit => return Err(Refusal::TooLarge { limit }),
        Compression::Identity => body,
        Compression::Gzip => gunzip(&body, limit, reservation)?,
    };
    let expansion = match format {
        Format::Protobuf => PROTOBUF_EXPANSION,
        Format::Json => JSON_EXPANSION,
    };
    reservation
        .grow(bytes.len().saturating_mul(expansion))
        .map_err(|_| Refusal::Overloaded)?;
    match format {
        Format::Protobuf => ExportLogsServiceRequest::decode(bytes)
            .map_err(|e| Refusal::Malformed(format!("invalid OTLP protobuf: {e}"))),
        Format::Json => json::decode(&bytes).map_err(|e| Refusal::Malformed(e.to_string())),
    }
}

/// Decompresses a gzip body, refusing to produce more than `limit` bytes.
fn gunzip(
    compressed: &[u8],
    limit: usize,
    reservation: &mut Reservation,
) -> Result<Bytes, Refusal> {
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed);
    let mut out = Vec::new();
    loop {
        // one byte past the limit tells a body at the limit from one over it
        let step = INFLATE_STEP.min(limit + 1 - out.len());
        reservation.grow(step).map_err(|_| Refusal::Overloaded)?;
        out.reserve_exact(step);
        let read = (&mut decoder)
            .take(step as u64)
            .read_to_end(&mut out)
            .map_err(|e| Refusal::Malformed(format!("invalid gzip body: {e}")))?;
        if out.len() > limit {
            return Err(Refusal::TooLarge { limit });
        }
        if read < step {
            return Ok(out.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::ingest::MemoryBudget;

    fn gzip(data: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap().into()
    }

    #[test]
    fn gzip_bodies_inflate_up_to_the_limit_only() {
        let budget = MemoryBudget::new(64 << 20);
        let mut reservation = budget.reservation();
        let exact = gunzip(&gzip(&[7; 3 << 20]), 3 << 20, &mut reservation).unwrap();
        assert_eq!(exact.len(), 3 << 20);
        let mut reservation = budget.reservation();
        assert!(matches!(
            gunzip(&gzip(&[7; (3 << 20) + 1]), 3 << 20, &mut reservation),
            Err(Refusal::TooLarge { limit }) if limit == 3 << 20
        ));
        assert!(matches!(
            gunzip(b"not gzip", 100, &mut budget.reservation()),
            Err(Refusal::Malformed(m)) if m.starts_with("invalid gzip body")
        ));
        assert_eq!(
            gunzip(&gzip(b""), 100, &mut budget.reservation())
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn a_bomb_is_refused_once_the_budget_is_spent_not_after_inflating_it() {
        // 64 MiB of zeros compress to about 64 KiB
        let bomb = gzip(&vec![0; 64 << 20]);
        let budget = MemoryBudget::new(8 << 20);
        let mut reservation = budget.reservation();
        assert!(matches!(
            gunzip(&bomb, 128 << 20, &mut reservation),
            Err(Refusal::Overloaded)
        ));
        assert!(reservation.bytes() <= 8 << 20);
    }
}
