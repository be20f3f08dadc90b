//! An nginx the user runs: baton renders the service's `upstream NAME {}`
//! block into the file the user's config includes, has nginx test the
//! whole config, reloads it, and confirms the reload with a request through
//! nginx that the new config answers, from one of its servers. A config
//! nginx refuses, or one that never answers, is put back as it was.
//!
//! Beside the upstream, the file holds a small loopback-only server that
//! proxies to it and says which config generation and which server
//! answered: nginx has no API, so this is how baton sees what it runs,
//! after a switch and every second after (`status`), restoring what it
//! wrote if the two differ.
//!
//! A reload makes the old workers finish the requests they hold and close
//! their idle client connections. That close races with requests clients
//! are sending on those connections, so baton can also render the
//! service's `location` directives with keep-alive toward clients off.
//! The drain waits for the retired workers and ends those still there at
//! `drain_timeout`, as `worker_shutdown_timeout` would.

mod confirm;
mod rendered;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton_config::NginxConfig;
use baton_core::Weight;
use baton_proxy::{DrainReport, Pool};

use crate::backends::Balancer;
use crate::files::{lock, now_ms, write_atomically};
use crate::{ServerReport, TrafficError, TrafficReport};

use rendered::{
    on_disk, render_location, render_upstream, server_differences, weight_of, Upstream,
};

/// Longest nginx may take to answer from a new config.
const CONFIRM: Duration = Duration::from_secs(10);
/// How often nginx is asked while waiting.
const POLL: Duration = Duration::from_millis(50);
/// How often nginx is compared with what baton wrote.
const WATCH: Duration = Duration::from_secs(1);

/// One service's upstream in an nginx.
pub struct NginxBackend {
    service: String,
    cfg: NginxConfig,
    /// Where the confirming server listens.
    confirm: SocketAddr,
    /// What confirming requests ask for: the health check's path.
    path: String,
    /// One change at a time, and no look while one is under way.
    changing: tokio::sync::Mutex<()>,
    /// What nginx last confirmed it runs.
    intended: Mutex<Option<Upstream>>,
    /// Workers reloads retired, with their master: a drain waits for them.
    retired: Mutex<Vec<(u32, u32)>>,
    /// What nginx showed last, for `status`.
    observed: Mutex<TrafficReport>,
}

impl NginxBackend {
    pub fn new(service: &str, cfg: &NginxConfig, health_path: &str) -> Self {
        Self {
            service: service.to_string(),
            cfg: cfg.clone(),
            confirm: cfg.confirm.unwrap_or_else(free_loopback_port),
            path: health_path.to_string(),
            changing: tokio::sync::Mutex::new(()),
            intended: Mutex::new(None),
            retired: Mutex::new(Vec::new()),
            observed: Mutex::new(TrafficReport {
                backend: format!("nginx {service}"),
                ..TrafficReport::default()
            }),
        }
    }

    /// Compares nginx with what baton wrote every second, for as long as
    /// baton runs.
    pub(crate) async fn watch(self: Arc<Self>) {
        loop {
            tokio::time::sleep(WATCH).await;
            self.check().await;
        }
    }

    /// Puts `servers` (address and weight) in the upstream and has nginx
    /// run them.
    async fn apply(&self, servers: Vec<(SocketAddr, u64)>) -> Result<(), TrafficError> {
        let _one = self.changing.lock().await;
        self.load(Upstream::new(servers)).await
    }

    /// Writes the files for `upstream`, has nginx load them and confirms
    /// it did; on any failure the files are put back as they were.
    async fn load(&self, upstream: Upstream) -> Result<(), TrafficError> {
        let files = self.render(&upstream);
        let before: Vec<Option<Vec<u8>>> =
            files.iter().map(|(f, _)| std::fs::read(f).ok()).collect();
        let written = files.iter().try_for_each(|(file, text)| {
            write_atomically(file, text.as_bytes())
                .map_err(|e| error(format!("{}: {e}", file.display())))
        });
        let outcome = match written {
            Ok(()) => self.reload(&upstream).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => *lock(&self.intended) = Some(upstream),
            Err(_) => put_back(&files, before),
        }
        outcome
    }

    /// The files baton owns, as `upstream` wants them.
    fn render(&self, upstream: &Upstream) -> Vec<(PathBuf, String)> {
        let mut files = vec![(
            self.cfg.upstream_file.clone(),
            render_upstream(&self.service, upstream, self.confirm),
        )];
        if let Some(location) = &self.cfg.location_file {
            let text = render_location(&self.service, self.cfg.client_keepalive);
            files.push((location.clone(), text));
        }
        files
    }

