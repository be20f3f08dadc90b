//! baton's data plane: a reverse proxy whose routes change by atomic swap.
//!
//! - [`router`]: Host header to service, and each service's live pool. The
//!   switch happens in [`Service::switch`].
//! - [`target`]: targets and pools, with the in-flight counts drains rely on.
//! - `canary`: a candidate's share of the traffic during a rollout, and
//!   how users stay on one version; `ask` is what a request says about it.
//! - [`stats`]: each pool's answers and latencies, for analysis and metrics.
//! - [`health_check`]: the proxy's own health checks, which gate the switch.
//! - [`drain`]: waiting for an old release's requests and WebSockets.
//! - `server`: listeners, and `client_socket` the sockets they accept.
//!   `http1` is the request path (HTTP/1.1 from client to target), `http2`
//!   puts HTTP/2 clients on it, `forward` holds what both share, `tunnel`
//!   relays upgraded connections. `epoll` is the workers' own epoll sets,
//!   where parked connections and tunnels wait outside tokio's driver.

mod ask;
mod canary;
mod client_socket;
pub mod drain;
mod epoll;
mod forward;
mod forwarded;
pub mod health_check;
mod http1;
mod http2;
mod preview;
pub mod router;
mod server;
pub mod stats;
pub mod target;
mod tunnel;
mod worker;
mod ws_frames;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use canary::Canary;
pub use drain::{drain, DrainReport};
pub use forward::Timeouts;
pub use health_check::{HealthCheck, Prober};
pub use preview::Preview;
pub use router::{HostTable, NoRoute, Router, Service};
pub use server::defer_accept;
pub use target::{Pool, Target};

use forward::{Forwarder, Routing};
use server::{deepen_backlog, Listener};
use worker::Worker;

/// The proxy: its workers, the route table they read, and the health checker.
pub struct Proxy {
    router: Arc<Router>,
    workers: Vec<Worker>,
    /// Serves preview routes, on the control plane's runtime.
    preview_forwarder: Arc<Forwarder>,
    prober: Prober,
    stop: CancellationToken,
}

impl Proxy {
    /// A proxy with `workers` data-plane threads (at least one). Call it
    /// within the control plane's tokio runtime, which serves previews.
    pub fn new(timeouts: Timeouts, workers: usize) -> io::Result<Self> {
        let stop = CancellationToken::new();
        let workers = (0..workers.max(1))
            .map(|i| Worker::spawn(i, timeouts, stop.clone()))
            .collect::<io::Result<Vec<_>>>()?;
        let preview_forwarder = Arc::new(Forwarder::new(timeouts)?);
        preview_forwarder.spawn_sweeps();
        Ok(Self {
            router: Arc::new(Router::default()),
            workers,
            preview_forwarder,
            prober: Prober::default(),
            stop,
        })
    }

    /// Serves a bound listener on every worker; returns its address. The
    /// workers share the one socket (and its accept queue), so it can be
    /// handed over to another process as it is. Its backlog is deepened
    /// here; deferring its accepts ([`defer_accept`]) is the caller's choice.
    pub fn serve(&self, listener: std::net::TcpListener) -> io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        deepen_backlog(&listener)?;
        for worker in &self.workers {
            let socket = listener.try_clone()?;
            let serve = Listener {
                forwarder: worker.forwarder.clone(),
                routing: Routing::Hosts(self.router.clone()),
            };
            let stop = self.stop.clone();
            worker.handle.spawn(serve.run(socket, stop));
        }
        Ok(addr)
    }

    /// Tasks alive on the data-plane workers: listeners, sweeps, and client
    /// connections that hold one (busy ones, and idle ones not parked).
    pub fn tasks(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.handle.metrics().num_alive_tasks())
            .sum()
    }

    /// Client connections open on the main listeners.
    pub fn client_connections(&self) -> usize {
        self.workers
            .iter()
            .map(|w| {
                w.forwarder
                    .open_clients
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum()
    }

    /// The route table the listeners read.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The client health checks use.
    pub fn prober(&self) -> &Prober {
        &self.prober
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
