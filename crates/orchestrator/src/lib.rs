//! The orchestrator runs the release pipeline for every service: start the
//! candidate, wait for the proxy's health checks, smoke-test it, switch,
//! drain and retire the old release, roll back.
//!
//! It executes the pure state machine of `baton_core::Deploy` against the
//! real parts: a [`Runtime`] for instances, a [`Traffic`] backend for the
//! switch, and the [`Store`] for intent and outcome.
//!
//! - `pipeline`: one deploy or rollback, step by step.
//! - `retire`: draining, keeping warm, and stopping a previous release.
//! - `recover`: what a restarted baton does with what it finds.
//! - `view`: what `status` reports.
//! - `checks`: the analysis checks that ask Prometheus or a webhook.

pub mod analysis;
mod checks;
mod leftovers;
mod pipeline;
mod placement;
mod recover;
mod retire;
mod rollout;
mod service;
mod view;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use baton_config::Config;
use baton_core::{DeployKind, Phase};
use baton_proxy::Prober;
use baton_runtime::{Fleet, Runtime};
use baton_store::{DeployRecord, Store, StoreError};
use baton_traffic::Traffic;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

pub use rollout::{describe, Command, RolloutStatus};
pub use service::Durations;
use service::ServiceState;
pub use view::{DeployStatus, ReleaseStatus, RoutedPool, ServiceStatus, TargetStatus};

/// Why a deploy or rollback was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("unknown service {0:?}")]
    UnknownService(String),
    #[error("a deploy of {service} is already running: {running}")]
    Busy { service: String, running: String },
    #[error("{service}: nothing to roll back to")]
    NothingToRollBack { service: String },
    #[error("{service}: no canary rollout is under way")]
    NoRollout { service: String },
    #[error("deploy of {} {} failed: {}", .0.service, .0.version, .0.error.as_deref().unwrap_or("unknown error"))]
    Failed(Box<DeployRecord>),
    /// Refused before anything started (e.g. a Prometheus query that
    /// Prometheus rejects): one line naming the configuration key.
    #[error("deploy refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One step of a deploy, streamed to the CLI as it happens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub deploy: i64,
    pub phase: Phase,
    pub message: String,
    pub at_ms: i64,
    /// A canary's analysis interval, as data, when the message reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Box<analysis::Analysis>>,
    /// The remote host the message is about, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// While a release tarball is delivered: bytes sent so far, and its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

/// Where a deploy reports its progress; a closed receiver is fine.
pub type ProgressTx = UnboundedSender<Progress>;

/// Who asked for a deploy, for the history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub version: String,
    pub requested_by: String,
    /// A canary rollout whatever the service's `strategy`.
    #[serde(default)]
    pub canary: bool,
}

/// Everything the pipelines of all services share.
pub(crate) struct Shared {
    pub(crate) traffic: Arc<dyn Traffic>,
    pub(crate) prober: Prober,
    pub(crate) runtime: Arc<dyn Runtime>,
    /// The remote hosts, for what is done to a host as a whole.
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) store: Arc<Store>,
    pub(crate) logs: PathBuf,
    /// The directory smoke commands run in: the config file's.
    pub(crate) workdir: PathBuf,
}

/// The pipelines of every configured service.
pub struct Orchestrator {
    shared: Arc<Shared>,
    services: BTreeMap<String, Arc<ServiceState>>,
}

impl Orchestrator {
    pub fn new(
        config: &Config,
        traffic: Arc<dyn Traffic>,
        prober: Prober,
        runtime: Arc<dyn Runtime>,
        fleet: Arc<Fleet>,
        store: Arc<Store>,
    ) -> Self {
        let shared = Arc::new(Shared {
            traffic,
            prober,
            runtime,
            fleet,
            store,
            logs: config.state_dir.join("logs"),
            workdir: config
                .path
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_else(|| PathBuf::from(".")),
        });
        let services = config
            .services
            .values()
            .map(|cfg| (cfg.name.clone(), Arc::new(ServiceState::new(cfg.clone()))))
            .collect();
        Self { shared, services }
    }

    fn service(&self, name: &str) -> Result<&Arc<ServiceState>, DeployError> {
        self.services
            .get(name)
            .ok_or_else(|| DeployError::UnknownService(name.to_string()))
    }

