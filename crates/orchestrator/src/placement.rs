//! Where a release's instances go: `instances` of them on each host of the
//! service's `on` (or on this machine), the release tarball delivered first.
//!
//! Hosts are worked on at once, each reporting its own progress; the first
//! host that fails fails the whole start, since the switch moves all hosts
//! or none.

use std::path::PathBuf;

use baton_config::{Deliver, ServiceConfig, Vars};
use baton_core::Color;
use baton_runtime::{Delivery, Instance, InstanceSpec};
use futures_util::future::join_all;

use crate::Shared;

/// What a host reports while a release is delivered and started there.
pub(crate) struct HostNews {
    pub(crate) host: String,
    pub(crate) message: String,
    /// Bytes of the tarball sent so far, and its size.
    pub(crate) sent: Option<(u64, u64)>,
}

/// The hosts a service runs on: `None` is this machine.
fn hosts(cfg: &ServiceConfig) -> Vec<Option<&str>> {
    match cfg.on.is_empty() {
        true => vec![None],
        false => cfg.on.iter().map(|h| Some(h.as_str())).collect(),
    }
}

/// What a release's files are filled in with, before any instance exists.
fn release_vars<'a>(cfg: &'a ServiceConfig, version: &'a str) -> Vars<'a> {
    Vars {
        version,
        color: "",
        service: &cfg.name,
        port: None,
        preview_url: None,
    }
}

/// The tarball of `version`, on this machine.
fn artifact(cfg: &ServiceConfig, version: &str) -> Option<PathBuf> {
    let vars = release_vars(cfg, version);
    cfg.artifact
        .as_ref()
        .map(|t| PathBuf::from(t.render(&vars)))
}

/// The image of `version` that remote hosts get, for a container service on hosts.
fn remote_image(cfg: &ServiceConfig, version: &str) -> Option<String> {
    let image = cfg.image.as_ref().filter(|_| !cfg.on.is_empty())?;
    Some(image.render(&release_vars(cfg, version)))
}

/// Checks, before anything is recorded or started, that every host answers
/// and that the release's tarball exists; the error is one line naming the
/// culprit.
pub(crate) async fn preflight(
    shared: &Shared,
    cfg: &ServiceConfig,
    version: &str,
) -> Result<(), String> {
    if let Some(path) = artifact(cfg, version) {
        if !path.is_file() {
            return Err(format!(
                "services.{}.artifact: {} does not exist",
                cfg.name,
                path.display()
            ));
        }
    }
    if let Some(image) = remote_image(cfg, version).filter(|_| cfg.deliver == Deliver::Push) {
        shared.fleet.check_image(&image).await?;
    }
    shared.fleet.reach(&cfg.on).await.map_err(|e| e.to_string())
}

/// What a release ships to its hosts.
enum Shipment {
    Tarball(PathBuf),
    Image(String),
}

impl Shipment {
    /// `None`: nothing to ship (a service on this machine, or one whose
    /// hosts have what it runs).
    fn of(cfg: &ServiceConfig, version: &str) -> Option<Self> {
        artifact(cfg, version)
            .map(Shipment::Tarball)
            .or_else(|| remote_image(cfg, version).map(Shipment::Image))
    }
}

impl std::fmt::Display for Shipment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shipment::Tarball(path) => {
                let file = path.file_name().unwrap_or_default();
                write!(f, "{}", file.to_string_lossy())
            }
            Shipment::Image(image) => write!(f, "image {image}"),
        }
    }
}

/// Delivers the release (its tarball, or its image) to every host that
/// lacks it; `keep` are the versions running there, which pruning of
/// tarballs must spare.
pub(crate) async fn deliver(
    shared: &Shared,
    cfg: &ServiceConfig,
    version: &str,
    keep: &[String],
    news: &(impl Fn(HostNews) + Sync),
) -> Result<(), String> {
    let Some(shipment) = Shipment::of(cfg, version) else {
        return Ok(());
    };
    let what = shipment.to_string();
    let what = &what;
    let deliveries = cfg.on.iter().map(|host| {
        let tell = move |message: String, sent| {
            news(HostNews {
                host: host.clone(),
                message: format!("{host}: {message}"),
                sent,
            })
        };
        let progress = move |d: Delivery| match d {
            Delivery::Present => tell(format!("has {what} already"), None),
            Delivery::Sending { sent, total } => tell(
                format!("sending {what}: {} of {}", size(sent), size(total)),
                Some((sent, total)),
            ),
            Delivery::Unpacked { bytes, took } => tell(
                format!(
                    "{what} sent ({}) and unpacked in {:.1}s",
                    size(bytes),
                    took.as_secs_f64()
                ),
                Some((bytes, bytes)),
            ),
        };
        let (fleet, shipment) = (&shared.fleet, &shipment);
        async move {
            match shipment {
                Shipment::Tarball(path) => {
                    fleet
                        .deliver(host, &cfg.name, version, path, keep, progress)
                        .await
                }
                Shipment::Image(image) => {
                    fleet
                        .deliver_image(host, image, cfg.deliver, progress)
                        .await
                }
            }
        }
    });
    first_error(join_all(deliveries).await)
}

/// Starts `instances` instances on every host at once. All that started are
/// returned, with the first error if any host failed, so that the caller
/// stops them.
pub(crate) async fn start(
    shared: &Shared,
    cfg: &ServiceConfig,
    version: &str,
    color: Color,
    news: &(impl Fn(HostNews) + Sync),
) -> (Vec<Instance>, Result<(), String>) {
    let starts = hosts(cfg).into_iter().map(|host| async move {
        let mut started = Vec::new();
        for index in 0..cfg.instances {
            let log = shared.logs.join(log_name(cfg, version, color, host, index));
            let spec = InstanceSpec::of(cfg, version, color, host, index, log);
            match shared.runtime.start(&spec).await {
                Ok(instance) => started.push(instance),
                Err(e) => return (started, Err(e.to_string())),
            }
        }
        if let Some(host) = host {
            let addrs: Vec<String> = started.iter().map(|i| i.addr.to_string()).collect();
            news(HostNews {
                host: host.to_string(),
                message: format!("{host}: started {}", addrs.join(", ")),
                sent: None,
            });
        }
        (started, Ok(()))
    });
    let mut all = Vec::new();
    let mut results = Vec::new();
    for (started, result) in join_all(starts).await {
        all.extend(started);
        results.push(result);
    }
    (all, first_error(results))
}

fn first_error(results: Vec<Result<(), impl ToString>>) -> Result<(), String> {
    results
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), |e| Err(e.to_string()))
}

/// `web-v2-green-0.log`, or `web-v2-green-app1-0.log` on a host, with
/// anything odd in the version made safe for a file name.
fn log_name(
    cfg: &ServiceConfig,
    version: &str,
    color: Color,
    host: Option<&str>,
    index: usize,
) -> String {
    let version = baton_runtime::dir_name(version);
    let host = host.map(|h| format!("{h}-")).unwrap_or_default();
    format!("{}-{version}-{color}-{host}{index}.log", cfg.name)
}

/// Bytes for people: `512 B`, `3.2 MB`.
fn size(bytes: u64) -> String {
    match bytes {
        b if b < 1000 => format!("{b} B"),
        b if b < 1_000_000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{:.1} MB", b as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::size;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3_200), "3.2 kB");
        assert_eq!(size(3_250_000), "3.2 MB");
    }
}
