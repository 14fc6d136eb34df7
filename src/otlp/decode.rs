//! An export body to an `ExportLogsServiceRequest`: decompression and decoding, each refusing
//! to produce more than its limit, with the memory they take reserved against the budget first.
//! Blocking: runs on a blocking thread.
//!
//! What decoding allocates is not proportional to the bytes: an empty LogRecord is two bytes on
//! the wire and about two hundred decoded. So the decoded size is estimated from the body before
//! decoding (walking the protobuf wire format, or counting JSON's values), reserved, and capped.

use std::io::Read as _;
use std::mem::size_of;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use super::{Refusal, json};
use crate::ingest::Reservation;
use crate::mapping::for_each_structural_byte;

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

/// What one value of OTLP/JSON costs decoded: a `serde_json::Value` with its slot in a map or
/// array, then its share of the structures it is converted to.
const JSON_VALUE_BYTES: usize = 192;

/// Protobuf nests at most this deep (prost's own limit): deeper bodies fail to decode anyway.
const MAX_DEPTH: u32 = 100;

/// Decompressed in steps of this many bytes, each reserved before it is produced.
const INFLATE_STEP: usize = 1 << 20;

/// Decodes `body`, which may decompress to at most `limit` bytes, holding the body, the
/// decompressed bytes and the decoded form's estimated memory in `reservation`. Returns the
/// request and that estimate. A decoded form over a stage of the budget is an export built to
/// expand (millions of empty records), refused as too large.
pub fn decode(
    body: Bytes,
    format: Format,
    compression: Compression,
    limit: usize,
    reservation: &mut Reservation,
) -> Result<(ExportLogsServiceRequest, usize), Refusal> {
    let (bytes, held) = match compression {
        Compression::Identity if body.len() > limit => return Err(Refusal::TooLarge { limit }),
        Compression::Identity => (body, 0),
        Compression::Gzip => {
            let inflated = gunzip(&body, limit, reservation)?;
            let held = body.len();
            (inflated, held)
        }
    };
    let decoded = match format {
        Format::Protobuf => protobuf_decoded_size(&bytes),
        Format::Json => json_decoded_size(&bytes),
    };
    let cap = reservation.stage_cap();
    if decoded > cap {
        return Err(Refusal::Expands {
            what: "decodes",
            limit: cap,
        });
    }
    reservation
        .reserve_to(held + bytes.len() + decoded)
        .map_err(|_| Refusal::Overloaded)?;
    let request = match format {
        Format::Protobuf => ExportLogsServiceRequest::decode(bytes)
            .map_err(|e| Refusal::Malformed(format!("invalid OTLP protobuf: {e}"))),
        Format::Json => json::decode(&bytes).map_err(|e| Refusal::Malformed(e.to_string())),
    }?;
    Ok((request, decoded))
}

/// The messages of an OTLP logs export, as far as decoding allocates for them.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Request,
    ResourceLogs,
    Resource,
    EntityRef,
    ScopeLogs,
    Scope,
    LogRecord,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

/// What a length-delimited field of a message decodes to.
enum Field {
    /// An element of a vector of messages.
    Repeated(Kind),
    /// A message held inline by its parent (an `Option` or a `oneof`): no allocation of its own.
    Single(Kind),
    /// A string or byte string: its bytes.
    Bytes,
    /// An element of a vector of strings.
    RepeatedString,
}

impl Kind {
    fn size(self) -> usize {
        match self {
            Kind::Request => size_of::<ExportLogsServiceRequest>(),
            Kind::ResourceLogs => size_of::<ResourceLogs>(),
            Kind::Resource => size_of::<Resource>(),
            Kind::EntityRef => size_of::<EntityRef>(),
            Kind::ScopeLogs => size_of::<ScopeLogs>(),
            Kind::Scope => size_of::<InstrumentationScope>(),
            Kind::LogRecord => size_of::<LogRecord>(),
            Kind::KeyValue => size_of::<KeyValue>(),
            Kind::AnyValue => size_of::<AnyValue>(),
            Kind::ArrayValue => size_of::<ArrayValue>(),
            Kind::KeyValueList => size_of::<KeyValueList>(),
        }
    }

