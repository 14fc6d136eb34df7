//! A client that reads a response through a small TCP window, so that the server can send only
//! as fast as the test reads: what the socket's buffers hold stays small next to the response.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use logbridge::auth::Secret;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpSocket, TcpStream};

use super::PATIENCE;

/// The receive buffer asked for: the kernel keeps about twice this.
const WINDOW: u32 = 16 * 1024;

/// A connection to `api_url` (`http://host:port`) with a small receive buffer.
async fn connect(api_url: &str) -> TcpStream {
    let address = api_url
        .trim_start_matches("http://")
        .parse()
        .expect("a socket address");
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .set_recv_buffer_size(WINDOW)
        .expect("a receive buffer");
    socket.connect(address).await.expect("connects")
}

/// `GET /logs/export` of `key`'s logs on `api_url`, sent through a small window by a client that
/// then reads nothing unless the test does: the connection.
pub async fn stalled_export(api_url: &str, key: &Secret) -> TcpStream {
    let mut stream = connect(api_url).await;
    let request = format!(
        "GET /logs/export HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
        key.expose()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("the request is sent");
    stream
}

/// `GET {path}` on `api_url` with `key`, through a small window: the response, its body not
/// read yet.
pub async fn get(api_url: &str, path: &str, key: &Secret) -> http::Response<Incoming> {
    let stream = connect(api_url).await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 connection");
    // a connection that breaks shows as an error of the body
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, api_url.trim_start_matches("http://"))
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", key.expose()),
        )
        .body(Empty::<Bytes>::new())
        .expect("a request");
    tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("an answer within the patience")
        .expect("an answer")
}

/// What reading a body gave: its bytes, the error that ended it early, if one did, and when the
/// reader had taken the mark's bytes (see [`read_marking`]).
pub struct Read {
    pub bytes: Vec<u8>,
    pub error: Option<hyper::Error>,
    pub passed_mark: Option<Instant>,
}

/// Reads `body` to its end at about `bytes_per_second` (unlimited when `None`); every wait for a
/// frame has the patience as deadline.
pub async fn read(body: Incoming, bytes_per_second: Option<f64>) -> Read {
    read_marking(body, bytes_per_second, usize::MAX).await
}

/// [`read`], noting when the reader had taken `mark` bytes: the server cannot have sent more
/// than that plus what the buffers between them hold before then.
pub async fn read_marking(mut body: Incoming, bytes_per_second: Option<f64>, mark: usize) -> Read {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut passed_mark = None;
    loop {
        let frame = tokio::time::timeout(PATIENCE, body.frame())
            .await
            .expect("a frame, or the end, within the patience");
        match frame {
            None => {
                return Read {
                    bytes,
                    error: None,
                    passed_mark,
                };
            }
            Some(Err(error)) => {
                return Read {
                    bytes,
                    error: Some(error),
                    passed_mark,
                };
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
                if passed_mark.is_none() && bytes.len() >= mark {
                    passed_mark = Some(Instant::now());
                }
            }
        }
        if let Some(rate) = bytes_per_second {
            // the pace of a slow reader, not a wait for the server
            let due = started + Duration::from_secs_f64(bytes.len() as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
    }
}
