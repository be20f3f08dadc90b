//! The process runtime on remote hosts: each instance is a process started
//! over SSH in its own session (so stopping it reaches every worker it
//! forked), its output in a log file on the host, found again after a
//! restart by pid and start time as a local process is.
//!
//! Exits are learnt by polling: one short script per host and second lists
//! which watched processes still run, so that `exited` can answer at once.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::fleet::{self, Fleet, HOST_PORTS};
use crate::process::parse_stat;
use crate::ssh::{quote, Host, ANSWER};
use crate::{lock, Handle, Instance, InstanceSpec, Runtime, RuntimeError};

/// How often each host is asked which of its instances still run.
const POLL: Duration = Duration::from_millis(500);

/// A watched instance: its host, pid and start time.
type Key = (String, u32, u64);

/// Runs instances as processes on the fleet's hosts.
#[derive(Debug, Default)]
pub struct RemoteRuntime {
    fleet: Arc<Fleet>,
    /// Every instance asked about or started: `Some(why)` once it is gone.
    watched: Arc<Mutex<HashMap<Key, Option<String>>>>,
    /// Hosts whose poller runs.
    polled: Mutex<HashSet<String>>,
}

impl RemoteRuntime {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self {
            fleet,
            ..Self::default()
        }
    }

    /// Starts watching `key`, and its host's poller if not running yet.
    fn watch(&self, key: Key) {
        let host = key.0.clone();
        lock(&self.watched).entry(key).or_insert(None);
        let mut polled = lock(&self.polled);
        if !polled.insert(host.clone()) {
            return;
        }
        let Ok(host) = self.fleet.host(&host).cloned() else {
            return;
        };
        let watched = self.watched.clone();
        tokio::spawn(poll_exits(host, watched));
    }
}

#[async_trait]
impl Runtime for RemoteRuntime {
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let name = spec.host.as_deref().unwrap_or_default();
        let host = self.fleet.host(name)?;
        let port = host.free_port(HOST_PORTS).await?;
        let vars = spec.vars(port);
        let service_dir = fleet::service_dir(host, &spec.service);
        let workdir = spec.workdir.render(&vars);
        let workdir = match (workdir.starts_with('/'), spec.unpacked) {
            (true, _) => workdir,
            (false, true) => format!(
                "{service_dir}/releases/{}/{workdir}",
                fleet::dir_name(&spec.version)
            ),
            (false, false) => format!("{service_dir}/{workdir}"),
        };
        let log_dir = fleet::log_dir(host, &spec.service);
        let file = spec.log.file_name().unwrap_or_default();
        let log = log_dir.join(file);
        let env = spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.render(&vars)))
            .chain([("PORT".to_string(), port.to_string())])
            .map(|(k, v)| quote(&format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(" ");
        let argv = spec
            .command
            .iter()
            .map(|t| quote(&t.render(&vars)))
            .collect::<Vec<_>>()
            .join(" ");
        let script = format!(
            "set -e; mkdir -p {logs}; cd {workdir}; \
             env {env} setsid {argv} </dev/null >>{log} 2>&1 & \
             pid=$!; echo \"$pid $(cat /proc/$pid/stat)\"",
            logs = quote(&log_dir.to_string_lossy()),
            workdir = quote(&workdir),
            log = quote(&log.to_string_lossy()),
        );
        let out = host.run(&script, ANSWER).await?;
        let started = out.trim().split_once(' ').and_then(|(pid, stat)| {
            let pid: u32 = pid.parse().ok()?;
            let (_, ticks) = parse_stat(stat)?;
            Some((pid, ticks))
        });
        let (pid, start_ticks) = started.ok_or_else(|| RuntimeError::Host {
            host: name.to_string(),
            message: format!("started {argv}, but cannot tell its pid from {out:?}"),
        })?;
        self.watch((name.to_string(), pid, start_ticks));
        let addr = SocketAddr::new(host.ip().await?, port);
        tracing::info!(service = %spec.service, version = %spec.version, color = %spec.color, host = name, pid, %addr, "instance started");
        Ok(Instance {
            addr,
            log,
            handle: Handle::Process { pid, start_ticks },
            host: Some(name.to_string()),
        })
    }

    fn exited(&self, instance: &Instance) -> Option<String> {
        let key = key(instance)?;
        let known = lock(&self.watched).get(&key).cloned();
        match known {
            Some(state) => state,
            None => {
                // Adopted after a restart: running until the host says otherwise.
                self.watch(key);
                None
            }
        }
    }

    async fn settle(&self, instances: &[Instance]) {
        let mut by_host: HashMap<String, Vec<Key>> = HashMap::new();
        for key in instances.iter().filter_map(key) {
            self.watch(key.clone());
            by_host.entry(key.0.clone()).or_default().push(key);
        }
        let checks = by_host.into_iter().filter_map(|(name, keys)| {
            let host = self.fleet.host(&name).ok()?;
            Some(async move { check(host, &keys).await })
        });
        for states in futures_util::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
        {
            let mut watched = lock(&self.watched);
            watched.extend(states.into_iter().filter(|(_, gone)| gone.is_some()));
        }
    }

    async fn stop(&self, instance: &Instance, grace: Duration) -> Result<(), RuntimeError> {
        let Some(key) = key(instance) else {
            return Ok(());
        };
        let host = self.fleet.host(&key.0)?;
        let (_, pid, ticks) = &key;
        let tenths = grace.as_millis().div_ceil(100);
        // `alive` is true while the process runs as the one we started (not
        // a zombie, not a later process that got its pid).
        let script = format!(
            "pid={pid}; t={ticks}; \
             alive() {{ s=$(cat /proc/$pid/stat 2>/dev/null) || return 1; set -- ${{s##*) }}; \
               [ \"$1\" != Z ] && [ \"$1\" != X ] && [ \"${{20}}\" = \"$t\" ]; }}; \
             alive || exit 0; kill -TERM -- -$pid 2>/dev/null || kill -TERM $pid; \
             i=0; while alive && [ $i -lt {tenths} ]; do sleep 0.1; i=$((i+1)); done; \
             if alive; then kill -KILL -- -$pid 2>/dev/null || kill -KILL $pid; echo killed; fi"
        );
        let out = host.run(&script, grace + ANSWER).await?;
        if out.trim() == "killed" {
            tracing::warn!(
                host = key.0,
                pid,
                "instance ignored SIGTERM for {grace:?}: SIGKILL"
            );
        }
        lock(&self.watched).remove(&key);
        Ok(())
    }

    async fn log_tail(&self, instance: &Instance, lines: usize) -> String {
        let Some(host) = instance
            .host
            .as_deref()
            .and_then(|h| self.fleet.host(h).ok())
        else {
            return String::new();
        };
        let path = quote(&instance.log.to_string_lossy());
        let script = format!("tail -n {lines} {path} 2>/dev/null || true");
        host.run(&script, ANSWER)
            .await
            .unwrap_or_else(|e| format!("(log unavailable: {e})"))
            .trim_end()
            .to_string()
    }
}

