//! Runtimes start and stop a service's instances. The orchestrator only sees
//! the [`Runtime`] trait, so processes, containers and (later) remote hosts
//! are interchangeable; [`Runtimes`] sends each instance to its own.

mod docker;
mod engines;
mod fleet;
mod logfile;
mod ports;
mod process;
mod remote;
mod ssh;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baton_config::{RuntimeKind, ServiceConfig, Template, Vars};
use baton_core::Color;
use serde::{Deserialize, Serialize};

pub use docker::{default_socket, DockerRuntime};
pub use fleet::{dir_name, Delivery, Fleet, KEEP_RELEASES};
pub use process::ProcessRuntime;
pub use remote::RemoteRuntime;

/// What to start: one instance of one release.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub service: String,
    pub version: String,
    pub color: Color,
    /// Which of the color's instances this is (0-based).
    pub index: usize,
    /// Which runtime starts it.
    pub runtime: RuntimeKind,
    /// The program and its arguments; for a container, its command after
    /// the image's entrypoint (empty: the image's own).
    pub command: Vec<Template>,
    pub env: BTreeMap<String, Template>,
    /// Where a process runs (the process runtime only).
    pub workdir: Template,
    /// The image a container runs (the docker runtime only).
    pub image: Option<Template>,
    /// The port the app listens on inside its container (the docker runtime
    /// only); `None`: the host port's number.
    pub port: Option<u16>,
    /// Where the instance's output goes; on a remote host, the file name in
    /// the service's log directory there.
    pub log: PathBuf,
    /// The remote host it runs on (a name in the config's `[hosts]`);
    /// `None`: this machine.
    pub host: Option<String>,
    /// It runs from its release's unpacked tarball (`workdir` is relative
    /// to `releases/{version}` on the host).
    pub unpacked: bool,
}

impl InstanceSpec {
    /// Instance `index` of `version` of the service `cfg`, in `color`,
    /// its output going to `log`.
    pub fn of(
        cfg: &ServiceConfig,
        version: &str,
        color: Color,
        host: Option<&str>,
        index: usize,
        log: PathBuf,
    ) -> Self {
        Self {
            service: cfg.name.clone(),
            version: version.to_string(),
            color,
            index,
            runtime: cfg.runtime,
            command: cfg.command.clone(),
            env: cfg.env.clone(),
            workdir: cfg.workdir.clone(),
            image: cfg.image.clone(),
            port: cfg.port,
            log,
            host: host.map(String::from),
            unpacked: cfg.artifact.is_some(),
        }
    }

    /// What the instance's templates are filled with, `port` being the one
    /// the app listens on.
    pub fn vars(&self, port: u16) -> Vars<'_> {
        Vars {
            port: Some(port),
            version: &self.version,
            color: self.color.as_str(),
            service: &self.service,
            preview_url: None,
        }
    }
}

/// A started instance, as recorded in the store so it can be found again
/// after baton restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Where it takes requests.
    pub addr: SocketAddr,
    /// Its output, as the runtime keeps it (on its host).
    pub log: PathBuf,
    /// What the runtime knows it by; flattened, so that records written
    /// before containers existed (`{addr, pid, start_ticks, log}`) still load.
    #[serde(flatten)]
    pub handle: Handle,
    /// The remote host it runs on; `None`: this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// How a runtime finds one of its instances again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Handle {
    /// A local process (the leader of its process group).
    Process {
        pid: u32,
        /// The process's start time in clock ticks since boot: with the
        /// pid, it tells our process from a later one that reused the pid.
        start_ticks: u64,
    },
    /// A container on the local Docker Engine, by id.
    Container { container: String },
}

/// Why an instance could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Something failed on a remote host, or it could not be reached.
    #[error("host {host}: {message}")]
    Host { host: String, message: String },
    #[error("image {0} not found on this host")]
    NoImage(String),
    /// A request to the Docker Engine failed; the message says which.
    #[error("{0}")]
    Docker(String),
    #[error("{0}")]
    Unhealthy(String),
    #[error("service {0} uses runtime \"docker\" but baton is not connected to a Docker Engine")]
    NoDocker(String),
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

    /// `None` while the instance runs (or nothing says otherwise yet); how
    /// it ended otherwise. Answers at once, from what the runtime knows.
    fn exited(&self, instance: &Instance) -> Option<String>;

    /// Finds out whether `instances` still run, so that [`Runtime::exited`]
    /// knows about instances this baton did not start (after a restart).
    async fn settle(&self, _instances: &[Instance]) {}

    /// Asks the instance to stop, and forces it after `grace`. An error
    /// means it could not be reached and may still run.
    async fn stop(&self, instance: &Instance, grace: Duration) -> Result<(), RuntimeError>;

    /// The last lines of the instance's output, for error reports.
    async fn log_tail(&self, instance: &Instance, lines: usize) -> String;
}

/// The runtimes of one `baton serve`: each instance goes to the one its
/// service asks for when it starts, and to the one that knows its
/// [`Handle`] (and host) afterwards.
#[derive(Debug, Default)]
pub struct Runtimes {
    pub process: ProcessRuntime,
    /// This machine's engine; connected only when some service uses containers.
    pub docker: Option<Arc<DockerRuntime>>,
    /// Processes on remote hosts.
    pub remote: RemoteRuntime,
    /// The remote hosts, whose engines run their containers.
    pub fleet: Arc<Fleet>,
}

