//! Who moves a service's traffic (`traffic`): baton's own proxy, or a load
//! balancer the user already runs (`[services.NAME.haproxy]`).

use std::path::{Path, PathBuf};

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

/// Validates `traffic` and its table.
pub(crate) fn traffic(
    at: &Culprit,
    service: &str,
    kind: Option<&str>,
    haproxy: Option<Haproxy>,
    base: &Path,
) -> Result<TrafficConfig, ConfigError> {
    let key = |k: &str| format!("services.{service}.{k}");
    match (kind.unwrap_or("builtin"), haproxy) {
        ("builtin", None) => Ok(TrafficConfig::Builtin),
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
        ("nginx", None) => Err(at.err(
            key("traffic"),
            "\"nginx\" is not available yet (\"builtin\" or \"haproxy\")",
        )),
        (other, None) => Err(at.err(
            key("traffic"),
            format!("unknown traffic backend {other:?} (expected \"builtin\" or \"haproxy\")"),
        )),
    }
}
