//! baton's configuration: `baton.toml` parsed and validated into typed values.
//!
//! Everything a user can get wrong is caught here, before anything runs, and
//! reported as one line naming the file, the line and column where known, and
//! the key. The rest of baton only ever sees a valid [`Config`].

mod canary;
mod duration;
mod fleet;
mod raw;
mod template;
mod traffic;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::{Inconclusive, Pause, Plan, Step, Sticky, Weight};

pub use fleet::{Deliver, HostConfig};
pub use template::{Template, Vars, INSTANCE_VARS, SMOKE_VARS};
pub use traffic::{HaproxyConfig, NginxConfig, TrafficConfig};

/// A configuration that failed to load; its `Display` is the one line a user sees.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The io error is in the message rather than the error's source, so
    /// that printing the error with its causes shows it once.
    #[error("{path}: cannot read: {io}")]
    Read { path: PathBuf, io: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from; relative paths inside were resolved against its directory.
    pub path: PathBuf,
    pub proxy: ProxyConfig,
    /// Where the orchestrator's own Prometheus metrics are served, if anywhere.
    pub metrics: MetricsConfig,
    /// Unix socket of the control API that the CLI talks to.
    pub control_socket: PathBuf,
    /// Directory for the SQLite state and the apps' logs.
    pub state_dir: PathBuf,
    pub services: BTreeMap<String, ServiceConfig>,
    /// Machines reached over SSH, by name (`[hosts.NAME]`).
    pub hosts: BTreeMap<String, HostConfig>,
}

/// The data plane's listeners and timeouts.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: Vec<SocketAddr>,
    /// Data-plane threads; each serves connections on its own.
    pub workers: usize,
    /// Longest wait for a TCP connection to a target.
    pub connect_timeout: Duration,
    /// Longest wait for a target's response headers once the request is sent.
    pub response_timeout: Duration,
    /// How long an idle client keep-alive connection is kept open.
    pub idle_timeout: Duration,
}

/// baton's own metrics endpoint (`[metrics]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address of the `/metrics` listener; `None` (the default) opens none,
    /// so that no port is taken unless asked for.
    pub listen: Option<SocketAddr>,
}

/// One service: how to run it, how to tell it is healthy, how to switch to it.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub runtime: RuntimeKind,
    /// The program and its arguments. With [`RuntimeKind::Docker`] it is the
    /// container's command (after the image's entrypoint), and empty means
    /// the image's own.
    pub command: Vec<Template>,
    /// `PORT` comes on top of these.
    pub env: BTreeMap<String, Template>,
    /// Where a process runs (the process runtime only; the config file's
    /// directory unless set).
    pub workdir: Template,
    /// The image a container runs, `{version}` and the other instance
    /// placeholders filled in; `Some` exactly with [`RuntimeKind::Docker`].
    pub image: Option<Template>,
    /// The port the app listens on inside its container (docker only).
    /// `None`: the same number as the host port baton picks, given to the
    /// app as `$PORT` and `{port}`, as for a process.
    pub port: Option<u16>,
    /// Instances per color, load balanced.
    pub instances: usize,
    /// Time between SIGTERM and SIGKILL when an instance is stopped.
    pub stop_timeout: Duration,
    pub health: HealthConfig,
    pub switch: SwitchConfig,
    /// What `baton deploy` does unless told otherwise (`--canary`).
    pub strategy: Strategy,
    /// How a canary rollout goes; always present (defaults when the table is
    /// absent) so that `baton deploy --canary` works on any service.
    pub canary: CanaryConfig,
    /// The hosts (names in [`Config::hosts`]) each color runs `instances`
    /// on; empty: this machine.
    pub on: Vec<String>,
    /// A release tarball (a local path, `{version}` filled in) unpacked on
    /// each host into `releases/{version}`, where the service then runs.
    pub artifact: Option<Template>,
    pub deliver: Deliver,
    /// Who moves the service's traffic.
    pub traffic: TrafficConfig,
}

/// How a deploy moves traffic to the candidate (`strategy`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strategy {
    /// All at once, after the health checks and the smoke test pass.
    #[default]
    BlueGreen,
    /// Step by step, each step judged by the analysis before the next.
    Canary,
}

/// A service's canary rollout (`[services.NAME.canary]`).
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryConfig {
    /// The steps, and when failed or inconclusive intervals end the rollout.
    pub plan: Plan,
    /// How a user keeps seeing one version while both serve.
    pub sticky: Sticky,
    /// A rollout not finished by then is rolled back, so that a forgotten
    /// `pause = "forever"` does not keep two versions running for good.
    pub deadline: Duration,
    /// What each interval checks about the candidate.
    pub analysis: AnalysisConfig,
}

