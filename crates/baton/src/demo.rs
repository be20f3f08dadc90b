//! `baton demo`: a real deploy cycle under load, on nothing but this binary.
//!
//! It starts `baton serve` as a separate process with the embedded sample app
//! as the service, drives its own keep-alive load through the proxy, then
//! deploys v2 (slow to start), a broken v3 (refused by the smoke check,
//! traffic stays on v2), rolls back to v1, and then two canary rollouts: a
//! flaky v4 (1 answer in 20 is a 500), rolled back automatically at its
//! first step, and a good v5, promoted step by step. Each analysis interval
//! prints the candidate's weight and error rate as it comes; the closing
//! table says what each phase cost.
//!
//! The flaky candidate's 500s do reach clients, at its small share, until
//! the rollback: that is what a canary risks. They are counted apart, and
//! the demo fails only on anything else.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_core::Verdict;
use baton_loadgen::{LoadConfig, LoadHandle, Stats};
use baton_orchestrator::analysis::Analysis;
use serde_json::json;

use crate::api::{DeployEvent, Outcome};
use crate::client::Client;
use crate::exit;

const CONNECTIONS: usize = 32;

/// The canary candidates: one that answers 500 to 1 request in 20, one that
/// is fine.
const FLAKY: &str = "v4";
const GOOD: &str = "v5";
/// The rollout's first step, in percent: the flaky candidate's share.
const FIRST_STEP: u64 = 10;

/// One row of the closing table.
struct Row {
    phase: &'static str,
    result: String,
    stats: Stats,
    /// Of `stats.failed()`, the flaky candidate's injected 500s.
    injected: u64,
}

pub async fn run() -> anyhow::Result<u8> {
    let demo = Demo::start().await?;
    let outcome = demo.cycle().await;
    demo.stop().await;
    let rows = outcome?;
    print_table(&rows);
    let failed: u64 = rows.iter().map(|r| r.stats.failed()).sum();
    let injected: u64 = rows.iter().map(|r| r.injected).sum();
    let lost = failed - injected;
    let expected = rows.iter().all(|r| !r.result.starts_with("UNEXPECTED"));
    println!();
    if lost == 0 && expected {
        if injected > 0 {
            println!(
                "{injected} request(s) answered 500 by the flaky {FLAKY} at its {FIRST_STEP}% \
                 share before the automatic rollback (expected)."
            );
            println!("No other request failed; the broken v3 never took traffic.");
        } else {
            println!("No request lost; the broken v3 never took traffic.");
        }
        return Ok(0);
    }
    if !expected {
        println!("A phase did not end as the demo expects (UNEXPECTED above).");
    }
    if lost > 0 {
        println!(
            "{lost} request(s) failed during the demo, not counting the flaky {FLAKY}'s \
             {injected} expected 500(s)."
        );
    }
    Ok(exit::FAILED)
}

/// A throwaway installation: a config in a temp dir and its `baton serve`.
struct Demo {
    dir: PathBuf,
    port: u16,
    serve: Child,
    client: Client,
}

