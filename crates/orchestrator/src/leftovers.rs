//! Instances baton could not stop because their host did not answer (cut
//! off during a drain, say). Each is recorded, shown by `status`, and
//! stopped by a sweep that tries again until the host is back, so that a
//! host's outage never leaves an old release running there for good.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_runtime::{Instance, RuntimeError};

use crate::service::ServiceState;
use crate::Shared;

/// How often left-over instances are tried again.
const SWEEP: Duration = Duration::from_secs(2);
/// The grace of an instance whose service is no longer configured.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

/// Records that `instance` of `service` could not be stopped.
pub(crate) fn record(shared: &Shared, service: &str, instance: &Instance, error: &RuntimeError) {
    tracing::warn!(service, addr = %instance.addr, error = %error, "instance left running: stopped once its host is back");
    if let Err(e) = shared
        .store
        .add_leftover(service, instance, &error.to_string())
    {
        tracing::error!(service, error = %e, "could not record a left-over instance");
    }
}

/// Tries every left-over instance again, forever.
pub(crate) async fn sweep(shared: Arc<Shared>, services: BTreeMap<String, Arc<ServiceState>>) {
    loop {
        tokio::time::sleep(SWEEP).await;
        let left = match shared.store.leftovers() {
            Ok(left) => left,
            Err(e) => {
                tracing::error!(error = %e, "cannot read left-over instances");
                continue;
            }
        };
        for leftover in left {
            let grace = services
                .get(&leftover.service)
                .map_or(DEFAULT_GRACE, |s| s.cfg.stop_timeout);
            let (service, instance) = (&leftover.service, &leftover.instance);
            let recorded = match shared.runtime.stop(instance, grace).await {
                Ok(()) => {
                    tracing::info!(service, addr = %instance.addr, "left-over instance stopped");
                    shared.store.remove_leftover(service, instance)
                }
                Err(e) => shared.store.add_leftover(service, instance, &e.to_string()),
            };
            if let Err(e) = recorded {
                tracing::error!(service, error = %e, "cannot record a left-over instance");
            }
        }
    }
}