impl Default for CanaryConfig {
    /// What an absent `[services.NAME.canary]` table means: 10% for a minute,
    /// 50% for a minute, then everything; errors watched; one hour at most.
    fn default() -> Self {
        let minute = Pause::For(Duration::from_secs(60));
        let step = |percent| Step {
            weight: Weight::from_percent(percent).expect("a valid default weight"),
            pause: minute,
        };
        Self {
            plan: Plan {
                steps: vec![step(10.0), step(50.0)],
                failure_limit: 2,
                inconclusive: Inconclusive::Pause,
            },
            sticky: Sticky::None,
            deadline: Duration::from_secs(3600),
            analysis: AnalysisConfig::default(),
        }
    }
}

/// How a canary is judged, once every `interval` (`[services.NAME.canary.analysis]`).
///
/// The failure limit and what an inconclusive interval does are in the
/// [`Plan`], since they steer the rollout rather than measure it.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisConfig {
    /// How often the candidate is judged, over the requests since the last time.
    pub interval: Duration,
    /// Fewer requests on the candidate in an interval make it inconclusive,
    /// since a handful of requests proves nothing; 0 never does.
    pub min_requests: u64,
    /// Highest share (0 to 1) of the candidate's responses that may be 5xx;
    /// `Some(0.01)` unless set, so that a canary always watches errors.
    pub max_error_rate: Option<f64>,
    /// Highest p99 latency the candidate may have.
    pub max_p99: Option<Duration>,
    /// Highest candidate p99 / live p99 in the same interval, which tracks
    /// a slowdown whatever the absolute latency.
    pub max_p99_ratio: Option<f64>,
    /// Queries a Prometheus server must answer within bounds.
    pub prometheus: Vec<PrometheusCheck>,
    /// URLs that must answer 2xx to the deploy's JSON.
    pub webhook: Vec<WebhookCheck>,
}

impl Default for AnalysisConfig {
    /// What an absent `[services.NAME.canary.analysis]` table (or key) means.
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            min_requests: 100,
            max_error_rate: Some(0.01),
            max_p99: None,
            max_p99_ratio: None,
            prometheus: Vec::new(),
            webhook: Vec::new(),
        }
    }
}

/// A metric from the user's Prometheus that must stay within bounds
/// (`[[services.NAME.canary.analysis.prometheus]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PrometheusCheck {
    /// `http://host:port` (no trailing slash), so the API path can be appended.
    pub server: String,
    /// PromQL giving a scalar or a one-sample vector.
    pub query: String,
    /// The value fails above this.
    pub max: Option<f64>,
    /// The value fails below this.
    pub min: Option<f64>,
}

/// A URL that is POSTed the deploy's JSON each interval; a 2xx answer passes
/// (`[[services.NAME.canary.analysis.webhook]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookCheck {
    /// An `http://` URL.
    pub url: String,
    /// No answer by then fails the check, so a hung hook cannot stall the rollout.
    pub timeout: Duration,
}

/// Which runtime starts a service's instances (`runtime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RuntimeKind {
    /// A local process in its own process group.
    #[default]
    Process,
    /// A container on the local Docker Engine.
    Docker,
}

/// The active health check that gates the switch and keeps routing honest.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// A candidate not healthy by then fails the deploy.
    pub deadline: Duration,
}

/// How traffic moves from the live color to the candidate.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    pub drain_timeout: Duration,
    pub keep_previous: Duration,
    /// Run against the candidate's preview route before the switch.
    pub smoke: Option<Vec<Template>>,
    /// Longest the smoke command may run before it counts as failed.
    pub smoke_timeout: Duration,
}

/// A Host header pattern a service answers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com`; holds `.example.com`.
    Suffix(String),
    /// `*`: every request no other pattern claims.
    Default,
}

impl HostPattern {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if s == "*" {
            return Ok(Self::Default);
        }
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s.as_str()),
        };
        let valid = !name.is_empty()
            && name
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        if !valid {
            return Err(format!(
                "invalid host pattern {s:?} (expected \"name.example\", \"*.example\" or \"*\")"
            ));
        }
        Ok(if wild {
            Self::Suffix(format!(".{name}"))
        } else {
            Self::Exact(name.to_string())
        })
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(h) => f.write_str(h),
            Self::Suffix(s) => write!(f, "*{s}"),
            Self::Default => f.write_str("*"),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_error = |io| ConfigError::Read {
            path: path.to_path_buf(),
            io,
        };
        // Absolute, so that paths inside resolve the same from any directory.
        let absolute = std::path::absolute(path).map_err(read_error)?;
        let text = std::fs::read_to_string(&absolute).map_err(read_error)?;
        Self::parse(&absolute, &text)
    }

    /// Validates configuration text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: raw::File = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
        raw.validate(path, text)
    }
}

fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map(|s| s.start).unwrap_or(0);
    located(path, text, offset, e.message().to_string())
}

/// An error about the text at byte `offset`, named by its line and column.
fn located(path: &Path, text: &str, offset: usize, message: String) -> ConfigError {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        message: message.replace('\n', " ").trim().to_string(),
    }
}

#[cfg(test)]
mod tests;
