//! TLS on all three listeners of the real binary: the OpenTelemetry SDK exporters (gRPC and
//! HTTP) with client certificates, an HTTPS client on the API, clean refusals of plaintext and
//! of clients without a certificate, and certificates reloaded when their files change.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::PATIENCE;
use common::harness::certs::Ca;
use common::process::{Served, serve, write_config_with, write_key};
use logbridge::auth::Secret;
use logbridge::emit::{EmitOptions, send};
use opentelemetry_otlp::{
    LogExporter, Protocol, WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _,
};

/// A TLS server: its CA, the files, and a client certificate from the client CA.
struct TlsServer {
    served: Served,
    dir: tempfile::TempDir,
    server_ca: Ca,
    client: (String, String),
    secret: Secret,
}

impl TlsServer {
    fn cert_file(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Serves with TLS on every listener, client certificates required on the OTLP ones.
async fn tls_server() -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (Ca::new("server CA"), Ca::new("client CA"));
    let (cert, key) = server_ca.issue(true);
    write(&dir.path().join("server.pem"), &cert);
    write(&dir.path().join("server.key"), &key);
    write(&dir.path().join("clients.pem"), &client_ca.pem);
    let tls = format!(
        "[tls]\ncert_file = \"{0}/server.pem\"\nkey_file = \"{0}/server.key\"\nclient_ca_file = \"{0}/clients.pem\"\n",
        dir.path().display()
    );
    let config = write_config_with(
        dir.path(),
        &dir.path().join("index"),
        "commit_interval_ms = 100",
        &tls,
    );
    let secret = Secret::generate();
    write_key(dir.path(), &secret);
    let served = serve(&config);
    assert!(
        served.printed.last().unwrap().contains("tls=true"),
        "{:?}",
        served.printed
    );
    TlsServer {
        served,
        dir,
        server_ca,
        client: client_ca.issue(false),
        secret,
    }
}

/// An HTTPS client that trusts `ca` only, with a client certificate if given.
fn https_client(ca: &str, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        let pem = format!("{cert}{key}");
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// The DER of the (first) certificate of `pem`.
fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("a PEM certificate")
        .to_vec()
}

/// An error and its sources, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A new TLS handshake with the API (a client of its own, trusting every CA of `cas`, that keeps
/// no connection): the certificate the server presented, with the total its `GET /logs` gave,
/// or the error.
async fn served_certificate(
    cas: &[&str],
    api: &str,
    secret: &Secret,
) -> Result<(Vec<u8>, u64), String> {
    let client = reqwest::Client::builder()
        .tls_certs_only(
            cas.iter()
                .map(|ca| reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()),
        )
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let port = api.rsplit(':').next().unwrap();
    let response = client
        .get(format!("https://localhost:{port}/logs?limit=1"))
        .bearer_auth(secret.expose())
        .send()
        .await
        .map_err(|e| chain(&e))?;
    let certificate = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("the handshake's certificate")
        .to_vec();
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    let total = body["data"]["total"]
        .as_u64()
        .ok_or_else(|| body.to_string())?;
    Ok((certificate, total))
}

/// Panics unless the server is still running.
fn assert_alive(server: &mut TlsServer) {
    let exit = server.served.child.try_wait().unwrap();
    assert!(exit.is_none(), "the server exited: {exit:?}");
}

/// `GET https://localhost:PORT/logs?limit=1` through `client`: the total, or the error.
async fn https_total(client: &reqwest::Client, api: &str, secret: &Secret) -> Result<u64, String> {
    let port = api.rsplit(':').next().unwrap();
    let response = client
        .get(format!("https://localhost:{port}/logs?limit=1"))
        .bearer_auth(secret.expose())
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    body["data"]["total"]
        .as_u64()
        .ok_or_else(|| body.to_string())
}

/// Polls `GET /logs` over HTTPS through `client` until the total is `expected`.
async fn wait_for_total(client: &reqwest::Client, server: &TlsServer, expected: u64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let total = https_total(client, &server.served.api, &server.secret).await;
        if total == Ok(expected) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the API never answered {expected} over TLS; last: {total:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn emit_options(secret: &Secret, count: usize) -> EmitOptions {
    EmitOptions {
        protocol: Protocol::Grpc,
        endpoint: None,
        key: Some(secret.expose().to_owned()),
        count,
        user: None,
        seed: 3,
        gzip: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporters_and_https_clients_work_over_tls_with_client_certificates() {
    let server = tls_server().await;
    let api = https_client(&server.server_ca.pem, None);
    wait_for_total(&api, &server, 0).await;
    let (cert, key) = &server.client;
    let grpc_port = server.served.grpc.rsplit(':').next().unwrap();
    let http_port = server.served.http.rsplit(':').next().unwrap().to_owned();

    // OTLP/gRPC through the SDK's tonic exporter
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            &server.server_ca.pem,
        ))
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .domain_name("localhost");
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        "authorization",
        format!("Bearer {}", server.secret.expose())
            .parse()
            .unwrap(),
    );
    let grpc = LogExporter::builder()
        .with_tonic()
        .with_endpoint(format!("https://localhost:{grpc_port}"))
        .with_tls_config(tls)
        .with_metadata(metadata)
        .build()
        .unwrap();
    send(grpc, &emit_options(&server.secret, 300))
        .await
        .unwrap();

    // OTLP/HTTP through the SDK's HTTP exporter, on a blocking client with the certificates
    let (ca, identity) = (server.server_ca.pem.clone(), format!("{cert}{key}"));
    let client = std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
            .identity(reqwest::Identity::from_pem(identity.as_bytes()).unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    })
    .join()
    .unwrap();
    let http = LogExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("https://localhost:{http_port}/v1/logs"))
        .with_http_client(client)
        .with_headers(
            [(
                "authorization".to_owned(),
                format!("Bearer {}", server.secret.expose()),
            )]
            .into(),
        )
        .build()
        .unwrap();
    let options = EmitOptions {
        protocol: Protocol::HttpBinary,
        ..emit_options(&server.secret, 200)
    };
    send(http, &options).await.unwrap();

