//! The builtin backend: baton's own proxy. A switch is one pointer swap in
//! its route table; client connections are never touched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_config::Config;
use baton_core::Color;
use baton_proxy::{Canary, DrainReport, HostTable, Pool, Proxy, Service};

use crate::{Preview, Traffic, TrafficError};

/// Routes services through baton's own proxy.
pub struct Builtin {
    proxy: Arc<Proxy>,
    services: HashMap<String, Arc<Service>>,
}

impl Builtin {
    /// Installs a route for every configured service (none live yet).
    pub fn new(proxy: Arc<Proxy>, config: &Config) -> Self {
        let services: HashMap<String, Arc<Service>> = config
            .services
            .keys()
            .map(|name| (name.clone(), Arc::new(Service::new(name.clone()))))
            .collect();
        let table = HostTable::new(
            config
                .services
                .values()
                .map(|s| (s.hosts.as_slice(), services[&s.name].clone())),
        );
        proxy.router().set(table);
        Self { proxy, services }
    }

    fn service(&self, name: &str) -> Result<&Arc<Service>, TrafficError> {
        self.services
            .get(name)
            .ok_or_else(|| TrafficError::UnknownService(name.to_string()))
    }
}

#[async_trait]
impl Traffic for Builtin {
    async fn preview(
        &self,
        _service: &str,
        candidate: &Arc<Pool>,
    ) -> Result<Preview, TrafficError> {
        let route = self
            .proxy
            .preview(candidate.clone())
            .await
            .map_err(TrafficError::Preview)?;
        Ok(Preview::new(route.url(), route))
    }

    async fn switch(
        &self,
        service: &str,
        to: Arc<Pool>,
    ) -> Result<Option<Arc<Pool>>, TrafficError> {
        Ok(self.service(service)?.switch(to))
    }

    async fn stage(&self, service: &str, pool: Arc<Pool>) -> Result<(), TrafficError> {
        self.service(service)?.stage(pool);
        Ok(())
    }

    async fn split(&self, service: &str, canary: Canary) -> Result<(), TrafficError> {
        self.service(service)?.split(canary);
        Ok(())
    }

    async fn withdraw(
        &self,
        service: &str,
        color: Color,
    ) -> Result<Option<Arc<Pool>>, TrafficError> {
        Ok(self.service(service)?.withdraw(color))
    }

    async fn unstage(&self, service: &str, color: Color) -> Result<(), TrafficError> {
        self.service(service)?.unstage(color);
        Ok(())
    }

    fn canary(&self, service: &str) -> Option<Canary> {
        self.services.get(service)?.canary()
    }

    async fn drain(&self, _service: &str, pool: &Pool, timeout: Duration) -> DrainReport {
        baton_proxy::drain(pool, timeout).await
    }

    fn live(&self, service: &str) -> Option<Arc<Pool>> {
        self.services.get(service).and_then(|s| s.live())
    }
}
