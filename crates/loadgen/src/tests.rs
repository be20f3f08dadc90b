//! End-to-end tests of the load client against the in-process test server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::test_server::{Handler, Reply, TestServer};
use crate::{get_once, start, LoadConfig, LoadHandle, Stats};

fn config(server: &TestServer, connections: usize) -> LoadConfig {
    LoadConfig {
        connections,
        ..LoadConfig::new(format!("http://{}/", server.addr))
    }
}

fn handler(f: impl Fn(u64) -> Reply + Send + Sync + 'static) -> Handler {
    Arc::new(move |n, _req| f(n))
}

/// Polls until `cond` holds for the load's totals (panics after 10 s).
async fn wait_until(load: &LoadHandle, what: &str, cond: impl Fn(&Stats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = load.snapshot();
        if cond(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_balanced(stats: &Stats) {
    assert_eq!(
        stats.sent,
        stats.ok + stats.conn_errors + stats.non_2xx,
        "{stats}"
    );
    assert_eq!(stats.ok, stats.versions.values().sum::<u64>(), "{stats}");
    assert_eq!(
        stats.non_2xx,
        stats.statuses.values().sum::<u64>(),
        "{stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_versions_from_body_and_header() {
    let server = TestServer::start(handler(|n| {
        if n % 2 == 0 {
            Reply::ok("version=blue\n")
        } else {
            Reply {
                version_header: Some("green"),
                ..Reply::ok("no version here")
            }
        }
    }))
    .await;
    let load = start(config(&server, 4));
    wait_until(&load, "200 answers", |s| s.ok >= 200).await;
    let stats = load.stop().await;

    assert_balanced(&stats);
    assert_eq!(stats.failed(), 0, "{stats}");
    assert_eq!(stats.sent, server.answered());
    assert!(stats.versions["blue"] > 0 && stats.versions["green"] > 0);
    assert_eq!(stats.connects, 4);
    assert!(stats.p50 <= stats.p99 && stats.p99 <= stats.max && stats.max > Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_2xx_are_counted_by_status_never_as_success() {
    let server = TestServer::start(handler(|n| match n % 4 {
        0 => Reply::status(503, "version=v1\n"),
        1 => Reply::status(500, "version=v1\n"),
        2 => Reply::status(302, "version=v1\n"),
        _ => Reply::ok("version=v1\n"),
    }))
    .await;
    let load = start(config(&server, 3));
    wait_until(&load, "400 attempts", |s| s.sent >= 400).await;
    let stats = load.stop().await;

    assert_balanced(&stats);
    assert_eq!(stats.conn_errors, 0, "{stats}");
    assert_eq!(stats.sent, server.answered());
    assert_eq!(
        stats.statuses.keys().copied().collect::<Vec<_>>(),
        [302, 500, 503]
    );
    // Exactly one in four requests (server-wide) succeeded.
    assert_eq!(stats.ok, stats.sent / 4);
    assert!(stats.first_errors.iter().all(|e| e.starts_with("HTTP ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_counting_across_a_server_restart() {
    let version = |v: &'static str| handler(move |_| Reply::ok(format!("version={v}\n")));
    let server = TestServer::start(version("old")).await;
    let addr = server.addr;
    let mut cfg = config(&server, 2);
    cfg.pause_between_requests = Duration::from_millis(2);
    let load = start(cfg);
    wait_until(&load, "traffic to the old server", |s| s.ok >= 20).await;

    server.kill().await;
    wait_until(&load, "connection errors", |s| s.conn_errors >= 5).await;
    let during_outage = load.snapshot();
    assert_eq!(during_outage.ok, during_outage.versions["old"]);

    let _revived = TestServer::start_at(addr, version("new")).await;
    wait_until(&load, "traffic to the new server", |s| {
        s.versions.get("new").copied().unwrap_or(0) >= 20
    })
    .await;
    let stats = load.stop().await;

    assert_balanced(&stats);
    assert_eq!(stats.non_2xx, 0);
    assert!(stats.conn_errors >= 5);
    assert!(stats.connects >= 4, "both tasks reconnected: {stats}");
    assert!(!stats.first_errors.is_empty());
}

#[tokio::test]
async fn timeouts_are_connection_errors() {
    let server = TestServer::start(handler(|_| Reply {
        delay: Duration::from_millis(300),
        ..Reply::ok("version=v1\n")
    }))
    .await;
    let mut cfg = config(&server, 1);
    cfg.request_timeout = Duration::from_millis(50);
    let load = start(cfg);
    wait_until(&load, "timeouts", |s| s.conn_errors >= 2).await;
    let stats = load.stop().await;

    assert_balanced(&stats);
    assert_eq!(stats.ok, 0);
    assert!(stats.first_errors[0].contains("timed out"), "{stats:?}");
    assert!(stats.connects >= 2, "a timed-out connection is not reused");
}

#[tokio::test]
async fn refused_connections_are_counted() {
    let server = TestServer::start(handler(|_| Reply::ok("version=v1\n"))).await;
    let cfg = config(&server, 2);
    server.kill().await;
    let load = start(cfg);
    wait_until(&load, "refusals", |s| s.conn_errors >= 4).await;
    let stats = load.stop().await;
    assert_balanced(&stats);
    assert_eq!(stats.connects, 0);
    assert!(stats.first_errors[0].contains("connect"), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phases_partition_the_run() {
    let server = TestServer::start(handler(|_| Reply::ok("version=v1\n"))).await;
    let load = start(config(&server, 2));
    let mut phases = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        phases.push(load.take_phase());
    }
    let recorder = Arc::clone(&load.recorder);
    let total = load.stop().await;
    // Requests that finished between the last take_phase and stop.
    phases.push(recorder.take_phase());

    assert_eq!(phases.iter().map(|p| p.sent).sum::<u64>(), total.sent);
    assert_eq!(phases.iter().map(|p| p.ok).sum::<u64>(), total.ok);
    for phase in &phases[..3] {
        assert_balanced(phase);
        assert!(phase.ok > 0, "{phase}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_under_many_connections() {
    let server = TestServer::start(handler(|n| {
        if n % 10 == 0 {
            Reply::status(500, "boom")
        } else {
            Reply::ok("version=v1\n")
        }
    }))
    .await;
    let load = start(config(&server, 64));
    wait_until(&load, "2000 attempts", |s| s.sent >= 2000).await;
    let stats = load.stop().await;
    assert_balanced(&stats);
    assert_eq!(stats.conn_errors, 0, "{stats}");
    assert_eq!(stats.sent, server.answered());
    assert_eq!(stats.non_2xx, stats.sent.div_ceil(10));
    assert_eq!(stats.connects, 64);
}

#[tokio::test]
async fn stop_interrupts_pauses() {
    let server = TestServer::start(handler(|_| Reply::ok("version=v1\n"))).await;
    let mut cfg = config(&server, 2);
    cfg.pause_between_requests = Duration::from_secs(60);
    let load = start(cfg);
    wait_until(&load, "first answers", |s| s.ok >= 2).await;
    let started = Instant::now();
    let stats = load.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(stats.ok, 2);
}

#[tokio::test]
async fn invalid_target_is_never_loss_free() {
    let load = start(LoadConfig::new("https://example.invalid/"));
    let stats = load.stop().await;
    assert_eq!(stats.conn_errors, 1);
    assert!(stats.first_errors[0].contains("only http://"), "{stats:?}");
}

#[tokio::test]
async fn get_once_returns_status_and_body_with_host_override() {
    let server = TestServer::start(Arc::new(|_, req| {
        let host = req.headers()["host"].to_str().unwrap().to_owned();
        let close = req.headers()["connection"].to_str().unwrap().to_owned();
        Reply::status(418, format!("host={host} connection={close}"))
    }))
    .await;
    let url = format!("http://{}/x", server.addr);
    let (status, body) = get_once(&url, Some("app.test")).await.unwrap();
    assert_eq!(status, 418);
    assert_eq!(body, "host=app.test connection=close");
    server.kill().await;
    assert!(get_once(&url, None).await.is_err());
}
