//! A TCP proxy that can be cut: a network partition between two processes on loopback. While
//! cut, it forwards nothing either way and answers nothing, as a partitioned network does: the
//! connections stay open and silent (no reset), new ones are taken and left unanswered. Healed,
//! it forwards again on new connections; the connections of before the cut are closed, as the
//! peers' timeouts would have closed them. It can also be throttled: a slow link, for a transfer
//! that must take long.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A proxy to one address, running until dropped.
pub struct Blackhole {
    /// Where clients connect: `127.0.0.1:<port>`.
    pub addr: String,
    pub port: u16,
    /// The number of the current cut (odd: cut; even: healed).
    state: watch::Sender<u64>,
    link: Arc<Link>,
    task: tokio::task::JoinHandle<()>,
}

/// Where a proxy forwards to, and how fast.
struct Link {
    target: Mutex<String>,
    /// Bytes a second each connection forwards either way; 0 for no limit.
    bytes_per_second: AtomicU64,
}

impl Blackhole {
    /// Listens on `port` (0: one the system picks) and forwards to `target`.
    pub async fn start(port: u16, target: String) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("cannot listen on 127.0.0.1:{port}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let (state, watched) = watch::channel(0u64);
        let link = Arc::new(Link {
            target: Mutex::new(target),
            bytes_per_second: AtomicU64::new(0),
        });
        let shared = link.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(forward(client, shared.clone(), watched.clone()));
            }
        });
        Self {
            addr: format!("127.0.0.1:{port}"),
            port,
            state,
            link,
            task,
        }
    }

    /// Forwards new connections to `target` (a proxy started before what it fronts).
    pub fn set_target(&self, target: String) {
        *self.link.target.lock().unwrap() = target;
    }

    /// Forwards at most `bytes_per_second` either way on each connection, from now on; 0 for no
    /// limit.
    pub fn throttle(&self, bytes_per_second: u64) {
        self.link
            .bytes_per_second
            .store(bytes_per_second, Ordering::Relaxed);
    }

    /// Cuts: nothing passes any more.
    pub fn cut(&self) {
        self.state.send_modify(|n| {
            if *n % 2 == 0 {
                *n += 1;
            }
        });
    }

    /// Heals: new connections are forwarded again.
    pub fn heal(&self) {
        self.state.send_modify(|n| {
            if *n % 2 == 1 {
                *n += 1;
            }
        });
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards one connection while the proxy is healed; one taken while cut waits, silent, for
/// the heal and is then closed (its peer would have given it up).
async fn forward(mut client: TcpStream, link: Arc<Link>, mut state: watch::Receiver<u64>) {
    let born = *state.borrow_and_update();
    if born % 2 == 1 {
        let _ = state.wait_for(|n| *n != born).await;
        return;
    }
    let target = link.target.lock().unwrap().clone();
    let Ok(mut server) = TcpStream::connect(&target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    // a throttled link holds each read back as long as its bytes take at the pace
    let pace = |link: &Link| link.bytes_per_second.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            read = client_read.read(&mut up) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    slow_down(n, pace(&link)).await;
                    if server_write.write_all(&up[..n]).await.is_err() { return }
                }
            },
            read = server_read.read(&mut down) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    slow_down(n, pace(&link)).await;
                    if client_write.write_all(&down[..n]).await.is_err() { return }
                }
            },
            _ = state.changed() => {
                if *state.borrow() % 2 == 1 {
                    // cut: silent until healed, then gone
                    let cut = *state.borrow();
                    let _ = state.wait_for(|n| *n != cut).await;
                    return;
                }
            }
        }
    }
}

/// Waits as long as `bytes` take at `bytes_per_second` (0: not at all).
async fn slow_down(bytes: usize, bytes_per_second: u64) {
    if bytes_per_second > 0 {
        tokio::time::sleep(Duration::from_secs_f64(
            bytes as f64 / bytes_per_second as f64,
        ))
        .await;
    }
}
