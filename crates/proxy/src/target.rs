//! A target is one running instance the proxy can send requests to; a pool is
//! the set of targets of one release (a service's color), load balanced.
//!
//! Targets count what is in flight to them, so that a drain knows when the
//! last request to an old release has finished. A request increments the
//! count the moment it picks the target, before any await, and then checks
//! that the pool has not been retired in the meantime (see [`Pool::pick`]):
//! that handshake is what makes "drained" exact rather than a guess.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use baton_core::Color;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::stats::Stats;

/// One instance behind the proxy.
#[derive(Debug)]
pub struct Target {
    addr: SocketAddr,
    healthy: AtomicBool,
    /// Requests and upgraded connections currently using this target.
    in_flight: AtomicUsize,
    /// Upgraded (WebSocket and other) connections among them.
    upgraded: AtomicUsize,
    pub(crate) successes: AtomicU32,
    pub(crate) failures: AtomicU32,
}

impl Target {
    /// A target that takes no traffic until its health check passes.
    pub fn new(addr: SocketAddr) -> Self {
        Self::with_health(addr, false)
    }

    /// A target known to be serving (one adopted after a restart, say); the
    /// health check still takes it out if it stops answering.
    pub fn with_health(addr: SocketAddr, healthy: bool) -> Self {
        Self {
            addr,
            healthy: AtomicBool::new(healthy),
            in_flight: AtomicUsize::new(0),
            upgraded: AtomicUsize::new(0),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn upgraded(&self) -> usize {
        self.upgraded.load(Ordering::Relaxed)
    }
}

/// The targets of one release, and what a drain needs to know about them.
#[derive(Debug)]
pub struct Pool {
    pub color: Color,
    pub version: String,
    targets: Vec<Arc<Target>>,
    next: AtomicUsize,
    /// Set once the pool is no longer live: new requests must not pick it.
    retired: AtomicBool,
    /// Wakes a drain when the last in-flight request ends, and health waiters
    /// when a target's health changes.
    changed: Notify,
    /// Cancelled when a drain times out: upgraded connections close themselves.
    pub(crate) closing: CancellationToken,
    /// What its requests came to, for canary analysis and metrics.
    pub stats: Stats,
}

impl Pool {
    pub fn new(color: Color, version: impl Into<String>, targets: Vec<Arc<Target>>) -> Self {
        Self {
            color,
            version: version.into(),
            targets,
            next: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            changed: Notify::new(),
            closing: CancellationToken::new(),
            stats: Stats::default(),
        }
    }

    pub fn targets(&self) -> &[Arc<Target>] {
        &self.targets
    }

    /// True when every target passed its health check.
    pub fn all_healthy(&self) -> bool {
        self.targets.iter().all(|t| t.is_healthy())
    }

    /// Requests and upgraded connections in flight to any target of the pool.
    pub fn in_flight(&self) -> usize {
        self.targets.iter().map(|t| t.in_flight()).sum()
    }

    /// Picks the next healthy target round-robin and counts the request on it.
    ///
    /// Returns `Err(Retired)` when the pool stopped being live between the
    /// route-table load and the pick; the caller then loads the table again.
    /// The SeqCst increment-then-check here pairs with the SeqCst
    /// retire-then-read in [`Pool::retire`]: either the drain sees this
    /// request, or this request sees the retirement.
    pub(crate) fn pick(self: &Arc<Self>) -> Result<Option<InFlight>, Retired> {
        let Some(guard) = self.pick_target(Instant::now()) else {
            return Ok(None);
        };
        if self.retired.load(Ordering::SeqCst) {
            return Err(Retired);
        }
        Ok(Some(guard))
    }

    /// The next healthy target round-robin, counted in flight, whether the
    /// pool is live or not: for requests that asked for its color.
    pub(crate) fn pick_target(self: &Arc<Self>, started: Instant) -> Option<InFlight> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let target = (0..n)
            .map(|i| &self.targets[(start + i) % n])
            .find(|t| t.is_healthy())?;
        target.in_flight.fetch_add(1, Ordering::SeqCst);
        Some(InFlight {
            pool: self.clone(),
            target: target.clone(),
            started,
            status: 0,
        })
    }

    /// Marks the pool as no longer live. Call after the route table stopped
    /// pointing at it; from then on [`Pool::in_flight`] only goes down.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Resolves at the next health change or in-flight drop to zero.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    pub(crate) fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// Waits until every target is healthy; pair with a deadline.
    pub async fn wait_healthy(&self) {
        loop {
            let changed = self.changed();
            if self.all_healthy() {
                return;
            }
            changed.await;
        }
    }
}

/// The pool was retired while a request was picking from it.
#[derive(Debug)]
pub(crate) struct Retired;

/// One request or upgraded connection using a target; counted until dropped,
/// and recorded in its pool's stats then if it was answered.
#[derive(Debug)]
pub(crate) struct InFlight {
    pool: Arc<Pool>,
    target: Arc<Target>,
    started: Instant,
    /// The status the client got; 0 while there is none.
    status: u16,
}

impl InFlight {
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Another target of the same pool, for a retry. Retirement does not
    /// matter here: this hold keeps the pool's drain waiting until it ends.
    pub(crate) fn another(&self) -> Option<InFlight> {
        self.pool.pick_target(self.started)
    }

