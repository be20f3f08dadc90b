//! Services on remote hosts, through the real binary: each test host is a
//! network namespace of its own with a real sshd (tests/support/hosts.rs),
//! reached by baton over SSH with the system's OpenSSH client. The service
//! ships as release tarballs that baton pushes to the hosts and unpacks.
//!
//! The tarball's `bin/web` runs the sample app with the version baked in, so
//! a response names the release that was unpacked, not only the one asked for.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::hosts::{TestHost, TestHosts};
use support::images::{images, IMAGE};
use support::*;

/// Writes `dist/web-{version}.tar.gz` for each version under `dir`. The
/// app never turns healthy on a host whose directory holds `unhealthy`, and
/// only after 5s on one that holds `slow`.
fn tarballs(dir: &Path, versions: &[&str]) {
    for version in versions {
        let root = dir.join("build").join(version);
        std::fs::create_dir_all(root.join("bin")).unwrap();
        let script = format!(
            "#!/bin/sh\n\
             # The host's directory is three up from releases/VERSION.\n\
             extra=\n[ -e ../../../unhealthy ] && extra=--never-healthy\n\
             [ -e ../../../slow ] && extra=\"$extra --unhealthy-for 5s\"\n\
             exec {BATON} sample-app --port \"$PORT\" --listen-host 0.0.0.0 --version {version} $extra\n"
        );
        let bin = root.join("bin/web");
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::fs::create_dir_all(dir.join("dist")).unwrap();
        let tarball = dir.join(format!("dist/web-{version}.tar.gz"));
        let ok = Command::new("tar")
            .arg("-czf")
            .arg(&tarball)
            .arg("-C")
            .arg(&root)
            .arg(".")
            .status()
            .unwrap()
            .success();
        assert!(ok, "tar failed for {version}");
    }
}

/// A baton whose `web` service runs `per_host` instances on every test host,
/// from tarballs of `versions`.
fn fleet_baton(hosts: &TestHosts, per_host: usize, versions: &[&str], extra: &str) -> Baton {
    let names: Vec<String> = hosts
        .hosts
        .iter()
        .map(|h| format!("{:?}", h.name))
        .collect();
    let b = Baton::new(&format!(
        "{hosts}\n[services.web]\ncommand = [\"./bin/web\"]\non = [{on}]\ninstances = {per_host}\n\
         artifact = \"dist/web-{{version}}.tar.gz\"\nstop_timeout = \"2s\"\n{extra}\n\
         [services.web.health]\ninterval = \"100ms\"\ndeadline = \"10s\"\n\
         [services.web.switch]\ndrain_timeout = \"2s\"\nkeep_previous = \"1s\"\n",
        hosts = hosts.toml(),
        on = names.join(", "),
    ));
    tarballs(b.dir.path(), versions);
    b
}

/// The processes of `version` running on `host` (the command line ends
/// with a space, so that v1 does not match v10).
fn running(host: &TestHost, version: &str) -> Vec<u32> {
    host.pids_with(&format!("--version {version} "))
}

/// The releases unpacked on `host`, sorted.
fn releases(host: &TestHost) -> Vec<String> {
    let mut r: Vec<String> = host
        .sh(&format!("ls -1A {}/web/releases", host.dir.display()))
        .lines()
        .map(String::from)
        .collect();
    r.sort();
    r
}

/// `deploy --json` of `version` of `web`: its exit code and progress events.
fn deploy_json(b: &Baton, version: &str) -> (i32, Vec<serde_json::Value>) {
    deploy_service_json(b, "web", version)
}

