//! baton's data plane: a reverse proxy whose routes change by atomic swap.
//!
//! - [`router`]: Host header to service, and each service's live pool. The
//!   switch happens in [`Service::switch`].
//! - [`target`]: targets and pools, with the in-flight counts drains rely on.
//! - [`health_check`]: the proxy's own health checks, which gate the switch.
//! - [`drain`]: waiting for an old release's requests and WebSockets.
//! - `forward`, `server`, `tunnel`: the request path itself.

mod body;
pub mod drain;
mod forward;
pub mod health_check;
mod preview;
pub mod router;
mod server;
pub mod target;
mod tunnel;
mod ws_frames;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use body::ResponseBody;
pub use drain::{drain, DrainReport};
pub use forward::Timeouts;
pub use health_check::{HealthCheck, Prober};
pub use preview::Preview;
pub use router::{HostTable, Router, Service};
pub use target::{Pool, Target};

use forward::{Forwarder, Routing};
use server::Listener;

/// The proxy: listeners, the route table they read, and the shared clients.
pub struct Proxy {
    router: Arc<Router>,
    forwarder: Arc<Forwarder>,
    prober: Prober,
    timeouts: Timeouts,
    stop: CancellationToken,
}

impl Proxy {
    pub fn new(timeouts: Timeouts) -> Self {
        Self {
            router: Arc::new(Router::default()),
            forwarder: Arc::new(Forwarder::new(timeouts)),
            prober: Prober::default(),
            timeouts,
            stop: CancellationToken::new(),
        }
    }

    /// Binds `addr` and serves it in the background; returns the bound address.
    pub async fn listen(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        self.serve(listener)
    }

    /// Serves an already bound listener (one inherited from a previous process, say).
    pub fn serve(&self, listener: TcpListener) -> io::Result<SocketAddr> {
        let addr = listener.local_addr()?;
        let serve = Listener {
            forwarder: self.forwarder.clone(),
            routing: Routing::Hosts(self.router.clone()),
            idle_timeout: self.timeouts.idle,
        };
        tokio::spawn(serve.run(listener, self.stop.clone()));
        Ok(addr)
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
