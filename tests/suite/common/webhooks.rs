//! A webhook receiver in the test, and the check of what it gets against its signature.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac as _};
use serde_json::Value as Json;
use sha2::Sha256;
use tokio::sync::mpsc;

/// A webhook receiver on a free port: every request's headers and body, in order.
pub async fn receiver() -> (String, mpsc::UnboundedReceiver<(HeaderMap, Bytes)>) {
    use http_body_util::BodyExt as _;
    let (tx, rx) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await?.to_bytes();
                        let _ = tx.send((parts.headers, body));
                        Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (url, rx)
}

/// The secret the receiver checks signatures with.
pub const SECRET: &str = "s3cret-shared-with-the-receiver";

/// The next request the webhook receiver gets, within `patience`: its body checked against its
/// signature. `expected` names it when it does not come.
pub async fn next_signed(
    hooks: &mut mpsc::UnboundedReceiver<(HeaderMap, Bytes)>,
    patience: Duration,
    expected: &str,
) -> Json {
    let (headers, body) = tokio::time::timeout(patience, hooks.recv())
        .await
        .unwrap_or_else(|_| panic!("no {expected} webhook within {patience:?}"))
        .expect("the receiver runs");
    let signature = headers
        .get("logbridge-signature")
        .expect("a signature header")
        .to_str()
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        signature, expected,
        "the signature verifies with the shared secret"
    );
    serde_json::from_slice(&body).unwrap()
}
