//! An nginx the user runs: baton renders the service's `upstream NAME {}`
//! block into the file the user's config includes, has nginx test the
//! whole config, reloads it, and confirms the reload took (nginx started
//! workers with it). A config nginx refuses is put back as it was, so the
//! running nginx never changes.
//!
//! nginx has no API to count a server's sessions; a reload leaves the old
//! workers finishing the requests they hold, so the drain waits for those
//! workers to exit.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use baton_config::NginxConfig;
use baton_core::Weight;
use baton_proxy::{DrainReport, Pool};

use crate::backends::Balancer;
use crate::files::{lock, write_atomically};
use crate::TrafficError;

/// Longest nginx may take to start workers with a new config.
const CONFIRM: Duration = Duration::from_secs(10);
/// How often workers are looked at while waiting.
const POLL: Duration = Duration::from_millis(50);

/// One service's upstream in an nginx.
pub struct NginxBackend {
    service: String,
    cfg: NginxConfig,
    /// One change at a time.
    changing: tokio::sync::Mutex<()>,
    /// The workers the last reload retired: a drain waits for them.
    retired: Mutex<Vec<u32>>,
}

impl NginxBackend {
    pub fn new(service: &str, cfg: &NginxConfig) -> Self {
        Self {
            service: service.to_string(),
            cfg: cfg.clone(),
            changing: tokio::sync::Mutex::new(()),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// Puts `servers` (address and weight) in the upstream and has nginx
    /// load it; on any failure the file is put back as it was.
    async fn apply(&self, servers: &[(SocketAddr, u64)]) -> Result<(), TrafficError> {
        let _one = self.changing.lock().await;
        let file = &self.cfg.upstream_file;
        let before = std::fs::read(file).ok();
        let text = render(&self.service, servers);
        write_atomically(file, text.as_bytes())
            .map_err(|e| error(format!("upstream_file {}: {e}", file.display())))?;
        let outcome = self.load().await;
        if outcome.is_err() {
            let restored = match &before {
                Some(old) => write_atomically(file, old),
                None => std::fs::remove_file(file),
            };
            if let Err(e) = restored {
                tracing::error!(file = %file.display(), error = %e, "cannot put the upstream file back");
            }
        }
        outcome
    }

    /// Tests the config, reloads, and waits for workers started with it.
    async fn load(&self) -> Result<(), TrafficError> {
        run(&self.cfg.test).await?;
        let master = master_pid(&self.cfg.pid_file)?;
        let old = workers(master);
        run(&self.cfg.reload).await?;
        let deadline = Instant::now() + CONFIRM;
        // Taken once a worker runs the new config and every old one has
        // stopped taking connections (nginx retitles them as it does).
        let taken = || {
            let started = workers(master).iter().any(|w| !old.contains(w));
            started && old.iter().all(|&w| !alive(w) || shutting_down(w))
        };
        while !taken() {
            if Instant::now() >= deadline {
                return Err(error(format!(
                    "no worker started with the new config within {CONFIRM:?} (see nginx's error log)"
                )));
            }
            tokio::time::sleep(POLL).await;
        }
        *lock(&self.retired) = old;
        Ok(())
    }
}

#[async_trait]
impl Balancer for NginxBackend {
    /// Nothing to do: the candidate takes no traffic until the switch.
    async fn stage(&self, _pool: &Arc<Pool>) -> Result<(), TrafficError> {
        Ok(())
    }

    async fn switch(&self, to: &Arc<Pool>, _from: Option<&Arc<Pool>>) -> Result<(), TrafficError> {
        self.apply(&servers(to, 1)).await
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
        self.apply(&all).await
    }

    async fn withdraw(
        &self,
        _candidate: &Arc<Pool>,
        live: Option<&Arc<Pool>>,
    ) -> Result<(), TrafficError> {
        match live {
            Some(live) => self.apply(&servers(live, 1)).await,
            None => Ok(()),
        }
    }

    /// Nothing to do: the color left the upstream at the switch.
    async fn unstage(&self, _color: baton_core::Color) -> Result<(), TrafficError> {
        Ok(())
    }

    /// Waits for the workers the last reload retired to exit.
    async fn drain(&self, _pool: &Pool, timeout: Duration) -> DrainReport {
        let started = Instant::now();
        let retired = lock(&self.retired).clone();
        loop {
            let left = retired.iter().filter(|&&pid| alive(pid)).count();
            if left == 0 || started.elapsed() >= timeout {
                return DrainReport {
                    timed_out: left > 0,
                    closed_upgraded: 0,
                    abandoned: left,
                    elapsed: started.elapsed(),
                };
            }
            tokio::time::sleep(POLL).await;
        }
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

/// The upstream block. nginx's own failure counting is off (`max_fails=0`):
/// baton's health checks are the one gate.
fn render(service: &str, servers: &[(SocketAddr, u64)]) -> String {
    let mut text = format!(
        "# Written by baton for service {service} at every switch: edits here are overwritten.\n\
         upstream {service} {{\n"
    );
    for (addr, weight) in servers.iter().filter(|(_, w)| *w > 0) {
        text.push_str(&format!("    server {addr} weight={weight} max_fails=0;\n"));
    }
    text.push_str("    keepalive 32;\n}\n");
    text
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

/// nginx's master process, from its pid file.
fn master_pid(file: &Path) -> Result<u32, TrafficError> {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| {
            error(format!(
                "no running nginx: cannot read its pid from {}",
                file.display()
            ))
        })
}

/// The children of `master` (its workers), from /proc.
fn workers(master: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the command name: state, then the parent's pid.
            let after = stat.rfind(')').and_then(|i| stat.get(i + 2..));
            after.and_then(|a| a.split(' ').nth(1)) == Some(master.to_string().as_str())
        })
        .collect()
}

/// True once nginx retitled worker `pid` for its graceful exit.
fn shutting_down(pid: u32) -> bool {
    let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&title).contains("shutting down")
}

/// True while `pid` runs (a zombie is done).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3));
    matches!(state, Some(s) if s != "Z" && s != "X")
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

    #[test]
    fn the_upstream_names_the_service_and_leaves_zero_weights_out() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let text = render("web", &[(a, 19), (b, 0)]);
        assert!(text.contains("upstream web {\n    server 127.0.0.1:4000 weight=19 max_fails=0;\n    keepalive 32;\n}"), "{text}");
        assert!(!text.contains("4001"), "{text}");
    }
}
