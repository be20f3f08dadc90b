//! `kill -9` of `baton serve`: the apps keep running, and the next
//! `baton serve` adopts them and serves at once; a deploy that was under way
//! is ended as failed and its candidate stopped.

mod support;
use support::*;

use std::time::Duration;

fn install(extra_args: &[&str], deadline: &str) -> Baton {
    Baton::new(&format!(
        "[services.web]\ncommand = {}\ninstances = 2\n\
         [services.web.health]\ninterval = \"100ms\"\ndeadline = \"{deadline}\"\n",
        sample_app(extra_args)
    ))
}

#[test]
fn restarted_baton_adopts_the_running_apps_and_serves_at_once() {
    let mut b = install(&[], "10s");
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    b.ok(&["deploy", "web", "v2"]);
    assert_eq!(get(&b.url("/")).1.trim(), "version=v2");
    let before = b.status("web");
    let addrs = active_addrs(&before);
    assert_eq!(addrs.len(), 2, "{before}");
    let (v1_pids, v2_pids) = (b.app_pids("v1"), b.app_pids("v2"));
    assert_eq!(v2_pids.len(), 2);
    assert_eq!(v1_pids.len(), 2, "the previous release is kept warm");

    b.kill9();
    let all_alive = v1_pids.iter().chain(&v2_pids).all(|pid| pid_alive(*pid));
    let while_down = get(&b.url("/"));
    // Restarted before asserting, so that a failure still stops the apps.
    let spawned = b.start_no_wait();
    assert!(all_alive, "apps died with baton");
    assert_eq!(while_down.0, 0, "something served while baton was down");

    wait_until(
        "the restarted baton to serve v2",
        Duration::from_secs(10),
        || get(&b.url("/")).1.trim() == "version=v2",
    );
    let took = spawned.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the restarted baton served v2 only {took:?} after it was started"
    );
    b.wait_control();

    // Adopted, not restarted: same targets, same processes.
    let after = b.status("web");
    assert_eq!(after["active"]["version"], "v2");
    assert_eq!(active_addrs(&after), addrs);
    assert_eq!(b.app_pids("v2"), v2_pids, "the live apps were restarted");
    assert_eq!(
        b.app_pids("v1"),
        v1_pids,
        "the warm previous apps were restarted"
    );
    assert_eq!(after["previous"]["version"], "v1", "{after}");

    // Deploys still work on the adopted releases.
    b.ok(&["rollback", "web"]);
    assert_eq!(get(&b.url("/")).1.trim(), "version=v1");
    assert_eq!(
        b.app_pids("v1"),
        v1_pids,
        "the rollback to the warm release is a switch"
    );
    b.ok(&["deploy", "web", "v3"]);
    assert_eq!(get(&b.url("/")).1.trim(), "version=v3");
    let s = b.status("web");
    assert_eq!(s["active"]["version"], "v3");
    assert_eq!(s["last_deploy"]["phase"], "done");
}

#[test]
fn deploy_interrupted_by_a_restart_is_failed_and_its_candidate_stopped() {
    let mut b = install(&["--behave", "v2=unhealthy-for:30s"], "60s");
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let v1_pids = b.app_pids("v1");
    assert_eq!(v1_pids.len(), 2);

    let deploy = b.spawn_cli(&["deploy", "web", "v2"]);
    wait_until(
        "the v2 deploy to wait for health",
        Duration::from_secs(10),
        || b.status("web")["deploy"]["phase"] == "health",
    );
    let candidate = b.app_pids("v2");
    assert_eq!(candidate.len(), 2, "the candidate runs");

    b.kill9();
    let out = wait_child("the deploy command", deploy, Duration::from_secs(10));
    // Restarted before asserting, so that a failure still stops the apps.
    b.start();
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a deploy whose baton died must exit 3: {stderr}"
    );
    assert!(stderr.contains("closed the connection"), "{stderr}");

    let s = b.status("web");
    assert_eq!(s["active"]["version"], "v1", "{s}");
    assert!(s["deploy"].is_null(), "{s}");
    let last = &s["last_deploy"];
    assert_eq!(last["version"], "v2");
    assert_eq!(last["phase"], "failed");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|e| e.contains("interrupted")),
        "{last}"
    );
    wait_until(
        "the v2 candidate to be stopped",
        Duration::from_secs(5),
        || candidate.iter().all(|pid| !pid_alive(*pid)),
    );
    assert!(b.app_pids("v2").is_empty());
    assert_eq!(b.app_pids("v1"), v1_pids, "the live release was adopted");
    assert_eq!(get(&b.url("/")).1.trim(), "version=v1");
    let history = b.history("web");
    assert_eq!(history[0]["version"], "v2");
    assert_eq!(history[0]["phase"], "failed");
}
