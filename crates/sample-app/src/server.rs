//! Listener, per-connection HTTP/1.1 serving and graceful shutdown.
//!
//! A blue-green switch is only zero-downtime if the old colour drains
//! properly, so the sample app models a well-behaved service: on shutdown it
//! stops accepting, closes idle keep-alive connections, lets in-flight
//! requests finish (bounded by a drain timeout) and tells WebSocket peers it
//! is going away.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::app::{self, App};
use crate::options::Options;

/// Pause after a failed `accept` (e.g. out of file descriptors) before retrying.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A bound, not yet serving, sample app.
///
/// Binding and serving are split so callers (and tests) can learn the real
/// address when asking for port 0 before any request arrives.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    app: Arc<App>,
    drain: watch::Sender<bool>,
    drain_timeout: Duration,
}

impl Server {
    /// Binds `listen_host:port` and prepares the app state.
    pub async fn bind(opts: &Options) -> anyhow::Result<Self> {
        let addr = format!("{}:{}", opts.listen_host, opts.port);
        let listener = TcpListener::bind(&addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local_addr = listener.local_addr().context("reading the bound address")?;
        let (drain, drain_rx) = watch::channel(false);
        let app = Arc::new(App::new(opts, drain_rx)?);
        Ok(Self {
            listener,
            local_addr,
            app,
            drain,
            drain_timeout: opts.drain_timeout,
        })
    }

    /// The address actually bound (useful when the port was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then drains and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            listener,
            app,
            drain,
            drain_timeout,
            ..
        } = self;
        accept_until(&listener, &app, shutdown).await;
        drop(listener);
        drop(app);
        drain_connections(drain, drain_timeout).await;
        Ok(())
    }
}

/// Accepts connections and spawns a task per connection until `shutdown`.
async fn accept_until(listener: &TcpListener, app: &Arc<App>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    tokio::spawn(serve_connection(stream, Arc::clone(app)));
                }
                Err(e) => {
                    eprintln!("sample-app: accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Signals every connection to wind down and waits (bounded) until all have.
async fn drain_connections(drain: watch::Sender<bool>, timeout: Duration) {
    drain.send_replace(true);
    // Every connection, request and WebSocket session holds an `App`, which
    // holds a receiver; `closed` resolves once the last of them is gone.
    if tokio::time::timeout(timeout, drain.closed()).await.is_err() {
        eprintln!(
            "sample-app: drain timeout ({timeout:?}) reached with {} connection(s) still open",
            drain.receiver_count()
        );
    }
}

/// Serves one TCP connection with HTTP/1.1 keep-alive and upgrades.
async fn serve_connection(stream: TcpStream, app: Arc<App>) {
    let _ = stream.set_nodelay(true);
    let draining = app.draining();
    let service_app = Arc::clone(&app);
    let service = service_fn(move |req| app::handle(Arc::clone(&service_app), req));
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = draining => {
            // Idle connections close now; busy ones after their response.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    drop(app);
    if let Err(e) = result {
        report_connection_error(&e);
    }
}

/// Logs connection errors that are not just a client going away.
fn report_connection_error(err: &hyper::Error) {
    if err.is_incomplete_message() || err.is_canceled() || is_reset(err) {
        return;
    }
    eprintln!("sample-app: connection error: {err}");
}

/// Whether the root cause is the peer resetting or closing the socket.
fn is_reset(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            );
        }
        source = cause.source();
    }
    false
}
