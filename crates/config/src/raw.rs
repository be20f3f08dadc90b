//! The file's shape as serde sees it, and its conversion into typed values.
//!
//! Unknown keys are rejected (`deny_unknown_fields`) so that a misspelt key is
//! an error with its line, never a silently ignored setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::canary::{self, Canary};
use crate::fleet::{self, Host, RawPlacement};
use crate::{
    CanaryConfig, Config, ConfigError, HealthConfig, HostPattern, MetricsConfig, ProxyConfig,
    RuntimeKind, ServiceConfig, SwitchConfig, Template,
};
use crate::{INSTANCE_VARS, SMOKE_VARS};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    proxy: Proxy,
    #[serde(default)]
    metrics: Metrics,
    #[serde(default)]
    control: Control,
    #[serde(default)]
    state: State,
    /// Spanned, so that an error about a whole table (a missing key) can
    /// name its line.
    #[serde(default)]
    services: BTreeMap<String, toml::Spanned<Service>>,
    /// Machines services run on, reached over SSH.
    #[serde(default)]
    hosts: BTreeMap<String, Host>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Proxy {
    #[serde(default = "default_listen")]
    listen: Vec<SocketAddr>,
    #[serde(default = "default_workers")]
    workers: usize,
    #[serde(default = "secs::<5>", with = "crate::duration")]
    connect_timeout: Duration,
    #[serde(default = "secs::<60>", with = "crate::duration")]
    response_timeout: Duration,
    #[serde(default = "secs::<75>", with = "crate::duration")]
    idle_timeout: Duration,
}