    /// Deploys `req.version` of `service`; returns once traffic is on it, or
    /// with the reason it was refused (traffic untouched).
    pub async fn deploy(
        &self,
        service: &str,
        req: &Request,
        progress: ProgressTx,
    ) -> Result<DeployRecord, DeployError> {
        let job = self.claim(service, DeployKind::Deploy, &req.version, progress)?;
        let svc = job.svc;
        let mut slots = svc.slots.lock().await;
        pipeline::deploy(job, &mut slots, req).await
    }

    /// Back to the previous release (or `to`): an instant switch while the
    /// previous release still runs, a regular deploy of it otherwise.
    pub async fn rollback(
        &self,
        service: &str,
        to: Option<&str>,
        requested_by: &str,
        progress: ProgressTx,
    ) -> Result<DeployRecord, DeployError> {
        let version = to.unwrap_or("previous");
        let job = self.claim(service, DeployKind::Rollback, version, progress)?;
        let svc = job.svc;
        let mut slots = svc.slots.lock().await;
        pipeline::rollback(job, &mut slots, to, requested_by).await
    }

    /// Claims `service` for one deploy, refused at once if another runs.
    fn claim<'a>(
        &'a self,
        service: &str,
        kind: DeployKind,
        version: &str,
        progress: ProgressTx,
    ) -> Result<pipeline::Job<'a>, DeployError> {
        let svc = self.service(service)?;
        Ok(pipeline::Job {
            shared: &self.shared,
            svc,
            claim: svc.claim(kind, version)?,
            progress,
        })
    }

    /// Tells the canary rollout of `service` to promote, pause, resume or abort.
    pub fn command(&self, service: &str, command: Command) -> Result<(), DeployError> {
        let svc = self.service(service)?;
        let sent = svc
            .view()
            .rollout
            .as_ref()
            .is_some_and(|tx| tx.send(command).is_ok());
        if !sent {
            return Err(DeployError::NoRollout {
                service: service.to_string(),
            });
        }
        Ok(())
    }

    /// Finds what ran before a restart and serves it again, and goes on
    /// stopping instances left over on hosts that were unreachable.
    pub async fn recover(&self) -> Result<(), StoreError> {
        for svc in self.services.values() {
            let mut slots = svc.slots.lock().await;
            recover::service(&self.shared, svc, &mut slots).await?;
        }
        tokio::spawn(leftovers::sweep(self.shared.clone(), self.services.clone()));
        Ok(())
    }

    /// Stops every instance of every service (after any deploy under way;
    /// a canary rollout is rolled back first), and forgets them: for taking
    /// a machine out of service.
    pub async fn stop_all(&self) -> Result<(), StoreError> {
        for svc in self.services.values() {
            // A rollout may hold its step forever: roll it back rather than
            // wait for it.
            if let Some(rollout) = &svc.view().rollout {
                let _ = rollout.send(Command::Abort);
            }
            let mut slots = svc.slots.lock().await;
            if let Some(previous) = slots.previous.take() {
                previous.hurry.cancel();
                let _ = previous.task.await;
            }
            if let Some(active) = slots.active.take() {
                retire::stop(&self.shared, svc, &active).await;
                self.shared
                    .store
                    .remove_release(&svc.cfg.name, active.color)?;
            }
        }
        Ok(())
    }

    /// What every service (or one) runs now.
    pub fn status(&self, service: Option<&str>) -> Result<Vec<ServiceStatus>, DeployError> {
        let chosen: Vec<&Arc<ServiceState>> = match service {
            Some(name) => vec![self.service(name)?],
            None => self.services.values().collect(),
        };
        chosen
            .into_iter()
            .map(|svc| view::status(&self.shared, svc).map_err(DeployError::from))
            .collect()
    }

    /// Every pool the proxy holds now, for metrics.
    pub fn routed(&self) -> Vec<RoutedPool> {
        self.services
            .values()
            .flat_map(|svc| view::routed(&self.shared, svc))
            .collect()
    }

    /// How long each service's switches and drains took, for metrics.
    pub fn durations(&self) -> Vec<(&str, &Durations, &Durations)> {
        self.services
            .values()
            .map(|svc| (svc.cfg.name.as_str(), &svc.switches, &svc.drains))
            .collect()
    }

    /// Finished deploys by service, kind and outcome, for metrics.
    pub fn deploy_counts(&self) -> Result<Vec<(String, DeployKind, Phase, u64)>, DeployError> {
        Ok(self.shared.store.deploy_counts()?)
    }

    /// A service's deploys, newest first.
    pub fn history(&self, service: &str, limit: usize) -> Result<Vec<DeployRecord>, DeployError> {
        self.service(service)?;
        Ok(self.shared.store.history(service, limit)?)
    }
}
