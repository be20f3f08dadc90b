//! What a restarted `baton serve` does with what the store says was running.
//!
//! App processes survive baton (they run in their own process groups), so the
//! live release is adopted as it is and serves again at once; only instances
//! that are gone are started anew. A deploy that was interrupted is ended:
//! before its switch it failed (its candidate is stopped); if it had recorded
//! the intent to switch and its candidate still runs, the switch is completed.
//! A canary rollout whose candidate still runs is resumed at the step and
//! weight it had reached, unless its deadline passed meanwhile: then it is
//! rolled back. It never lands on 100% without its analysis.

use std::sync::Arc;

use baton_core::{Deploy, DeployKind, Phase};
use baton_proxy::{HealthCheck, Pool, Target};
use baton_runtime::Instance;
use baton_store::{now_ms, DeployRecord, Release, Role, SavedRollout, StoreError};
use tokio::sync::mpsc;

use crate::pipeline::{self, Job};
use crate::retire;
use crate::service::{Live, ServiceState, Slots};
use crate::Shared;

pub(crate) async fn service(
    shared: &Arc<Shared>,
    svc: &Arc<ServiceState>,
    slots: &mut Slots,
) -> Result<(), StoreError> {
    let name = &svc.cfg.name;
    let store = &shared.store;
    let mut releases = store.releases(name)?;
    let mut resuming = None;
    // Remote instances are known to run only once their host has said so.
    let recorded: Vec<Instance> = releases.iter().flat_map(|r| r.instances.clone()).collect();
    shared.runtime.settle(&recorded).await;

    for deploy in store
        .unfinished_deploys()?
        .into_iter()
        .filter(|d| &d.service == name)
    {
        let candidate = releases
            .iter_mut()
            .find(|r| r.color == deploy.color && r.role == Role::Candidate);
        let alive = candidate
            .as_ref()
            .is_some_and(|r| all_alive(shared, &r.instances));
        match (deploy.phase, candidate) {
            (Phase::Switching, Some(_)) if alive => {
                tracing::warn!(service = %name, version = %deploy.version, "completing a switch interrupted by a restart");
                let retire_at = now_ms() + svc.cfg.switch.keep_previous.as_millis() as i64;
                store.record_switch(deploy.id, name, deploy.color, retire_at)?;
                releases = store.releases(name)?;
            }
            (Phase::Canary, Some(c)) if alive => match store.rollout(deploy.id)? {
                Some(SavedRollout {
                    deadline_at,
                    machine: Some(machine),
                }) if deadline_at > now_ms() => {
                    tracing::warn!(service = %name, version = %deploy.version, "resuming a canary rollout interrupted by a restart");
                    resuming = Some((deploy, machine, deadline_at, c.color));
                }
                _ => {
                    let why = "interrupted: the rollout's deadline passed while baton was down";
                    tracing::warn!(service = %name, version = %deploy.version, "{why}: rolled back");
                    retire::stop_instances(shared, svc, &c.instances).await;
                    store.remove_release(name, c.color)?;
                    store.fail_deploy(deploy.id, why, None)?;
                    releases = store.releases(name)?;
                }
            },
            (phase, candidate) => {
                let why = format!("interrupted: baton restarted during {phase:?}").to_lowercase();
                tracing::warn!(service = %name, version = %deploy.version, "{why}");
                if let Some(c) = candidate {
                    retire::stop_instances(shared, svc, &c.instances).await;
                    store.remove_release(name, c.color)?;
                }
                store.fail_deploy(deploy.id, &why, None)?;
                releases = store.releases(name)?;
            }
        }
    }

    let mut candidate = None;
    for release in releases {
        let resumed = resuming.as_ref().map(|r| r.3);
        match release.role {
            Role::Candidate if resumed == Some(release.color) => {
                candidate = Some(adopt(shared, svc, release).await?);
            }
            Role::Active => {
                let live = adopt(shared, svc, release).await?;
                if let Err(e) = shared.traffic.switch(name, live.pool.clone()).await {
                    tracing::error!(service = %name, error = %e, "cannot route to the adopted release");
                }
                slots.active = Some(live);
            }
            Role::Previous if all_alive(shared, &release.instances) => {
                let keep = release
                    .retire_at
                    .map(|at| (at - now_ms()).max(0) as u64)
                    .map(std::time::Duration::from_millis)
                    .unwrap_or_default();
                // Nothing is in flight to it after a restart: its drain ends at once.
                let live = adopt(shared, svc, release).await?;
                slots.previous = Some(retire::start(shared, svc, live, keep));
            }
            Role::Previous | Role::Candidate => {
                retire::stop_instances(shared, svc, &release.instances).await;
                store.remove_release(name, release.color)?;
            }
        }
    }
    if let (Some((deploy, machine, deadline_at, _)), Some(candidate)) = (resuming, candidate) {
        resume_later(shared, svc, deploy, machine, candidate, deadline_at);
    }
    Ok(())
}

