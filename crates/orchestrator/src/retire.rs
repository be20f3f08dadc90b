//! Retiring a release that stopped being live: drain it, keep it warm for
//! `keep_previous` so a rollback is a mere switch, then stop it.
//!
//! Instances are stopped only after the drain: never while a request or a
//! WebSocket still uses them (or the drain timeout has passed).

use std::sync::Arc;
use std::time::Duration;

use baton_store::now_ms;
use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use crate::leftovers;
use crate::service::{Live, Retiring, ServiceState};
use crate::view::PreviousState;
use crate::Shared;

/// Starts retiring `old`, which the route table no longer points at.
pub(crate) fn start(
    shared: &Arc<Shared>,
    svc: &Arc<ServiceState>,
    old: Live,
    keep: Duration,
) -> Retiring {
    let hurry = CancellationToken::new();
    let revive = CancellationToken::new();
    let (color, version) = (old.color, old.version.clone());
    svc.view().previous = Some((old.pool.clone(), PreviousState::Draining));
    let task = tokio::spawn(run(
        shared.clone(),
        svc.clone(),
        old,
        keep,
        hurry.clone(),
        revive.clone(),
    ));
    Retiring {
        color,
        version,
        hurry,
        revive,
        task,
    }
}

async fn run(
    shared: Arc<Shared>,
    svc: Arc<ServiceState>,
    old: Live,
    keep: Duration,
    hurry: CancellationToken,
    revive: CancellationToken,
) -> Option<Live> {
    let name = &svc.cfg.name;
    let drained = tokio::select! {
        report = shared.traffic.drain(name, &old.pool, svc.cfg.switch.drain_timeout) => report,
        _ = revive.cancelled() => return Some(old),
    };
    svc.drains.add(drained.elapsed);
    if drained.timed_out {
        tracing::warn!(service = %name, version = %old.version, closed_upgraded = drained.closed_upgraded,
            abandoned = drained.abandoned, "drain timed out");
    } else {
        tracing::info!(service = %name, version = %old.version, elapsed = ?drained.elapsed, "drained");
    }

    let retire_at = now_ms() + keep.as_millis() as i64;
    svc.view().previous = Some((old.pool.clone(), PreviousState::Warm { retire_at }));
    tokio::select! {
        _ = tokio::time::sleep(keep) => {}
        _ = hurry.cancelled() => {}
        _ = revive.cancelled() => return Some(old),
    }

    svc.view().previous = Some((old.pool.clone(), PreviousState::Stopping));
    stop(&shared, &svc, &old).await;
    if let Err(e) = shared.traffic.unstage(name, old.color).await {
        tracing::warn!(service = %name, error = %e, "could not forget the retired release's route");
    }
    if let Err(e) = shared.store.remove_release(name, old.color) {
        tracing::error!(service = %name, error = %e, "could not record the retirement");
    }
    svc.view().previous = None;
    None
}

/// Stops every instance of a release, in parallel.
pub(crate) async fn stop(shared: &Shared, svc: &ServiceState, live: &Live) {
    stop_instances(shared, svc, &live.instances).await;
    tracing::info!(service = %svc.cfg.name, version = %live.version, color = %live.color, "stopped");
}

pub(crate) async fn stop_instances(
    shared: &Shared,
    svc: &ServiceState,
    instances: &[baton_runtime::Instance],
) {
    let grace = svc.cfg.stop_timeout;
    let stopping = instances.iter().map(|i| async move {
        if let Err(e) = shared.runtime.stop(i, grace).await {
            leftovers::record(shared, &svc.cfg.name, i, &e);
        }
    });
    join_all(stopping).await;
}
