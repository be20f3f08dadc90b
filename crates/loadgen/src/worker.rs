//! One load task: a single keep-alive connection, requests in a loop.
//!
//! The loop never gives up: a failure is counted, the connection dropped,
//! and the next iteration reconnects. That is what lets a test watch traffic
//! ride through a backend restart or a blue-green switch and account for
//! every single request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::client::{self, Sender, Target, UNKNOWN_VERSION};
use crate::stats::{Outcome, Recorder};

/// Pause after a failed connect so a dead backend is not hammered in a spin.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(20);

/// Everything one task needs; cheap to clone per task.
#[derive(Clone)]
pub(crate) struct Worker {
    pub(crate) target: Arc<Target>,
    pub(crate) recorder: Arc<Recorder>,
    pub(crate) stop: watch::Receiver<bool>,
    pub(crate) request_timeout: Duration,
    pub(crate) pause: Duration,
}

impl Worker {
    /// Sends requests until told to stop; the current request always finishes.
    pub(crate) async fn run(mut self) {
        let mut conn: Option<Sender> = None;
        while !self.stopping() {
            let Some(sender) = self.connection(conn.take()).await else {
                self.pause(RECONNECT_BACKOFF + self.pause).await;
                continue;
            };
            conn = self.request(sender).await;
            if !self.pause.is_zero() {
                self.pause(self.pause).await;
            }
        }
    }

    /// Whether `stop` has been requested.
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Reuses the kept connection if it is still open, otherwise reconnects.
    ///
    /// A failed connect is a failed attempt and is counted as such.
    async fn connection(&self, kept: Option<Sender>) -> Option<Sender> {
        if let Some(mut sender) = kept {
            if client::still_usable(&mut sender, self.request_timeout).await {
                return Some(sender);
            }
        }
        let connecting = tokio::time::timeout(self.request_timeout, client::connect(&self.target));
        match connecting.await {
            Ok(Ok(sender)) => {
                self.recorder.record(Outcome::Connected);
                Some(sender)
            }
            Ok(Err(e)) => {
                self.recorder.record(Outcome::ConnError(format!("{e:#}")));
                None
            }
            Err(_) => {
                let msg = format!("connect timed out after {:?}", self.request_timeout);
                self.recorder.record(Outcome::ConnError(msg));
                None
            }
        }
    }

    /// Sends one request and records its outcome.
    ///
    /// Returns the sender when the connection may be reused.
    async fn request(&self, mut sender: Sender) -> Option<Sender> {
        let started = Instant::now();
        let fetching = client::fetch(&mut sender, &self.target, false);
        let answer = match tokio::time::timeout(self.request_timeout, fetching).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.recorder.record(Outcome::ConnError(format!("{e:#}")));
                return None;
            }
            Err(_) => {
                let msg = format!("request timed out after {:?}", self.request_timeout);
                self.recorder.record(Outcome::ConnError(msg));
                return None;
            }
        };
        let latency = started.elapsed();
        let outcome = if answer.status.is_success() {
            let version = answer.version.as_deref().unwrap_or(UNKNOWN_VERSION);
            Outcome::Ok { version, latency }
        } else {
            let code = answer.status.as_u16();
            Outcome::Status { code, latency }
        };
        self.recorder.record(outcome);
        Some(sender)
    }

    /// Sleeps for `duration`, waking early if asked to stop.
    async fn pause(&mut self, duration: Duration) {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            () = stopped(&mut self.stop) => {}
        }
    }
}

/// Resolves once a stop is requested (or the handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}
