//! Each service's traffic backend, behind one [`Traffic`]: baton's own
//! proxy for every service, and for those that say so, a load balancer the
//! user runs (a [`Balancer`]: HAProxy or nginx).
//!
//! baton's proxy keeps every service's routes in any case: it is where the
//! candidate's preview and `X-Baton-Color` are served, and what `status`
//! reads. For a service behind a balancer each step is made there first;
//! only when the balancer took it is it recorded in baton's routes, so that
//! a step the balancer refused leaves both as they were.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_config::{Config, TrafficConfig};
use baton_core::{Color, Weight};
use baton_proxy::{Canary, DrainReport, Pool};

use crate::haproxy::HaproxyBackend;
use crate::nginx::NginxBackend;
use crate::{Builtin, Preview, Traffic, TrafficError, TrafficReport};

/// A load balancer the user runs, in front of one service's releases: the
/// steps of a deploy as that balancer makes them.
#[async_trait]
pub(crate) trait Balancer: Send + Sync {
    /// `pool` becomes known to the balancer, taking no traffic yet.
    async fn stage(&self, pool: &Arc<Pool>) -> Result<(), TrafficError>;
    /// `to` takes all the traffic; `from` (the live release) drains.
    async fn switch(&self, to: &Arc<Pool>, from: Option<&Arc<Pool>>) -> Result<(), TrafficError>;
    /// `candidate` takes `weight` of the traffic, `live` the rest.
    async fn split(
        &self,
        candidate: &Arc<Pool>,
        live: &Arc<Pool>,
        weight: Weight,
    ) -> Result<(), TrafficError>;
    /// `candidate` gives its share back to `live`.
    async fn withdraw(
        &self,
        candidate: &Arc<Pool>,
        live: Option<&Arc<Pool>>,
    ) -> Result<(), TrafficError>;
    /// `color`'s servers are forgotten (its instances are stopped).
    async fn unstage(&self, color: Color) -> Result<(), TrafficError>;
    /// Waits until the balancer holds no request for `pool`.
    async fn drain(&self, pool: &Pool, timeout: Duration) -> DrainReport;
    /// What the balancer reports, beside what baton set, if it can say.
    fn report(&self) -> Option<TrafficReport> {
        None
    }
}

/// Every service's traffic backend.
pub struct Backends {
    builtin: Builtin,
    balancers: HashMap<String, Arc<dyn Balancer>>,
}

impl Backends {
    /// Must run inside a tokio runtime: each load balancer is watched from
    /// a task of its own.
    pub fn new(builtin: Builtin, config: &Config) -> Self {
        let mut balancers: HashMap<String, Arc<dyn Balancer>> = HashMap::new();
        for s in config.services.values() {
            match &s.traffic {
                TrafficConfig::Builtin => {}
                TrafficConfig::Haproxy(h) => {
                    let backend = Arc::new(HaproxyBackend::new(h));
                    tokio::spawn(backend.clone().watch());
                    balancers.insert(s.name.clone(), backend);
                }
                TrafficConfig::Nginx(n) => {
                    let backend = Arc::new(NginxBackend::new(&s.name, n, &s.health.path));
                    tokio::spawn(backend.clone().watch());
                    balancers.insert(s.name.clone(), backend);
                }
            }
        }
        Self { builtin, balancers }
    }
}

#[async_trait]
impl Traffic for Backends {
    async fn preview(&self, service: &str, candidate: &Arc<Pool>) -> Result<Preview, TrafficError> {
        self.builtin.preview(service, candidate).await
    }

    async fn switch(
        &self,
        service: &str,
        to: Arc<Pool>,
    ) -> Result<Option<Arc<Pool>>, TrafficError> {
        if let Some(b) = self.balancers.get(service) {
            b.switch(&to, self.builtin.live(service).as_ref()).await?;
        }
        self.builtin.switch(service, to).await
    }

    async fn stage(&self, service: &str, pool: Arc<Pool>) -> Result<(), TrafficError> {
        if let Some(b) = self.balancers.get(service) {
            b.stage(&pool).await?;
        }
        self.builtin.stage(service, pool).await
    }

    async fn split(&self, service: &str, canary: Canary) -> Result<(), TrafficError> {
        if let (Some(b), Some(live)) = (self.balancers.get(service), self.builtin.live(service)) {
            b.split(canary.pool(), &live, canary.weight()).await?;
        }
        self.builtin.split(service, canary).await
    }

    async fn withdraw(
        &self,
        service: &str,
        color: Color,
    ) -> Result<Option<Arc<Pool>>, TrafficError> {
        let candidate = self.builtin.canary(service).map(|c| c.pool().clone());
        if let (Some(b), Some(pool)) = (self.balancers.get(service), &candidate) {
            b.withdraw(pool, self.builtin.live(service).as_ref())
                .await?;
        }
        self.builtin.withdraw(service, color).await
    }

    async fn unstage(&self, service: &str, color: Color) -> Result<(), TrafficError> {
        if let Some(b) = self.balancers.get(service) {
            b.unstage(color).await?;
        }
        self.builtin.unstage(service, color).await
    }

    fn canary(&self, service: &str) -> Option<Canary> {
        self.builtin.canary(service)
    }

    /// Behind a balancer, both drain: the balancer's requests and the ones
    /// that came through baton's proxy (previews, `X-Baton-Color`).
    async fn drain(&self, service: &str, pool: &Pool, timeout: Duration) -> DrainReport {
        let Some(b) = self.balancers.get(service) else {
            return self.builtin.drain(service, pool, timeout).await;
        };
        let (theirs, ours) = tokio::join!(
            b.drain(pool, timeout),
            self.builtin.drain(service, pool, timeout)
        );
        DrainReport {
            timed_out: theirs.timed_out || ours.timed_out,
            closed_upgraded: ours.closed_upgraded,
            abandoned: theirs.abandoned + ours.abandoned,
            elapsed: theirs.elapsed.max(ours.elapsed),
        }
    }

    fn live(&self, service: &str) -> Option<Arc<Pool>> {
        self.builtin.live(service)
    }

    fn report(&self, service: &str) -> Option<TrafficReport> {
        self.balancers.get(service)?.report()
    }
}
