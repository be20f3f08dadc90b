//! The process runtime: each instance is a local process in its own session
//! and process group, so that stopping it reaches every worker it forked
//! (gunicorn's, say), and so that the kernel schedules it apart from baton:
//! with autogroup scheduling (Debian's default), a session is a scheduling
//! group, and an app in baton's would share one CPU share with the proxy in
//! front of it.
//!
//! Instances outlive baton on purpose: if `baton serve` dies, the apps keep
//! running and the next `baton serve` adopts them (pid plus start time, from
//! the store) instead of restarting them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{logfile, ports, Handle, Instance, InstanceSpec, Runtime, RuntimeError};

/// Runs instances as local processes.
#[derive(Debug, Default)]
pub struct ProcessRuntime {
    /// The children this baton started, by pid, with their exit status once reaped.
    children: Arc<Mutex<HashMap<u32, Option<ExitStatus>>>>,
}

impl ProcessRuntime {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance, RuntimeError> {
        let port = ports::free_port()?;
        let vars = spec.vars(port);
        let argv: Vec<String> = spec.command.iter().map(|t| t.render(&vars)).collect();
        let workdir = PathBuf::from(spec.workdir.render(&vars));
        if !workdir.is_dir() {
            return Err(RuntimeError::NoWorkdir(workdir));
        }
        let log = logfile::open(&spec.log)?;
        let log_err = log.try_clone().map_err(|source| RuntimeError::Io {
            what: format!("log {}", spec.log.display()),
            source,
        })?;
        let program = &argv[0];
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&argv[1..])
            .current_dir(&workdir)
            .envs(spec.env.iter().map(|(k, v)| (k, v.render(&vars))))
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(false);
        // SAFETY: setsid(2) is async-signal-safe and touches no memory of
        // ours; it makes the child the leader of a new session and process
        // group (pgid = pid), which is what `stop` signals.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        let start_ticks = start_ticks(pid).unwrap_or(0);
        if let Ok(mut children) = self.children.lock() {
            children.insert(pid, None);
        }
        let children = self.children.clone();
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                // Only while it is still ours: a stopped instance is forgotten.
                if let Ok(mut children) = children.lock() {
                    children.entry(pid).and_modify(|s| *s = Some(status));
                }
            }
        });
        tracing::info!(service = %spec.service, version = %spec.version, color = %spec.color, pid, port, "instance started");
        Ok(Instance {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log: spec.log.clone(),
            handle: Handle::Process { pid, start_ticks },
            host: None,
        })
    }

    fn exited(&self, instance: &Instance) -> Option<String> {
        let Some((pid, start_ticks)) = process(instance) else {
            return Some("is not a process".to_string());
        };
        let child = self.children.lock().ok().and_then(|c| c.get(&pid).copied());
        match child {
            // Our own child: its reaper knows how it ended.
            Some(status) => status.map(describe),
            // Adopted after a restart: all we can tell is whether it still runs.
            None => (!is_alive(pid, start_ticks)).then(|| "the process is gone".to_string()),
        }
    }

    async fn stop(&self, instance: &Instance, grace: Duration) -> Result<(), RuntimeError> {
        let Some((pid, start_ticks)) = process(instance) else {
            return Ok(());
        };
        // Once stopped, its exit status is of no more use.
        let _forget = Forget(&self.children, pid);
        if !is_alive(pid, start_ticks) && !group_alive(pid) {
            return Ok(());
        }
        let pgid = pid as libc::pid_t;
        signal_group(pgid, libc::SIGTERM);
        if wait_group_gone(pgid, grace).await {
            return Ok(());
        }
        tracing::warn!(pid, "instance ignored SIGTERM for {grace:?}: SIGKILL");
        signal_group(pgid, libc::SIGKILL);
        wait_group_gone(pgid, Duration::from_secs(5)).await;
        Ok(())
    }

    async fn log_tail(&self, instance: &Instance, lines: usize) -> String {
        logfile::tail(&instance.log, lines)
    }
}

/// Removes a child from the table when dropped, however `stop` returns.
struct Forget<'a>(&'a Mutex<HashMap<u32, Option<ExitStatus>>>, u32);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut children) = self.0.lock() {
            children.remove(&self.1);
        }
    }
}

/// The pid and start time of a process instance.
fn process(instance: &Instance) -> Option<(u32, u64)> {
    match instance.handle {
        Handle::Process { pid, start_ticks } => Some((pid, start_ticks)),
        Handle::Container { .. } => None,
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "exited".to_string(),
    }
}

/// The fields of a /proc/PID/stat line after the command name (field 2),
/// which may hold spaces: state, ppid, pgrp, session, and so on.
fn stat_fields(stat: &str) -> Option<std::str::Split<'_, char>> {
    Some(stat.get(stat.rfind(')')? + 2..)?.split(' '))
}

/// From a /proc/PID/stat line: the state (field 3) and when the process
/// started, in clock ticks (field 22).
pub(crate) fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let mut fields = stat_fields(stat)?;
    let state = fields.next()?.chars().next()?;
    let ticks = fields.nth(18)?.trim().parse().ok()?;
    Some((state, ticks))
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, ticks)| ticks)
}

/// True while the recorded process runs (and is not a zombie, nor a newer
/// process that reused its pid).
fn is_alive(pid: u32, started: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    matches!(parse_stat(&stat), Some((state, ticks)) if state != 'Z' && state != 'X' && ticks == started)
}

fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

fn group_alive(pgid: u32) -> bool {
    // SAFETY: signal 0 only checks whether the group exists.
    unsafe { libc::kill(-(pgid as libc::pid_t), 0) == 0 }
}

/// Waits until no process of the group is left, up to `limit`.
async fn wait_group_gone(pgid: libc::pid_t, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if !group_alive(pgid as u32) || group_only_zombies(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True when every process left in the group is a zombie waiting to be reaped.
fn group_only_zombies(pgid: libc::pid_t) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let Some(fields) = stat_fields(&stat) else {
            continue;
        };
        let fields: Vec<&str> = fields.collect();
        // Fields after the name: state (0), ppid (1), pgrp (2).
        if fields.get(2).and_then(|g| g.parse::<libc::pid_t>().ok()) == Some(pgid)
            && fields.first() != Some(&"Z")
        {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