fn key(instance: &Instance) -> Option<Key> {
    match (&instance.host, &instance.handle) {
        (Some(host), Handle::Process { pid, start_ticks }) => {
            Some((host.clone(), *pid, *start_ticks))
        }
        _ => None,
    }
}

/// Asks `host` once which of `keys` are gone; `None` if it did not answer.
async fn check(host: &Host, keys: &[Key]) -> Option<HashMap<Key, Option<String>>> {
    let script: String = keys
        .iter()
        .map(|(_, pid, _)| format!("echo \"{pid} $(cat /proc/{pid}/stat 2>/dev/null)\"; "))
        .collect();
    let out = host.run(&script, ANSWER).await.ok()?;
    let mut stats: HashMap<u32, &str> = HashMap::new();
    for line in out.lines() {
        if let Some((pid, stat)) = line.split_once(' ') {
            if let Ok(pid) = pid.parse() {
                stats.insert(pid, stat);
            }
        }
    }
    let states = keys.iter().map(|key| {
        let (_, pid, ticks) = key;
        let running = stats
            .get(pid)
            .and_then(|stat| parse_stat(stat))
            .is_some_and(|(state, t)| t == *ticks && state != 'Z' && state != 'X');
        let gone = (!running).then(|| "the process is gone".to_string());
        (key.clone(), gone)
    });
    Some(states.collect())
}

/// Polls `host` for the exits of its watched instances, for as long as baton runs.
async fn poll_exits(host: Arc<Host>, watched: Arc<Mutex<HashMap<Key, Option<String>>>>) {
    loop {
        tokio::time::sleep(POLL).await;
        let running: Vec<Key> = lock(&watched)
            .iter()
            .filter(|(k, gone)| k.0 == host.name() && gone.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        if running.is_empty() {
            continue;
        }
        // An unreachable host says nothing: its instances' health checks fail.
        let Some(states) = check(&host, &running).await else {
            continue;
        };
        let mut watched = lock(&watched);
        for (key, gone) in states {
            if let (Some(why), Some(slot)) = (gone, watched.get_mut(&key)) {
                slot.get_or_insert(why);
            }
        }
    }
}