impl Default for Proxy {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            workers: default_workers(),
            connect_timeout: secs::<5>(),
            response_timeout: secs::<60>(),
            idle_timeout: secs::<75>(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Metrics {
    #[serde(default)]
    listen: Option<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    #[serde(default = "default_socket")]
    socket: PathBuf,
}

impl Default for Control {
    fn default() -> Self {
        Self {
            socket: default_socket(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    #[serde(default = "default_state_dir")]
    dir: PathBuf,
}

impl Default for State {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Service {
    #[serde(default = "default_hosts")]
    hosts: Vec<String>,
    #[serde(default = "default_runtime")]
    runtime: String,
    /// Required with the process runtime; with docker, absent means the
    /// image's own command.
    #[serde(default)]
    command: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Process runtime only; absent means the config file's directory.
    #[serde(default)]
    workdir: Option<String>,
    /// Docker runtime only.
    #[serde(default)]
    image: Option<String>,
    /// Docker runtime only: the port the app listens on inside the container.
    #[serde(default)]
    port: Option<u16>,
    #[serde(default = "one")]
    instances: usize,
    #[serde(default = "secs::<10>", with = "crate::duration")]
    stop_timeout: Duration,
    #[serde(default)]
    health: Health,
    #[serde(default)]
    switch: Switch,
    #[serde(default = "default_strategy")]
    strategy: String,
    #[serde(default)]
    canary: Option<Canary>,
    /// Hosts to run on; absent: this machine.
    #[serde(default)]
    on: Option<Vec<String>>,
    /// A release tarball to unpack on the hosts.
    #[serde(default)]
    artifact: Option<String>,
    #[serde(default)]
    deliver: Option<String>,
    /// Who moves the traffic: "builtin" (the default) or "haproxy".
    #[serde(default)]
    traffic: Option<String>,
    #[serde(default)]
    haproxy: Option<crate::traffic::Haproxy>,
    #[serde(default)]
    nginx: Option<crate::traffic::Nginx>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Health {
    #[serde(default = "default_health_path")]
    path: String,
    #[serde(default = "millis::<1000>", with = "crate::duration")]
    interval: Duration,
    #[serde(default = "secs::<1>", with = "crate::duration")]
    timeout: Duration,
    #[serde(default = "two")]
    healthy_threshold: u32,
    #[serde(default = "three")]
    unhealthy_threshold: u32,
    #[serde(default = "secs::<60>", with = "crate::duration")]
    deadline: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            path: default_health_path(),
            interval: millis::<1000>(),
            timeout: secs::<1>(),
            healthy_threshold: two(),
            unhealthy_threshold: three(),
            deadline: secs::<60>(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Switch {
    #[serde(default = "secs::<30>", with = "crate::duration")]
    drain_timeout: Duration,
    #[serde(default = "secs::<300>", with = "crate::duration")]
    keep_previous: Duration,
    #[serde(default)]
    smoke: Option<Vec<String>>,
    #[serde(default = "secs::<60>", with = "crate::duration")]
    smoke_timeout: Duration,
}

impl Default for Switch {
    fn default() -> Self {
        Self {
            drain_timeout: secs::<30>(),
            keep_previous: secs::<300>(),
            smoke: None,
            smoke_timeout: secs::<60>(),
        }
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([127, 0, 0, 1], 8080))]
}
/// One worker per core, as nginx's `worker_processes auto`.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
fn default_socket() -> PathBuf {
    PathBuf::from(".baton/baton.sock")
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(".baton")
}
fn default_hosts() -> Vec<String> {
    vec!["*".to_string()]
}
fn default_runtime() -> String {
    "process".to_string()
}
fn default_strategy() -> String {
    "blue-green".to_string()
}
fn default_health_path() -> String {
    "/healthz".to_string()
}
fn one() -> usize {
    1
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}
fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}
fn millis<const N: u64>() -> Duration {
    Duration::from_millis(N)
}

/// Builds the error for one key of the file.
pub(crate) struct Culprit<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Culprit<'_> {
    pub(crate) fn err(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// An error about the text at byte `offset`, named by its line and column.
    pub(crate) fn err_at(&self, offset: usize, message: impl Into<String>) -> ConfigError {
        crate::located(self.path, self.text, offset, message.into())
    }
}

impl File {
    pub(crate) fn validate(self, path: &Path, text: &str) -> Result<Config, ConfigError> {
        let at = Culprit { path, text };
        let base = path.parent().unwrap_or(Path::new("."));
        if self.proxy.listen.is_empty() {
            return Err(at.err("proxy.listen", "needs at least one address"));
        }
        if !(1..=1024).contains(&self.proxy.workers) {
            return Err(at.err("proxy.workers", "must be between 1 and 1024"));
        }
        for (key, d) in [
            ("proxy.connect_timeout", self.proxy.connect_timeout),
            ("proxy.response_timeout", self.proxy.response_timeout),
            ("proxy.idle_timeout", self.proxy.idle_timeout),
        ] {
            nonzero(&at, key, d)?;
        }
        if let Some(addr) = self
            .metrics
            .listen
            .filter(|a| self.proxy.listen.contains(a))
        {
            return Err(at.err(
                "metrics.listen",
                format!("{addr} is also in proxy.listen; the metrics need their own address"),
            ));
        }
        let hosts = fleet::hosts(&at, self.hosts, base)?;
        let mut services = BTreeMap::new();
        let mut claimed: BTreeMap<HostPattern, String> = BTreeMap::new();
        for (name, raw) in self.services {
            let table = raw.span().start;
            let service = raw.into_inner().validate(&at, &name, base, table, &hosts)?;
            for host in &service.hosts {
                if let Some(other) = claimed.insert(host.clone(), name.clone()) {
                    return Err(at.err(
                        format!("services.{name}.hosts"),
                        format!("host pattern \"{host}\" is already claimed by service {other:?}"),
                    ));
                }
            }
            services.insert(name, service);
        }
        Ok(Config {
            path: path.to_path_buf(),
            proxy: ProxyConfig {
                listen: self.proxy.listen,
                workers: self.proxy.workers,
                connect_timeout: self.proxy.connect_timeout,
                response_timeout: self.proxy.response_timeout,
                idle_timeout: self.proxy.idle_timeout,
            },
            metrics: MetricsConfig {
                listen: self.metrics.listen,
            },
            control_socket: base.join(self.control.socket),
            state_dir: base.join(self.state.dir),
            services,
            hosts,
        })
    }
}

impl Service {
    /// `table` is where the service's table starts in the text.
    fn validate(
        self,
        at: &Culprit,
        name: &str,
        base: &Path,
        table: usize,
        machines: &BTreeMap<String, fleet::HostConfig>,
    ) -> Result<ServiceConfig, ConfigError> {
        let key = |k: &str| format!("services.{name}.{k}");
        if !valid_name(name) {
            return Err(at.err(
                format!("services.{name}"),
                "service names may use only letters, digits, '-' and '_'",
            ));
        }
        let runtime = match self.runtime.as_str() {
            "process" => RuntimeKind::Process,
            "docker" => RuntimeKind::Docker,
            other => {
                return Err(at.err(
                    key("runtime"),
                    format!("unknown runtime {other:?} (expected \"process\" or \"docker\")"),
                ))
            }
        };
        let strategy = canary::strategy(at, &key("strategy"), &self.strategy)?;
        let command = match (runtime, self.command) {
            (RuntimeKind::Process, None) => {
                return Err(at.err_at(
                    table,
                    format!("services.{name}: missing field `command` (the program to run)"),
                ))
            }
            (RuntimeKind::Process, Some(c))
                if c.first().filter(|p| !p.trim().is_empty()).is_none() =>
            {
                return Err(at.err(key("command"), "must name a program to run"))
            }
            (RuntimeKind::Docker, Some(c)) if c.is_empty() => {
                return Err(at.err(
                    key("command"),
                    "must not be empty (leave it out to run the image's own command)",
                ))
            }
            (_, c) => c.unwrap_or_default(),
        };
        let (image, port) = match runtime {
            RuntimeKind::Process => {
                let process = "is only for runtime = \"docker\" (this service runs a process";
                if self.image.is_some() {
                    return Err(at.err(key("image"), format!("{process})")));
                }
                if self.port.is_some() {
                    let given = "which is given its port as {port} and $PORT";
                    return Err(at.err(key("port"), format!("{process}, {given})")));
                }
                (None, None)
            }
            RuntimeKind::Docker => {
                if self.workdir.is_some() {
                    let why = "the image sets the container's working directory";
                    return Err(at.err(
                        key("workdir"),
                        format!("is not allowed with runtime = \"docker\" ({why})"),
                    ));
                }
                let image = match self.image {
                    None => {
                        return Err(at.err(key("image"), "is required with runtime = \"docker\""))
                    }
                    Some(i) if i.trim().is_empty() => {
                        return Err(at.err(key("image"), "must name an image"))
                    }
                    Some(i) => {
                        Template::new(&i, INSTANCE_VARS).map_err(|m| at.err(key("image"), m))?
                    }
                };
                if self.port == Some(0) {
                    return Err(at.err(key("port"), "must be between 1 and 65535"));
                }
                (Some(image), self.port)
            }
        };
        let hosts = self
            .hosts
            .iter()
            .map(|h| HostPattern::parse(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| at.err(key("hosts"), m))?;
        if hosts.is_empty() {
            return Err(at.err(key("hosts"), "needs at least one pattern (\"*\" for all)"));
        }
        let templates = |k: &str, items: &[String], vars: &[&str]| {
            items
                .iter()
                .map(|s| Template::new(s, vars))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| at.err(key(k), m))
        };
        let command = templates("command", &command, INSTANCE_VARS)?;
        let env = self
            .env
            .iter()
            .map(|(k, v)| {
                Template::new(v, INSTANCE_VARS)
                    .map(|t| (k.clone(), t))
                    .map_err(|m| at.err(key(&format!("env.{k}")), m))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let placement = RawPlacement {
            on: self.on,
            artifact: self.artifact,
            deliver: self.deliver,
        }
        .validate(at, name, runtime, machines, base)?;
        // On a remote host the workdir is the host's, so it is not anchored here.
        let workdir = match placement.on.is_empty() {
            true => base.join(self.workdir.as_deref().unwrap_or(".")),
            false => PathBuf::from(self.workdir.as_deref().unwrap_or(".")),
        };
        let workdir = Template::new(&workdir.to_string_lossy(), INSTANCE_VARS)
            .map_err(|m| at.err(key("workdir"), m))?;
        if self.instances == 0 {
            return Err(at.err(key("instances"), "must be at least 1"));
        }
        let smoke = match self.switch.smoke {
            Some(cmd) if cmd.is_empty() => {
                return Err(at.err(key("switch.smoke"), "must name a program to run"))
            }
            Some(cmd) => Some(templates("switch.smoke", &cmd, SMOKE_VARS)?),
            None => None,
        };
        let h = self.health;
        if !h.path.starts_with('/') {
            return Err(at.err(key("health.path"), "must start with '/'"));
        }
        for (k, d) in [
            ("health.interval", h.interval),
            ("health.timeout", h.timeout),
            ("health.deadline", h.deadline),
            ("switch.drain_timeout", self.switch.drain_timeout),
            ("switch.smoke_timeout", self.switch.smoke_timeout),
        ] {
            nonzero(at, &key(k), d)?;
        }
        for (k, n) in [
            ("health.healthy_threshold", h.healthy_threshold),
            ("health.unhealthy_threshold", h.unhealthy_threshold),
        ] {
            if n == 0 {
                return Err(at.err(key(k), "must be at least 1"));
            }
        }
        let traffic = crate::traffic::traffic(
            at,
            name,
            self.traffic.as_deref(),
            self.haproxy,
            self.nginx,
            base,
        )?;
        let canary = match self.canary {
            Some(c) => c.validate(at, &key("canary"))?,
            None => CanaryConfig::default(),
        };
        Ok(ServiceConfig {
            name: name.to_string(),
            hosts,
            runtime,
            command,
            env,
            workdir,
            image,
            port,
            instances: self.instances,
            stop_timeout: self.stop_timeout,
            health: HealthConfig {
                path: h.path,
                interval: h.interval,
                timeout: h.timeout,
                healthy_threshold: h.healthy_threshold,
                unhealthy_threshold: h.unhealthy_threshold,
                deadline: h.deadline,
            },
            switch: SwitchConfig {
                drain_timeout: self.switch.drain_timeout,
                keep_previous: self.switch.keep_previous,
                smoke,
                smoke_timeout: self.switch.smoke_timeout,
            },
            strategy,
            canary,
            on: placement.on,
            artifact: placement.artifact,
            deliver: placement.deliver,
            traffic,
        })
    }
}

/// Names of services and hosts: letters, digits, '-' and '_'.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub(crate) fn nonzero(at: &Culprit, key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        return Err(at.err(key, "must be longer than 0s"));
    }
    Ok(())
}