    // the API over HTTPS, without a client certificate
    wait_for_total(&api, &server, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_and_clients_without_a_certificate_are_refused_cleanly() {
    let mut server = tls_server().await;
    // plaintext HTTP on the API: an error that says why
    let response = common::client()
        .get(format!("http://{}/logs", server.served.api))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["message"],
        "this port expects TLS: connect with https://"
    );
    // plaintext gRPC: FAILED_PRECONDITION (not worth a retry) with the same message
    let mut client = opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient::connect(
        format!("http://{}", server.served.grpc),
    )
    .await
    .unwrap();
    let status = client
        .export(common::authorized(
            common::request_of(vec![common::activity("tool_call", 1, "plain")]),
            &server.secret,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "this port expects TLS: connect with https://"
    );

    // TLS without a client certificate: the OTLP listeners refuse the handshake
    let anonymous = https_client(&server.server_ca.pem, None);
    let http_port = server.served.http.rsplit(':').next().unwrap().to_owned();
    let refused = anonymous
        .post(format!("https://localhost:{http_port}/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(Vec::new())
        .send()
        .await
        .unwrap_err();
    // TLS 1.3: the server's alert that a certificate was required, not a dropped connection
    let refusal = chain(&refused);
    assert!(
        refusal.contains("received fatal alert: CertificateRequired"),
        "{refusal}"
    );
    assert_alive(&mut server);
    // with one, the same request reaches the receiver (and is refused for its missing key)
    let identified = https_client(&server.server_ca.pem, Some(&server.client));
    let response = identified
        .post(format!("https://localhost:{http_port}/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(Vec::new())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let api = format!(
        "https://localhost:{}",
        server.served.api.rsplit(':').next().unwrap()
    );
    let metrics = anonymous
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("logbridge_tls_handshake_failures_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(failures >= 3.0, "{failures}");
    assert_alive(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_reloaded_when_their_files_change() {
    let mut server = tls_server().await;
    let old = https_client(&server.server_ca.pem, None);
    wait_for_total(&old, &server, 0).await;
    let old_certificate = der(&std::fs::read_to_string(server.cert_file()).unwrap());
    let new_ca = Ca::new("new server CA");
    let both = [server.server_ca.pem.as_str(), new_ca.pem.as_str()];
    let api = server.served.api.clone();

    // a key that does not parse: the reload fails (counted) and the current certificate stays
    write(
        &server.key_file(),
        "-----BEGIN PRIVATE KEY-----\nnot a key\n",
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let failures = https_metric(&old, &api, "logbridge_tls_reload_failures_total").await;
        if failures >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the broken key was never tried; reload failures: {failures}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // new handshakes (clients of their own, no pooled connection) get the old certificate
    for _ in 0..3 {
        let (served, total) = served_certificate(&both, &api, &server.secret)
            .await
            .expect("a handshake with the current certificate");
        assert!(served == old_certificate, "another certificate was served");
        assert_eq!(total, 0);
    }

    // a new certificate from another CA: new handshakes get it once it is loaded
    let (cert, key) = new_ca.issue(true);
    let new_certificate = der(&cert);
    write(&server.cert_file(), &cert);
    let written = Instant::now();
    write(&server.key_file(), &key);
    loop {
        let served = served_certificate(&both, &api, &server.secret).await;
        match &served {
            Ok((certificate, 0)) if *certificate == new_certificate => break,
            Ok((certificate, 0)) if *certificate == old_certificate => {}
            _ => panic!("neither certificate served, or not the API: {served:?}"),
        }
        assert!(
            written.elapsed() < PATIENCE,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "new handshakes got the new certificate {:?} after its files changed",
        written.elapsed()
    );
    // and keep getting it
    let (served, _) = served_certificate(&[&new_ca.pem], &api, &server.secret)
        .await
        .expect("a handshake trusting the new CA only");
    assert!(served == new_certificate);
    // a fresh client that trusts only the old CA no longer gets in: the certificate is refused
    let refused = served_certificate(&[&server.server_ca.pem], &api, &server.secret)
        .await
        .expect_err("a client of the old CA only is refused");
    assert!(
        refused.contains("invalid peer certificate: UnknownIssuer"),
        "{refused}"
    );
    assert_alive(&mut server);
}

/// A sample of `/metrics` over HTTPS through `client`; the test fails when it is not served.
async fn https_metric(client: &reqwest::Client, api: &str, sample: &str) -> f64 {
    let port = api.rsplit(':').next().unwrap();
    let text = client
        .get(format!("https://localhost:{port}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("/metrics has no {sample}:\n{text}"))
}