impl Runtimes {
    /// The runtime that runs `instance`, or why none can now. A remote
    /// host's engine is the one last connected (`None` if none is yet):
    /// this must not wait.
    fn of(&self, instance: &Instance) -> Result<Option<Chosen<'_>>, String> {
        Ok(Some(
            match (&instance.host, &instance.handle, &self.docker) {
                (Some(host), Handle::Container { .. }, _) => {
                    match self.fleet.engines.connected(host) {
                        Some(engine) => Chosen::Engine(engine),
                        None => return Ok(None),
                    }
                }
                (Some(_), Handle::Process { .. }, _) => Chosen::Here(&self.remote),
                (None, Handle::Process { .. }, _) => Chosen::Here(&self.process),
                (None, Handle::Container { .. }, Some(docker)) => Chosen::Engine(docker.clone()),
                (None, Handle::Container { container }, None) => {
                    return Err(format!(
                        "is container {container}, and baton is not connected to Docker"
                    ))
                }
            },
        ))
    }

    /// Like [`Runtimes::of`], connecting a remote host's engine if needed.
    async fn connect(&self, instance: &Instance) -> Result<Chosen<'_>, RuntimeError> {
        if let (Some(host), Handle::Container { .. }) = (&instance.host, &instance.handle) {
            return Ok(Chosen::Engine(self.fleet.engine(host).await?));
        }
        match self.of(instance) {
            Ok(Some(chosen)) => Ok(chosen),
            // Only a remote container lacks its runtime, and it was connected above.
            Ok(None) => Err(RuntimeError::Docker(format!(
                "instance {}: no runtime is connected for it",
                instance.addr
            ))),
            Err(why) => Err(RuntimeError::Docker(format!(
                "instance {}: {why}",
                instance.addr
            ))),
        }
    }
}

/// A runtime chosen for an instance: one of the dispatcher's own, or an engine.
enum Chosen<'a> {
    Here(&'a dyn Runtime),
    Engine(Arc<DockerRuntime>),
}

impl<'a> std::ops::Deref for Chosen<'a> {
    type Target = dyn Runtime + 'a;

    fn deref(&self) -> &Self::Target {
        match self {
            Chosen::Here(runtime) => *runtime,
            Chosen::Engine(engine) => engine.as_ref(),
        }
    }
}

#[async_trait]
impl Runtime for Runtimes {
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        match (spec.runtime, &spec.host, &self.docker) {
            (RuntimeKind::Process, Some(_), _) => self.remote.start(spec).await,
            (RuntimeKind::Process, None, _) => self.process.start(spec).await,
            (RuntimeKind::Docker, Some(host), _) => {
                self.fleet.engine(host).await?.start(spec).await
            }
            (RuntimeKind::Docker, None, Some(docker)) => docker.start(spec).await,
            (RuntimeKind::Docker, None, None) => Err(RuntimeError::NoDocker(spec.service.clone())),
        }
    }

    fn exited(&self, instance: &Instance) -> Option<String> {
        match self.of(instance) {
            Ok(Some(runtime)) => runtime.exited(instance),
            // A remote engine not connected yet knows nothing either way.
            Ok(None) => None,
            Err(why) => Some(why),
        }
    }

    async fn settle(&self, instances: &[Instance]) {
        self.remote.settle(instances).await;
        let mut hosts: Vec<&str> = instances
            .iter()
            .filter(|i| matches!(i.handle, Handle::Container { .. }))
            .filter_map(|i| i.host.as_deref())
            .collect();
        hosts.dedup();
        for host in hosts {
            if let Err(e) = self.fleet.engine(host).await {
                tracing::warn!(host, error = %e, "cannot reach the host's Docker Engine");
            }
        }
    }

    async fn stop(&self, instance: &Instance, grace: Duration) -> Result<(), RuntimeError> {
        self.connect(instance).await?.stop(instance, grace).await
    }

    /// Every runtime but the remote process one keeps the output here.
    async fn log_tail(&self, instance: &Instance, lines: usize) -> String {
        match (&instance.host, &instance.handle) {
            (Some(_), Handle::Process { .. }) => self.remote.log_tail(instance, lines).await,
            _ => logfile::tail(&instance.log, lines),
        }
    }
}

/// A lock around plain data: a panic while holding it cannot leave the
/// data half-changed, so a poisoned lock is used as is.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_before_containers_load_as_processes() {
        let old = r#"{"addr":"127.0.0.1:4000","pid":42,"start_ticks":7,"log":"/tmp/web.log"}"#;
        let instance: Instance = serde_json::from_str(old).unwrap();
        assert_eq!(
            instance,
            Instance {
                addr: "127.0.0.1:4000".parse().unwrap(),
                log: "/tmp/web.log".into(),
                handle: Handle::Process {
                    pid: 42,
                    start_ticks: 7
                },
                host: None,
            }
        );
        // And a process is written as it always was.
        let again: serde_json::Value = serde_json::to_value(&instance).unwrap();
        let old: serde_json::Value = serde_json::from_str(old).unwrap();
        assert_eq!(again, old);
    }

    #[test]
    fn containers_round_trip() {
        let instance = Instance {
            addr: "127.0.0.1:4001".parse().unwrap(),
            log: "/tmp/web-1.log".into(),
            handle: Handle::Container {
                container: "0123abcd".into(),
            },
            host: None,
        };
        let json = serde_json::to_string(&instance).unwrap();
        assert_eq!(
            json,
            r#"{"addr":"127.0.0.1:4001","log":"/tmp/web-1.log","container":"0123abcd"}"#
        );
        assert_eq!(serde_json::from_str::<Instance>(&json).unwrap(), instance);
    }
}
