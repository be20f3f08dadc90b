//! The remote hosts of one `baton serve`, by name, and what is done to a
//! host as a whole rather than to one instance: reaching it before a deploy,
//! and delivering a release tarball to it.
//!
//! A host's working area (`dir`) holds one directory per service:
//! `releases/{version}` for unpacked tarballs, `logs/` for the instances'
//! output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_config::{Deliver, HostConfig};

use crate::docker::DockerRuntime;
use crate::engines::{self, Engines};
use crate::ssh::{quote, Host, ANSWER};
use crate::RuntimeError;

/// Releases kept on a host beside the ones running.
pub const KEEP_RELEASES: usize = 5;
/// Longest a delivery may take, whatever its size.
const DELIVERY_LIMIT: Duration = Duration::from_secs(600);
/// Ports instances on hosts are given, below Linux's ephemeral range so that
/// no outgoing connection on the host holds one.
pub(crate) const HOST_PORTS: std::ops::Range<u16> = 20000..32000;
/// The marker an unpacked release carries once it is whole.
const COMPLETE: &str = ".baton-release";

/// The hosts baton reaches over SSH, their Docker Engines, and where the
/// images pushed to them come from.
#[derive(Default)]
pub struct Fleet {
    hosts: BTreeMap<String, Arc<Host>>,
    pub(crate) engines: Engines,
    /// This machine's engine, which pushed images are taken from.
    source: Option<Arc<DockerRuntime>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("hosts", &self.hosts.keys())
            .finish_non_exhaustive()
    }
}

/// How a delivery to one host went, for progress lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The host has this release already; nothing was sent.
    Present,
    /// Bytes sent so far, of the total.
    Sending { sent: u64, total: u64 },
    /// Sent and unpacked.
    Unpacked { bytes: u64, took: Duration },
}

impl Fleet {
    /// The hosts of a config; connections are made when first needed, their
    /// control sockets (and forwarded engine sockets) under `control_dir`.
    /// Images are pushed from `source`, this machine's engine, if connected.
    pub fn new(
        hosts: &BTreeMap<String, HostConfig>,
        control_dir: &Path,
        source: Option<Arc<DockerRuntime>>,
    ) -> Self {
        let hosts = hosts
            .iter()
            .map(|(name, cfg)| {
                let host = Host::new(cfg.clone(), control_dir.to_path_buf());
                (name.clone(), Arc::new(host))
            })
            .collect();
        Self {
            hosts,
            engines: Engines::new(control_dir.to_path_buf()),
            source,
        }
    }

    /// The Docker Engine of host `name`, connected if needed.
    pub(crate) async fn engine(&self, name: &str) -> Result<Arc<DockerRuntime>, RuntimeError> {
        self.engines.engine(self.host(name)?).await
    }

    /// Checks that an image to be pushed is on this machine.
    pub async fn check_image(&self, image: &str) -> Result<(), String> {
        let source = self.source.as_ref().ok_or_else(no_source)?;
        match engines::has_image(source, image).await? {
            true => Ok(()),
            false => Err(format!(
                "image {image} not found on this machine (deliver = \"push\" sends it from here)"
            )),
        }
    }

    /// Gets `image` onto host `name`'s engine, unless it is there already:
    /// pushed from this machine, or pulled by the host from its registry.
    pub async fn deliver_image(
        &self,
        name: &str,
        image: &str,
        how: Deliver,
        mut progress: impl FnMut(Delivery) + Send,
    ) -> Result<(), RuntimeError> {
        let host = self.host(name)?;
        let fail = |message: String| RuntimeError::Host {
            host: name.to_string(),
            message,
        };
        let engine = self.engines.engine(host).await?;
        if engines::has_image(&engine, image).await.map_err(fail)? {
            progress(Delivery::Present);
            return Ok(());
        }
        match how {
            Deliver::Pull => engines::pull(&engine, image).await.map_err(fail),
            Deliver::Push => {
                let source = self.source.as_ref().ok_or_else(no_source).map_err(fail)?;
                engines::push(source, &engine, image, &mut progress)
                    .await
                    .map_err(fail)
            }
        }
    }

    pub(crate) fn host(&self, name: &str) -> Result<&Arc<Host>, RuntimeError> {
        self.hosts.get(name).ok_or_else(|| RuntimeError::Host {
            host: name.to_string(),
            message: "no such host in the config".into(),
        })
    }

    /// Connects to each of `names` at once; the first that cannot be reached
    /// is the error.
    pub async fn reach(&self, names: &[String]) -> Result<(), RuntimeError> {
        let reaching = names.iter().map(|name| async move {
            let host = self.host(name)?;
            host.reach().await
        });
        futures_util::future::try_join_all(reaching).await?;
        Ok(())
    }

