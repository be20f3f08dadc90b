//! `baton demo`: a real deploy cycle under load, on nothing but this binary.
//!
//! It starts `baton serve` as a separate process with the embedded sample app
//! as the service, drives its own keep-alive load through the proxy, then
//! deploys v2 (slow to start), a broken v3 (refused by the smoke check,
//! traffic stays on v2), rolls back to v1, and prints what each phase cost.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_loadgen::{LoadConfig, LoadHandle, Stats};
use serde_json::json;

use crate::api::{DeployEvent, Outcome};
use crate::client::Client;
use crate::exit;

const CONNECTIONS: usize = 32;

/// One row of the closing table.
struct Row {
    phase: &'static str,
    result: String,
    stats: Stats,
}

pub async fn run() -> anyhow::Result<u8> {
    let demo = Demo::start().await?;
    let outcome = demo.cycle().await;
    demo.stop().await;
    let rows = outcome?;
    print_table(&rows);
    let lost: u64 = rows.iter().map(|r| r.stats.failed()).sum();
    let expected = rows.iter().all(|r| !r.result.starts_with("UNEXPECTED"));
    println!();
    if lost == 0 && expected {
        println!("No request lost; the broken release never took traffic.");
        Ok(0)
    } else {
        println!("{lost} request(s) failed during the demo.");
        Ok(exit::FAILED)
    }
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
            .expect_ok()?;
        let mut cfg = LoadConfig::new(format!("http://127.0.0.1:{}/", self.port));
        cfg.connections = CONNECTIONS;
        let load = baton_loadgen::start(cfg);
        let mut rows = Vec::new();

        tokio::time::sleep(Duration::from_secs(2)).await;
        rows.push(row(&load, "v1 live", "steady".into()));

        let v2 = self.deploy("v2, slow to start", "deploy", "v2").await?;
        rows.push(row(&load, "deploy v2 (slow start)", v2.summary(true)));

        let v3 = self.deploy("v3, broken", "deploy", "v3").await?;
        rows.push(row(&load, "deploy v3 (broken)", v3.summary(false)));

        let back = self.deploy("rollback", "rollback", "v1").await?;
        rows.push(row(&load, "rollback to v1", back.summary(true)));

        tokio::time::sleep(Duration::from_secs(1)).await;
        rows.push(row(&load, "v1 live again", "steady".into()));
        load.stop().await;
        Ok(rows)
    }

    async fn deploy(&self, label: &str, action: &str, version: &str) -> anyhow::Result<Outcome> {
        println!("\n== {label}");
        let started = Instant::now();
        let (path, body) = match action {
            "rollback" => (
                "/v1/services/web/rollback".to_string(),
                json!({ "to": null, "requested_by": "baton demo" }),
            ),
            _ => (
                "/v1/services/web/deploy".to_string(),
                json!({ "version": version, "requested_by": "baton demo" }),
            ),
        };
        self.client
            .stream(&path, body, |event| {
                if let DeployEvent::Progress(p) = event {
                    println!("  {:>5.1}s  {}", started.elapsed().as_secs_f64(), p.message);
                }
            })
            .await
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
    }
}

fn demo_config(exe: &Path, port: u16) -> String {
    let exe = format!("{:?}", exe.display().to_string());
    format!(
        r#"[proxy]
listen = ["127.0.0.1:{port}"]

[services.web]
command = [{exe}, "sample-app", "--port", "{{port}}", "--version", "{{version}}",
           "--behave", "v2=unhealthy-for:2s", "--behave", "v3=broken"]
instances = 2

[services.web.health]
interval = "200ms"
deadline = "15s"

[services.web.switch]
drain_timeout = "5s"
keep_previous = "5m"
smoke = [{exe}, "check", "{{preview_url}}/"]
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
