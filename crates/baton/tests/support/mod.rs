//! Test harness: a real `baton serve` process in a temporary directory,
//! driven through the real CLI, with the sample app as the deployed service.
//!
//! Every wait is on a condition with a deadline; nothing sleeps blindly.

#![allow(dead_code)]

pub mod hosts;
pub mod images;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// A baton installation under test.
pub struct Baton {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub port: u16,
    serve: Option<Child>,
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The sample app as a TOML command array, with extra arguments.
pub fn sample_app(extra: &[&str]) -> String {
    let mut argv = vec![
        BATON,
        "sample-app",
        "--port",
        "{port}",
        "--version",
        "{version}",
    ];
    argv.extend_from_slice(extra);
    format!(
        "[{}]",
        argv.iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The usual service under test: the sample app, one instance, quick health checks.
pub fn web_service() -> String {
    format!(
        "[services.web]\ncommand = {}\n[services.web.health]\ninterval = \"100ms\"\n",
        sample_app(&[])
    )
}

impl Baton {
    /// A config with a proxy on a free port; `services` is appended as is.
    pub fn new(services: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("baton.toml");
        let text = format!("[proxy]\nlisten = [\"127.0.0.1:{port}\"]\n\n{services}\n");
        std::fs::write(&config, text).unwrap();
        Self {
            dir,
            config,
            port,
            serve: None,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Starts `baton serve` and waits until its control API answers.
    pub fn start(&mut self) {
        self.start_no_wait();
        self.wait_control();
    }

    /// Runs a CLI command against this installation.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BATON)
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs a CLI command and insists that it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "baton {args:?} failed: {}\n{}",
            text(&out.stderr),
            self.serve_log()
        );
        text(&out.stdout)
    }

    pub fn status(&self, service: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", service, "--json"])).unwrap()
    }

    pub fn serve_log(&self) -> String {
        std::fs::read_to_string(self.path("serve.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `kill -9` of `baton serve`; the apps keep running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.serve.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn serve_pid(&self) -> Option<u32> {
        self.serve.as_ref().map(|c| c.id())
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if let Some(mut child) = self.serve.take() {
            let _ = self.cli(&["shutdown", "--stop-apps"]);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `cond` until it holds; panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One GET through a fresh connection: (status, body).
pub fn get(url: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(baton_loadgen::get_once(url, None))
        .unwrap_or((0, String::new()))
}

/// True while a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Helpers for the failure, restart, bad-input and proxy tests (appended).
// ---------------------------------------------------------------------------

impl Baton {
    /// Spawns `baton serve` and returns at once, with the spawn instant:
    /// for measuring how soon a restarted baton serves.
    pub fn start_no_wait(&mut self) -> Instant {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("serve.log"))
            .unwrap();
        let spawned = Instant::now();
        let child = Command::new(BATON)
            .args(["serve", "-c"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.serve = Some(child);
        spawned
    }

    /// Waits until the control API of a started `baton serve` answers.
    pub fn wait_control(&self) {
        wait_until("baton serve to answer", Duration::from_secs(20), || {
            self.cli(&["status", "--json"]).status.success()
        });
    }

    /// A CLI command running in the background, its output piped.
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        Command::new(BATON)
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Pids of the live (non-zombie) sample-app processes of `version` that
    /// this installation runs: found in /proc by their working directory
    /// (this test's temp dir) and their `--version VERSION` arguments.
    pub fn app_pids(&self, version: &str) -> Vec<u32> {
        let dir = std::fs::canonicalize(self.dir.path()).unwrap();
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if std::fs::read_link(format!("/proc/{pid}/cwd"))
                .ok()
                .as_deref()
                != Some(&dir)
            {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_app = args.iter().any(|a| *a == b"sample-app")
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--version" && w[1] == version.as_bytes());
            if is_app && pid_alive(pid) {
                pids.push(pid);
            }
        }
        pids.sort_unstable();
        pids
    }

    /// `baton history SERVICE --json`.
    pub fn history(&self, service: &str) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["history", service, "--json"])).unwrap()
    }
}

/// Waits for a background CLI command; panics naming `what` after `limit`.
pub fn wait_child(what: &str, mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "timed out after {limit:?} waiting for {what}; stderr: {}",
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One GET with a Host header through a fresh connection: (status, body).
pub fn get_host(url: &str, host: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(baton_loadgen::get_once(url, Some(host)))
        .unwrap_or((0, String::new()))
}

/// The addresses of a service's live targets, from `status --json`.
pub fn active_addrs(status: &serde_json::Value) -> Vec<String> {
    let mut addrs: Vec<String> = status["active"]["targets"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["addr"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    addrs.sort();
    addrs
}

// ---------------------------------------------------------------------------
// Canary rollouts (tests/canary.rs, tests/canary_checks.rs).
// ---------------------------------------------------------------------------

/// What a test's canary service differs in.
#[derive(Default)]
pub struct Setup<'a> {
    /// The `steps = [...]` line.
    pub steps: &'a str,
    /// More `[services.web.canary]` keys.
    pub canary: &'a str,
    /// The `[services.web.canary.analysis]` keys.
    pub analysis: &'a str,
    /// More `[services.web.switch]` keys.
    pub switch: &'a str,
    /// `strategy` left at its default (blue-green).
    pub blue_green: bool,
}

/// A baton whose `web` service is the sample app (`bad` answers 5% 500s)
/// with a canary rollout, and a metrics listener; its metrics URL.
pub fn canary_baton(s: Setup) -> (Baton, String) {
    let metrics = free_port();
    let strategy = if s.blue_green {
        ""
    } else {
        "strategy = \"canary\""
    };
    let b = Baton::new(&format!(
        "[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n\
         [services.web]\ncommand = {app}\n{strategy}\n\
         [services.web.health]\ninterval = \"100ms\"\n\
         [services.web.switch]\ndrain_timeout = \"2s\"\n{switch}\n\
         [services.web.canary]\n{steps}\n{canary}\n\
         [services.web.canary.analysis]\n{analysis}\n",
        app = sample_app(&["--behave", "bad=error-rate:0.05"]),
        switch = s.switch,
        steps = s.steps,
        canary = s.canary,
        analysis = s.analysis,
    ));
    (b, format!("http://127.0.0.1:{metrics}/metrics"))
}

/// Load through the proxy over keep-alive connections, one request a
/// millisecond on each.
pub fn keep_alive_load(b: &Baton, connections: usize) -> baton_loadgen::LoadHandle {
    let mut cfg = baton_loadgen::LoadConfig::new(b.url("/"));
    cfg.connections = connections;
    cfg.pause_between_requests = Duration::from_millis(1);
    baton_loadgen::start(cfg)
}

// ---------------------------------------------------------------------------
// The zero-loss scenario (tests/zero_loss.rs, tests/docker.rs).
// ---------------------------------------------------------------------------

/// A CLI command, run from async code without blocking it; insists that it
/// succeeds and returns its stdout.
pub async fn cli_async(b: &Baton, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let config = b.config.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BATON)
            .args(&args)
            .arg("-c")
            .arg(config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "baton failed: {}\n{}",
        text(&out.stderr),
        b.serve_log()
    );
    text(&out.stdout)
}

/// Deploys `versions` of `service` one after the other while 64 keep-alive
/// clients load it, and insists that no request is lost. Half the clients
/// POST: a proxy may not retry those, so a request sent to a stopped
/// instance, or cut by one, shows up as a loss.
pub async fn deploys_under_load(b: &Baton, service: &str, versions: &[&str]) {
    deploys_under_load_at(b, &b.url("/"), service, versions).await
}

/// The same, with the clients sending to `url` (a load balancer in front).
pub async fn deploys_under_load_at(b: &Baton, url: &str, service: &str, versions: &[&str]) {
    let run = measure_deploys_under_load(b, url, service, versions).await;
    for (i, failed) in run.failed_after.iter().enumerate() {
        assert_eq!(*failed, 0, "after deploy {}: {:?}", i + 1, run.stats);
    }
    for stats in &run.stats {
        assert_eq!(stats.conn_errors, 0, "{stats}");
        assert_eq!(stats.non_2xx, 0, "{stats}");
    }
}

/// What the clients of [`measure_deploys_under_load`] saw.
pub struct UnderLoad {
    /// The GET clients' and the POST clients' counts.
    pub stats: [baton_loadgen::Stats; 2],
    /// Requests failed so far, after each deploy.
    pub failed_after: Vec<u64>,
}

impl UnderLoad {
    pub fn lost(&self) -> u64 {
        self.stats.iter().map(|s| s.failed()).sum()
    }
}

/// The zero-loss scenario, measured rather than asserted (for a backend
/// that loses some): 64 keep-alive clients, half of them POSTing, send to
/// `url` while `versions` of `service` are deployed one after the other;
/// from the moment each deploy returns, new requests reach its version.
pub async fn measure_deploys_under_load(
    b: &Baton,
    url: &str,
    service: &str,
    versions: &[&str],
) -> UnderLoad {
    measure_switches_under_load(url, versions, |version: String| async move {
        cli_async(b, &["deploy", service, &version]).await;
        for _ in 0..20 {
            let (status, body) = baton_loadgen::get_once(url, None).await.unwrap();
            assert_eq!(
                (status, body.trim()),
                (200, format!("version={version}").as_str()),
                "right after the deploy"
            );
        }
    })
    .await
}

/// The same scenario with any way of moving to each version (`switch`), so
/// that baton and the scripts it replaces are measured alike.
pub async fn measure_switches_under_load<F, Fut>(
    url: &str,
    versions: &[&str],
    mut switch: F,
) -> UnderLoad
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let load = |method: hyper::Method| {
        let mut cfg = baton_loadgen::LoadConfig::new(url.to_string());
        cfg.connections = 32;
        cfg.request_timeout = Duration::from_secs(10);
        cfg.method = method;
        baton_loadgen::start(cfg)
    };
    let gets = load(hyper::Method::GET);
    let posts = load(hyper::Method::POST);

    let started = Instant::now();
    let mut failed_after = Vec::new();
    for version in versions {
        switch(version.to_string()).await;
        failed_after.push(gets.snapshot().failed() + posts.snapshot().failed());
    }
    eprintln!(
        "{} switches under load in {:.1?}",
        versions.len(),
        started.elapsed()
    );
    let stats = [gets.stop().await, posts.stop().await];
    for s in &stats {
        eprintln!("{s}");
        assert!(s.ok > 1000, "the load actually ran: {s}");
        for version in versions {
            assert!(s.versions.contains_key(*version), "{s}");
        }
    }
    UnderLoad {
        stats,
        failed_after,
    }
}
