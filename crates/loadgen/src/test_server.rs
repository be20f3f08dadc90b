//! A tiny in-process HTTP server for the load client's tests.
//!
//! Tests need a backend whose answers they script and which they can kill
//! abruptly (every connection dropped) and bring back on the same port.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// A scripted answer.
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) version_header: Option<&'static str>,
    pub(crate) delay: Duration,
}

impl Reply {
    /// A 200 with `body`.
    pub(crate) fn ok(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            body: body.into(),
            version_header: None,
            delay: Duration::ZERO,
        }
    }

    /// A reply with `status` and `body`.
    pub(crate) fn status(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            ..Self::ok(body)
        }
    }
}

/// Decides the answer for the `n`th request (0-based, server-wide).
pub(crate) type Handler = Arc<dyn Fn(u64, &Request<Incoming>) -> Reply + Send + Sync>;

/// A running test server.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    answered: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Starts on a free port.
    pub(crate) async fn start(handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, handler)
    }

    /// Starts on a specific address, retrying while the old socket lingers.
    pub(crate) async fn start_at(addr: SocketAddr, handler: Handler) -> Self {
        for _ in 0..100 {
            if let Ok(listener) = TcpListener::bind(addr).await {
                return Self::serve(listener, handler);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("could not rebind {addr}");
    }

    /// Responses fully handed to hyper so far.
    pub(crate) fn answered(&self) -> u64 {
        self.answered.load(Ordering::SeqCst)
    }

    /// Kills the server and every connection at once, like a crash.
    pub(crate) async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }

    fn serve(listener: TcpListener, handler: Handler) -> Self {
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(accept_loop(listener, handler, Arc::clone(&answered)));
        Self {
            addr,
            answered,
            task,
        }
    }
}

/// Accepts connections; aborting this task drops the set, killing them all.
async fn accept_loop(listener: TcpListener, handler: Handler, answered: Arc<AtomicU64>) {
    let mut conns = JoinSet::new();
    let counter = Arc::new(AtomicU64::new(0));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = Arc::clone(&handler);
        let counter = Arc::clone(&counter);
        let answered = Arc::clone(&answered);
        let service = service_fn(move |req: Request<Incoming>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let reply = handler(n, &req);
            let answered = Arc::clone(&answered);
            async move {
                tokio::time::sleep(reply.delay).await;
                answered.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(to_response(reply))
            }
        });
        conns.spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while conns.try_join_next().is_some() {}
    }
}

fn to_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(reply.status);
    if let Some(version) = reply.version_header {
        builder = builder.header("x-app-version", version);
    }
    builder.body(Full::new(Bytes::from(reply.body))).unwrap()
}