impl Demo {
    async fn start() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the baton binary")?;
        let dir = std::env::temp_dir().join(format!("baton-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let config = dir.join("baton.toml");
        std::fs::write(&config, demo_config(&exe, port))?;
        println!("baton demo: sample app behind baton on 127.0.0.1:{port}, {CONNECTIONS} keep-alive clients");
        println!("  state, logs and config in {}", dir.display());
        let log = std::fs::File::create(dir.join("serve.log"))?;
        let serve = Command::new(&exe)
            .arg("serve")
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting baton serve")?;
        let client = Client::for_config(&config)?;
        let demo = Self {
            dir,
            port,
            serve,
            client,
        };
        demo.wait_ready().await?;
        Ok(demo)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self
                .client
                .get::<serde_json::Value>("/v1/status")
                .await
                .is_ok()
            {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "baton serve did not start; see {}",
                self.dir.join("serve.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The scripted cycle; returns the table's rows.
    async fn cycle(&self) -> anyhow::Result<Vec<Row>> {
        self.deploy("first deploy", "deploy", "v1")
            .await?
            .0
            .expect_ok()?;
        let mut cfg = LoadConfig::new(format!("http://127.0.0.1:{}/", self.port));
        cfg.connections = CONNECTIONS;
        let load = baton_loadgen::start(cfg);
        let mut rows = Vec::new();

        tokio::time::sleep(Duration::from_secs(2)).await;
        rows.push(row(&load, "v1 live", "steady".into()));

        let (v2, _) = self.deploy("v2, slow to start", "deploy", "v2").await?;
        rows.push(row(&load, "deploy v2 (slow start)", v2.summary(true)));

        let (v3, _) = self.deploy("v3, broken", "deploy", "v3").await?;
        rows.push(row(&load, "deploy v3 (broken)", v3.summary(false)));

        let (back, _) = self.deploy("rollback", "rollback", "v1").await?;
        rows.push(row(&load, "rollback to v1", back.summary(true)));

        tokio::time::sleep(Duration::from_secs(1)).await;
        rows.push(row(&load, "v1 live again", "steady".into()));

        let label = "v4, flaky: 1 answer in 20 is a 500 (canary)";
        let (flaky, last) = self.deploy(label, "canary", FLAKY).await?;
        let mut flaky = row(&load, "canary v4 (flaky)", flaky.canary(last, false));
        flaky.injected = injected_500s(&flaky.stats);
        rows.push(flaky);

        let (good, last) = self.deploy("v5 (canary)", "canary", GOOD).await?;
        rows.push(row(&load, "canary v5", good.canary(last, true)));

        tokio::time::sleep(Duration::from_secs(1)).await;
        rows.push(row(&load, "v5 live", "steady".into()));
        load.stop().await;
        Ok(rows)
    }

    /// Runs a deploy (`action` "deploy" or "canary") or a rollback, printing
    /// its progress; returns how it ended and its last analysis interval.
    async fn deploy(
        &self,
        label: &str,
        action: &str,
        version: &str,
    ) -> anyhow::Result<(Outcome, Option<Analysis>)> {
        println!("\n== {label}");
        let started = Instant::now();
        let (path, body) = match action {
            "rollback" => (
                "/v1/services/web/rollback".to_string(),
                json!({ "to": null, "requested_by": "baton demo" }),
            ),
            _ => (
                "/v1/services/web/deploy".to_string(),
                json!({ "version": version, "requested_by": "baton demo",
                        "canary": action == "canary" }),
            ),
        };
        let mut last = None;
        let outcome = self
            .client
            .stream(&path, body, |event| {
                let DeployEvent::Progress(p) = event else {
                    return;
                };
                let at = started.elapsed().as_secs_f64();
                match &p.analysis {
                    Some(a) => {
                        println!(
                            "  {at:>5.1}s  weight {:>3}  candidate {:>5} requests, {:>5} errors  {}",
                            a.weight.to_string(),
                            a.candidate.requests,
                            percent(a.candidate.error_rate),
                            verdict(&a.verdict)
                        );
                        last = Some(a.as_ref().clone());
                    }
                    None => println!("  {at:>5.1}s  {}", p.message),
                }
            })
            .await?;
        Ok((outcome, last))
    }

    /// Stops the apps and `baton serve`, and removes the temp dir.
    async fn stop(mut self) {
        let _ = self
            .client
            .post("/v1/shutdown", json!({ "stop_apps": true }))
            .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.serve.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.serve.kill();
        let _ = self.serve.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Outcome {
    fn expect_ok(self) -> anyhow::Result<()> {
        anyhow::ensure!(self.ok, "{}", self.error.unwrap_or_default());
        Ok(())
    }

    /// "switched" or "refused: why", flagged when it is not what the demo expects.
    fn summary(&self, should_succeed: bool) -> String {
        let what = match (&self.error, self.ok) {
            (_, true) => "switched".to_string(),
            (Some(e), false) => format!("refused: {}", short_reason(e)),
            (None, false) => "refused".to_string(),
        };
        if self.ok == should_succeed {
            what
        } else {
            format!("UNEXPECTED {what}")
        }
    }

    /// "promoted" or "rolled back at 10%: 9.9% errors", flagged when it is
    /// not what the demo expects.
    fn canary(&self, last: Option<Analysis>, should_succeed: bool) -> String {
        let what = match (self.ok, last) {
            (true, _) => "promoted".to_string(),
            (false, Some(a)) if matches!(a.verdict, Verdict::Fail(_)) => {
                let errors = percent(a.candidate.error_rate);
                format!("rolled back at {}: {errors} errors", a.weight)
            }
            (false, _) => format!(
                "rolled back: {}",
                short_reason(self.error.as_deref().unwrap_or_default())
            ),
        };
        if self.ok == should_succeed {
            what
        } else {
            format!("UNEXPECTED {what}")
        }
    }
}

/// An interval's verdict, without the reason when it fails: the error rate
/// is on the line, and the deploy's failure repeats the reason.
fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Pass => "pass".into(),
        Verdict::Fail(_) => "FAIL".into(),
        Verdict::Inconclusive(why) => format!("inconclusive: {why}"),
    }
}

fn percent(rate: Option<f64>) -> String {
    rate.map(|r| format!("{:.1}%", r * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// The flaky candidate's 500s in its phase, provided it got no more than
/// about its step's share of the requests. baton itself never answers 500
/// (it answers 502, 503 or 504) and v1 injects no errors, so a 500 is the
/// candidate's; anything else failing counts as lost.
fn injected_500s(s: &Stats) -> u64 {
    let errors = s.statuses.get(&500).copied().unwrap_or(0);
    let candidate = errors + s.versions.get(FLAKY).copied().unwrap_or(0);
    // The phase also covers the candidate's start, at 0%: its share of the
    // whole phase is below its step's weight, give or take chance.
    if candidate * 100 <= s.sent * (FIRST_STEP + 5) {
        errors
    } else {
        0
    }
}

fn short_reason(e: &str) -> String {
    let reason = e.split_once(" failed: ").map(|(_, r)| r).unwrap_or(e);
    let reason = reason.split(": `").next().unwrap_or(reason);
    reason.chars().take(40).collect()
}

fn row(load: &LoadHandle, phase: &'static str, result: String) -> Row {
    Row {
        phase,
        result,
        stats: load.take_phase(),
        injected: 0,
    }
}

fn demo_config(exe: &Path, port: u16) -> String {
    let exe = format!("{:?}", exe.display().to_string());
    format!(
        r#"[proxy]
listen = ["127.0.0.1:{port}"]

[services.web]
command = [{exe}, "sample-app", "--port", "{{port}}", "--version", "{{version}}",
           "--behave", "v2=unhealthy-for:2s", "--behave", "v3=broken",
           "--behave", "{FLAKY}=error-rate:0.05"]
instances = 2

[services.web.health]
interval = "200ms"
deadline = "15s"

[services.web.switch]
drain_timeout = "5s"
keep_previous = "5m"
smoke = [{exe}, "check", "{{preview_url}}/"]

# For `deploy --canary` (the service's strategy stays blue-green): short
# steps, an analysis every second, rolled back after two failed intervals.
[services.web.canary]
steps = [ {{ weight = {FIRST_STEP}, pause = "2s" }}, {{ weight = 50, pause = "2s" }} ]
deadline = "1m"

[services.web.canary.analysis]
interval = "1s"
min_requests = 50
max_error_rate = 0.01
failure_limit = 2
"#
    )
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<24} {:<34} {:>9} {:>7} {:>9} {:>9}  served by",
        "phase", "result", "requests", "failed", "p50", "p99"
    );
    for r in rows {
        let s = &r.stats;
        let served: Vec<String> = s
            .versions
            .iter()
            .map(|(v, n)| format!("{v} {:.1}%", 100.0 * *n as f64 / s.ok.max(1) as f64))
            .collect();
        println!(
            "{:<24} {:<34} {:>9} {:>7} {:>9} {:>9}  {}",
            r.phase,
            r.result,
            s.sent,
            s.failed(),
            format!("{:.2}ms", s.p50.as_secs_f64() * 1e3),
            format!("{:.2}ms", s.p99.as_secs_f64() * 1e3),
            served.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_500s_within_the_candidates_share_are_expected() {
        let stats = |sent, errors: u64, flaky: u64| {
            let mut s = Stats {
                sent,
                non_2xx: errors,
                ok: sent - errors,
                ..Stats::default()
            };
            s.statuses.insert(500, errors);
            s.versions.insert(FLAKY.into(), flaky);
            s.versions.insert("v1".into(), sent - errors - flaky);
            s
        };
        assert_eq!(injected_500s(&stats(10_000, 40, 760)), 40);
        assert_eq!(injected_500s(&stats(10_000, 100, 4_000)), 0, "beyond 10%");
        let mut other = stats(10_000, 40, 760);
        other.statuses.insert(502, 3);
        other.non_2xx += 3;
        assert_eq!(injected_500s(&other), 40, "the 502s stay lost");
    }
}
