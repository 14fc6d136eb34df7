//! The query parameters of `GET /logs` and `DELETE /logs`, validated into a [`LogQuery`]: pure,
//! no I/O.

use chrono::DateTime;
use utoipa::IntoParams;

use super::cursor::{Cursor, CursorKey};
use super::error::ApiError;
use crate::mapping::{LogStatus, LogType, MAX_NAME_BYTES};
use crate::search::{self, Expr};
use crate::store::LogQuery;

/// Page size when `limit` is absent.
pub const DEFAULT_LIMIT: usize = 50;
/// Largest page size; larger limits are clamped to it.
pub const MAX_LIMIT: usize = 100;

/// A validated `GET /logs` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsRequest {
    pub query: LogQuery,
    /// The page number shown in the response.
    pub page: u64,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

/// The first non-empty value of parameter `name`: the first occurrence counts, and an empty
/// value is the same as none.
pub(super) fn lookup<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The paging parameters of `GET /logs`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging<'a> {
    /// The page, from 1; pages past 100,000 logs must be read with `cursor`.
    #[param(schema_with = from_one)]
    page: Option<&'a str>,
    /// Logs per page: 50 when absent, at most 100 (larger values are taken as 100).
    #[param(schema_with = from_one)]
    limit: Option<&'a str>,
    /// `data.next_cursor` of the previous page, with the same filters: the page after it.
    #[param(value_type = Option<String>)]
    cursor: Option<&'a str>,
}

/// A whole number from 1, of any size: larger than the API can use is taken as the largest.
fn from_one() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::Integer)
        .minimum(Some(1))
        .build()
}

impl<'a> Paging<'a> {
    fn read(pairs: &'a [(String, String)]) -> Self {
        Paging {
            page: lookup(pairs, "page"),
            limit: lookup(pairs, "limit"),
            cursor: lookup(pairs, "cursor"),
        }
    }
}

/// Validates the decoded query-string pairs of a request by `user_id`, whose cursor must be signed
/// with `cursor_key`. Unknown parameters are ignored.
pub fn parse(
    pairs: &[(String, String)],
    user_id: &str,
    cursor_key: &CursorKey,
) -> Result<LogsRequest, ApiError> {
    let paging = Paging::read(pairs);
    let mut query = filters(pairs, user_id)?;
    let page = paging
        .page
        .map(|v| positive_integer(v).ok_or_else(|| bad("page must be an integer >= 1")))
        .transpose()?;
    query.limit = paging
        .limit
        .map(|v| positive_integer(v).ok_or_else(|| bad("limit must be an integer >= 1")))
        .transpose()?
        .map_or(DEFAULT_LIMIT, |l| {
            usize::try_from(l).unwrap_or(usize::MAX).min(MAX_LIMIT)
        });
    let page = match paging.cursor {
        Some(token) => {
            if page.is_some_and(|p| p > 1) {
                return Err(bad("cursor cannot be combined with page > 1"));
            }
            let cursor = Cursor::decode(token, cursor_key)
                .ok_or_else(|| bad("cursor is not a valid cursor from this server"))?;
            if !cursor.matches(&query) {
                return Err(bad("cursor was made for different filters"));
            }
            query.before = Some(cursor.after);
            cursor.page
        }
        None => {
            let page = page.unwrap_or(1);
            let skipped = usize::try_from(page - 1).unwrap_or(usize::MAX);
            query.offset = skipped.saturating_mul(query.limit);
            page
        }
    };
    Ok(LogsRequest { query, page })
}

/// Validates the parameters of an endpoint that takes every log matching the filters of
/// `GET /logs` (`DELETE /logs`, `GET /logs/export`), by `user_id`. Paging parameters are refused
/// rather than ignored: a caller who sent `limit` may have meant fewer. `takes` says what the
/// endpoint does, for the message: e.g. "DELETE /logs, which erases".
pub fn parse_filters_only(
    pairs: &[(String, String)],
    user_id: &str,
    takes: &str,
) -> Result<LogQuery, ApiError> {
    if let Some(param) = ["page", "limit", "cursor"]
        .into_iter()
        .find(|p| pairs.iter().any(|(k, _)| k == p))
    {
        return Err(bad(format!(
            "{param} is not accepted by {takes} every log matching the filters"
        )));
    }
    filters(pairs, user_id)
}

