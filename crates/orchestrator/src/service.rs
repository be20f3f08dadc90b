//! One service's running state: its live release, the previous one being
//! retired, and the deploy under way.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use baton_config::ServiceConfig;
use baton_core::{Color, DeployKind, Phase};
use baton_proxy::{HealthCheck, Pool};
use baton_runtime::Instance;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::rollout::Command;
use crate::view::{DeployStatus, PreviousState};
use crate::DeployError;

/// A release with running instances, health-checked by the proxy.
pub(crate) struct Live {
    pub(crate) color: Color,
    pub(crate) version: String,
    pub(crate) instances: Vec<Instance>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) _health: HealthCheck,
}

/// A release that stopped being live: draining, then warm, then stopped.
pub(crate) struct Retiring {
    pub(crate) color: Color,
    pub(crate) version: String,
    /// Cut the warm period short: its color is needed for a new candidate.
    pub(crate) hurry: CancellationToken,
    /// Abandon the retirement: a rollback makes it live again.
    pub(crate) revive: CancellationToken,
    /// Hands the release back if revived before it was stopped.
    pub(crate) task: JoinHandle<Option<Live>>,
}

/// What a deploy changes; held (async lock) for the whole deploy.
#[derive(Default)]
pub(crate) struct Slots {
    pub(crate) active: Option<Live>,
    pub(crate) previous: Option<Retiring>,
}

/// What `status` shows, and how to reach a running rollout; locked only
/// for moments, never across an await.
#[derive(Default)]
pub(crate) struct View {
    pub(crate) deploy: Option<DeployStatus>,
    pub(crate) previous: Option<(Arc<Pool>, PreviousState)>,
    /// Commands to the canary rollout under way.
    pub(crate) rollout: Option<mpsc::UnboundedSender<Command>>,
}

pub(crate) struct ServiceState {
    pub(crate) cfg: ServiceConfig,
    pub(crate) slots: tokio::sync::Mutex<Slots>,
    view: Mutex<View>,
    /// How long switches and drains took, for metrics.
    pub(crate) switches: Durations,
    pub(crate) drains: Durations,
}

/// A count and a sum of durations: a Prometheus summary without quantiles.
#[derive(Debug, Default)]
pub struct Durations {
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Durations {
    pub(crate) fn add(&self, took: Duration) {
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_us.load(Relaxed))
    }
}

impl ServiceState {
    pub(crate) fn new(cfg: ServiceConfig) -> Self {
        Self {
            cfg,
            slots: tokio::sync::Mutex::new(Slots::default()),
            view: Mutex::new(View::default()),
            switches: Durations::default(),
            drains: Durations::default(),
        }
    }

    pub(crate) fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the service for one deploy; a second claim fails at once,
    /// naming the deploy that holds it.
    pub(crate) fn claim(&self, kind: DeployKind, version: &str) -> Result<Claim<'_>, DeployError> {
        let mut view = self.view();
        if let Some(running) = &view.deploy {
            return Err(DeployError::Busy {
                service: self.cfg.name.clone(),
                running: running.describe(),
            });
        }
        view.deploy = Some(DeployStatus::pending(kind, version));
        Ok(Claim { svc: self })
    }
}

/// A service's deploy slot; released when dropped, however the deploy ends.
pub(crate) struct Claim<'a> {
    svc: &'a ServiceState,
}

impl Claim<'_> {
    /// Updates what status shows of the running deploy.
    pub(crate) fn update(&self, f: impl FnOnce(&mut DeployStatus)) {
        if let Some(d) = self.svc.view().deploy.as_mut() {
            f(d);
        }
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.update(|d| d.phase = phase);
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut view = self.svc.view();
        view.deploy = None;
        view.rollout = None;
    }
}