    /// The length-delimited field `number` of this message; `None` for one decoding skips.
    fn field(self, number: u64) -> Option<Field> {
        use Field::{Bytes, Repeated, RepeatedString, Single};
        Some(match (self, number) {
            (Kind::Request, 1) => Repeated(Kind::ResourceLogs),
            (Kind::ResourceLogs, 1) => Single(Kind::Resource),
            (Kind::ResourceLogs, 2) => Repeated(Kind::ScopeLogs),
            (Kind::Resource, 1) | (Kind::Scope, 3) | (Kind::LogRecord, 6) => {
                Repeated(Kind::KeyValue)
            }
            (Kind::Resource, 3) => Repeated(Kind::EntityRef),
            (Kind::ScopeLogs, 1) => Single(Kind::Scope),
            (Kind::ScopeLogs, 2) => Repeated(Kind::LogRecord),
            (Kind::LogRecord, 5) | (Kind::KeyValue, 2) => Single(Kind::AnyValue),
            (Kind::ArrayValue, 1) => Repeated(Kind::AnyValue),
            (Kind::AnyValue, 5) => Single(Kind::ArrayValue),
            (Kind::AnyValue, 6) => Single(Kind::KeyValueList),
            (Kind::KeyValueList, 1) => Repeated(Kind::KeyValue),
            (Kind::EntityRef, 3 | 4) => RepeatedString,
            (Kind::ResourceLogs | Kind::ScopeLogs, 3)
            | (Kind::EntityRef, 1 | 2)
            | (Kind::Scope, 1 | 2)
            | (Kind::LogRecord, 3 | 9 | 10 | 12)
            | (Kind::KeyValue, 1)
            | (Kind::AnyValue, 1 | 7) => Bytes,
            _ => return None,
        })
    }
}

/// The capacity a vector reaches when `n` elements are pushed one by one: Rust's vectors start
/// at four small elements and double.
fn pushed_capacity(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        n.next_power_of_two().max(4)
    }
}

/// What decoding `bytes` as an export allocates, found by walking the wire format without
/// decoding: the vectors of repeated fields, at the capacity pushing reaches, and the bytes of
/// strings. A body that is not valid protobuf is estimated as far as it goes: decoding then says
/// what is wrong with it.
fn protobuf_decoded_size(bytes: &[u8]) -> usize {
    let mut total = 0;
    let _ = walk(bytes, Kind::Request, 0, &mut total);
    total
}

fn walk(mut buf: &[u8], kind: Kind, depth: u32, total: &mut usize) -> Result<(), ()> {
    if depth > MAX_DEPTH {
        return Err(());
    }
    // this message's repeated fields: (number, elements, element size); none has more than two
    let mut repeated: [(u64, usize, usize); 2] = [(0, 0, 0); 2];
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let number = key >> 3;
        let skip = match key & 7 {
            0 => {
                varint(&mut buf)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| ())?;
                let inner = buf.get(..len).ok_or(())?;
                let mut count = |size: usize| {
                    let slot = repeated
                        .iter_mut()
                        .find(|(n, elements, _)| *n == number || *elements == 0)
                        .ok_or(())?;
                    *slot = (number, slot.1 + 1, size);
                    Ok::<_, ()>(())
                };
                match kind.field(number) {
                    Some(Field::Repeated(child)) => {
                        count(child.size())?;
                        walk(inner, child, depth + 1, total)?;
                    }
                    Some(Field::Single(child)) => walk(inner, child, depth + 1, total)?,
                    Some(Field::Bytes) => *total = total.saturating_add(len),
                    Some(Field::RepeatedString) => {
                        count(size_of::<String>())?;
                        *total = total.saturating_add(len);
                    }
                    None => {}
                }
                len
            }
            // groups are not in OTLP, and decoding refuses what it cannot skip
            _ => return Err(()),
        };
        buf = buf.get(skip..).ok_or(())?;
    }
    for (_, elements, size) in repeated {
        *total = total.saturating_add(pushed_capacity(elements).saturating_mul(size));
    }
    Ok(())
}