/// The filters of every endpoint that reads or erases logs, as the query string gives them: the
/// first value of each counts, and an empty value is the same as none.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Filters<'a> {
    /// Only logs of this type.
    #[param(value_type = Option<LogType>)]
    log_type: Option<&'a str>,
    /// Only logs with this status.
    #[param(value_type = Option<LogStatus>)]
    status: Option<&'a str>,
    /// Only logs of this assistant: exact match, at most 256 bytes.
    #[param(value_type = Option<String>)]
    assistant_id: Option<&'a str>,
    /// Only logs of this call (LiveKit room): exact match, at most 256 bytes.
    #[param(value_type = Option<String>)]
    room_name: Option<&'a str>,
    /// Only logs at or after this time, RFC 3339 (e.g. `2026-03-10T09:15:42Z`).
    #[param(value_type = Option<String>, format = DateTime)]
    start_time: Option<&'a str>,
    /// Only logs before this time, RFC 3339; after `start_time`.
    #[param(value_type = Option<String>, format = DateTime)]
    end_time: Option<&'a str>,
    /// Search, at most 1024 bytes. Words must all be in the message (case and punctuation
    /// are ignored); `"a phrase"`; `-word` or `-"a phrase"` excludes; `a OR b`; parentheses
    /// group; `timeo*` is a prefix (2 characters or more, standing for at most 10,000 words);
    /// `field:value` for `status`, `log_type`, `assistant_id`, `room_name` (exact; `value*`
    /// for a prefix), `message`, and paths into the payloads such as
    /// `request_data.payload.caller_number:"+919876543210"` or
    /// `response_data.context_keys:customer_name` (a whole string, number or boolean there,
    /// ignoring case, or its words in this order). Errors name the character where the problem
    /// is. Example: `(timeout OR "rate limit") -retry status:error`.
    #[param(value_type = Option<String>)]
    q: Option<&'a str>,
}

impl<'a> Filters<'a> {
    fn read(pairs: &'a [(String, String)]) -> Self {
        let get = |name: &str| lookup(pairs, name);
        Filters {
            log_type: get("log_type"),
            status: get("status"),
            assistant_id: get("assistant_id"),
            room_name: get("room_name"),
            start_time: get("start_time"),
            end_time: get("end_time"),
            q: get("q"),
        }
    }
}

/// The filters shared by every endpoint that reads or erases logs, as a query of the first page.
fn filters(pairs: &[(String, String)], user_id: &str) -> Result<LogQuery, ApiError> {
    let given = Filters::read(pairs);
    let log_type = given
        .log_type
        .map(|v| {
            v.parse::<LogType>().map_err(|()| {
                bad("log_type must be one of tool_call, end_call_webhook, inbound_context_lookup")
            })
        })
        .transpose()?;
    let status = given
        .status
        .map(|v| {
            v.parse::<LogStatus>()
                .map_err(|()| bad("status must be success or error"))
        })
        .transpose()?;
    let text = given.q.map(parse_text).transpose()?;
    let start = given
        .start_time
        .map(|v| timestamp("start_time", v))
        .transpose()?;
    let end = given
        .end_time
        .map(|v| timestamp("end_time", v))
        .transpose()?;
    if let (Some(s), Some(e)) = (start, end)
        && s >= e
    {
        return Err(bad("start_time must be before end_time"));
    }
    let (start, end) = time_window(start, end);
    Ok(LogQuery {
        user_id: user_id.to_owned(),
        log_type,
        status,
        assistant_id: given
            .assistant_id
            .map(|v| name("assistant_id", v))
            .transpose()?,
        room_name: given.room_name.map(|v| name("room_name", v)).transpose()?,
        text,
        start,
        end,
        before: None,
        offset: 0,
        limit: DEFAULT_LIMIT,
    })
}

