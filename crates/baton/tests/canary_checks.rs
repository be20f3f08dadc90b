//! A canary's external analysis checks through the real binary: a query to
//! a real Prometheus scraping baton's own /metrics rolls a bad candidate
//! back, a query Prometheus rejects refuses the deploy before anything
//! starts, and a webhook answering 500 rolls the candidate back.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::*;

/// A real Prometheus server on a free port, scraping `target` every second,
/// its data in a temporary directory; killed on drop.
struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
}

impl Prometheus {
    /// Starts Prometheus scraping `host:port` (baton's metrics listener)
    /// and waits until it is ready.
    fn start(target: &str) -> Self {
        let binary = which("prometheus").unwrap_or_else(|| {
            panic!(
                "the `prometheus` binary is not on PATH: run ./scripts/test, which installs \
                 it (Debian's `prometheus` package)"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: baton\n    scrape_interval: 1s\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = Self {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let ready = format!("{}/-/ready", p.url);
        wait_until("Prometheus to be ready", Duration::from_secs(30), || {
            get(&ready).0 == 200
        });
        p
    }

    fn log(&self) -> String {
        read(&self.dir.path().join("prometheus.log"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `name` is on PATH, if anywhere.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `host:port` of a metrics URL such as `http://127.0.0.1:9100/metrics`.
fn authority(metrics_url: &str) -> &str {
    let rest = metrics_url.trim_start_matches("http://");
    rest.split('/').next().unwrap()
}

/// A `[[services.web.canary.analysis.prometheus]]` table.
fn prometheus_check(server: &str, query: &str, bounds: &str) -> String {
    format!(
        "\n[[services.web.canary.analysis.prometheus]]\nserver = \"{server}\"\nquery = '{query}'\n{bounds}\n"
    )
}

/// The candidate's share of 5xx answers, from baton's own metrics.
const BAD_ERROR_SHARE: &str = "sum(rate(baton_requests_total{service=\"web\",version=\"bad\",code=\"5xx\"}[5s])) / sum(rate(baton_requests_total{service=\"web\",version=\"bad\"}[5s]))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_query_over_the_limit_rolls_the_candidate_back() {
    // The built-in error rate can never fail (max 1): only Prometheus can.
    let (mut b, metrics) = canary_baton(Setup {
        steps: "steps = [ { weight = 20, pause = \"40s\" } ]",
        canary: "deadline = \"50s\"",
        analysis: &format!(
            "interval = \"2s\"\nmin_requests = 5\nmax_error_rate = 1\nfailure_limit = 2\n\
             inconclusive = \"continue\"\n{}",
            prometheus_check("{PROM}", BAD_ERROR_SHARE, "max = 0.01")
        ),
        ..Setup::default()
    });
    let prometheus = tokio::task::block_in_place(|| Prometheus::start(authority(&metrics)));
    let config = read(&b.config).replace("{PROM}", &prometheus.url);
    std::fs::write(&b.config, config).unwrap();
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let load = keep_alive_load(&b, 8);

    let deploy = b.spawn_cli(&["deploy", "web", "bad"]);
    let out = tokio::task::block_in_place(|| {
        wait_child("the bad deploy", deploy, Duration::from_secs(90))
    });
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stderr}\n{}\n{}",
        b.serve_log(),
        prometheus.log()
    );
    let failure = stderr
        .lines()
        .find(|l| l.contains("analysis failed 2 time(s)"))
        .unwrap_or_else(|| panic!("no analysis failure in:\n{stderr}"));
    assert!(
        failure.contains("prometheus[0] `sum(rate(baton_requests_total{")
            && failure.contains("> max 0.01"),
        "the failure names the Prometheus check: {failure}"
    );
    assert!(!failure.contains("error_rate"), "{failure}");
    assert!(stderr.contains("rolled back"), "{stderr}");
    let _ = load.stop().await;

    let status = b.status("web");
    assert_eq!(status["active"]["version"], "v1", "{status}");
    assert!(status["deploy"].is_null(), "{status}");
    let last = &b.history("web")[0];
    assert_eq!(last["phase"], "failed", "{last}");
}

#[test]
fn a_query_prometheus_rejects_refuses_the_deploy_before_anything_starts() {
    let (mut b, metrics) = canary_baton(Setup {
        steps: "steps = [ { weight = 20, pause = \"10s\" } ]",
        analysis: &prometheus_check("{PROM}", "sum(rate(", "max = 0.01"),
        ..Setup::default()
    });
    let prometheus = Prometheus::start(authority(&metrics));
    let config = read(&b.config).replace("{PROM}", &prometheus.url);
    std::fs::write(&b.config, config).unwrap();
    b.start();
    b.ok(&["deploy", "web", "v1"]);

    let started = Instant::now();
    let deploy = b.spawn_cli(&["deploy", "web", "v2"]);
    let out = wait_child("the refused deploy", deploy, Duration::from_secs(30));
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}\n{}", b.serve_log());
    let line = stderr
        .lines()
        .find(|l| l.contains("services.web.canary.analysis.prometheus[0].query"))
        .unwrap_or_else(|| panic!("the field is named: {stderr}"));
    assert!(
        line.contains("parse error") && line.contains(&prometheus.url),
        "Prometheus's own words and its address: {line}"
    );
    assert!(took < Duration::from_secs(10), "refused at once: {took:?}");

    // Nothing started, nothing recorded: v1 serves as before.
    let status = b.status("web");
    assert_eq!(status["active"]["version"], "v1", "{status}");
    assert!(status["deploy"].is_null(), "{status}");
    assert!(b.app_pids("v2").is_empty(), "no candidate was started");
    let history = b.history("web");
    assert_eq!(
        history.len(),
        1,
        "only v1's deploy is recorded: {history:?}"
    );
    assert_eq!(history[0]["version"], "v1");
}

/// A webhook on a std listener: answers every request 500 `nope` and keeps
/// the bodies it was POSTed.
struct Hook {
    url: String,
    bodies: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl Hook {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (bodies.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                if let Some(body) = answer_500(stream) {
                    kept.lock().unwrap().push(body);
                }
            }
        });
        Self {
            url: format!("http://{addr}/canary-check"),
            bodies,
            stop,
            addr,
        }
    }

    fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().clone()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads one request (headers and a Content-Length body), answers 500
/// `nope`; the body, if the request was a JSON POST.
fn answer_500(stream: TcpStream) -> Option<String> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream);
    let (mut request_line, mut length, mut json) = (String::new(), 0, false);
    reader.read_line(&mut request_line).ok()?;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        }
        json |= line == "content-type: application/json";
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let answer = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 5\r\nconnection: close\r\n\r\nnope\n";
    reader.get_mut().write_all(answer.as_bytes()).ok()?;
    (request_line.starts_with("POST /canary-check ") && json).then(|| text(&body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_500_rolls_the_candidate_back() {
    let hook = Hook::start();
    let (mut b, _) = canary_baton(Setup {
        steps: "steps = [ { weight = 20, pause = \"40s\" } ]",
        canary: "deadline = \"50s\"",
        analysis: &format!(
            "interval = \"1s\"\nmin_requests = 5\nmax_error_rate = 1\nfailure_limit = 2\n\
             inconclusive = \"continue\"\n\
             [[services.web.canary.analysis.webhook]]\nurl = \"{}\"\ntimeout = \"5s\"\n",
            hook.url
        ),
        ..Setup::default()
    });
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let load = keep_alive_load(&b, 4);

    let deploy = b.spawn_cli(&["deploy", "web", "v2"]);
    let out = tokio::task::block_in_place(|| {
        wait_child("the v2 deploy", deploy, Duration::from_secs(60))
    });
    let _ = load.stop().await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}\n{}", b.serve_log());
    let failure = stderr
        .lines()
        .find(|l| l.contains("analysis failed 2 time(s)"))
        .unwrap_or_else(|| panic!("no analysis failure in:\n{stderr}"));
    assert!(
        failure.contains(&format!(
            "webhook[0] {}: answered 500 Internal Server Error: nope",
            hook.url
        )),
        "the failure names the webhook and its answer: {failure}"
    );
    assert_eq!(b.status("web")["active"]["version"], "v1");

    let bodies = hook.bodies();
    assert!(bodies.len() >= 2, "POSTed each interval: {bodies:?}");
    let sent: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(sent["service"], "web", "{sent}");
    assert_eq!(sent["version"], "v2", "{sent}");
    assert_eq!(sent["color"], "green", "{sent}");
    assert_eq!(sent["weight"], 2000, "{sent}");
    assert!(sent["candidate"]["requests"].is_u64(), "{sent}");
    assert!(sent["live"]["error_rate"].is_number(), "{sent}");
}
