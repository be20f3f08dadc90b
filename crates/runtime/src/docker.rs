//! The docker runtime: each instance is a container on a Docker Engine,
//! driven through its API socket (bollard): this machine's, or a remote
//! host's through a socket forwarded over SSH.
//!
//! A container is published on a loopback port of this machine (on a remote
//! host: on the host's address), which is the instance's address, and carries the labels `baton.service`, `baton.color`,
//! `baton.version` and `baton.index`. Like processes, containers outlive
//! baton on purpose (no restart policy, no auto-remove): the next
//! `baton serve` adopts them by id.
//!
//! [`Runtime::exited`] is synchronous and polled often, so it never asks the
//! engine: it reads a map of container states, seeded by a listing when the
//! runtime connects and kept up to date by a task that follows the engine's
//! event stream (`die`, `oom`, `destroy` of containers labelled
//! `baton.service`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, EventMessage, HealthConfig, HealthStatusEnum,
    HostConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::fleet::HOST_PORTS;
use crate::ssh::Host;
use crate::{lock, logfile, ports, Handle, Instance, InstanceSpec, Runtime, RuntimeError};

/// Every container baton starts carries this label, valued with its service.
const SERVICE_LABEL: &str = "baton.service";
/// Longest wait for the engine to answer when connecting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a container with a HEALTHCHECK is looked at while it starts.
const HEALTH_POLL: Duration = Duration::from_millis(200);
/// How long a stop request may take beyond the grace period.
const STOP_MARGIN: Duration = Duration::from_secs(60);