/// An exact-match value: no stored log has one longer than the ingest limit.
fn name(param: &str, value: &str) -> Result<String, ApiError> {
    if value.len() > MAX_NAME_BYTES {
        return Err(bad(format!(
            "{param} must be at most {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(value.to_owned())
}

/// A decimal integer >= 1; one too large for u64 saturates (it is still an integer).
fn positive_integer(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value = text.parse::<u64>().unwrap_or(u64::MAX);
    (value >= 1).then_some(value)
}

/// An RFC 3339 time as nanoseconds since the epoch (negative before 1970).
fn timestamp(name: &str, text: &str) -> Result<i128, ApiError> {
    let time = DateTime::parse_from_rfc3339(text).map_err(|_| {
        bad(format!(
            "{name} must be an RFC 3339 time such as 2026-03-10T09:15:42Z"
        ))
    })?;
    Ok(i128::from(time.timestamp()) * 1_000_000_000 + i128::from(time.timestamp_subsec_nanos()))
}

/// The range `[start, end)` in the nanoseconds a log can carry (`0..=u64::MAX`): a bound that
/// excludes no log is dropped, and a range that holds no log becomes the empty `[MAX, MAX)`.
fn time_window(start: Option<i128>, end: Option<i128>) -> (Option<u64>, Option<u64>) {
    let max = i128::from(u64::MAX);
    let empty = (Some(u64::MAX), Some(u64::MAX));
    let start = match start {
        Some(s) if s > max => return empty,
        Some(s) if s > 0 => Some(s as u64),
        _ => None,
    };
    let end = match end {
        Some(e) if e <= 0 => return empty,
        Some(e) if e <= max => Some(e as u64),
        _ => None,
    };
    (start, end)
}

/// `q`, in the grammar of [`search::parse`].
fn parse_text(q: &str) -> Result<Expr, ApiError> {
    search::parse(q).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SortKey;

    fn parse_str(query: &str) -> Result<LogsRequest, String> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap();
        parse(&pairs, "user-a", &CursorKey::from_bytes([7; 32])).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let req = parse_str("").unwrap();
        assert_eq!(req.page, 1);
        assert_eq!(
            req.query,
            LogQuery {
                user_id: "user-a".into(),
                limit: 50,
                ..Default::default()
            }
        );
    }

    #[test]
    fn filters_and_paging() {
        let req = parse_str(
            "log_type=end_call_webhook&status=error&assistant_id=a%201&room_name=r&page=3&limit=20&other=x",
        )
        .unwrap();
        assert_eq!(req.page, 3);
        assert_eq!(req.query.log_type, Some(LogType::EndCallWebhook));
        assert_eq!(req.query.status, Some(LogStatus::Error));
        assert_eq!(req.query.assistant_id.as_deref(), Some("a 1"));
        assert_eq!(req.query.room_name.as_deref(), Some("r"));
        assert_eq!(req.query.offset, 40);
        assert_eq!(req.query.limit, 20);
    }

    #[test]
    fn empty_values_are_absent_and_limits_clamp() {
        let req = parse_str("limit=&log_type=&page=&q=&cursor=").unwrap();
        assert_eq!(req.query.limit, 50);
        assert_eq!(req.query.log_type, None);
        assert_eq!(parse_str("limit=101").unwrap().query.limit, 100);
        assert_eq!(
            parse_str("limit=99999999999999999999999")
                .unwrap()
                .query
                .limit,
            100
        );
        let far = parse_str("page=99999999999999999999999").unwrap();
        assert_eq!(far.page, u64::MAX);
        assert_eq!(far.query.offset, usize::MAX);
    }

    #[test]
    fn bad_values_name_the_parameter() {
        let cases = [
            (
                "log_type=TOOL_CALL",
                "log_type must be one of tool_call, end_call_webhook, inbound_context_lookup",
            ),
            ("status=ok", "status must be success or error"),
            ("page=0", "page must be an integer >= 1"),
            ("page=-1", "page must be an integer >= 1"),
            ("page=1.5", "page must be an integer >= 1"),
            ("limit=0", "limit must be an integer >= 1"),
            ("limit=-5", "limit must be an integer >= 1"),
            ("limit=ten", "limit must be an integer >= 1"),
            ("limit=%2B5", "limit must be an integer >= 1"),
            (
                "start_time=yesterday",
                "start_time must be an RFC 3339 time such as 2026-03-10T09:15:42Z",
            ),
            (
                "end_time=2026-03-10",
                "end_time must be an RFC 3339 time such as 2026-03-10T09:15:42Z",
            ),
            (
                "start_time=2026-03-10T10:00:00Z&end_time=2026-03-10T10:00:00Z",
                "start_time must be before end_time",
            ),
            (
                "q=%22unbalanced",
                "q has an unbalanced double quote (at character 1)",
            ),
            ("q=%2A%20%3A%20-", "q must contain at least one word"),
            (
                "cursor=abc",
                "cursor is not a valid cursor from this server",
            ),
        ];
        for (query, message) in cases {
            assert_eq!(parse_str(query).unwrap_err(), message, "{query}");
        }
        let room = format!("room_name={}", "r".repeat(MAX_NAME_BYTES + 1));
        assert_eq!(
            parse_str(&room).unwrap_err(),
            "room_name must be at most 256 bytes"
        );
        let assistant = format!("assistant_id={}", "é".repeat(129));
        assert_eq!(
            parse_str(&assistant).unwrap_err(),
            "assistant_id must be at most 256 bytes"
        );
        let at_limit = format!("room_name={}", "r".repeat(MAX_NAME_BYTES));
        assert!(parse_str(&at_limit).is_ok());
        let long = format!("q={}", "a".repeat(search::MAX_WORD_BYTES + 1));
        assert_eq!(
            parse_str(&long).unwrap_err(),
            "q has a word longer than 100 bytes (at character 1)"
        );
        let huge = format!("q={}", "a ".repeat(search::MAX_Q_BYTES));
        assert_eq!(
            parse_str(&huge).unwrap_err(),
            "q must be at most 1024 bytes"
        );
    }

    #[test]
    fn q_is_parsed_in_the_search_grammar() {
        let req = parse_str("q=Timeout%20%22HTTP%20500%22%20OR%20status%3Aerror").unwrap();
        assert_eq!(
            req.query.text,
            Some(search::parse("Timeout \"HTTP 500\" OR status:error").unwrap())
        );
    }

    #[test]
    fn times_are_inclusive_start_exclusive_end_in_nanos() {
        let req =
            parse_str("start_time=2026-03-10T09:15:42.5%2B01:00&end_time=2026-03-10T09:15:43Z")
                .unwrap();
        assert_eq!(req.query.start, Some(1_773_130_542_500_000_000));
        assert_eq!(req.query.end, Some(1_773_134_143_000_000_000));
        let before_epoch = parse_str("start_time=1960-01-01T00:00:00Z").unwrap();
        assert_eq!(before_epoch.query.start, None);
    }

    #[test]
    fn times_outside_what_a_log_can_carry_keep_their_meaning() {
        let window = |query: &str| {
            let q = parse_str(query).unwrap().query;
            (q.start, q.end)
        };
        let empty = (Some(u64::MAX), Some(u64::MAX));
        // both before 1970: a valid range that holds no log
        assert_eq!(
            window("start_time=1960-01-01T00:00:00Z&end_time=1965-01-01T00:00:00Z"),
            empty
        );
        assert_eq!(window("end_time=1970-01-01T00:00:00Z"), empty);
        // both after 2554: the same
        assert_eq!(
            window("start_time=2600-01-01T00:00:00Z&end_time=2700-01-01T00:00:00Z"),
            empty
        );
        // an end after 2554 excludes nothing; a start before 1970 neither
        assert_eq!(
            window("start_time=1969-01-01T00:00:00Z&end_time=2600-01-01T00:00:00Z"),
            (None, None)
        );
        assert_eq!(
            window("start_time=2554-07-21T23:34:33.709551615Z"),
            (Some(u64::MAX), None)
        );
        assert_eq!(
            parse_str("start_time=2700-01-01T00:00:00Z&end_time=2600-01-01T00:00:00Z").unwrap_err(),
            "start_time must be before end_time"
        );
    }

    #[test]
    fn cursors_continue_with_the_same_filters_only() {
        let first = parse_str("room_name=r&limit=10").unwrap();
        let token = Cursor::next(
            &first.query,
            SortKey {
                timestamp: 9,
                seq: 3,
            },
            2,
        )
        .encode(&CursorKey::from_bytes([7; 32]));

        let next = parse_str(&format!("room_name=r&limit=10&cursor={token}")).unwrap();
        assert_eq!(next.page, 2);
        assert_eq!(
            next.query.before,
            Some(SortKey {
                timestamp: 9,
                seq: 3
            })
        );
        assert_eq!(next.query.offset, 0);
        assert!(parse_str(&format!("room_name=r&page=1&cursor={token}")).is_ok());

        assert_eq!(
            parse_str(&format!("room_name=r&page=2&cursor={token}")).unwrap_err(),
            "cursor cannot be combined with page > 1"
        );
        assert_eq!(
            parse_str(&format!("room_name=other&cursor={token}")).unwrap_err(),
            "cursor was made for different filters"
        );
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(&format!("room_name=r&cursor={token}")).unwrap();
        assert_eq!(
            parse(&pairs, "user-b", &CursorKey::from_bytes([7; 32]))
                .unwrap_err()
                .to_string(),
            "cursor was made for different filters"
        );
    }
}