    /// Puts release `version` of `service`, from the tarball `artifact`, into
    /// `releases/{version}` on host `name`, unless it is there already.
    /// Older releases beyond [`KEEP_RELEASES`] are removed, except `keep`
    /// (the ones running).
    pub async fn deliver(
        &self,
        name: &str,
        service: &str,
        version: &str,
        artifact: &Path,
        keep: &[String],
        mut progress: impl FnMut(Delivery) + Send,
    ) -> Result<(), RuntimeError> {
        let host = self.host(name)?;
        let releases = format!("{}/releases", service_dir(host, service));
        let release = format!("{releases}/{}", dir_name(version));
        let present = format!("test -f {}/{COMPLETE} && echo yes || true", quote(&release));
        if host.run(&present, ANSWER).await?.trim() == "yes" {
            progress(Delivery::Present);
        } else {
            let total = std::fs::metadata(artifact)
                .map_err(|source| RuntimeError::Io {
                    what: format!("artifact {}", artifact.display()),
                    source,
                })?
                .len();
            progress(Delivery::Sending { sent: 0, total });
            let started = Instant::now();
            let mut last = Instant::now();
            let script = unpack_script(&releases, &release);
            host.run_with_input(&script, artifact, DELIVERY_LIMIT, |sent| {
                if last.elapsed() >= Duration::from_secs(1) && sent < total {
                    last = Instant::now();
                    progress(Delivery::Sending { sent, total });
                }
            })
            .await?;
            progress(Delivery::Unpacked {
                bytes: total,
                took: started.elapsed(),
            });
        }
        self.prune(host, &releases, version, keep).await
    }

    /// Removes all but the newest [`KEEP_RELEASES`] releases, never `keep`
    /// nor the one just delivered.
    async fn prune(
        &self,
        host: &Host,
        releases: &str,
        version: &str,
        keep: &[String],
    ) -> Result<(), RuntimeError> {
        let listing = host
            .run(&format!("ls -1t {}", quote(releases)), ANSWER)
            .await?;
        let kept: Vec<String> = keep
            .iter()
            .map(|v| dir_name(v))
            .chain([dir_name(version)])
            .collect();
        let old: Vec<String> = listing
            .lines()
            .filter(|d| !d.starts_with('.') && !kept.iter().any(|k| k == d))
            .skip(KEEP_RELEASES.saturating_sub(kept.len()))
            .map(|d| quote(&format!("{releases}/{d}")))
            .collect();
        if old.is_empty() {
            return Ok(());
        }
        host.run(&format!("rm -rf {}", old.join(" ")), ANSWER)
            .await
            .map(|_| ())
    }
}

fn no_source() -> String {
    "pushing an image needs this machine's Docker Engine, and baton is not connected to it".into()
}

/// Unpacks stdin into a fresh directory beside the releases and renames it
/// into place only once whole, so that a delivery cut off halfway leaves
/// nothing that looks like a release (and its remains are cleared next time).
fn unpack_script(releases: &str, release: &str) -> String {
    let (releases, release) = (quote(releases), quote(release));
    format!(
        "set -e; mkdir -p {releases}; cd {releases}; rm -rf .partial-*; \
         partial=$(mktemp -d .partial-XXXXXX); tar -xzf - -C \"$partial\"; \
         touch \"$partial\"/{COMPLETE}; rm -rf {release}; mv \"$partial\" {release}"
    )
}

/// The service's directory on a host.
pub(crate) fn service_dir(host: &Host, service: &str) -> String {
    format!("{}/{service}", host.config.dir)
}

/// A version as a directory or file name: anything but `[A-Za-z0-9._-]`
/// becomes `_`, and a leading dot too, so that no version is hidden.
pub fn dir_name(version: &str) -> String {
    version
        .chars()
        .enumerate()
        .map(|(i, c)| match c {
            '.' if i == 0 => '_',
            c if c.is_ascii_alphanumeric() || "._-".contains(c) => c,
            _ => '_',
        })
        .collect()
}

/// Where a host's instances of a service log to.
pub(crate) fn log_dir(host: &Host, service: &str) -> PathBuf {
    PathBuf::from(format!("{}/logs", service_dir(host, service)))
}

#[cfg(test)]
mod tests {
    use super::dir_name;

    #[test]
    fn versions_become_safe_directory_names() {
        assert_eq!(dir_name("v1.2.3"), "v1.2.3");
        assert_eq!(dir_name("../../etc"), "_._.._etc");
        assert_eq!(dir_name("a b/c"), "a_b_c");
        assert_eq!(dir_name(".hidden"), "_hidden");
    }
}