/// Resumes a rollout once recovery lets go of the service: in its own
/// task, since no client waits for it; its progress goes to the log.
fn resume_later(
    shared: &Arc<Shared>,
    svc: &Arc<ServiceState>,
    deploy: DeployRecord,
    machine: Deploy,
    candidate: Live,
    deadline_at: i64,
) {
    let (shared, svc) = (shared.clone(), svc.clone());
    tokio::spawn(async move {
        let name = &svc.cfg.name;
        let claim = match svc.claim(DeployKind::Deploy, &deploy.version) {
            Ok(claim) => claim,
            Err(e) => {
                return tracing::error!(service = %name, error = %e, "cannot resume the rollout")
            }
        };
        let mut slots = svc.slots.lock().await;
        let (progress, _) = mpsc::unbounded_channel();
        let job = Job {
            shared: &shared,
            svc: &svc,
            claim,
            progress,
        };
        match pipeline::resume(job, &mut slots, &deploy, machine, candidate, deadline_at).await {
            Ok(_) => {
                tracing::info!(service = %name, version = %deploy.version, "resumed rollout promoted")
            }
            Err(e) => tracing::warn!(service = %name, error = %e, "resumed rollout ended"),
        }
    });
}

fn all_alive(shared: &Shared, instances: &[Instance]) -> bool {
    instances.iter().all(|i| shared.runtime.exited(i).is_none())
}

/// Takes over a release's running instances, replacing any that are gone.
async fn adopt(
    shared: &Arc<Shared>,
    svc: &Arc<ServiceState>,
    mut release: Release,
) -> Result<Live, StoreError> {
    let mut replaced = false;
    for (index, instance) in release.instances.iter_mut().enumerate() {
        if shared.runtime.exited(instance).is_none() {
            continue;
        }
        let spec = baton_runtime::InstanceSpec::of(
            &svc.cfg,
            &release.version,
            release.color,
            instance.host.as_deref(),
            index,
            instance.log.clone(),
        );
        match shared.runtime.start(&spec).await {
            Ok(fresh) => {
                tracing::warn!(service = %svc.cfg.name, index, "instance was gone: started anew");
                *instance = fresh;
                replaced = true;
            }
            Err(e) => {
                tracing::error!(service = %svc.cfg.name, index, error = %e, "cannot restart instance")
            }
        }
    }
    if replaced {
        shared.store.put_release(&release)?;
    }
    let targets = release
        .instances
        .iter()
        .map(|i| {
            // Adopted instances were serving a moment ago: they take traffic
            // at once, and the health check removes any that stopped answering.
            let adopted = shared.runtime.exited(i).is_none() && !replaced;
            Arc::new(Target::with_health(i.addr, adopted))
        })
        .collect();
    let pool = Arc::new(Pool::new(release.color, release.version.clone(), targets));
    let health = HealthCheck::start(&shared.prober, &pool, &svc.cfg.health);
    tracing::info!(service = %svc.cfg.name, version = %release.version, color = %release.color, "adopted");
    Ok(Live {
        color: release.color,
        version: release.version,
        instances: release.instances,
        pool,
        _health: health,
    })
}
