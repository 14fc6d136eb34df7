//! The few etcd v3 calls cluster mode makes, over etcd's JSON gateway (`/v3/...`, served by
//! every etcd since 3.4): leases, puts under a lease, put-if-absent transactions, writes fenced
//! by a key's creation, deletes and prefix reads. The JSON gateway keeps the build free of a protobuf compiler.

use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use http_body_util::{BodyExt as _, Full};
use rustls::ClientConfig;
use serde::Deserialize;
use serde_json::{Value, json};

use super::tls::{HttpClient, http_client};

/// Longest wait for one etcd call.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of the first answering endpoint of a list.
#[derive(Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    http: HttpClient<Full<bytes::Bytes>>,
}

/// A key and its value, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
}

/// A write of a fenced transaction ([`Etcd::fenced`]).
pub enum Write<'a> {
    Put { key: &'a str, value: &'a [u8] },
    Delete { key: &'a str },
}

/// etcd's JSON gateway writes 64-bit integers as strings.
fn int(value: &Value) -> Option<i64> {
    match value {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

#[derive(Deserialize)]
struct RawKeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

impl Etcd {
    /// A client of `endpoints`, over HTTPS only when `tls` is set.
    pub fn new(endpoints: &[String], tls: Option<&ClientConfig>) -> Self {
        Self {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect(),
            http: http_client(tls),
        }
    }

    /// Posts `body` to `path` on each endpoint in turn until one answers.
    async fn call(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let mut last_error = None;
        for endpoint in &self.endpoints {
            let request = http::Request::post(format!("{endpoint}{path}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::from(body.to_string()))?;
            let answer = tokio::time::timeout(CALL_TIMEOUT, async {
                let response = self.http.request(request).await?;
                let status = response.status();
                let bytes = response.into_body().collect().await?.to_bytes();
                anyhow::Ok((status, bytes))
            })
            .await;
            match answer {
                Ok(Ok((status, bytes))) if status.is_success() => {
                    return serde_json::from_slice(&bytes)
                        .with_context(|| format!("etcd {endpoint}{path} answered no JSON"));
                }
                Ok(Ok((status, bytes))) => {
                    last_error = Some(anyhow::anyhow!(
                        "etcd {endpoint}{path} answered {status}: {}",
                        String::from_utf8_lossy(&bytes)
                    ));
                }
                Ok(Err(e)) => last_error = Some(e.context(format!("etcd {endpoint} unreachable"))),
                Err(_) => {
                    last_error = Some(anyhow::anyhow!("etcd {endpoint} did not answer in time"))
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no etcd endpoint configured")))
    }

    /// A new lease of `ttl`; its id.
    pub async fn grant(&self, ttl: Duration) -> anyhow::Result<i64> {
        let answer = self
            .call(
                "/v3/lease/grant",
                json!({ "TTL": ttl.as_secs().to_string() }),
            )
            .await?;
        match answer.get("ID").and_then(int) {
            Some(id) => Ok(id),
            None => bail!("etcd granted no lease: {answer}"),
        }
    }

    /// Renews a lease; false when it no longer exists (it expired).
    pub async fn keep_alive(&self, lease: i64) -> anyhow::Result<bool> {
        let answer = self
            .call("/v3/lease/keepalive", json!({ "ID": lease.to_string() }))
            .await?;
        let ttl = answer
            .get("result")
            .and_then(|r| r.get("TTL"))
            .and_then(int)
            .unwrap_or(0);
        Ok(ttl > 0)
    }

    /// Sets `key` to `value`, bound to `lease` (it goes when the lease does).
    pub async fn put(&self, key: &str, value: &[u8], lease: i64) -> anyhow::Result<()> {
        self.call(
            "/v3/kv/put",
            json!({ "key": B64.encode(key), "value": B64.encode(value), "lease": lease.to_string() }),
        )
        .await?;
        Ok(())
    }

    /// Sets `key` to `value` unless it exists; the value it then holds.
    pub async fn put_if_absent(&self, key: &str, value: &[u8]) -> anyhow::Result<Vec<u8>> {
        let answer = self.create(key, value, None).await?;
        if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
            return Ok(value.to_vec());
        }
        let kvs = answer
            .pointer("/responses/0/response_range/kvs")
            .cloned()
            .unwrap_or(Value::Null);
        let kvs: Vec<RawKeyValue> = serde_json::from_value(kvs).unwrap_or_default();
        match kvs.first() {
            Some(kv) => Ok(B64.decode(&kv.value)?),
            None => bail!("etcd neither created nor returned {key}"),
        }
    }

    /// Creates `key` with `value` under `lease` unless it exists: the revision it was created
    /// at, or none when it existed.
    pub async fn create_leased(
        &self,
        key: &str,
        value: &[u8],
        lease: i64,
    ) -> anyhow::Result<Option<i64>> {
        let answer = self.create(key, value, Some(lease)).await?;
        if answer.get("succeeded").and_then(Value::as_bool) != Some(true) {
            return Ok(None);
        }
        match answer.pointer("/header/revision").and_then(int) {
            Some(revision) => Ok(Some(revision)),
            None => bail!("etcd created {key} at no revision: {answer}"),
        }
    }

    /// The transaction that puts `key` (under `lease`, if any) unless it exists, and reads it
    /// when it does: etcd's answer.
    async fn create(&self, key: &str, value: &[u8], lease: Option<i64>) -> anyhow::Result<Value> {
        let key64 = B64.encode(key);
        let mut put = json!({ "key": key64, "value": B64.encode(value) });
        if let Some(lease) = lease {
            put["lease"] = lease.to_string().into();
        }
        self.call(
            "/v3/kv/txn",
            json!({
                "compare": [{ "key": key64, "target": "CREATE", "result": "EQUAL", "create_revision": "0" }],
                "success": [{ "request_put": put }],
                "failure": [{ "request_range": { "key": key64 } }],
            }),
        )
        .await
    }

    /// Makes `writes` at once if `fence` is the key created at revision `created`, still: false
    /// (nothing written) when it is gone or was created again since.
    pub async fn fenced(
        &self,
        fence: &str,
        created: i64,
        writes: &[Write<'_>],
    ) -> anyhow::Result<bool> {
        let success: Vec<Value> = writes
            .iter()
            .map(|write| match write {
                Write::Put { key, value } => {
                    json!({ "request_put": { "key": B64.encode(key), "value": B64.encode(value) } })
                }
                Write::Delete { key } => {
                    json!({ "request_delete_range": { "key": B64.encode(key) } })
                }
            })
            .collect();
        let answer = self
            .call(
                "/v3/kv/txn",
                json!({
                    "compare": [{ "key": B64.encode(fence), "target": "CREATE", "result": "EQUAL", "create_revision": created.to_string() }],
                    "success": success,
                }),
            )
            .await?;
        Ok(answer.get("succeeded").and_then(Value::as_bool) == Some(true))
    }

    /// Ends a lease now: its keys go.
    pub async fn revoke(&self, lease: i64) -> anyhow::Result<()> {
        self.call("/v3/lease/revoke", json!({ "ID": lease.to_string() }))
            .await?;
        Ok(())
    }

    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.call("/v3/kv/deleterange", json!({ "key": B64.encode(key) }))
            .await?;
        Ok(())
    }

    /// Every key under `prefix`, and the store's revision it was read at.
    pub async fn list(&self, prefix: &str) -> anyhow::Result<(i64, Vec<KeyValue>)> {
        let mut end = prefix.as_bytes().to_vec();
        // the range end of a prefix: its last byte plus one ('/' + 1 = '0')
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let answer = self
            .call(
                "/v3/kv/range",
                json!({ "key": B64.encode(prefix), "range_end": B64.encode(&end) }),
            )
            .await?;
        let revision = answer
            .pointer("/header/revision")
            .and_then(int)
            .unwrap_or(0);
        let kvs: Vec<RawKeyValue> =
            serde_json::from_value(answer.get("kvs").cloned().unwrap_or(Value::Null))
                .unwrap_or_default();
        let mut listed = Vec::with_capacity(kvs.len());
        for kv in kvs {
            listed.push(KeyValue {
                key: String::from_utf8(B64.decode(&kv.key)?)?,
                value: B64.decode(&kv.value)?,
            });
        }
        Ok((revision, listed))
    }
}
