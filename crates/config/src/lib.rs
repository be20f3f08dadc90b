//! baton's configuration: `baton.toml` parsed and validated into typed values.
//!
//! Everything a user can get wrong is caught here, before anything runs, and
//! reported as one line naming the file, the line and column where known, and
//! the key. The rest of baton only ever sees a valid [`Config`].

mod duration;
mod raw;
mod template;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use template::{Template, Vars, INSTANCE_VARS, SMOKE_VARS};

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
    /// Unix socket of the control API that the CLI talks to.
    pub control_socket: PathBuf,
    /// Directory for the SQLite state and the apps' logs.
    pub state_dir: PathBuf,
    pub services: BTreeMap<String, ServiceConfig>,
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

/// One service: how to run it, how to tell it is healthy, how to switch to it.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub hosts: Vec<HostPattern>,
    pub runtime: RuntimeKind,
    pub command: Vec<Template>,
    pub env: BTreeMap<String, Template>,
    pub workdir: Template,
    /// Instances per color, load balanced.
    pub instances: usize,
    /// Time between SIGTERM and SIGKILL when an instance is stopped.
    pub stop_timeout: Duration,
    pub health: HealthConfig,
    pub switch: SwitchConfig,
}

/// Which runtime starts a service's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    Process,
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
        raw.validate(path)
    }
}

fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map(|s| s.start).unwrap_or(0).min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        message: e.message().replace('\n', " ").trim().to_string(),
    }
}

#[cfg(test)]
mod tests;
