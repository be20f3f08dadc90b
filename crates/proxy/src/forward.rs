//! What both request paths share: how a listener finds its pool
//! ([`Routing`]), the timeouts, and the per-worker [`Forwarder`] that holds
//! the connections to targets.

use std::sync::Arc;
use std::time::Duration;

use crate::forwarded::RequestIds;
use crate::http1::{Connections, IdleClients, Upstream};
use crate::router::{pick_from, NoRoute, Router};
use crate::target::{InFlight, Pool};

/// Targets tried per request: the first, and others while nothing was sent.
pub(crate) const ATTEMPTS: usize = 3;

/// A deadline that does not come (a timer not armed yet).
pub(crate) const FAR: Duration = Duration::from_secs(86_400 * 365);

/// How a listener finds the pool for a request.
#[derive(Debug, Clone)]
pub(crate) enum Routing {
    /// By Host header, through the live route table (the main listeners).
    Hosts(Arc<Router>),
    /// Always one pool (a candidate's preview route, for smoke tests).
    Fixed(Arc<Pool>),
}

impl Routing {
    /// Takes a target for a request to `host`.
    pub(crate) fn pick(&self, host: Option<&str>) -> Result<InFlight, NoRoute> {
        match self {
            Self::Fixed(pool) => pick_from(pool),
            Self::Hosts(router) => router.pick(host),
        }
    }
}

/// Timeouts of the request path.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
    pub idle: Duration,
}

/// One worker's side of the request path: its connections to targets (HTTP/1.1
/// toward every target, whatever the client spoke) and its client connections.
#[derive(Debug)]
pub(crate) struct Forwarder {
    pub(crate) connections: Arc<Connections>,
    /// HTTP/1.1 client connections, for the idle timeout.
    pub(crate) idle_clients: Arc<IdleClients>,
    pub(crate) timeouts: Timeouts,
    pub(crate) request_ids: RequestIds,
}

/// How an attempt to reach a request's target went.
pub(crate) enum Reached {
    Yes(Upstream),
    /// Unreachable; the hold moved to another target of the same pool.
    Moved(String),
    /// Unreachable, and no other target to try.
    No(String),
}

impl Forwarder {
    pub(crate) fn new(timeouts: Timeouts) -> Self {
        Self {
            connections: Arc::new(Connections::new(timeouts.connect)),
            idle_clients: Arc::new(IdleClients::new(timeouts.idle)),
            timeouts,
            request_ids: RequestIds::new(),
        }
    }

    /// A connection to the hold's target; when that cannot be reached, the
    /// hold moves to another target of the same pool for the next attempt.
    pub(crate) async fn reach(&self, hold: &mut InFlight) -> Reached {
        let addr = hold.target().addr();
        match self.connections.get(addr).await {
            Ok(upstream) => Reached::Yes(upstream),
            Err(e) => {
                tracing::debug!(target = %addr, error = %e, "upstream unreachable");
                match hold.another() {
                    Some(next) => {
                        *hold = next;
                        Reached::Moved(e)
                    }
                    None => Reached::No(e),
                }
            }
        }
    }

    /// Keeps the pool and the idle clients tidy; runs on the runtime that uses them.
    pub(crate) fn spawn_sweeps(&self) {
        tokio::spawn(self.connections.clone().sweep());
        tokio::spawn(self.idle_clients.clone().sweep());
    }
}