    /// Tests the config, reloads, and waits for the new config to answer.
    async fn reload(&self, upstream: &Upstream) -> Result<(), TrafficError> {
        run(&self.cfg.test).await?;
        let master = workers::master_pid(&self.cfg.pid_file)?;
        let old = workers::workers(master);
        run(&self.cfg.reload).await?;
        {
            let mut retired = lock(&self.retired);
            retired.retain(|&(m, pid)| workers::running(m, pid));
            retired.extend(old.iter().map(|&pid| (master, pid)));
        }
        self.confirm(upstream, master, &old).await
    }

    /// Waits until every `old` worker stopped taking connections and the
    /// config of `upstream`'s generation answers through nginx, from one of
    /// its servers.
    async fn confirm(
        &self,
        upstream: &Upstream,
        master: u32,
        old: &[u32],
    ) -> Result<(), TrafficError> {
        let deadline = Instant::now() + CONFIRM;
        while let Some(why) = self.not_yet(upstream, master, old).await {
            if Instant::now() >= deadline {
                return Err(error(format!(
                    "the new config did not answer {} within {CONFIRM:?}: {why} (see nginx's error log)",
                    self.path
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// Why nginx does not run `upstream` yet, if it does not.
    async fn not_yet(&self, upstream: &Upstream, master: u32, old: &[u32]) -> Option<String> {
        let taking = old
            .iter()
            .filter(|&&pid| !workers::retiring(master, pid))
            .count();
        if taking > 0 {
            return Some(format!("{taking} old worker(s) still take connections"));
        }
        match confirm::ask(self.confirm, &self.path).await {
            Ok(a) if a.generation != Some(upstream.generation) => {
                Some(format!("the old config answered ({})", a.status))
            }
            Ok(a) => match a.upstream {
                Some(addr) if upstream.serves(addr) && (200..300).contains(&a.status) => None,
                Some(addr) => Some(format!("{addr} answered {}", a.status)),
                None => Some(format!("nginx answered {} itself", a.status)),
            },
            Err(e) => Some(e),
        }
    }

    /// Compares nginx with what baton last had it load, and puts that back
    /// if they differ (a hand edit, another config reloaded).
    async fn check(&self) {
        let _one = self.changing.lock().await;
        let Some(intended) = lock(&self.intended).clone() else {
            return;
        };
        let answer = confirm::ask(self.confirm, &self.path).await;
        let mut disk = on_disk(&self.cfg.upstream_file);
        let mut found = differences(&intended, &disk, &answer);
        // A stopped nginx loads the file when it starts: nothing to restore.
        let running = workers::master_pid(&self.cfg.pid_file);
        if running.is_ok() && !found.is_empty() {
            let said = found.join("; ");
            tracing::warn!(service = %self.service, "nginx differs from what baton wrote ({said}): restoring it");
            let restored = match self.load(Upstream::new(intended.servers.clone())).await {
                Ok(()) => {
                    found.clear();
                    disk = on_disk(&self.cfg.upstream_file);
                    format!("restored after: {said}")
                }
                Err(e) => format!("could not restore after: {said}: {e}"),
            };
            let mut observed = lock(&self.observed);
            observed.restored = Some(restored);
            observed.restored_at = Some(now_ms());
        }
        let mut observed = lock(&self.observed);
        observed.error = running.err().map(|e| e.to_string());
        observed.differences = found;
        observed.servers = disk
            .unwrap_or_default()
            .into_iter()
            .map(|(addr, weight)| ServerReport {
                name: addr.to_string(),
                addr: addr.to_string(),
                weight: weight as u32,
                state: "ready".into(),
                intended_weight: weight_of(&intended.servers, addr).map(|w| w as u32),
            })
            .collect();
    }
}

/// Where the upstream file as read (`disk`), and the config nginx answers
/// from, differ from `intended`.
fn differences(
    intended: &Upstream,
    disk: &Result<Vec<(SocketAddr, u64)>, String>,
    answer: &Result<confirm::Answer, String>,
) -> Vec<String> {
    let mut found = match disk {
        Ok(servers) => server_differences(&intended.servers, servers),
        Err(e) => vec![e.clone()],
    };
    match answer.as_ref().map(|a| a.generation) {
        Ok(Some(g)) if g == intended.generation => {}
        Ok(Some(g)) => found.push(format!(
            "nginx runs config generation {g}, baton's is {}",
            intended.generation
        )),
        Ok(None) => found.push("nginx answers without baton's generation".into()),
        Err(e) => found.push(format!("no answer from baton's confirming server: {e}")),
    }
    found
}

#[async_trait]
impl Balancer for NginxBackend {
    /// Nothing to do: the candidate takes no traffic until the switch.
    async fn stage(&self, _pool: &Arc<Pool>) -> Result<(), TrafficError> {
        Ok(())
    }

    async fn switch(&self, to: &Arc<Pool>, _from: Option<&Arc<Pool>>) -> Result<(), TrafficError> {
        self.apply(servers(to, 1)).await
    }

    async fn split(
        &self,
        candidate: &Arc<Pool>,
        live: &Arc<Pool>,
        weight: Weight,
    ) -> Result<(), TrafficError> {
        let (c, l) = weights(weight, candidate.targets().len(), live.targets().len());
        let mut all = servers(live, l);
        if c > 0 {
            all.extend(servers(candidate, c));
        }
        self.apply(all).await
    }

    async fn withdraw(
        &self,
        _candidate: &Arc<Pool>,
        live: Option<&Arc<Pool>>,
    ) -> Result<(), TrafficError> {
        match live {
            Some(live) => self.apply(servers(live, 1)).await,
            None => Ok(()),
        }
    }

    /// Nothing to do: the color left the upstream at the switch.
    async fn unstage(&self, _color: baton_core::Color) -> Result<(), TrafficError> {
        Ok(())
    }

    /// Waits for the workers reloads retired to exit; those still there
    /// at `timeout` are ended, with the connections they hold. `abandoned`
    /// counts workers.
    async fn drain(&self, _pool: &Pool, timeout: Duration) -> DrainReport {
        let started = Instant::now();
        loop {
            let left: Vec<(u32, u32)> = lock(&self.retired)
                .iter()
                .copied()
                .filter(|&(master, pid)| workers::running(master, pid))
                .collect();
            let timed_out = started.elapsed() >= timeout;
            if left.is_empty() || timed_out {
                for &(master, pid) in &left {
                    workers::end(master, pid);
                }
                return DrainReport {
                    timed_out: !left.is_empty(),
                    closed_upgraded: 0,
                    abandoned: left.len(),
                    elapsed: started.elapsed(),
                };
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn report(&self) -> Option<TrafficReport> {
        Some(lock(&self.observed).clone())
    }
}

/// `pool`'s targets, each with `weight`.
fn servers(pool: &Pool, weight: u64) -> Vec<(SocketAddr, u64)> {
    pool.targets().iter().map(|t| (t.addr(), weight)).collect()
}

/// Integer weights per candidate and per live server giving the candidate
/// `weight` of the requests (reduced, as nginx wants small integers).
fn weights(weight: Weight, candidates: usize, lives: usize) -> (u64, u64) {
    let bp = u64::from(weight.basis_points());
    let c = bp * lives.max(1) as u64;
    let l = (10_000 - bp.min(10_000)) * candidates.max(1) as u64;
    let g = gcd(c, l).max(1);
    (c / g, l / g)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Puts each file back as it was before (removing one that was not there).
fn put_back(files: &[(PathBuf, String)], before: Vec<Option<Vec<u8>>>) {
    for ((file, _), old) in files.iter().zip(before) {
        let restored = match old {
            Some(old) => write_atomically(file, &old),
            None => std::fs::remove_file(file),
        };
        if let Err(e) = restored {
            tracing::error!(file = %file.display(), error = %e, "cannot put the file back");
        }
    }
}

/// A loopback port free now, for the confirming server.
fn free_loopback_port() -> SocketAddr {
    let fallback = SocketAddr::from(([127, 0, 0, 1], 0));
    std::net::TcpListener::bind(fallback)
        .and_then(|l| l.local_addr())
        .unwrap_or(fallback)
}

/// Runs one of the configured commands; nginx's first words on failure.
async fn run(argv: &[String]) -> Result<(), TrafficError> {
    let shown = argv.join(" ");
    let output = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| error(format!("cannot run `{shown}`: {e}")))?;
    if output.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&output.stderr);
    let said = text
        .lines()
        .find(|l| l.contains("[emerg]") || l.contains("[alert]"))
        .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
        .unwrap_or("no message");
    Err(error(format!("`{shown}` failed: {}", said.trim())))
}

fn error(message: String) -> TrafficError {
    TrafficError::Nginx(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_small_integers_in_the_canary_proportion() {
        let w = |pct| Weight::from_percent(pct).unwrap();
        assert_eq!(weights(w(5.0), 1, 1), (1, 19));
        assert_eq!(weights(w(50.0), 2, 2), (1, 1));
        assert_eq!(weights(w(25.0), 2, 1), (1, 6));
        assert_eq!(weights(Weight::FULL, 1, 1), (1, 0));
    }
}
