//! Strangers cost nothing and everyone's work is bounded, on the real binary: keyless exports,
//! a flood of maximum-size exports (peak RSS measured), timeouts and limits on every listener,
//! and shutdown with stalled clients.

use crate::common;

use crate::common::harness::raw_grpc;

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{
    Served, Setup, serve, sigterm, start_with, total, wait_for_clean_exit, wait_ready,
};
use common::{PATIENCE, request_of};
use logbridge::workload::Workload;
use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic::Code;

const MIB: u64 = 1024 * 1024;

async fn grpc_channel(served: &Served) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", served.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// An encoded export of `bytes` bytes of empty LogRecords: millions of records that decode to
/// gigabytes, and compress to kilobytes.
fn empty_records(bytes: usize) -> Bytes {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let field = |number: u32, payload: &[u8]| {
        let mut out = Vec::with_capacity(payload.len() + 12);
        encode_key(number, WireType::LengthDelimited, &mut out);
        encode_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    };
    // ScopeLogs.log_records (2): an empty LogRecord is two bytes
    let scope_logs = [0x12u8, 0x00].repeat(bytes / 2);
    // ResourceLogs.scope_logs (2), ExportLogsServiceRequest.resource_logs (1)
    field(1, &field(2, &field(2, &scope_logs))).into()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_exports_are_refused_before_their_bodies_are_decompressed() {
    let Setup {
        dir: _dir,
        config: _,
        secret: _,
        served,
    } = start_with("", "").await;
    let channel = grpc_channel(&served).await;
    let body = empty_records(15 * MIB as usize);
    let keyless = |body: Bytes| {
        let exports: Vec<_> = (0..4)
            .map(|_| {
                let (channel, body) = (channel.clone(), body.clone());
                tokio::spawn(async move { raw_grpc::export_with(channel, None, body, true).await })
            })
            .collect();
        async move {
            for export in exports {
                let status = export.await.unwrap().unwrap_err();
                assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                assert_eq!(
                    status.message(),
                    "missing API key: send Authorization: Bearer <key>"
                );
            }
        }
    };
    // and four over HTTP, with a key nobody has
    let client = common::client();
    let keyless_http = |body: Vec<u8>| {
        let exports: Vec<_> = (0..4)
            .map(|_| {
                client
                    .post(format!("http://{}/v1/logs", served.http))
                    .bearer_auth("lb_not-a-key")
                    .header("content-type", "application/x-protobuf")
                    .header("content-encoding", "gzip")
                    .body(body.clone())
                    .send()
            })
            .collect();
        async move {
            for export in exports {
                assert_eq!(export.await.unwrap().status(), 401);
            }
        }
    };
    // the same traffic with tiny bodies first: what serving four requests at once costs anyway
    keyless(empty_records(64)).await;
    keyless_http(gzip(&empty_records(64))).await;
    let before = served.peak_rss();

    // four at once over gRPC, 15 MiB decoded each, a few KB on the wire
    keyless(body.clone()).await;
    // and over HTTP, whose refusal reads and drops the body so that the client sees it
    let compressed = gzip(&body);
    keyless_http(compressed.clone()).await;
    let after = served.peak_rss();
    eprintln!(
        "keyless: peak RSS {:.1} MiB before, {:.1} MiB after 8 keyless exports of 15 MiB decoded \
         ({} bytes compressed)",
        before as f64 / MIB as f64,
        after as f64 / MIB as f64,
        compressed.len()
    );
    // none of the eight was ever held decoded: one alone would take 15 MiB. What is left is
    // reading and dropping the HTTP bodies (72 KB each) so that their clients see the 401, which
    // costs the allocator 2 to 8 MiB of fresh pages, as the machine's load has it
    assert!(
        after - before < 15 * MIB,
        "keyless exports raised peak RSS by {} KiB",
        (after - before) / 1024
    );
}

/// One export of just under `bytes` bytes of workload records, without `user.id` (the key's
/// user applies); the number of records in it.
fn max_size_export(bytes: usize) -> (Bytes, usize) {
    let mut records = Vec::new();
    let mut size = 0;
    for (i, activity) in Workload::new(9).enumerate() {
        let mut record = activity.to_log_record(1_000 + i as u64);
        record.attributes.retain(|kv| kv.key != "user.id");
        size += record.encoded_len() + 4;
        if size > bytes {
            break;
        }
        records.push(record);
    }
    let count = records.len();
    let encoded = request_of(records).encode_to_vec();
    assert!(encoded.len() <= bytes);
    (encoded.into(), count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_maximum_size_exports_stays_within_the_memory_bound() {
    // the documented bound: writer memory + in-flight budget + 128 MiB for everything else (the
    // statistics cache's 48 MiB, the runtime, connections, the allocator's slack)
    let writer_mb = 64;
    let inflight = 256 * MIB;
    let bound = writer_mb * MIB + inflight + 128 * MIB;
    let Setup {
        dir: _dir,
        config: _,
        secret,
        served,
    } = start_with(
        &format!("commit_interval_ms = 1000\nwriter_memory_mb = {writer_mb}"),
        "[server]\nbody_read_timeout_ms = 60000\n",
    )
    .await;
    let (body, records) = max_size_export(16 * MIB as usize - 64);
    let baseline = served.peak_rss();

    // /healthz and /logs answer throughout (each within the patience: how fast is a figure,
    // printed below, not a contract)
    let flooding = Arc::new(AtomicBool::new(true));
    let probe = {
        let (api, secret, flooding) = (served.api.clone(), secret.clone(), flooding.clone());
        tokio::spawn(async move {
            let client = common::client();
            let mut slowest = Duration::ZERO;
            while flooding.load(Ordering::Relaxed) {
                for path in ["healthz", "logs?limit=5"] {
                    let started = Instant::now();
                    let request = client
                        .get(format!("http://{api}/{path}"))
                        .bearer_auth(secret.expose())
                        .send();
                    let response = tokio::time::timeout(PATIENCE, request)
                        .await
                        .unwrap_or_else(|_| panic!("/{path} unanswered during the flood"))
                        .unwrap();
                    assert_eq!(response.status(), 200, "{path}");
                    slowest = slowest.max(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            slowest
        })
    };

    // 32 clients, each sending two maximum-size exports back to back, without backing off
    let channel = grpc_channel(&served).await;
    let authorization = format!("Bearer {}", secret.expose());
    let mut clients = Vec::new();
    for n in 0..32 {
        let (channel, body, authorization) = (channel.clone(), body.clone(), authorization.clone());
        let http = format!("http://{}/v1/logs", served.http);
        clients.push(tokio::spawn(async move {
            // an export of 16 MiB may wait long on a loaded machine: the server's 60 s body
            // timeout bounds it, and this far past it the client gives up
            let http_client = common::harness::plain_http()
                .read_timeout(Duration::from_secs(180))
                .build()
                .unwrap();
            let mut outcomes = Vec::new();
            for _ in 0..2 {
                let accepted = if n % 2 == 0 {
                    match raw_grpc::export_with(
                        channel.clone(),
                        Some(&authorization),
                        body.clone(),
                        false,
                    )
                    .await
                    {
                        Ok(_) => true,
                        Err(status) => {
                            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                            false
                        }
                    }
                } else {
                    let response = http_client
                        .post(&http)
                        .header("authorization", &authorization)
                        .header("content-type", "application/x-protobuf")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    match response.status().as_u16() {
                        200 => true,
                        503 => {
                            assert_eq!(response.headers()["retry-after"], "1");
                            false
                        }
                        other => panic!("unexpected status {other}"),
                    }
                };
                outcomes.push(accepted);
            }
            outcomes
        }));
    }
    let mut accepted = 0u64;
    let mut refused = 0u64;
    for client in clients {
        for outcome in client.await.unwrap() {
            if outcome {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
    }
    flooding.store(false, Ordering::Relaxed);
    let slowest = probe.await.unwrap();
    let peak = served.peak_rss();
    eprintln!(
        "flood: {accepted} exports of {records} records accepted, {refused} refused; peak RSS \
         {:.0} MiB (baseline {:.0} MiB, bound {:.0} MiB); slowest /healthz or /logs {slowest:?}",
        peak as f64 / MIB as f64,
        baseline as f64 / MIB as f64,
        bound as f64 / MIB as f64,
    );
    assert!(accepted > 0 && refused > 0);
    assert!(peak <= bound, "peak RSS {} MiB over the bound", peak / MIB);
    // every accepted export is stored whole, and once: the same records sent again are retries
    let deadline = Instant::now() + PATIENCE;
    while total(&served.api, &secret).await < records as u64 {
        assert!(
            Instant::now() < deadline,
            "accepted exports never became visible"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(total(&served.api, &secret).await, records as u64);
    let duplicates = common::client()
        .get(format!("http://{}/metrics", served.api))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .lines()
        .find_map(|line| {
            line.strip_prefix("logbridge_records_duplicate_total ")?
                .parse::<u64>()
                .ok()
        })
        .expect("logbridge_records_duplicate_total in /metrics");
    assert_eq!(duplicates, (accepted - 1) * records as u64);
}

/// Reads from `stream` until the server closes it, for the patience at most; how long that took.
async fn time_to_close(stream: &mut TcpStream, since: Instant) -> Duration {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept the connection open"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_dropped_after_the_header_timeout_on_every_listener() {
    let Setup {
        dir: _dir,
        config: _,
        secret: _,
        served,
    } = start_with("", "[server]\nheader_read_timeout_ms = 1000\n").await;
    let cases = [
        ("api", served.api.clone(), &b"GET /healthz HT"[..]),
        ("otlp http", served.http.clone(), &b"POST /v1/lo"[..]),
        ("otlp grpc", served.grpc.clone(), &b"PRI * HTTP/2.0\r\n"[..]),
        ("api, nothing sent", served.api.clone(), &b""[..]),
        ("otlp grpc, nothing sent", served.grpc.clone(), &b""[..]),
    ];
    for (name, address, sent) in cases {
        let started = Instant::now();
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream.write_all(sent).await.unwrap();
        // closed within the patience (or the test fails), and no sooner than the timeout
        let took = time_to_close(&mut stream, started).await;
        assert!(
            took >= Duration::from_millis(900),
            "{name}: closed after {took:?}, before the 1 s header timeout"
        );
    }
    // a kept-alive HTTP/1.1 connection waiting for its next request closes after it too
    let mut stream = TcpStream::connect(&served.api).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let took = time_to_close(&mut stream, started).await;
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_is_a_timeout_on_both_transports() {
    let Setup {
        dir: _dir,
        config: _,
        secret,
        served,
    } = start_with("", "[server]\nbody_read_timeout_ms = 1000\n").await;

    let mut stream = TcpStream::connect(&served.http).await.unwrap();
    let head = format!(
        "POST /v1/logs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"resourceLo",
        secret.expose()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer}"
    );
    assert!(
        answer.ends_with(r#"{"code":4,"message":"the request body did not arrive within 1s"}"#),
        "{answer}"
    );

    let tcp = TcpStream::connect(&served.grpc).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{}{}", served.grpc, raw_grpc::EXPORT_PATH))
        .header("content-type", "application/grpc")
        .header("authorization", format!("Bearer {}", secret.expose()))
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    // a message of 100 bytes announced, 3 sent
    body.send_data(Bytes::from_static(&[0, 0, 0, 0, 100, 1, 2, 3]), false)
        .unwrap();
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .expect("an answer")
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "4");
    assert_eq!(
        response.headers()["grpc-message"],
        "the%20request%20body%20did%20not%20arrive%20within%201s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_are_limited_kept_alive_and_closed_when_idle() {
    let Setup {
        dir: _dir,
        config: _,
        secret: _,
        served,
    } = start_with(
        "",
        "[server]\nidle_timeout_ms = 1000\nmax_concurrent_streams = 3\n",
    )
    .await;
    let tcp = TcpStream::connect(&served.grpc).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!(
        "http://{}/grpc.health.v1.Health/Check",
        served.grpc
    ))
    .header("content-type", "application/grpc")
    .body(())
    .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "12", "UNIMPLEMENTED");
    assert_eq!(client.current_max_send_streams(), 3);
    // no request for the idle timeout: the server says goodbye
    let idle_since = Instant::now();
    tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the idle connection is closed")
        .unwrap()
        .unwrap();
    assert!(idle_since.elapsed() >= Duration::from_millis(900));
}

/// An HTTP/2 frame header: length, type, flags, stream.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let Setup {
        dir: _dir,
        config: _,
        secret: _,
        served,
    } = start_with(
        "",
        "[server]\nhttp2_keepalive_interval_ms = 500\nhttp2_keepalive_timeout_ms = 500\n",
    )
    .await;
    let mut stream = TcpStream::connect(&served.grpc).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    // GET / on stream 1, headers from HPACK's static table: :method GET, :scheme http, :path /,
    // and :authority "a"
    hello.extend(frame(0x1, 0x5, 1, &[0x82, 0x86, 0x84, 0x41, 0x01, b'a']));
    stream.write_all(&hello).await.unwrap();
    // read frames, answering nothing: not the server's SETTINGS, not its PINGs
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut pings = 0;
    let mut buffered = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout_at(deadline, stream.read(&mut buf))
            .await
            .expect("the server drops a peer that does not answer its pings, within the patience");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => buffered.extend_from_slice(&buf[..n]),
        }
        while buffered.len() >= 9 {
            let len = (usize::from(buffered[0]) << 16)
                | (usize::from(buffered[1]) << 8)
                | usize::from(buffered[2]);
            if buffered.len() < 9 + len {
                break;
            }
            if buffered[3] == 0x6 && buffered[4] & 0x1 == 0 {
                pings += 1;
            }
            buffered.drain(..9 + len);
        }
    }
    assert!(pings >= 1, "no PING before the server hung up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_wait_until_one_closes() {
    let Setup {
        dir: _dir,
        config: _,
        secret: _,
        served,
    } = start_with(
        "",
        "[server]\nmax_connections = 2\nheader_read_timeout_ms = 30000\n",
    )
    .await;
    let mut first = TcpStream::connect(&served.api).await.unwrap();
    first.write_all(b"GET /heal").await.unwrap();
    let mut second = TcpStream::connect(&served.api).await.unwrap();
    second.write_all(b"GET /heal").await.unwrap();
    let client = common::harness::plain_http()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let waited = client
        .get(format!("http://{}/healthz", served.api))
        .send()
        .await;
    assert!(
        waited.as_ref().is_err_and(|e| e.is_timeout()),
        "served past the cap: {waited:?}"
    );
    drop(first);
    second
        .write_all(b"thz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    tokio::time::timeout(PATIENCE, second.read_exact(&mut answer))
        .await
        .expect("the waiting connection is served once one closes")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200");
    let response = common::client()
        .get(format!("http://{}/healthz", served.api))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_stalled_clients_on_every_listener_drains_and_exits_zero() {
    let Setup {
        dir: _dir,
        config,
        secret,
        mut served,
    } = start_with(
        "commit_interval_ms = 60000",
        // stalled clients would hold the drain for the header timeout, far past the patience
        "[server]\ndrain_timeout_ms = 2000\nheader_read_timeout_ms = 600000\n",
    )
    .await;
    let mut stalled = Vec::new();
    for (address, sent) in [
        (&served.api, &b"GET /logs HT"[..]),
        (&served.http, &b"POST /v1/lo"[..]),
        (&served.grpc, &b"PRI * HTTP/2.0\r\n"[..]),
    ] {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(sent).await.unwrap();
        stalled.push(stream);
    }
    // an export in flight: its body's second half comes after SIGTERM
    let body = serde_json::to_vec(
        &serde_json::json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [{
            "timeUnixNano": "1773134142000000000",
            "body": {"stringValue": "sent during the drain"},
            "attributes": [{"key": "activity.log_type", "value": {"stringValue": "tool_call"}}]
        }]}]}]}),
    )
    .unwrap();
    let mut in_flight = TcpStream::connect(&served.http).await.unwrap();
    let head = format!(
        "POST /v1/logs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\nexpect: 100-continue\r\n\r\n",
        secret.expose(),
        body.len()
    );
    in_flight.write_all(head.as_bytes()).await.unwrap();
    // the server asks for the body once the receiver reads it: the export is in flight
    let mut go_on = [0u8; 25];
    tokio::time::timeout(PATIENCE, in_flight.read_exact(&mut go_on))
        .await
        .expect("100 Continue within the patience")
        .unwrap();
    assert_eq!(&go_on, b"HTTP/1.1 100 Continue\r\n\r\n");
    in_flight.write_all(&body[..10]).await.unwrap();

    let signalled = Instant::now();
    sigterm(&served);
    in_flight.write_all(&body[10..]).await.unwrap();
    let mut answer = [0u8; 15];
    tokio::time::timeout(PATIENCE, in_flight.read_exact(&mut answer))
        .await
        .expect("the export in flight is answered during the drain")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200 OK");

    // a clean exit within the patience: the 2 s drain ends it, not the stalled clients
    let printed = wait_for_clean_exit(&mut served);
    let took = signalled.elapsed();
    eprintln!("shutdown with stalled clients on all three listeners took {took:?}");
    assert!(
        printed.iter().any(|l| l.contains("logbridge stopped")),
        "{printed:#?}"
    );
    // the stalled connections were dropped
    for mut stream in stalled {
        time_to_close(&mut stream, Instant::now()).await;
    }
    // the export answered during the drain was committed
    let restarted = serve(&config);
    wait_ready(&restarted.api).await;
    assert_eq!(total(&restarted.api, &secret).await, 1);
}