/// A base-128 varint, as protobuf writes it.
fn varint(buf: &mut &[u8]) -> Result<u64, ()> {
    let mut value = 0u64;
    for (i, &byte) in buf.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            *buf = &buf[i + 1..];
            return Ok(value);
        }
    }
    Err(())
}

/// What decoding `bytes` as OTLP/JSON allocates, at most: the text, and for each value (each
/// object, array, member and element) a JSON value and its share of what it converts to.
fn json_decoded_size(bytes: &[u8]) -> usize {
    let mut values = 1usize;
    for_each_structural_byte(bytes, |byte| {
        if matches!(byte, b'{' | b'[' | b',' | b':') {
            values += 1;
        }
    });
    bytes
        .len()
        .saturating_add(values.saturating_mul(JSON_VALUE_BYTES))
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
        reservation
            .reserve_to(compressed.len() + out.len() + step)
            .map_err(|_| Refusal::Overloaded)?;
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
    fn decoded_sizes_are_estimated_before_decoding_and_capped() {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        // a realistic record
        let record = LogRecord {
            time_unix_nano: 1,
            body: Some(AnyValue {
                value: Some(Value::StringValue("tool get_weather returned 200".into())),
            }),
            attributes: (0..8)
                .map(|i| KeyValue {
                    key: format!("activity.attribute_{i}"),
                    value: Some(AnyValue {
                        value: Some(Value::StringValue("x".repeat(40))),
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let request = |records: Vec<LogRecord>| ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let realistic = request(vec![record; 1000]).encode_to_vec();
        let estimate = protobuf_decoded_size(&realistic);
        // what the structures take: a vector of 1024 records, each with a vector of 8
        // attributes, and their strings
        let structures = 1024 * size_of::<LogRecord>()
            + 1000 * (8 * size_of::<KeyValue>() + 8 * (20 + 40) + 29)
            + 4 * (size_of::<ResourceLogs>() + size_of::<ScopeLogs>());
        assert_eq!(estimate, structures);
        assert!(estimate < realistic.len() * 4);

        // empty records: two bytes each on the wire
        let empty = request(vec![LogRecord::default(); 100_000]).encode_to_vec();
        let estimate = protobuf_decoded_size(&empty);
        assert_eq!(
            estimate,
            131_072 * size_of::<LogRecord>()
                + 4 * (size_of::<ResourceLogs>() + size_of::<ScopeLogs>())
        );
        // a budget of 16 MiB: half of it for a decoded form
        let budget = MemoryBudget::new(16 << 20);
        assert!(matches!(
            decode(
                empty.clone().into(),
                Format::Protobuf,
                Compression::Identity,
                empty.len(),
                &mut budget.reservation()
            ),
            Err(Refusal::Expands {
                what: "decodes",
                ..
            })
        ));
        // what is under the cap decodes, and reserves its estimate
        let mut reservation = budget.reservation();
        let (decoded, estimate) = decode(
            realistic.clone().into(),
            Format::Protobuf,
            Compression::Identity,
            realistic.len(),
            &mut reservation,
        )
        .unwrap();
        assert_eq!(
            decoded.resource_logs[0].scope_logs[0].log_records.len(),
            1000
        );
        assert_eq!(estimate, structures);
        // the body and the decoded form
        assert!(reservation.bytes() >= estimate + realistic.len());
        assert!(reservation.bytes() < estimate + realistic.len() + 1024);

        // a garbled body is estimated as far as it goes; decoding names the problem
        assert!(matches!(
            decode(
                vec![0xff; 16].into(),
                Format::Protobuf,
                Compression::Identity,
                100,
                &mut budget.reservation()
            ),
            Err(Refusal::Malformed(m)) if m.starts_with("invalid OTLP protobuf")
        ));

        // JSON: every value counts; commas and colons inside strings do not
        assert_eq!(json_decoded_size(br#""a,b:c""#), 7 + JSON_VALUE_BYTES);
        assert_eq!(json_decoded_size(b"[0,0,0]"), 7 + 4 * JSON_VALUE_BYTES);
        assert_eq!(
            json_decoded_size(br#"{"k":"\",x"}"#),
            12 + 3 * JSON_VALUE_BYTES
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