fn deploy_service_json(b: &Baton, service: &str, version: &str) -> (i32, Vec<serde_json::Value>) {
    let out = b.cli(&["deploy", service, version, "--json"]);
    let events = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.code().unwrap_or(-1), events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_serve_each_color_and_deploys_lose_nothing() {
    let hosts = TestHosts::start(2);
    let versions = ["v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10"];
    let mut b = fleet_baton(&hosts, 1, &versions, "");
    b.start();

    let (code, events) = deploy_json(&b, "v1");
    assert_eq!(code, 0, "{events:?}\n{}", b.serve_log());
    // Per-host progress: the tarball's bytes as they go, then the start.
    for host in &hosts.hosts {
        let mine: Vec<&serde_json::Value> = events
            .iter()
            .filter(|e| e["host"] == host.name.as_str())
            .collect();
        let sent = mine
            .iter()
            .find(|e| e["sent"].is_u64() && e["sent"] == e["total"]);
        assert!(
            sent.is_some(),
            "{}: no delivery event in {mine:?}",
            host.name
        );
        assert!(
            mine.iter()
                .any(|e| e["message"].as_str().unwrap().contains("started")),
            "{mine:?}"
        );
    }
    let status = b.status("web");
    let targets = status["active"]["targets"].as_array().unwrap();
    let on: Vec<&str> = targets
        .iter()
        .map(|t| t["host"].as_str().unwrap())
        .collect();
    assert_eq!(on, ["app1", "app2"], "{status}");
    for host in &hosts.hosts {
        assert_eq!(running(host, "v1").len(), 1, "v1 on {}", host.name);
        let t = targets
            .iter()
            .find(|t| t["host"] == host.name.as_str())
            .unwrap();
        assert!(
            t["addr"]
                .as_str()
                .unwrap()
                .starts_with(&host.address.to_string()),
            "{t}"
        );
    }

    deploys_under_load(&b, "web", &versions[1..]).await;

    // Old releases were stopped on every host, and pruned to the last five
    // (v10 live, v9 kept warm for a moment, and three before).
    wait_until("v9 stopped on every host", Duration::from_secs(20), || {
        hosts.hosts.iter().all(|h| running(h, "v9").is_empty())
    });
    for host in &hosts.hosts {
        for old in &versions[..9] {
            assert!(
                running(host, old).is_empty(),
                "{old} still runs on {}",
                host.name
            );
        }
        assert_eq!(running(host, "v10").len(), 1);
        assert_eq!(
            releases(host),
            ["v10", "v6", "v7", "v8", "v9"],
            "{}",
            host.name
        );
    }

    // A release a host has already is not sent again.
    let (code, events) = deploy_json(&b, "v9");
    assert_eq!(code, 0, "{events:?}");
    let present = events
        .iter()
        .filter(|e| {
            e["message"]
                .as_str()
                .unwrap_or("")
                .contains("has web-v9.tar.gz already")
        })
        .count();
    assert_eq!(present, 2, "{events:?}");
    assert!(!events.iter().any(|e| e["sent"].is_u64()), "{events:?}");

    // Eleven deploys and the exit watcher's questions went over one
    // connection per host.
    let log = b.serve_log();
    for host in &hosts.hosts {
        let connected = log
            .lines()
            .filter(|l| l.contains("ssh") && l.contains(" connected ") && l.contains(&host.name))
            .count();
        assert_eq!(connected, 1, "{}: {log}", host.name);
    }

    // app1's connection dies (its ssh master is killed): the next command
    // notices and connects anew, and the deploy goes through.
    let master = Command::new("pkill")
        .args([
            "-KILL",
            "-f",
            &format!("ssh.* -M .*{}", hosts.hosts[0].address),
        ])
        .status()
        .unwrap();
    assert!(master.success(), "app1's ssh master was found and killed");
    let (code, events) = deploy_json(&b, "v10");
    assert_eq!(code, 0, "{events:?}\n{}", b.serve_log());
    let again = b
        .serve_log()
        .lines()
        .filter(|l| l.contains("ssh") && l.contains(" connected ") && l.contains("app1"))
        .count();
    assert_eq!(again, 2, "{}", b.serve_log());
}

#[test]
fn a_host_that_fails_fails_the_deploy_before_traffic_moves() {
    let hosts = TestHosts::start(2);
    let (app1, app2) = (&hosts.hosts[0], &hosts.hosts[1]);
    let mut b = fleet_baton(&hosts, 1, &["v1", "v2", "v3"], "");
    b.start();
    b.ok(&["deploy", "web", "v1"]);

    // app2 cannot take the tarball: where its releases go is a file.
    app2.sh(&format!(
        "mv {d}/web/releases {d}/web/releases.away && touch {d}/web/releases",
        d = app2.dir.display()
    ));
    let out = b.cli(&["deploy", "web", "v2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("host app2"), "{err}");
    let last = &b.status("web")["last_deploy"];
    assert!(
        last["error"].as_str().unwrap().contains("host app2"),
        "{last}"
    );
    for host in &hosts.hosts {
        assert!(running(host, "v2").is_empty(), "v2 left on {}", host.name);
        assert_eq!(running(host, "v1").len(), 1);
    }
    assert_eq!(get(&b.url("/")).1.trim(), "version=v1");
    app2.sh(&format!(
        "rm {d}/web/releases && mv {d}/web/releases.away {d}/web/releases",
        d = app2.dir.display()
    ));

    // app2 runs v3 but it never turns healthy there.
    app2.sh(&format!("touch {}/unhealthy", app2.dir.display()));
    let out = b.cli(&["deploy", "web", "v3"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("app2") && err.contains("not healthy"), "{err}");
    for host in [app1, app2] {
        assert!(running(host, "v3").is_empty(), "v3 left on {}", host.name);
    }
    assert_eq!(get(&b.url("/")).1.trim(), "version=v1");
}

#[test]
fn a_host_cut_off_mid_deploy_fails_it_and_is_cleaned_up_once_back() {
    let hosts = TestHosts::start(2);
    let (app1, app2) = (&hosts.hosts[0], &hosts.hosts[1]);
    let mut b = fleet_baton(&hosts, 1, &["v1", "v2"], "");
    b.start();
    b.ok(&["deploy", "web", "v1"]);

    // v2 takes 5s to turn healthy: app2 is cut off while it waits.
    for host in [app1, app2] {
        host.sh(&format!("touch {}/slow", host.dir.display()));
    }
    let deploy = b.spawn_cli(&["deploy", "web", "v2"]);
    wait_until("v2 started on both hosts", Duration::from_secs(20), || {
        !running(app1, "v2").is_empty() && !running(app2, "v2").is_empty()
    });
    app2.cut_off();
    let out = wait_child("the deploy", deploy, Duration::from_secs(90));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("app2") && err.contains("not healthy"), "{err}");
    assert!(
        running(app1, "v2").is_empty(),
        "the candidate on app1 was stopped"
    );
    let (status, body) = get(&b.url("/"));
    assert_eq!(
        (status, body.trim()),
        (200, "version=v1"),
        "traffic never moved"
    );
    let left = b.status("web")["leftovers"].clone();
    assert_eq!(left.as_array().map(Vec::len), Some(1), "{left}");
    assert_eq!(left[0]["host"], "app2");

    app2.reconnect();
    wait_until("app2's candidate stopped", Duration::from_secs(60), || {
        running(app2, "v2").is_empty()
    });
    wait_until("the leftover forgotten", Duration::from_secs(10), || {
        b.status("web")["leftovers"] == serde_json::json!([])
    });
}

#[test]
fn a_host_cut_off_is_cleaned_up_once_it_is_back() {
    let hosts = TestHosts::start(2);
    let app2 = &hosts.hosts[1];
    let mut b = fleet_baton(&hosts, 1, &["v1", "v2", "v3"], "");
    b.start();
    b.ok(&["deploy", "web", "v1"]);

    // Cut off right after the switch: v1's instances are drained and then
    // stopped, and app2 does not answer.
    b.ok(&["deploy", "web", "v2"]);
    app2.cut_off();
    wait_until(
        "app2's v1 recorded as left over",
        Duration::from_secs(60),
        || {
            let left = b.status("web")["leftovers"].clone();
            left.as_array()
                .is_some_and(|l| l.iter().any(|l| l["host"] == "app2"))
        },
    );
    assert!(running(&hosts.hosts[0], "v1").is_empty());
    assert_eq!(
        running(app2, "v1").len(),
        1,
        "app2 could not be told to stop"
    );
    let human = b.ok(&["status", "web"]);
    assert!(
        human.contains("left over") && human.contains("app2"),
        "{human}"
    );

    // While app2 is away, a deploy is refused before anything starts.
    let out = b.cli(&["deploy", "web", "v3"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("deploy refused: host app2"), "{err}");
    assert!(running(&hosts.hosts[0], "v3").is_empty());

    app2.reconnect();
    wait_until("the leftover stopped", Duration::from_secs(60), || {
        running(app2, "v1").is_empty()
    });
    wait_until("the leftover forgotten", Duration::from_secs(10), || {
        b.status("web")["leftovers"] == serde_json::json!([])
    });
    b.ok(&["deploy", "web", "v3"]);
}

#[test]
fn bad_fleet_input_is_refused_before_anything_starts() {
    let hosts = TestHosts::start(1);
    let app1 = &hosts.hosts[0];
    let mut b = fleet_baton(&hosts, 1, &["v1"], "");
    b.start();
    // What a delivery cut off halfway leaves is never taken for a release:
    // v1 is there without the mark of a whole one, beside a partial unpack.
    app1.sh(&format!(
        "mkdir -p {d}/web/releases/v1/bin {d}/web/releases/.partial-old && \
         printf \"#!/bin/sh\\nexit 3\\n\" > {d}/web/releases/v1/bin/web && chmod +x {d}/web/releases/v1/bin/web",
        d = app1.dir.display()
    ));
    b.ok(&["deploy", "web", "v1"]);
    assert_eq!(releases(app1), ["v1"], "the partial unpack is gone");
    assert_eq!(running(app1, "v1").len(), 1, "v1 was delivered whole");

    // No tarball for v9.
    let out = b.cli(&["deploy", "web", "v9"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("services.web.artifact") && err.contains("web-v9.tar.gz does not exist"),
        "{err}"
    );
    assert!(
        b.history("web").len() == 1,
        "nothing recorded beside v1's deploy: {:?}",
        b.history("web")
    );

    // An unknown host is a config error, with the key.
    let bad = b.path("unknown-host.toml");
    std::fs::write(
        &bad,
        format!(
            "{}[services.web]\ncommand = [\"./bin/web\"]\non = [\"app1\", \"app7\"]\n",
            hosts.toml()
        ),
    )
    .unwrap();
    let out = Command::new(BATON)
        .args(["status", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("services.web.on: unknown host \"app7\""),
        "{err}"
    );
}

/// The messages of `events` about `host` that contain `text`.
fn said<'a>(events: &'a [serde_json::Value], host: &str, text: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e["host"] == host)
        .filter_map(|e| e["message"].as_str())
        .filter(|m| m.contains(text))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containers_run_on_each_hosts_engine_with_images_pushed_once() {
    images();
    let hosts = TestHosts::with_docker(2);
    let mut b = Baton::new(&format!(
        "{hosts}\n[services.app]\nruntime = \"docker\"\nimage = \"{IMAGE}:{{version}}\"\n\
         port = 8000\nenv = {{ APP_VERSION = \"{{version}}\" }}\non = [\"app1\", \"app2\"]\n\
         stop_timeout = \"2s\"\n\
         [services.app.health]\ninterval = \"100ms\"\ndeadline = \"20s\"\n\
         [services.app.switch]\ndrain_timeout = \"2s\"\nkeep_previous = \"1s\"\n",
        hosts = hosts.toml(),
    ));
    b.start();

    let (code, events) = deploy_service_json(&b, "app", "v1");
    assert_eq!(code, 0, "{events:?}\n{}", b.serve_log());
    for host in &hosts.hosts {
        // Sent compressed: fewer bytes than the image has.
        let sent = said(&events, &host.name, "sent (");
        assert_eq!(sent.len(), 1, "{}: {events:?}", host.name);
        let ports = host.docker(&[
            "ps",
            "--filter",
            "label=baton.version=v1",
            "--format",
            "{{.Ports}}",
        ]);
        assert!(
            ports.trim().starts_with(&format!("{}:", host.address)),
            "{}: published on {ports:?}",
            host.name
        );
    }
    let (_, body) = baton_loadgen::get_once(&b.url("/"), None).await.unwrap();
    assert_eq!(body.trim(), "version=v1");

    deploys_under_load(&b, "app", &["v2"]).await;
    wait_until("v1's containers removed", Duration::from_secs(30), || {
        hosts.hosts.iter().all(|h| {
            h.docker(&["ps", "-aq", "--filter", "label=baton.version=v1"])
                .trim()
                .is_empty()
        })
    });

    // Both hosts have v1's image now: nothing is sent again.
    let (code, events) = deploy_service_json(&b, "app", "v1");
    assert_eq!(code, 0, "{events:?}");
    for host in &hosts.hosts {
        let present = said(
            &events,
            &host.name,
            &format!("has image {IMAGE}:v1 already"),
        );
        assert_eq!(present.len(), 1, "{}: {events:?}", host.name);
    }
    assert!(!events.iter().any(|e| e["sent"].is_u64()), "{events:?}");

    // An image this machine does not have is refused before anything starts.
    let out = b.cli(&["deploy", "app", "v404"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("image {IMAGE}:v404 not found on this machine")),
        "{err}"
    );
}
