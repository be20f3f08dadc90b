//! Active health checks, run by the proxy itself.
//!
//! The result is written into the very [`Target`] the router picks from, so
//! "healthy" means healthy in the proxy's own view: the switch is gated on
//! the same checker that routes, never on a probe from somewhere else.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use baton_config::HealthConfig;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;

use crate::target::{Pool, Target};

/// The HTTP client health checks share.
#[derive(Clone, Debug)]
pub struct Prober {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Prober {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector);
        Self { client }
    }
}

impl Prober {
    /// One probe: a 2xx or 3xx answer within the timeout.
    async fn probe(&self, target: &Target, cfg: &HealthConfig) -> bool {
        let uri = format!("http://{}{}", target.addr(), cfg.path);
        let Ok(req) = http::Request::get(uri)
            .header(http::header::USER_AGENT, "baton-health-check")
            .body(Empty::new())
        else {
            return false;
        };
        match tokio::time::timeout(cfg.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => resp.status().is_success() || resp.status().is_redirection(),
            _ => false,
        }
    }
}

/// The health checks of one pool; they stop when this is dropped.
#[derive(Debug)]
pub struct HealthCheck {
    tasks: Vec<JoinHandle<()>>,
}

impl HealthCheck {
    /// Starts checking every target of `pool` now, then every `interval`.
    pub fn start(prober: &Prober, pool: &Arc<Pool>, cfg: &HealthConfig) -> Self {
        let tasks = pool
            .targets()
            .iter()
            .map(|target| {
                let (prober, pool, target, cfg) =
                    (prober.clone(), pool.clone(), target.clone(), cfg.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(cfg.interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        let ok = prober.probe(&target, &cfg).await;
                        if record(&target, ok, &cfg) {
                            tracing::info!(target = %target.addr(), healthy = ok, "health changed");
                            pool.notify();
                        }
                    }
                })
            })
            .collect();
        Self { tasks }
    }
}

impl Drop for HealthCheck {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Counts one result; flips the target at its threshold. Returns true on a flip.
fn record(target: &Target, ok: bool, cfg: &HealthConfig) -> bool {
    let (hit, reset, threshold) = if ok {
        (&target.successes, &target.failures, cfg.healthy_threshold)
    } else {
        (&target.failures, &target.successes, cfg.unhealthy_threshold)
    };
    reset.store(0, Ordering::Relaxed);
    let streak = hit.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    streak >= threshold && target.set_healthy(ok)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            path: "/healthz".into(),
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(100),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            deadline: Duration::from_secs(1),
        }
    }

    #[test]
    fn thresholds_need_consecutive_results() {
        let t = Target::new(([127, 0, 0, 1], 1).into());
        let c = cfg();
        assert!(!record(&t, true, &c));
        assert!(!t.is_healthy());
        assert!(
            !record(&t, false, &c),
            "a failure resets the success streak"
        );
        assert!(!record(&t, true, &c));
        assert!(record(&t, true, &c));
        assert!(t.is_healthy());
        assert!(!record(&t, false, &c));
        assert!(!record(&t, false, &c));
        assert!(record(&t, false, &c));
        assert!(!t.is_healthy());
    }
}
