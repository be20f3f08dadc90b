//! What a restarted `baton serve` does with what the store says was running.
//!
//! App processes survive baton (they run in their own process groups), so the
//! live release is adopted as it is and serves again at once; only instances
//! that are gone are started anew. A deploy that was interrupted is ended:
//! before its switch it failed (its candidate is stopped); if it had recorded
//! the intent to switch and its candidate still runs, the switch is completed.

use std::sync::Arc;

use baton_core::Phase;
use baton_proxy::{HealthCheck, Pool, Target};
use baton_runtime::Instance;
use baton_store::{now_ms, Release, Role, StoreError};

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

    for release in releases {
        match release.role {
            Role::Active => {
                let live = adopt(shared, svc, release).await?;
                shared.traffic.switch(name, live.pool.clone()).ok();
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
    Ok(())
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
        let spec = baton_runtime::InstanceSpec {
            service: svc.cfg.name.clone(),
            version: release.version.clone(),
            color: release.color,
            index,
            command: svc.cfg.command.clone(),
            env: svc.cfg.env.clone(),
            workdir: svc.cfg.workdir.clone(),
            log: instance.log.clone(),
        };
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
