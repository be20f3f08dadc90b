//! The machines a service runs on (`[hosts.NAME]`, a service's `on`) and
//! how its release gets there (`artifact`, `deliver`).
//!
//! Kept apart from the rest of a service's keys because they only make sense
//! together: a host named in `on` must be defined, a tarball must be pushed,
//! and so on, and all of that is checked here before anything connects.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::raw::Culprit;
use crate::{ConfigError, RuntimeKind, Template, INSTANCE_VARS};

/// A machine baton reaches over SSH (`[hosts.NAME]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostConfig {
    /// The name services use in `on`.
    pub name: String,
    /// What ssh connects to: an address or a name `~/.ssh/config` knows.
    pub address: String,
    /// `None`: as `~/.ssh/config` says (or the local user).
    pub user: Option<String>,
    pub port: Option<u16>,
    /// The only key offered when set; otherwise the agent's and ssh's defaults.
    pub identity: Option<PathBuf>,
    /// A known_hosts file of its own instead of the user's.
    pub known_hosts: Option<PathBuf>,
    /// baton's working area on the host (releases, logs); relative paths are
    /// relative to the login directory.
    pub dir: String,
    /// The host's Docker Engine socket, reached through the SSH connection.
    pub docker_socket: String,
}

/// How a release reaches remote hosts (`deliver`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Deliver {
    /// baton sends it over ssh, to the hosts that lack it.
    #[default]
    Push,
    /// Each host fetches it itself (an image from its registry).
    Pull,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Host {
    address: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    known_hosts: Option<String>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    docker_socket: Option<String>,
}

/// Validates every `[hosts.NAME]` table.
pub(crate) fn hosts(
    at: &Culprit,
    raw: BTreeMap<String, Host>,
    base: &Path,
) -> Result<BTreeMap<String, HostConfig>, ConfigError> {
    raw.into_iter()
        .map(|(name, host)| {
            let host = host.validate(at, &name, base)?;
            Ok((name, host))
        })
        .collect()
}

impl Host {
    fn validate(self, at: &Culprit, name: &str, base: &Path) -> Result<HostConfig, ConfigError> {
        let key = |k: &str| format!("hosts.{name}.{k}");
        if !crate::raw::valid_name(name) {
            return Err(at.err(
                format!("hosts.{name}"),
                "host names may use only letters, digits, '-' and '_'",
            ));
        }
        let address = self.address.trim();
        if address.is_empty() || address.starts_with('-') || address.contains(char::is_whitespace) {
            return Err(at.err(key("address"), "must be an address or a host name"));
        }
        if self.port == Some(0) {
            return Err(at.err(key("port"), "must be between 1 and 65535"));
        }
        if let Some(user) = &self.user {
            if user.is_empty() || user.starts_with('-') || user.contains(char::is_whitespace) {
                return Err(at.err(key("user"), "must be a user name"));
            }
        }
        let dir = self.dir.unwrap_or_else(|| "baton".to_string());
        let shell_safe = |c: char| c.is_ascii_alphanumeric() || "/._-".contains(c);
        if dir.is_empty() || !dir.chars().all(shell_safe) {
            return Err(at.err(
                key("dir"),
                "may use only letters, digits and / . _ - (a relative path starts at the login directory)",
            ));
        }
        let docker_socket = self
            .docker_socket
            .unwrap_or_else(|| "/var/run/docker.sock".to_string());
        if !docker_socket.starts_with('/') {
            return Err(at.err(key("docker_socket"), "must be an absolute path on the host"));
        }
        Ok(HostConfig {
            name: name.to_string(),
            docker_socket,
            address: address.to_string(),
            user: self.user,
            port: self.port,
            identity: self.identity.map(|p| local_path(base, &p)),
            known_hosts: self.known_hosts.map(|p| local_path(base, &p)),
            dir,
        })
    }
}

/// A path on this machine: `~` is left for ssh to expand, relative paths are
/// relative to the config file.
fn local_path(base: &Path, p: &str) -> PathBuf {
    if p.starts_with('~') {
        PathBuf::from(p)
    } else {
        base.join(p)
    }
}

/// A service's `on`, `artifact` and `deliver`, checked against the hosts.
pub(crate) struct Placement {
    pub(crate) on: Vec<String>,
    pub(crate) artifact: Option<Template>,
    pub(crate) deliver: Deliver,
}

/// The raw keys of [`Placement`], as the service's table has them.
pub(crate) struct RawPlacement {
    pub(crate) on: Option<Vec<String>>,
    pub(crate) artifact: Option<String>,
    pub(crate) deliver: Option<String>,
}

impl RawPlacement {
    pub(crate) fn validate(
        self,
        at: &Culprit,
        service: &str,
        runtime: RuntimeKind,
        hosts: &BTreeMap<String, HostConfig>,
        base: &Path,
    ) -> Result<Placement, ConfigError> {
        let key = |k: &str| format!("services.{service}.{k}");
        let on = match self.on {
            None => Vec::new(),
            Some(on) if on.is_empty() => {
                return Err(at.err(
                    key("on"),
                    "needs at least one host (leave it out to run on this machine)",
                ))
            }
            Some(on) => on,
        };
        for (i, name) in on.iter().enumerate() {
            if !hosts.contains_key(name) {
                let known = match hosts.keys().map(|h| format!("{h:?}")).collect::<Vec<_>>() {
                    k if k.is_empty() => "no [hosts.NAME] table is defined".to_string(),
                    k => format!("defined: {}", k.join(", ")),
                };
                return Err(at.err(key("on"), format!("unknown host {name:?} ({known})")));
            }
            if on[..i].contains(name) {
                return Err(at.err(key("on"), format!("host {name:?} is listed twice")));
            }
        }
        let deliver = match self.deliver.as_deref() {
            None | Some("push") => Deliver::Push,
            Some("pull") => Deliver::Pull,
            Some(other) => {
                return Err(at.err(
                    key("deliver"),
                    format!("unknown delivery {other:?} (expected \"push\" or \"pull\")"),
                ))
            }
        };
        let artifact = match self.artifact {
            None => None,
            Some(_) if on.is_empty() => {
                return Err(at.err(
                    key("artifact"),
                    "needs on = [...]: a release tarball is delivered to remote hosts",
                ))
            }
            Some(_) if runtime == RuntimeKind::Docker => {
                return Err(at.err(
                    key("artifact"),
                    "is for runtime = \"process\" (a container runs its image)",
                ))
            }
            Some(a) if a.trim().is_empty() => {
                return Err(at.err(key("artifact"), "must name a .tar.gz file"))
            }
            Some(a) => {
                let path = base.join(a);
                Some(
                    Template::new(&path.to_string_lossy(), INSTANCE_VARS)
                        .map_err(|m| at.err(key("artifact"), m))?,
                )
            }
        };
        if deliver == Deliver::Pull && runtime == RuntimeKind::Process {
            return Err(at.err(
                key("deliver"),
                "\"pull\" is for images, which hosts pull from a registry; tarballs are pushed",
            ));
        }
        Ok(Placement {
            on,
            artifact,
            deliver,
        })
    }
}
