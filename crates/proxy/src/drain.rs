//! Drain: after a switch, wait for the old release's work to finish before
//! anything stops it.
//!
//! Requests in flight finish normally. Upgraded connections (WebSockets) are
//! left open until they close on their own; only when `timeout` passes are
//! they closed, properly (see `tunnel`). The pool was retired by the switch,
//! so its in-flight count can only go down.

use std::time::{Duration, Instant};

use crate::target::Pool;

/// Extra time, after closing upgraded connections, for their close handshakes.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// What a drain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// The timeout passed with work still in flight.
    pub timed_out: bool,
    /// Upgraded connections baton closed at the timeout.
    pub closed_upgraded: usize,
    /// Still in flight when the drain gave up (0 when it completed).
    pub abandoned: usize,
    pub elapsed: Duration,
}

/// Waits until nothing is in flight on `pool`, or `timeout` passes.
pub async fn drain(pool: &Pool, timeout: Duration) -> DrainReport {
    let started = Instant::now();
    if wait_idle(pool, started + timeout).await {
        return report(false, 0, 0, started);
    }
    let closed = pool.targets().iter().map(|t| t.upgraded()).sum();
    tracing::info!(color = %pool.color, closed, "drain timeout: closing upgraded connections");
    pool.closing.cancel();
    let idle = wait_idle(pool, Instant::now() + CLOSE_WAIT).await;
    let abandoned = if idle { 0 } else { pool.in_flight() };
    report(true, closed, abandoned, started)
}

/// True once the pool is idle; false if `deadline` came first.
async fn wait_idle(pool: &Pool, deadline: Instant) -> bool {
    let deadline = tokio::time::Instant::from_std(deadline);
    loop {
        let changed = pool.changed();
        if pool.in_flight() == 0 {
            return true;
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => return pool.in_flight() == 0,
        }
    }
}

fn report(
    timed_out: bool,
    closed_upgraded: usize,
    abandoned: usize,
    started: Instant,
) -> DrainReport {
    DrainReport {
        timed_out,
        closed_upgraded,
        abandoned,
        elapsed: started.elapsed(),
    }
}
