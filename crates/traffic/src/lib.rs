//! Traffic backends: whatever moves a service's traffic from one release to
//! the next. The orchestrator only sees [`Traffic`]; baton's own proxy
//! ([`Builtin`]) is one backend, and load balancers people already run
//! (HAProxy, nginx) can be others.
//!
//! Health is not a backend's business: pools are always health-checked by
//! baton's own checker, which gates every switch whatever the backend.

mod backends;
mod builtin;
mod files;
mod haproxy;
mod nginx;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_core::Color;
use baton_proxy::{Canary, DrainReport, Pool};

pub use backends::Backends;
pub use builtin::Builtin;

/// A backend could not do what was asked; traffic did not move.
#[derive(Debug, thiserror::Error)]
pub enum TrafficError {
    #[error("service {0:?} is not routed by this backend")]
    UnknownService(String),
    #[error("preview route: {0}")]
    Preview(std::io::Error),
    /// HAProxy refused, or could not be reached; its own words.
    #[error("haproxy: {0}")]
    Haproxy(String),
    /// nginx refused the config, or could not be reloaded; its own words.
    #[error("nginx: {0}")]
    Nginx(String),
}

/// What an external load balancer reports about a service's backend,
/// beside what baton set there (`status --json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrafficReport {
    /// Which load balancer and backend: `haproxy web`.
    pub backend: String,
    /// Its servers as it reported them last.
    pub servers: Vec<ServerReport>,
    /// Where they differ from what baton set (empty: they agree).
    pub differences: Vec<String>,
    /// The last time baton put back what it had set, and why.
    pub restored: Option<String>,
    pub restored_at: Option<i64>,
    /// Why the load balancer could not be asked, if it could not.
    pub error: Option<String>,
}

/// One server of an external load balancer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerReport {
    pub name: String,
    pub addr: String,
    pub weight: u32,
    /// `ready`, `drain` or `maint`.
    pub state: String,
    /// The weight baton set; `None` for a server baton did not set.
    pub intended_weight: Option<u32>,
}

/// A route that reaches only a candidate, for smoke tests; closed when dropped.
pub struct Preview {
    pub url: String,
    _route: Box<dyn Send + Sync>,
}

impl Preview {
    pub fn new(url: String, route: impl Send + Sync + 'static) -> Self {
        Self {
            url,
            _route: Box::new(route),
        }
    }
}

/// Moves a service's traffic between releases.
#[async_trait]
pub trait Traffic: Send + Sync {
    /// A route to `candidate` alone, before it takes any user traffic.
    async fn preview(&self, service: &str, candidate: &Arc<Pool>) -> Result<Preview, TrafficError>;

    /// The switch: all of the service's new requests go to `to` from now on
    /// (a canary's promotion too). Returns the pool that was live, for draining.
    async fn switch(&self, service: &str, to: Arc<Pool>)
        -> Result<Option<Arc<Pool>>, TrafficError>;

    /// Makes a pool reachable by its color alone (`X-Baton-Color`), before
    /// it takes any share of the traffic.
    async fn stage(&self, service: &str, pool: Arc<Pool>) -> Result<(), TrafficError>;

    /// Gives a candidate its share of the traffic, or a new share.
    async fn split(&self, service: &str, canary: Canary) -> Result<(), TrafficError>;

    /// Takes a candidate's share back at once; returns its pool, for draining.
    async fn withdraw(
        &self,
        service: &str,
        color: Color,
    ) -> Result<Option<Arc<Pool>>, TrafficError>;

    /// Forgets a color whose instances are stopped.
    async fn unstage(&self, service: &str, color: Color) -> Result<(), TrafficError>;

    /// The rollout under way.
    fn canary(&self, service: &str) -> Option<Canary>;

    /// Waits for the requests and connections still using `pool`, one of
    /// `service`'s, to finish.
    async fn drain(&self, service: &str, pool: &Pool, timeout: Duration) -> DrainReport;

    /// The pool taking the service's traffic now.
    fn live(&self, service: &str) -> Option<Arc<Pool>>;

    /// What an external load balancer reports about the service, if one
    /// moves its traffic.
    fn report(&self, _service: &str) -> Option<TrafficReport> {
        None
    }
}
