//! A load client that keeps exact, honest counts.
//!
//! `baton demo` prints its numbers as a per-phase table and integration tests
//! use it to assert that a blue-green switch loses zero requests. So it
//! counts every attempt exactly once: connection-level failures (refused,
//! reset, EOF mid-response, timeouts) apart from non-2xx answers, 2xx
//! answers per serving version, and it keeps going (and counting) across
//! reconnects. Each task owns one keep-alive HTTP/1.1 connection.

mod client;
mod stats;
mod worker;

#[cfg(test)]
mod test_server;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use stats::Stats;

use client::Target;
use stats::{Outcome, Recorder};
use worker::Worker;

/// Upper bound on [`get_once`], so a hung server cannot hang a test.
const GET_ONCE_TIMEOUT: Duration = Duration::from_secs(60);

/// What load to generate and against what.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Target URL, e.g. `http://127.0.0.1:8080/` (plain http only).
    pub url: String,
    /// Host header to send instead of the URL's authority.
    pub host_header: Option<String>,
    /// Concurrent connections, each with its own task.
    pub connections: usize,
    /// Limit for connecting and for each request including its body.
    pub request_timeout: Duration,
    /// Pause between requests on one connection; zero means flat out.
    pub pause_between_requests: Duration,
    /// The request method (GET by default). A POST is never retried by a
    /// proxy, so a lost request cannot hide behind a retry.
    pub method: hyper::Method,
}

impl LoadConfig {
    /// One connection, 5 s timeout, no pause: tweak fields from here.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            host_header: None,
            connections: 1,
            request_timeout: Duration::from_secs(5),
            pause_between_requests: Duration::ZERO,
            method: hyper::Method::GET,
        }
    }
}

/// A running load; ask it for numbers, then [`stop`](LoadHandle::stop) it.
///
/// Dropping the handle without stopping also winds the tasks down.
pub struct LoadHandle {
    recorder: Arc<Recorder>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Starts the load on the current tokio runtime.
///
/// Must be called from within a tokio runtime. A URL that cannot be used
/// starts no tasks and shows up as one connection error (with the reason in
/// `first_errors`), so it can never pass for a loss-free run.
pub fn start(cfg: LoadConfig) -> LoadHandle {
    let recorder = Arc::new(Recorder::default());
    let (stop, stop_rx) = watch::channel(false);
    let tasks = match Target::parse(&cfg.url, cfg.host_header.as_deref()) {
        Ok(mut target) => {
            target.method = cfg.method.clone();
            spawn_workers(&cfg, target, &recorder, stop_rx)
        }
        Err(e) => {
            recorder.record(Outcome::ConnError(format!("invalid load target: {e:#}")));
            Vec::new()
        }
    };
    LoadHandle {
        recorder,
        stop,
        tasks,
    }
}

/// Spawns one task per configured connection.
fn spawn_workers(
    cfg: &LoadConfig,
    target: Target,
    recorder: &Arc<Recorder>,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let worker = Worker {
        target: Arc::new(target),
        recorder: Arc::clone(recorder),
        stop,
        request_timeout: cfg.request_timeout,
        pause: cfg.pause_between_requests,
    };
    (0..cfg.connections)
        .map(|_| tokio::spawn(worker.clone().run()))
        .collect()
}

impl LoadHandle {
    /// Totals since start.
    pub fn snapshot(&self) -> Stats {
        self.recorder.snapshot()
    }

    /// Stats since the previous `take_phase` (or start); begins a new phase.
    pub fn take_phase(&self) -> Stats {
        self.recorder.take_phase()
    }

    /// Stops every task after its current request and returns the totals.
    pub async fn stop(mut self) -> Stats {
        self.stop.send_replace(true);
        for task in std::mem::take(&mut self.tasks) {
            if let Err(e) = task.await {
                eprintln!("loadgen: a load task ended abnormally: {e}");
            }
        }
        self.recorder.snapshot()
    }
}

impl std::fmt::Debug for LoadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadHandle")
            .field("tasks", &self.tasks.len())
            .field("stopping", &*self.stop.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for LoadHandle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// One GET on a fresh connection (`Connection: close`): `(status, body)`.
///
/// A convenience for tests and health probes; bounded by a 60 s timeout.
pub async fn get_once(url: &str, host_header: Option<&str>) -> anyhow::Result<(u16, String)> {
    let target = Target::parse(url, host_header)?;
    let exchange = async {
        let mut sender = client::connect(&target).await?;
        let answer = client::fetch(&mut sender, &target, true).await?;
        let body = String::from_utf8_lossy(&answer.body).into_owned();
        anyhow::Ok((answer.status.as_u16(), body))
    };
    tokio::time::timeout(GET_ONCE_TIMEOUT, exchange)
        .await
        .with_context(|| format!("GET {url} timed out after {GET_ONCE_TIMEOUT:?}"))?
        .with_context(|| format!("GET {url}"))
}
