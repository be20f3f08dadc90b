//! What `baton status` reports: the live release and its targets' health as
//! the proxy sees them, the previous release, and the deploy under way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use baton_core::{Color, DeployKind, Phase, Weight};
use baton_proxy::Pool;
use baton_store::{now_ms, DeployRecord, StoreError};
use baton_traffic::TrafficReport;

use crate::rollout::RolloutStatus;
use crate::service::ServiceState;
use crate::Shared;

/// `status --json`, one service.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub service: String,
    pub active: Option<ReleaseStatus>,
    pub previous: Option<ReleaseStatus>,
    pub deploy: Option<DeployStatus>,
    pub last_deploy: Option<DeployRecord>,
    /// Instances that could not be stopped (their host did not answer),
    /// tried again until they are.
    #[serde(default)]
    pub leftovers: Vec<LeftoverStatus>,
    /// What the external load balancer moving the traffic reports, beside
    /// what baton set there; absent with baton's own proxy.
    #[serde(default)]
    pub traffic: Option<TrafficReport>,
}

/// An instance left running on a host that did not answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeftoverStatus {
    pub host: Option<String>,
    pub addr: String,
    /// Why the last try to stop it failed.
    pub reason: String,
    /// Since when (unix ms).
    pub since: i64,
}

/// One release and its targets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReleaseStatus {
    pub color: Color,
    pub version: String,
    /// `live`, or for a previous release `draining`, `warm` or `stopping`.
    pub state: String,
    pub targets: Vec<TargetStatus>,
    /// When a previous release is stopped (unix ms).
    pub retire_at: Option<i64>,
}

/// One target as the proxy sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetStatus {
    pub addr: String,
    /// The remote host it runs on; absent: this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub healthy: bool,
    pub in_flight: usize,
}

/// The deploy under way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployStatus {
    pub id: Option<i64>,
    pub kind: DeployKind,
    pub version: String,
    pub color: Option<Color>,
    pub phase: Phase,
    pub started_at: i64,
    /// A canary rollout's step, weight and analyses.
    pub canary: Option<RolloutStatus>,
}

impl DeployStatus {
    pub(crate) fn pending(kind: DeployKind, version: &str) -> Self {
        Self {
            id: None,
            kind,
            version: version.to_string(),
            color: None,
            phase: Phase::Starting,
            started_at: now_ms(),
            canary: None,
        }
    }

    /// One line naming the deploy, for "already running" errors.
    pub(crate) fn describe(&self) -> String {
        let id = self.id.map(|i| format!("#{i} ")).unwrap_or_default();
        let kind = match self.kind {
            DeployKind::Deploy => "deploy",
            DeployKind::Rollback => "rollback",
        };
        let secs = (now_ms() - self.started_at) / 1000;
        format!(
            "{kind} {id}of {}, {} for {secs}s",
            self.version,
            phase_name(self.phase)
        )
    }
}

/// Where a previous release stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PreviousState {
    Draining,
    Warm { retire_at: i64 },
    Stopping,
}

pub(crate) fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Starting => "starting",
        Phase::Health => "waiting for health",
        Phase::Smoke => "smoke testing",
        Phase::Canary => "canary rollout",
        Phase::Switching => "switching",
        Phase::Done => "done",
        Phase::Failed => "failed",
    }
}

/// Which host each instance address is on.
type Hosts = HashMap<SocketAddr, String>;

fn release(pool: &Pool, state: &str, retire_at: Option<i64>, hosts: &Hosts) -> ReleaseStatus {
    ReleaseStatus {
        color: pool.color,
        version: pool.version.clone(),
        state: state.to_string(),
        targets: pool
            .targets()
            .iter()
            .map(|t| TargetStatus {
                addr: t.addr().to_string(),
                host: hosts.get(&t.addr()).cloned(),
                healthy: t.is_healthy(),
                in_flight: t.in_flight(),
            })
            .collect(),
        retire_at,
    }
}

pub(crate) fn status(shared: &Shared, svc: &ServiceState) -> Result<ServiceStatus, StoreError> {
    let name = &svc.cfg.name;
    let hosts: Hosts = shared
        .store
        .releases(name)?
        .into_iter()
        .flat_map(|r| r.instances)
        .filter_map(|i| Some((i.addr, i.host?)))
        .collect();
    let release = |pool: &Pool, state, retire_at| release(pool, state, retire_at, &hosts);
    let active = shared.traffic.live(name).map(|p| release(&p, "live", None));
    let (previous, deploy) = {
        let view = svc.view();
        let previous = view.previous.as_ref().map(|(pool, state)| match state {
            PreviousState::Draining => release(pool, "draining", None),
            PreviousState::Warm { retire_at } => release(pool, "warm", Some(*retire_at)),
            PreviousState::Stopping => release(pool, "stopping", None),
        });
        (previous, view.deploy.clone())
    };
    Ok(ServiceStatus {
        service: name.clone(),
        active,
        previous,
        deploy,
        last_deploy: shared.store.last_deploy(name)?,
        leftovers: shared
            .store
            .leftovers()?
            .into_iter()
            .filter(|l| &l.service == name)
            .map(|l| LeftoverStatus {
                host: l.instance.host,
                addr: l.instance.addr.to_string(),
                reason: l.reason,
                since: l.since,
            })
            .collect(),
        traffic: shared.traffic.report(name),
    })
}

/// A pool the proxy holds now, and what it is to its service: for metrics.
#[derive(Debug, Clone)]
pub struct RoutedPool {
    pub service: String,
    /// `live`, `canary` or `previous`.
    pub role: &'static str,
    pub pool: Arc<Pool>,
    /// The share of new requests it gets (a previous release gets none).
    pub weight: Weight,
}

pub(crate) fn routed(shared: &Shared, svc: &ServiceState) -> Vec<RoutedPool> {
    let name = &svc.cfg.name;
    let canary = shared.traffic.canary(name);
    let canary_weight = canary.as_ref().map(|c| c.weight()).unwrap_or(Weight::ZERO);
    let entry = |role, pool: Arc<Pool>, weight| RoutedPool {
        service: name.clone(),
        role,
        pool,
        weight,
    };
    let mut pools = Vec::new();
    if let Some(live) = shared.traffic.live(name) {
        let share = Weight::FULL.basis_points() - canary_weight.basis_points();
        pools.push(entry("live", live, Weight::from_basis_points(share)));
    }
    if let Some(c) = canary {
        pools.push(entry("canary", c.pool().clone(), c.weight()));
    }
    if let Some((pool, _)) = &svc.view().previous {
        pools.push(entry("previous", pool.clone(), Weight::ZERO));
    }
    pools
}
