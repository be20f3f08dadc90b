//! Runtimes start and stop a service's instances. The orchestrator only sees
//! the [`Runtime`] trait, so processes today and containers or remote hosts
//! later are interchangeable.

mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use baton_config::Template;
use baton_core::Color;
use serde::{Deserialize, Serialize};

pub use process::ProcessRuntime;

/// What to start: one instance of one release.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub service: String,
    pub version: String,
    pub color: Color,
    /// Which of the color's instances this is (0-based).
    pub index: usize,
    pub command: Vec<Template>,
    pub env: BTreeMap<String, Template>,
    pub workdir: Template,
    /// Where the instance's output goes.
    pub log: PathBuf,
}

/// A started instance, as recorded in the store so it can be found again
/// after baton restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub addr: SocketAddr,
    pub pid: u32,
    /// The process's start time in clock ticks since boot: with the pid, it
    /// tells our process from a later one that reused the pid.
    pub start_ticks: u64,
    pub log: PathBuf,
}

/// Why an instance could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("workdir {0} does not exist")]
    NoWorkdir(PathBuf),
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Starts and stops instances of some kind.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Starts an instance listening on a port the runtime chooses.
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError>;

    /// `None` while the instance runs; how it ended otherwise.
    fn exited(&self, instance: &Instance) -> Option<String>;

    /// Asks the instance to stop, and forces it after `grace`.
    async fn stop(&self, instance: &Instance, grace: Duration);

    /// The last lines of the instance's output, for error reports.
    fn log_tail(&self, instance: &Instance, lines: usize) -> String;
}
