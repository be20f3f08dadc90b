//! Idle HTTP/1.1 connections to targets, one pool per worker.
//!
//! A pooled connection is a bare socket: no task, no buffer, nothing to wake.
//! Taking one is a `Vec::pop` behind an uncontended lock. Most recently used
//! first: the connection least likely to have been closed by the app's idle
//! timer. A connection the app closed while it sat here is readable (EOF), and
//! the runtime already knows it, so `take` skips it without a system call;
//! the race that remains (the app closing as the request goes out) is the
//! exchange's to retry (mechanism 3 of `where-requests-get-lost.md`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustc_hash::FxBuildHasher;
use tokio::net::TcpStream;

/// Idle connections kept per target and worker: enough for every client
/// connection of a busy worker to find one, so that load never turns into
/// connection churn (and TIME_WAIT sockets) toward the app.
const MAX_IDLE: usize = 8192;
/// The pool is swept this often, and connections unused for that long are
/// closed down to `KEEP_IDLE`: a burst may open many, a quiet service keeps few.
const SWEEP: Duration = Duration::from_secs(10);
const KEEP_IDLE: usize = 64;

/// One worker's idle connections to every target.
#[derive(Debug)]
pub(crate) struct Connections {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, FxBuildHasher>>,
    connect_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    since: Instant,
}

/// A connection to a target, and whether it served a request before.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) stream: TcpStream,
    /// It came from the pool: the app may close it as we use it.
    pub(crate) reused: bool,
}

impl Connections {
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(HashMap::default()),
            connect_timeout,
        }
    }

    /// An idle connection to `addr`, else a new one.
    pub(crate) async fn get(&self, addr: SocketAddr) -> Result<Upstream, String> {
        if let Some(stream) = self.take(addr) {
            return Ok(Upstream {
                stream,
                reused: true,
            });
        }
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        Ok(Upstream {
            stream,
            reused: false,
        })
    }

    /// Gives a connection back after a complete exchange.
    pub(crate) fn put(&self, addr: SocketAddr, stream: TcpStream) {
        let mut idle = self.lock();
        let conns = idle.entry(addr).or_default();
        if conns.len() < MAX_IDLE {
            conns.push(Idle {
                stream,
                since: Instant::now(),
            });
        }
    }

    fn take(&self, addr: SocketAddr) -> Option<TcpStream> {
        let mut idle = self.lock();
        let conns = idle.get_mut(&addr)?;
        while let Some(conn) = conns.pop() {
            if !closed_by_peer(&conn.stream) {
                return Some(conn.stream);
            }
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Idle>, FxBuildHasher>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes what the apps closed, and what a past burst left; runs on the
    /// worker's runtime for as long as it lives.
    pub(crate) async fn sweep(self: std::sync::Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP);
        loop {
            tick.tick().await;
            let mut idle = self.lock();
            idle.retain(|_, conns| {
                conns.retain(|c| !closed_by_peer(&c.stream));
                // Oldest first: `put` pushes, `take` pops.
                let stale = conns
                    .iter()
                    .take_while(|c| c.since.elapsed() >= SWEEP)
                    .count();
                conns.drain(..stale.min(conns.len().saturating_sub(KEEP_IDLE)));
                !conns.is_empty()
            });
        }
    }
}

/// An idle connection that became readable was closed (or written to, which
/// an idle HTTP/1.1 peer must not do): either way it cannot carry a request.
/// Reads the readiness the runtime already has; no system call.
fn closed_by_peer(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
    matches!(stream.poll_read_ready(&mut cx), Poll::Ready(_))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    #[tokio::test]
    async fn reuses_live_connections_and_skips_closed_ones() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Connections::new(Duration::from_secs(1));

        let first = pool.get(addr).await.unwrap();
        assert!(!first.reused);
        let (mut server_side, _) = listener.accept().await.unwrap();
        pool.put(addr, first.stream);
        let again = pool.get(addr).await.unwrap();
        assert!(again.reused, "a live idle connection is reused");
        pool.put(addr, again.stream);

        // The app closes the idle connection: it must not be handed out.
        server_side.shutdown().await.unwrap();
        drop(server_side);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = pool.get(addr).await.unwrap();
            if !got.reused {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a closed connection kept being handed out"
            );
            pool.put(addr, got.stream);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn an_unreachable_target_says_so() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let pool = Connections::new(Duration::from_secs(1));
        let err = pool.get(addr).await.unwrap_err();
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