/// The engine's socket: `$DOCKER_HOST` when it names a unix socket, else
/// `/var/run/docker.sock`.
pub fn default_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => PathBuf::from(&host["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

/// Runs instances as containers on one Docker Engine.
pub struct DockerRuntime {
    docker: Docker,
    socket: PathBuf,
    place: Place,
    known: Arc<Mutex<Known>>,
    /// The task following the engine's events.
    watcher: tokio::task::AbortHandle,
}

/// Where the engine runs, which decides where containers are published.
#[derive(Clone)]
pub(crate) enum Place {
    /// This machine: on a loopback port.
    Local,
    /// A remote host: on its address, on a port free there.
    Remote(Arc<Host>),
}

/// What the runtime knows of baton's containers.
#[derive(Default)]
struct Known {
    /// By container id. A container missing here does not exist (any more).
    states: HashMap<String, State>,
    /// Containers whose output is being copied into their log file.
    following: HashSet<String>,
}

enum State {
    Running {
        /// The kernel killed something in it for lack of memory.
        oom: bool,
    },
    /// How it ended.
    Ended(String),
}

impl fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Drop for DockerRuntime {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl DockerRuntime {
    /// Connects to the engine at `socket`, learns which of baton's
    /// containers exist, and starts following its events. Must run inside a
    /// tokio runtime, which the event task lives on.
    pub async fn connect(socket: &Path) -> Result<Self, RuntimeError> {
        Self::connect_at(socket, Place::Local).await
    }

    /// Connects to the engine at `socket`, which runs at `place`.
    pub(crate) async fn connect_at(socket: &Path, place: Place) -> Result<Self, RuntimeError> {
        let fail = |e: &dyn fmt::Display| {
            RuntimeError::Docker(format!(
                "cannot reach the Docker Engine at {}: {e}",
                socket.display()
            ))
        };
        let docker = Docker::connect_with_socket(
            &socket.to_string_lossy(),
            120,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(|e| fail(&e))?;
        // The engine may speak an older API than bollard's default (20.10 speaks 1.41).
        let docker = tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| fail(&format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| fail(&e))?;
        // Events from before the listing are asked for again, so that none
        // falls between the listing and the subscription.
        let since = timestamp(SystemTime::now());
        let states = snapshot(&docker).await.map_err(|e| fail(&e))?;
        let known = Arc::new(Mutex::new(Known {
            states,
            following: HashSet::new(),
        }));
        let watcher = tokio::spawn(watch(docker.clone(), known.clone(), since)).abort_handle();
        Ok(Self {
            docker,
            socket: socket.to_path_buf(),
            place,
            known,
            watcher,
        })
    }

    fn known(&self) -> MutexGuard<'_, Known> {
        lock(&self.known)
    }

    /// False once the engine's event stream ended (its connection broke), so
    /// what the runtime knows may be stale and it must connect again.
    pub(crate) fn is_connected(&self) -> bool {
        !self.watcher.is_finished()
    }

    /// The engine's client, for delivering images.
    pub(crate) fn client(&self) -> &Docker {
        &self.docker
    }

    /// A port for a container to be published on, and the address it takes.
    async fn publish_on(&self) -> Result<(std::net::IpAddr, u16), RuntimeError> {
        match &self.place {
            Place::Local => Ok(([127, 0, 0, 1].into(), ports::free_port()?)),
            Place::Remote(host) => Ok((host.ip().await?, host.free_port(HOST_PORTS).await?)),
        }
    }

    /// Removes a container, whatever its state; one already gone is fine.
    async fn remove(&self, id: &str) {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            // 409: its removal is already under way.
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            }) => {}
            Err(e) => tracing::warn!(container = id, error = %e, "could not remove container"),
        }
        let mut known = self.known();
        known.states.remove(id);
        known.following.remove(id);
    }

    /// Waits until a just-started container with a HEALTHCHECK is healthy,
    /// as the engine judges it; at once for one without. A container that
    /// stopped is left for [`Runtime::exited`] to report.
    async fn settle(&self, id: &str, name: &str) -> Result<(), RuntimeError> {
        let started = Instant::now();
        let mut limit = None;
        loop {
            let info =
                self.docker.inspect_container(id, None).await.map_err(|e| {
                    RuntimeError::Docker(format!("inspecting container {name}: {e}"))
                })?;
            let state = info.state.unwrap_or_default();
            if state.running != Some(true) {
                let why = format!("exited with status {}", state.exit_code.unwrap_or(-1));
                if let Some(s @ State::Running { .. }) = self.known().states.get_mut(id) {
                    *s = State::Ended(why);
                }
                return Ok(());
            }
            let Some(health) = state.health else {
                return Ok(());
            };
            match health.status {
                Some(HealthStatusEnum::HEALTHY) => return Ok(()),
                Some(HealthStatusEnum::UNHEALTHY) => {
                    let last = health
                        .log
                        .and_then(|log| log.into_iter().last())
                        .and_then(|r| r.output)
                        .map(|o| one_line(&o))
                        .filter(|o| !o.is_empty())
                        .unwrap_or_else(|| "no output".to_string());
                    return Err(RuntimeError::Unhealthy(format!(
                        "container {name} is unhealthy by its image's HEALTHCHECK (last check: {last})"
                    )));
                }
                _ => {}
            }
            let limit = *limit.get_or_insert_with(|| {
                health_limit(info.config.and_then(|c| c.healthcheck).unwrap_or_default())
            });
            if started.elapsed() > limit {
                return Err(RuntimeError::Unhealthy(format!(
                    "container {name} is not healthy by its image's HEALTHCHECK after {}s",
                    limit.as_secs()
                )));
            }
            tokio::time::sleep(HEALTH_POLL).await;
        }
    }
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let Some(image) = &spec.image else {
            return Err(RuntimeError::Docker(format!(
                "service {} names no image",
                spec.service
            )));
        };
        let log = logfile::open(&spec.log)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (ip, host_port) = self.publish_on().await?;
            let port = spec.port.unwrap_or(host_port);
            let vars = spec.vars(port);
            let image = image.render(&vars);
            match self.docker.inspect_image(&image).await {
                Ok(_) => {}
                Err(e) if status(&e) == Some(404) => return Err(RuntimeError::NoImage(image)),
                Err(e) => {
                    return Err(RuntimeError::Docker(format!(
                        "inspecting image {image}: {e}"
                    )))
                }
            }
            let name = format!(
                "baton-{}-{}-{}-{}",
                spec.service,
                spec.color,
                spec.index,
                short_random()
            );
            let published = format!("{port}/tcp");
            let labels = [
                (SERVICE_LABEL, spec.service.clone()),
                ("baton.color", spec.color.to_string()),
                ("baton.version", spec.version.clone()),
                ("baton.index", spec.index.to_string()),
            ];
            let env = spec
                .env
                .iter()
                .filter(|(k, _)| k.as_str() != "PORT")
                .map(|(k, v)| format!("{k}={}", v.render(&vars)))
                .chain([format!("PORT={port}")])
                .collect();
            let body = ContainerCreateBody {
                image: Some(image.clone()),
                cmd: (!spec.command.is_empty())
                    .then(|| spec.command.iter().map(|t| t.render(&vars)).collect()),
                env: Some(env),
                labels: Some(labels.map(|(k, v)| (k.to_string(), v)).into()),
                exposed_ports: Some(vec![published.clone()]),
                host_config: Some(HostConfig {
                    port_bindings: Some(HashMap::from([(
                        published,
                        Some(vec![PortBinding {
                            host_ip: Some(ip.to_string()),
                            host_port: Some(host_port.to_string()),
                        }]),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let options = CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            };
            let id = match self.docker.create_container(Some(options), body).await {
                Ok(created) => created.id,
                Err(e) if status(&e) == Some(404) => return Err(RuntimeError::NoImage(image)),
                // The name is taken: another draw.
                Err(e) if status(&e) == Some(409) && attempt < 3 => continue,
                Err(e) => {
                    return Err(RuntimeError::Docker(format!(
                        "creating container {name}: {e}"
                    )))
                }
            };
            if let Err(e) = self.docker.start_container(&id, None).await {
                self.remove(&id).await;
                // Someone took the port since it was chosen: another port.
                let text = e.to_string();
                let taken = text.contains("already allocated") || text.contains("already in use");
                if taken && attempt < 3 {
                    continue;
                }
                return Err(RuntimeError::Docker(format!(
                    "starting container {name}: {e}"
                )));
            }
            {
                let mut known = self.known();
                known
                    .states
                    .insert(id.clone(), State::Running { oom: false });
                known.following.insert(id.clone());
            }
            let copy = log.try_clone().map_err(|source| RuntimeError::Io {
                what: format!("log {}", spec.log.display()),
                source,
            })?;
            follow_logs(&self.docker, &id, copy, 0);
            tracing::info!(service = %spec.service, version = %spec.version, color = %spec.color,
                container = %name, %image, host_port, port, "container started");
            if let Err(e) = self.settle(&id, &name).await {
                self.remove(&id).await;
                return Err(e);
            }
            return Ok(Instance {
                addr: SocketAddr::new(ip, host_port),
                log: spec.log.clone(),
                handle: Handle::Container { container: id },
                host: match &self.place {
                    Place::Local => None,
                    Place::Remote(host) => Some(host.name().to_string()),
                },
            });
        }
    }

    fn exited(&self, instance: &Instance) -> Option<String> {
        let Handle::Container { container } = &instance.handle else {
            return Some("is not a container".to_string());
        };
        let mut known = self.known();
        match known.states.get(container) {
            None => Some("was removed".to_string()),
            Some(State::Ended(why)) => Some(why.clone()),
            Some(State::Running { .. }) => {
                if known.following.insert(container.clone()) {
                    // Adopted after a restart: its output goes on into its
                    // log, from about where the last baton left off.
                    let since = std::fs::metadata(&instance.log)
                        .and_then(|m| m.modified())
                        .map(|t| unix_seconds(t) as i32)
                        .unwrap_or(0);
                    match logfile::open(&instance.log) {
                        Ok(file) => follow_logs(&self.docker, container, file, since),
                        Err(e) => tracing::warn!(container, error = %e, "cannot keep its log"),
                    }
                }
                None
            }
        }
    }

    async fn stop(&self, instance: &Instance, grace: Duration) -> Result<(), RuntimeError> {
        let Handle::Container { container } = &instance.handle else {
            return Ok(());
        };
        // The engine sends the image's stop signal (SIGTERM unless it says
        // otherwise), then SIGKILL after `t` whole seconds.
        let t = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let options = StopContainerOptions {
            t: Some(i32::try_from(t).unwrap_or(i32::MAX)),
            signal: None,
        };
        let docker = self.docker.clone().with_timeout(grace + STOP_MARGIN);
        match docker.stop_container(container, Some(options)).await {
            Ok(())
            | Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(RuntimeError::Docker(format!("stopping {container}: {e}"))),
        }
        self.remove(container).await;
        Ok(())
    }

    async fn log_tail(&self, instance: &Instance, lines: usize) -> String {
        logfile::tail(&instance.log, lines)
    }
}

/// The HTTP status of an error answer from the engine.
fn status(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The state of every container labelled `baton.service`, running or not.
async fn snapshot(docker: &Docker) -> Result<HashMap<String, State>, DockerError> {
    let filters = HashMap::from([("label".to_string(), vec![SERVICE_LABEL.to_string()])]);
    let options = ListContainersOptions {
        all: true,
        filters: Some(filters),
        ..Default::default()
    };
    let containers = docker.list_containers(Some(options)).await?;
    Ok(containers
        .into_iter()
        .filter_map(|c| {
            use ContainerSummaryStateEnum as S;
            let state = match c.state {
                Some(S::RUNNING | S::PAUSED | S::RESTARTING) => State::Running { oom: false },
                Some(S::CREATED) => State::Ended("was never started".to_string()),
                _ => State::Ended(ended(c.status.as_deref().unwrap_or(""))),
            };
            Some((c.id?, state))
        })
        .collect())
}

/// How a listed container ended, from its status ("Exited (3) 2 minutes ago").
fn ended(status: &str) -> String {
    status
        .strip_prefix("Exited (")
        .and_then(|rest| rest.split_once(')'))
        .map(|(code, _)| format!("exited with status {code}"))
        .unwrap_or_else(|| format!("is not running ({status})"))
}

/// Follows the engine's events about baton's containers into `known`, for
/// as long as the runtime lives; a lost stream is picked up again, and what
/// happened meanwhile is read from a fresh listing.
async fn watch(docker: Docker, known: Arc<Mutex<Known>>, mut since: String) {
    let filters = HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        ("label".to_string(), vec![SERVICE_LABEL.to_string()]),
        (
            "event".to_string(),
            vec!["die".to_string(), "oom".to_string(), "destroy".to_string()],
        ),
    ]);
    // Doubled at each failure to reach the engine, up to half a minute.
    let mut pause = Duration::from_secs(1);
    loop {
        let options = EventsOptions {
            since: Some(since.clone()),
            until: None,
            filters: Some(filters.clone()),
        };
        let mut events = docker.events(Some(options));
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if let Some(nanos) = event.time_nano {
                        since = format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000);
                    }
                    apply(&mut lock(&known), event);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the Docker Engine's event stream");
                    break;
                }
            }
        }
        tokio::time::sleep(pause).await;
        match snapshot(&docker).await {
            Ok(now) => {
                resync(&mut lock(&known), now);
                pause = Duration::from_secs(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot list containers");
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// One event about a container.
fn apply(known: &mut Known, event: EventMessage) {
    let Some(actor) = event.actor else {
        return;
    };
    let Some(id) = actor.id else {
        return;
    };
    match event.action.as_deref() {
        Some("oom") => {
            if let Some(State::Running { oom }) = known.states.get_mut(&id) {
                *oom = true;
            }
        }
        Some("die") => {
            let code = actor
                .attributes
                .as_ref()
                .and_then(|a| a.get("exitCode"))
                .map(String::as_str)
                .unwrap_or("unknown");
            let why = match known.states.get(&id) {
                // The first word on how it ended stays.
                Some(State::Ended(_)) => return,
                Some(State::Running { oom: true }) => {
                    format!("exited with status {code} (out of memory)")
                }
                _ => format!("exited with status {code}"),
            };
            known.states.insert(id, State::Ended(why));
        }
        Some("destroy") => {
            known.states.remove(&id);
            known.following.remove(&id);
        }
        _ => {}
    }
}

/// Brings `known` in line with a fresh listing, after events may have been missed.
fn resync(known: &mut Known, mut now: HashMap<String, State>) {
    known.states.retain(|id, state| match now.remove(id) {
        Some(fresh) => {
            if matches!(state, State::Running { .. }) {
                *state = fresh;
            }
            true
        }
        None => false,
    });
    known.states.extend(now);
}

/// Copies a container's output (stdout and stderr, as they come) into its
/// log file, from `since` (unix seconds; 0: its start) until it stops.
fn follow_logs(docker: &Docker, id: &str, file: std::fs::File, since: i32) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (docker, id) = (docker.clone(), id.to_string());
    rt.spawn(async move {
        let mut file = tokio::fs::File::from_std(file);
        let options = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            since,
            ..Default::default()
        };
        let mut output = docker.logs(&id, Some(options));
        while let Some(chunk) = output.next().await {
            let Ok(chunk) = chunk else { break };
            // Flushed at once, so that the log's tail is current.
            let written = file.write_all(&chunk.into_bytes()).await;
            if written.is_err() || file.flush().await.is_err() {
                break;
            }
        }
    });
}

/// Longest the engine may take to call a container healthy or unhealthy:
/// the start period, then a check and its timeout for each retry and one more.
fn health_limit(check: HealthConfig) -> Duration {
    let nanos = |v: Option<i64>, default: Duration| match v {
        Some(n) if n > 0 => Duration::from_nanos(n as u64),
        _ => default,
    };
    let interval = nanos(check.interval, Duration::from_secs(30));
    let timeout = nanos(check.timeout, Duration::from_secs(30));
    let start_period = nanos(check.start_period, Duration::ZERO);
    let retries = check.retries.filter(|r| *r > 0).unwrap_or(3) as u32;
    start_period + (interval + timeout) * (retries + 1) + Duration::from_secs(5)
}

fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &line[..cut]),
        None => line,
    }
}

/// Six hex digits, different at each call.
fn short_random() -> String {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let hash = std::collections::hash_map::RandomState::new().hash_one(seed);
    format!("{:06x}", hash & 0xff_ffff)
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// A time as the engine's `since` takes it: seconds, with nanoseconds.
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

#[cfg(test)]
mod tests;
