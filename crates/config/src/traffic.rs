//! Who moves a service's traffic (`traffic`): baton's own proxy, or a load
//! balancer the user already runs (`[services.NAME.haproxy]`,
//! `[services.NAME.nginx]`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::raw::Culprit;
use crate::ConfigError;

/// A service's traffic backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TrafficConfig {
    /// baton's own proxy.
    #[default]
    Builtin,
    /// An HAProxy driven through its runtime API.
    Haproxy(HaproxyConfig),
    /// An nginx whose upstream file baton renders, tests and reloads.
    Nginx(NginxConfig),
}

/// An nginx upstream baton renders (`[services.NAME.nginx]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxConfig {
    /// Where `upstream NAME { ... }` is written; the user's config includes it.
    pub upstream_file: PathBuf,
    /// How nginx is told to load it.
    pub reload: Vec<String>,
    /// How nginx checks its config before that.
    pub test: Vec<String>,
    /// nginx's pid file: its workers tell when the old ones are done.
    pub pid_file: PathBuf,
    /// Where the server baton renders beside the upstream listens, so that
    /// a request through nginx confirms each reload; `None`: a free
    /// loopback port, picked when baton starts.
    pub confirm: Option<SocketAddr>,
    /// Where the proxying directives for the user's `location` are written,
    /// if baton is to render them.
    pub location_file: Option<PathBuf>,
    /// nginx's keep-alive toward clients in that location (`keepalive_timeout`):
    /// zero by default, as a reload closes idle client connections under
    /// the requests clients are sending on them.
    pub client_keepalive: Duration,
}

/// An HAProxy backend baton manages (`[services.NAME.haproxy]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyConfig {
    /// The runtime API's unix socket, at admin level.
    pub socket: PathBuf,
    /// The backend whose servers baton adds, weighs, drains and removes.
    pub backend: String,
    /// Where `show servers state` is written after every change, for an
    /// HAProxy that loads it when it reloads.
    pub state_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Haproxy {
    socket: PathBuf,
    backend: String,
    #[serde(default)]
    state_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Nginx {
    upstream_file: PathBuf,
    #[serde(default)]
    reload: Option<Vec<String>>,
    #[serde(default)]
    test: Option<Vec<String>>,
    #[serde(default)]
    pid_file: Option<PathBuf>,
    #[serde(default)]
    confirm: Option<String>,
    #[serde(default)]
    location_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "crate::duration::deserialize_opt")]
    client_keepalive: Option<Duration>,
}

/// Validates `traffic` and its table.
pub(crate) fn traffic(
    at: &Culprit,
    service: &str,
    kind: Option<&str>,
    haproxy: Option<Haproxy>,
    nginx: Option<Nginx>,
    base: &Path,
) -> Result<TrafficConfig, ConfigError> {
    let key = |k: &str| format!("services.{service}.{k}");
    let kind = kind.unwrap_or("builtin");
    if let (Some(_), false) = (&nginx, kind == "nginx") {
        return Err(at.err(key("nginx"), "is only for traffic = \"nginx\""));
    }
    match (kind, haproxy) {
        ("builtin", None) => Ok(TrafficConfig::Builtin),
        ("nginx", None) => {
            let Some(n) = nginx else {
                return Err(at.err(
                    key("nginx"),
                    "is required with traffic = \"nginx\" (upstream_file)",
                ));
            };
            let command = |k: &str, given: Option<Vec<String>>, default: &[&str]| match given {
                Some(argv) if argv.first().is_none_or(|p| p.trim().is_empty()) => {
                    Err(at.err(key(&format!("nginx.{k}")), "must name a program to run"))
                }
                Some(argv) => Ok(argv),
                None => Ok(default.iter().map(|s| s.to_string()).collect()),
            };
            let confirm = match n.confirm {
                None => None,
                Some(text) => match text.parse::<SocketAddr>() {
                    Ok(addr) if addr.ip().is_loopback() => Some(addr),
                    _ => {
                        return Err(at.err(
                            key("nginx.confirm"),
                            format!("{text:?} is not a loopback address and port (such as \"127.0.0.1:8099\")"),
                        ))
                    }
                },
            };
            if n.client_keepalive.is_some() && n.location_file.is_none() {
                return Err(at.err(
                    key("nginx.client_keepalive"),
                    "is rendered into location_file, which is not set",
                ));
            }
            Ok(TrafficConfig::Nginx(NginxConfig {
                upstream_file: base.join(n.upstream_file),
                reload: command("reload", n.reload, &["nginx", "-s", "reload"])?,
                test: command("test", n.test, &["nginx", "-t"])?,
                pid_file: base.join(n.pid_file.unwrap_or_else(|| "/run/nginx.pid".into())),
                confirm,
                location_file: n.location_file.map(|f| base.join(f)),
                client_keepalive: n.client_keepalive.unwrap_or(Duration::ZERO),
            }))
        }
        ("haproxy", Some(h)) => {
            let name_ok = !h.backend.is_empty()
                && h.backend
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
            if !name_ok {
                return Err(at.err(key("haproxy.backend"), "must name an HAProxy backend"));
            }
            Ok(TrafficConfig::Haproxy(HaproxyConfig {
                socket: base.join(h.socket),
                backend: h.backend,
                state_file: h.state_file.map(|f| base.join(f)),
            }))
        }
        ("haproxy", None) => Err(at.err(
            key("haproxy"),
            "is required with traffic = \"haproxy\" (socket and backend)",
        )),
        (_, Some(_)) => Err(at.err(key("haproxy"), "is only for traffic = \"haproxy\"")),
        (other, None) => Err(at.err(
            key("traffic"),
            format!(
                "unknown traffic backend {other:?} (expected \"builtin\", \"haproxy\" or \"nginx\")"
            ),
        )),
    }
}
