//! Each service's traffic backend, behind one [`Traffic`]: baton's own
//! proxy for every service, and for those that say so, an HAProxy the user
//! runs.
//!
//! baton's proxy keeps every service's routes in any case: it is where the
//! candidate's preview and `X-Baton-Color` are served, and what `status`
//! reads. For a service behind HAProxy each step is made there first; only
//! when HAProxy took it is it recorded in baton's routes, so that a step
//! HAProxy refused leaves both as they were.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_config::{Config, TrafficConfig};
use baton_core::Color;
use baton_proxy::{Canary, DrainReport, Pool};

use crate::haproxy::HaproxyBackend;
use crate::{Builtin, Preview, Traffic, TrafficError, TrafficReport};

/// Every service's traffic backend.
pub struct Backends {
    builtin: Builtin,
    haproxy: HashMap<String, Arc<HaproxyBackend>>,
}

impl Backends {
    /// Must run inside a tokio runtime: each HAProxy backend is watched
    /// from a task of its own.
    pub fn new(builtin: Builtin, config: &Config) -> Self {
        let haproxy: HashMap<String, Arc<HaproxyBackend>> = config
            .services
            .values()
            .filter_map(|s| match &s.traffic {
                TrafficConfig::Haproxy(h) => {
                    Some((s.name.clone(), Arc::new(HaproxyBackend::new(h))))
                }
                TrafficConfig::Builtin => None,
            })
            .collect();
        for backend in haproxy.values() {
            tokio::spawn(backend.clone().watch());
        }
        Self { builtin, haproxy }
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
        if let Some(h) = self.haproxy.get(service) {
            h.switch(&to, self.builtin.live(service).as_ref()).await?;
        }
        self.builtin.switch(service, to).await
    }

    async fn stage(&self, service: &str, pool: Arc<Pool>) -> Result<(), TrafficError> {
        if let Some(h) = self.haproxy.get(service) {
            h.stage(&pool).await?;
        }
        self.builtin.stage(service, pool).await
    }

    async fn split(&self, service: &str, canary: Canary) -> Result<(), TrafficError> {
        if let (Some(h), Some(live)) = (self.haproxy.get(service), self.builtin.live(service)) {
            h.split(canary.pool(), &live, canary.weight()).await?;
        }
        self.builtin.split(service, canary).await
    }

    async fn withdraw(
        &self,
        service: &str,
        color: Color,
    ) -> Result<Option<Arc<Pool>>, TrafficError> {
        let candidate = self.builtin.canary(service).map(|c| c.pool().clone());
        if let (Some(h), Some(pool)) = (self.haproxy.get(service), &candidate) {
            h.withdraw(pool, self.builtin.live(service).as_ref())
                .await?;
        }
        self.builtin.withdraw(service, color).await
    }

    async fn unstage(&self, service: &str, color: Color) -> Result<(), TrafficError> {
        if let Some(h) = self.haproxy.get(service) {
            h.unstage(color).await?;
        }
        self.builtin.unstage(service, color).await
    }

    fn canary(&self, service: &str) -> Option<Canary> {
        self.builtin.canary(service)
    }

    /// Behind HAProxy, both drain: HAProxy's sessions and the requests that
    /// came through baton's proxy (previews, `X-Baton-Color`).
    async fn drain(&self, service: &str, pool: &Pool, timeout: Duration) -> DrainReport {
        let Some(h) = self.haproxy.get(service) else {
            return self.builtin.drain(service, pool, timeout).await;
        };
        let (theirs, ours) = tokio::join!(
            h.drain(pool, timeout),
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
        self.haproxy.get(service).map(|h| h.report())
    }
}
