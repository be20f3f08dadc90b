//! The docker runtime, through the real binary and the real Docker Engine of
//! this machine: images built here (no registry is reachable) from scratch
//! with a static build of baton, whose `sample-app` is the deployed service.
//!
//! Without a reachable Docker Engine these tests fail, saying so; they never
//! skip. Each test's service has its own name, and a guard removes the
//! containers labelled with it, even when the test fails.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use support::images::{images, run, IMAGE};
use support::*;

/// Removes the containers of one service, when the test starts (leftovers
/// of an earlier run) and when it ends, however it ends.
struct Cleanup {
    service: &'static str,
}

impl Cleanup {
    fn new(service: &'static str) -> Self {
        let cleanup = Self { service };
        cleanup.remove_all();
        cleanup
    }

    fn remove_all(&self) {
        let ids: Vec<String> = container_ids(self.service);
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.remove_all();
    }
}

fn container_ids(service: &str) -> Vec<String> {
    let label = format!("label=baton.service={service}");
    run(Command::new("docker").args(["ps", "-aq", "--no-trunc", "--filter", &label]))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A container as the engine describes it.
#[derive(Debug)]
struct Container {
    id: String,
    name: String,
    labels: BTreeMap<String, String>,
    running: bool,
    /// Its published address: `127.0.0.1:PORT`.
    published: Vec<String>,
}

/// The containers of `service`, running or not, by index label.
fn containers(service: &str) -> Vec<Container> {
    let ids = container_ids(service);
    if ids.is_empty() {
        return Vec::new();
    }
    let json = run(Command::new("docker").arg("inspect").args(&ids)).unwrap_or_default();
    let all: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_default();
    let mut found: Vec<Container> = all
        .iter()
        .map(|c| Container {
            id: c["Id"].as_str().unwrap_or("").to_string(),
            name: c["Name"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches('/')
                .to_string(),
            labels: serde_json::from_value(c["Config"]["Labels"].clone()).unwrap_or_default(),
            running: c["State"]["Running"].as_bool() == Some(true),
            published: c["HostConfig"]["PortBindings"]
                .as_object()
                .into_iter()
                .flat_map(|ports| ports.values())
                .flat_map(|bindings| bindings.as_array().cloned().unwrap_or_default())
                .map(|b| {
                    format!(
                        "{}:{}",
                        b["HostIp"].as_str().unwrap_or(""),
                        b["HostPort"].as_str().unwrap_or("")
                    )
                })
                .collect(),
        })
        .collect();
    found.sort_by(|a, b| {
        a.labels
            .get("baton.index")
            .cmp(&b.labels.get("baton.index"))
    });
    found
}

/// The versions of `service`'s containers, sorted.
fn versions(service: &str) -> Vec<String> {
    let mut v: Vec<String> = containers(service)
        .into_iter()
        .map(|c| c.labels.get("baton.version").cloned().unwrap_or_default())
        .collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// Installations.
// ---------------------------------------------------------------------------

/// A baton whose one service runs the test image; `extra` is appended to
/// the service's table.
fn install(service: &str, instances: usize, extra: &str) -> Baton {
    Baton::new(&format!(
        "[services.{service}]\nruntime = \"docker\"\nimage = \"{IMAGE}:{{version}}\"\nport = 8000\n\
         env = {{ APP_VERSION = \"{{version}}\" }}\ninstances = {instances}\n{extra}\n\
         [services.{service}.health]\ninterval = \"100ms\"\ndeadline = \"20s\"\n\
         [services.{service}.switch]\nkeep_previous = \"0s\"\n"
    ))
}

/// The images, then a started baton running `service` (see [`install`]),
/// with the guard that removes its containers (dropped after the baton).
fn setup(service: &'static str, instances: usize, extra: &str) -> (Cleanup, Baton) {
    images();
    let cleanup = Cleanup::new(service);
    let mut b = install(service, instances, extra);
    b.start();
    (cleanup, b)
}

fn answer(b: &Baton) -> String {
    get(&b.url("/")).1.trim().to_string()
}

/// `baton deploy`, which must fail with exit 1: its stderr.
fn failed_deploy(b: &Baton, service: &str, version: &str) -> String {
    let out = b.cli(&["deploy", service, version]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "deploy {version} must fail with exit 1: {stderr}\n{}",
        b.serve_log()
    );
    stderr
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[test]
fn deploys_run_in_labelled_containers_and_the_old_one_is_removed() {
    const SVC: &str = "dk-deploy";
    let (_cleanup, mut b) = setup(SVC, 2, "");

    b.ok(&["deploy", SVC, "v1"]);
    assert_eq!(answer(&b), "version=v1");
    let v1 = containers(SVC);
    assert_eq!(v1.len(), 2, "{v1:?}");
    let status = b.status(SVC);
    let mut published: Vec<String> = v1.iter().flat_map(|c| c.published.clone()).collect();
    published.sort();
    assert_eq!(
        active_addrs(&status),
        published,
        "targets are the published ports"
    );
    for (index, c) in v1.iter().enumerate() {
        let want: BTreeMap<String, String> = [
            ("baton.service", SVC.to_string()),
            ("baton.color", "blue".to_string()),
            ("baton.version", "v1".to_string()),
            ("baton.index", index.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let ours: BTreeMap<String, String> = c
            .labels
            .clone()
            .into_iter()
            .filter(|(k, _)| k.starts_with("baton."))
            .collect();
        assert_eq!(ours, want, "{c:?}");
        assert!(c.running, "{c:?}");
        assert!(
            c.name.starts_with(&format!("baton-{SVC}-blue-{index}-")),
            "{c:?}"
        );
    }

    b.ok(&["deploy", SVC, "v2"]);
    assert_eq!(answer(&b), "version=v2");
    // keep_previous = "0s": v1's containers are stopped and removed once drained.
    wait_until(
        "v1's containers to be removed",
        Duration::from_secs(30),
        || versions(SVC) == ["v2", "v2"],
    );
    let v2 = containers(SVC);
    assert!(
        v2.iter()
            .all(|c| c.labels["baton.color"] == "green" && c.running),
        "{v2:?}"
    );

    // The container's output is in the instance's log.
    let logs = b.path(".baton/logs");
    let said = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|f| read(&f.path()))
        .any(|log| log.contains("sample-app version=v2 listening on 0.0.0.0:8000"));
    assert!(said, "no log in {} holds v2's first line", logs.display());

    // kill -9 of baton serve: the containers keep serving, the next baton
    // adopts them (same containers, same targets)...
    let addrs = active_addrs(&b.status(SVC));
    b.kill9();
    b.start();
    wait_until(
        "the restarted baton to serve v2",
        Duration::from_secs(10),
        || answer(&b) == "version=v2",
    );
    assert_eq!(active_addrs(&b.status(SVC)), addrs);
    let ids = |cs: &[Container]| cs.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&containers(SVC)), ids(&v2), "adopted, not replaced");
    // ... and stops and removes them when they retire.
    b.ok(&["deploy", SVC, "v1"]);
    assert_eq!(answer(&b), "version=v1");
    wait_until(
        "v2's containers to be removed",
        Duration::from_secs(30),
        || versions(SVC) == ["v1", "v1"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_deploys_of_containers_under_keep_alive_load_lose_nothing() {
    const SVC: &str = "dk-zero";
    // The command goes after the image's entrypoint.
    let command = "command = [\"--unhealthy-for\", \"2s\", \"--drain-timeout\", \"0s\"]";
    let (_cleanup, b) = tokio::task::spawn_blocking(|| setup(SVC, 2, command))
        .await
        .unwrap();
    cli_async(&b, &["deploy", SVC, "v1"]).await;
    let versions: Vec<&str> = (1..=10)
        .map(|i| if i % 2 == 1 { "v2" } else { "v1" })
        .collect();
    deploys_under_load(&b, SVC, &versions).await;
}

#[test]
fn a_missing_image_fails_the_deploy_before_traffic_moves() {
    const SVC: &str = "dk-missing";
    let (_cleanup, b) = setup(SVC, 1, "");
    b.ok(&["deploy", SVC, "v1"]);
    let live = containers(SVC);

    let stderr = failed_deploy(&b, SVC, "v404");
    let reason = format!("image {IMAGE}:v404 not found on this host");
    let line = stderr
        .lines()
        .find(|l| l.contains(&reason))
        .unwrap_or_else(|| panic!("no line names the image: {stderr}"));
    assert!(line.contains("could not start"), "{line}");

    assert_eq!(answer(&b), "version=v1");
    let s = b.status(SVC);
    assert_eq!(s["active"]["version"], "v1", "{s}");
    assert!(
        s["last_deploy"]["error"]
            .as_str()
            .unwrap_or("")
            .contains(&reason),
        "{s}"
    );
    let ids = |cs: &[Container]| cs.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
    assert_eq!(
        ids(&containers(SVC)),
        ids(&live),
        "v1 untouched, nothing else left"
    );
}

#[test]
fn an_images_healthcheck_must_pass_too() {
    const SVC: &str = "dk-health";
    let (_cleanup, b) = setup(SVC, 1, "");
    b.ok(&["deploy", SVC, "healthy"]);
    assert_eq!(answer(&b), "version=healthy");

    // `sick` answers baton's own health checks but fails its HEALTHCHECK.
    let stderr = failed_deploy(&b, SVC, "sick");
    assert!(
        stderr.contains("is unhealthy by its image's HEALTHCHECK"),
        "{stderr}"
    );
    assert_eq!(answer(&b), "version=healthy");
    wait_until(
        "the sick container to be removed",
        Duration::from_secs(10),
        || versions(SVC) == ["healthy"],
    );
}

#[test]
fn serve_refuses_to_start_without_the_docker_engine() {
    let b = install("dk-nodocker", 1, "");
    let out = Command::new(BATON)
        .args(["serve", "-c"])
        .arg(&b.config)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = stderr.trim();
    assert!(!line.contains('\n'), "one line: {stderr}");
    assert!(
        line.contains("service dk-nodocker uses runtime \"docker\"")
            && line.contains("/nonexistent/docker.sock"),
        "{line}"
    );
    assert!(!b.path(".baton/baton.db").exists(), "nothing was started");
}