    /// An attempt toward this target failed.
    pub(crate) fn upstream_error(&self) {
        self.pool.stats.upstream_error();
    }

    /// The client is answered with `status` (the target's, or baton's own).
    pub(crate) fn answered(&mut self, status: u16) {
        self.status = status;
    }

    /// Counts this as an upgraded connection for as long as it lives.
    pub(crate) fn upgraded(mut self) -> Upgraded {
        self.target.upgraded.fetch_add(1, Ordering::Relaxed);
        self.record();
        Upgraded(self)
    }

    /// Counts the answer once; an upgrade counts when it is made.
    fn record(&mut self) {
        if self.status != 0 {
            self.pool.stats.record(self.status, self.started.elapsed());
            self.status = 0;
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.record();
        let before = self.target.in_flight.fetch_sub(1, Ordering::SeqCst);
        if before == 1 && self.pool.is_retired() {
            self.pool.notify();
        }
    }
}

/// An upgraded connection's hold on its target.
#[derive(Debug)]
pub(crate) struct Upgraded(InFlight);

impl Upgraded {
    pub(crate) fn closing(&self) -> &CancellationToken {
        &self.0.pool.closing
    }
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        self.0.target.upgraded.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16) -> Arc<Pool> {
        let targets = (0..n)
            .map(|i| {
                Arc::new(Target::with_health(
                    SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                    true,
                ))
            })
            .collect();
        Arc::new(Pool::new(Color::Blue, "v1", targets))
    }

    #[test]
    fn picks_round_robin_over_healthy_targets() {
        let p = pool(3);
        p.targets()[1].set_healthy(false);
        let picked: Vec<u16> = (0..4)
            .map(|_| p.pick().unwrap().unwrap().target().addr().port())
            .collect();
        assert!(!picked.contains(&9001), "{picked:?}");
        assert!(
            picked.contains(&9000) && picked.contains(&9002),
            "{picked:?}"
        );
    }

    #[test]
    fn no_healthy_target_picks_none() {
        let p = pool(2);
        for t in p.targets() {
            t.set_healthy(false);
        }
        assert!(p.pick().unwrap().is_none());
    }

    #[test]
    fn in_flight_counts_until_dropped() {
        let p = pool(1);
        let a = p.pick().unwrap().unwrap();
        let b = p.pick().unwrap().unwrap().upgraded();
        assert_eq!(p.in_flight(), 2);
        assert_eq!(p.targets()[0].upgraded(), 1);
        drop(a);
        drop(b);
        assert_eq!(p.in_flight(), 0);
        assert_eq!(p.targets()[0].upgraded(), 0);
    }

    #[test]
    fn a_retired_pool_refuses_picks_and_leaves_no_count() {
        let p = pool(1);
        p.retire();
        assert!(p.pick().is_err());
        assert_eq!(p.in_flight(), 0);
    }
}
