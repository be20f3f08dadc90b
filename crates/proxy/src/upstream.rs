//! Connections to targets: one pool per worker, HTTP/1.1 keep-alive.
//!
//! Each worker keeps its own idle connections, so checking one out is a
//! `Vec::pop` behind an uncontended lock, and every connection is driven by
//! the worker that uses it. Most recently used first: the connection least
//! likely to have been closed by the app's idle timer.
//!
//! Requests lost to a connection the app closed at that instant (mechanism
//! 3 of `where-requests-get-lost.md`) are sent again: a request hyper did not
//! write is handed back and goes out on another connection; a bodiless
//! idempotent request sent on a connection that had idled long enough for the
//! app to close it is kept, and repeated once if no answer byte came.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{request, Method, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustc_hash::FxBuildHasher;
use tokio::net::TcpStream;

use crate::body::RequestBody;

/// Idle connections kept per target and worker: enough for every client
/// connection of a busy worker to find one, so that load never turns into
/// connection churn (and TIME_WAIT sockets) toward the app.
const MAX_IDLE: usize = 8192;
/// A pooled connection idle longer than this may be closed by the app as we
/// use it; a request sent on it keeps a copy of its head for one retry.
const RISKY_IDLE: Duration = Duration::from_millis(500);
/// Closed connections are swept from the pool this often, and connections
/// unused for that long are closed down to `KEEP_IDLE`: a burst may open many,
/// a quiet service keeps few.
const SWEEP: Duration = Duration::from_secs(10);
const KEEP_IDLE: usize = 64;

type Sender = SendRequest<RequestBody>;

/// One worker's connections to every target.
#[derive(Debug)]
pub(crate) struct Upstream {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, FxBuildHasher>>,
    connect_timeout: Duration,
    risky_idle: Duration,
}

#[derive(Debug)]
struct Idle {
    sender: Sender,
    since: Instant,
}

/// A connection lent to one request; goes back to the pool when the
/// response body is done (see [`crate::body::ResponseBody`]).
#[derive(Debug)]
pub(crate) struct Lease {
    upstream: Arc<Upstream>,
    addr: SocketAddr,
    sender: Sender,
}

impl Lease {
    /// The response is complete: the connection can serve another request.
    pub(crate) fn release(self) {
        self.upstream.put(self.addr, self.sender);
    }
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// Nothing was written (connect failed, say): the request comes back
    /// untouched and may go to another target.
    NotSent(Request<RequestBody>, String),
    /// The request was written and failed. `retry` holds its head when
    /// repeating it is safe.
    Failed {
        error: String,
        retry: Option<request::Parts>,
    },
}

impl Upstream {
    pub(crate) fn new(connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::default()),
            connect_timeout,
            risky_idle: RISKY_IDLE,
        })
    }

    /// Drops closed connections now and then; runs on the worker's runtime.
    pub(crate) async fn sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval(SWEEP);
        loop {
            tick.tick().await;
            let mut idle = self.lock();
            idle.retain(|_, conns| {
                conns.retain(|c| !c.sender.is_closed());
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Idle>, FxBuildHasher>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self, addr: SocketAddr) -> Option<Idle> {
        let mut idle = self.lock();
        let conns = idle.get_mut(&addr)?;
        while let Some(conn) = conns.pop() {
            if !conn.sender.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let conns = idle.entry(addr).or_default();
        if conns.len() < MAX_IDLE {
            conns.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// Sends `req` to `addr` on a pooled or new connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        loop {
            let (mut sender, risky) = match self.take(addr) {
                Some(idle) => (idle.sender, idle.since.elapsed() >= self.risky_idle),
                None => match self.connect(addr).await {
                    Ok(sender) => (sender, false),
                    Err(e) => return Err(SendError::NotSent(req, e)),
                },
            };
            if sender.ready().await.is_err() {
                continue;
            }
            let retry = if risky { retry_head(&req) } else { None };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        upstream: self.clone(),
                        addr,
                        sender,
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    // Not written: the connection was closing. Use another.
                    Some(unsent) => req = unsent,
                    None => {
                        return Err(SendError::Failed {
                            error: e.into_error().to_string(),
                            retry,
                        })
                    }
                },
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Sender, String> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake with {addr}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The head of a request that is safe to repeat: idempotent, no body.
fn retry_head(req: &Request<RequestBody>) -> Option<request::Parts> {
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    );
    if !idempotent || !http_body::Body::is_end_stream(req.body()) {
        return None;
    }
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    Some(head.into_parts().0)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A backend that answers the first request on each connection, then
    /// reads the next one and closes without answering: the app that closed
    /// a keep-alive connection just as the proxy reused it.
    async fn closing_backend() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    read_head(&mut conn).await;
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                    read_head(&mut conn).await;
                });
            }
        });
        addr
    }

    async fn read_head(conn: &mut TcpStream) {
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                _ => return,
            }
        }
    }

    fn request(method: Method, addr: SocketAddr) -> Request<RequestBody> {
        Request::builder()
            .method(method)
            .uri(format!("http://{addr}/"))
            .header("host", "backend")
            .body(RequestBody::Empty)
            .unwrap()
    }

    async fn first_request(up: &Arc<Upstream>, addr: SocketAddr) {
        let (resp, lease) = up.send(addr, request(Method::GET, addr)).await.unwrap();
        assert_eq!(resp.status(), 200);
        lease.release();
    }

    #[tokio::test]
    async fn a_reused_connection_that_dies_keeps_a_get_for_retry_but_not_a_post() {
        let addr = closing_backend().await;
        let mut up = Upstream::new(Duration::from_secs(1));
        Arc::get_mut(&mut up).unwrap().risky_idle = Duration::ZERO;

        first_request(&up, addr).await;
        match up.send(addr, request(Method::GET, addr)).await {
            Err(SendError::Failed {
                retry: Some(head), ..
            }) => assert_eq!(head.method, Method::GET),
            other => panic!("expected a retryable failure, got {other:?}"),
        }
        first_request(&up, addr).await;
        match up.send(addr, request(Method::POST, addr)).await {
            Err(SendError::Failed { retry: None, .. }) => {}
            other => panic!("a POST must not be repeated, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn connections_are_reused_and_unreachable_targets_hand_the_request_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    loop {
                        read_head(&mut conn).await;
                        if conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        let up = Upstream::new(Duration::from_secs(1));
        for _ in 0..5 {
            first_request(&up, addr).await;
        }
        assert_eq!(
            accepted.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one pooled connection"
        );

        let closed = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        match up.send(closed, request(Method::POST, closed)).await {
            Err(SendError::NotSent(req, _)) => assert_eq!(req.method(), Method::POST),
            other => panic!("expected the request back, got {other:?}"),
        }
    }
}
