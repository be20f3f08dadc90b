//! Failures before the switch: the candidate never turns healthy, exits at
//! start, or fails its smoke check. Traffic never moves, the candidate is
//! stopped, and the failure is recorded. Plus: one deploy per service at a
//! time, and stopping an instance stops its whole process group.

mod support;
use support::*;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The health deadline the failure cases use.
const DEADLINE: Duration = Duration::from_secs(3);

/// A service `web` running the sample app with `behave` rules and `extra`
/// TOML appended (e.g. a `[services.web.switch]` table).
fn install(behave: &str, extra: &str) -> Baton {
    Baton::new(&format!(
        "[services.web]\ncommand = {}\n\
         [services.web.health]\ninterval = \"100ms\"\ndeadline = \"3s\"\n{extra}",
        sample_app(&["--behave", behave])
    ))
}

/// Runs `baton deploy web v2` that must fail, while another thread keeps
/// GETting `/` through the proxy; checks everything a failed deploy
/// promises and returns its stderr.
/// `runs_for_a_while`: the candidate lives long enough to be seen running.
fn failed_deploy(b: &Baton, expect_in_stderr: &[&str], runs_for_a_while: bool) -> String {
    assert_eq!(get(&b.url("/")).1.trim(), "version=v1");
    let history_before = b.history("web").len();

    // While the deploy runs, one thread GETs `/` (every answer must come
    // from v1) and another collects the candidate's pids.
    let stop = AtomicBool::new(false);
    let (out, took, after, seen, candidate_pids) = std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                seen.push(get(&b.url("/")));
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        let watcher = scope.spawn(|| {
            let mut pids = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                pids.extend(b.app_pids("v2"));
                std::thread::sleep(Duration::from_millis(10));
            }
            pids
        });
        let started = Instant::now();
        let out = b.cli(&["deploy", "web", "v2"]);
        let took = started.elapsed();
        // Traffic is still on v1 after the deploy returns, too.
        let after = get(&b.url("/"));
        stop.store(true, Ordering::Relaxed);
        let seen = poller.join().unwrap();
        let pids = watcher.join().unwrap();
        (out, took, after, seen, pids)
    });

    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "deploy must fail with exit 1; stderr: {stderr}\n{}",
        b.serve_log()
    );
    assert!(
        took < DEADLINE + Duration::from_secs(1),
        "deploy took {took:?}, more than the health deadline + 1s"
    );
    for want in expect_in_stderr {
        assert!(stderr.contains(want), "stderr lacks {want:?}: {stderr}");
    }

    assert_eq!(after.1.trim(), "version=v1", "traffic moved: {after:?}");
    assert!(!seen.is_empty(), "no request was made during the deploy");
    for answer in seen.iter() {
        assert_eq!(
            (answer.0, answer.1.trim()),
            (200, "version=v1"),
            "a request during the deploy was not answered by v1"
        );
    }

    // The candidate's processes are gone once the deploy has returned.
    assert!(
        b.app_pids("v2").is_empty(),
        "candidate processes still running: {:?}",
        b.app_pids("v2")
    );
    if runs_for_a_while {
        assert!(
            !candidate_pids.is_empty(),
            "the candidate was never seen running"
        );
    }
    for pid in &candidate_pids {
        assert!(!pid_alive(*pid), "candidate pid {pid} still alive");
    }

    // Recorded as failed, with the reason, in status and history.
    let s = b.status("web");
    assert_eq!(s["active"]["version"], "v1");
    assert!(s["deploy"].is_null(), "a deploy still shows: {s}");
    let last = &s["last_deploy"];
    assert_eq!(last["version"], "v2");
    assert_eq!(last["phase"], "failed");
    assert!(
        last["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no error recorded: {last}"
    );
    let history = b.history("web");
    assert_eq!(history.len(), history_before + 1);
    assert_eq!(history[0]["version"], "v2");
    assert_eq!(history[0]["phase"], "failed");
    assert_eq!(history[0]["error"], last["error"]);
    stderr
}

#[test]
fn candidate_that_never_turns_healthy_fails_at_the_deadline() {
    let mut b = install("v2=never-healthy", "");
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let started = Instant::now();
    let stderr = failed_deploy(&b, &["not healthy before the health deadline"], true);
    assert!(
        started.elapsed() >= DEADLINE,
        "failed before the deadline: {stderr}"
    );
}

#[test]
fn candidate_that_exits_at_start_fails_with_its_log_tail() {
    let mut b = install("v2=crash", "");
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let stderr = failed_deploy(&b, &["exited with status 3", "crashing on purpose"], false);
    let last = &b.status("web")["last_deploy"];
    assert!(
        last["log_tail"]
            .as_str()
            .is_some_and(|t| t.contains("crashing on purpose")),
        "no log tail recorded: {last}; stderr: {stderr}"
    );
}

#[test]
fn candidate_that_fails_its_smoke_check_is_not_switched_to() {
    let smoke =
        format!("[services.web.switch]\nsmoke = [{BATON:?}, \"check\", \"{{preview_url}}/\"]\n");
    let mut b = install("v2=broken", &smoke);
    b.start();
    // The smoke check passes for a good version (and gates its switch).
    b.ok(&["deploy", "web", "v1"]);
    let stderr = failed_deploy(&b, &["smoke check failed", "HTTP 500"], true);
    let history = b.history("web");
    assert!(
        history[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("smoke check failed")),
        "{}",
        history[0]
    );
    assert!(!stderr.contains("exited with status 3"));
}

#[test]
fn one_deploy_per_service_at_a_time() {
    let b = {
        let mut b = Baton::new(&format!(
            "[services.web]\ncommand = {}\n\
             [services.web.health]\ninterval = \"100ms\"\ndeadline = \"20s\"\n",
            sample_app(&["--behave", "v2=unhealthy-for:3s"])
        ));
        b.start();
        b
    };
    b.ok(&["deploy", "web", "v1"]);
    let history_before = b.history("web").len();

    let first = b.spawn_cli(&["deploy", "web", "v2"]);
    wait_until(
        "the v2 deploy to show in status",
        Duration::from_secs(10),
        || !b.status("web")["deploy"].is_null(),
    );

    let started = Instant::now();
    let second = b.cli(&["deploy", "web", "v3"]);
    let took = started.elapsed();
    let stderr = text(&second.stderr);
    assert_eq!(second.status.code(), Some(4), "stderr: {stderr}");
    assert!(took < Duration::from_millis(900), "refusal took {took:?}");
    assert!(
        stderr.contains("v2"),
        "stderr does not name the running deploy: {stderr}"
    );
    // A rollback is refused the same way.
    let rollback = b.cli(&["rollback", "web"]);
    assert_eq!(
        rollback.status.code(),
        Some(4),
        "{}",
        text(&rollback.stderr)
    );

    // The refused deploy changed nothing: v2 is still the one under way,
    // no v3 was started, and it is not in the history.
    let s = b.status("web");
    assert_eq!(s["deploy"]["version"], "v2", "{s}");
    assert_eq!(s["active"]["version"], "v1");
    assert!(b.app_pids("v3").is_empty());

    let out = wait_child("the v2 deploy", first, Duration::from_secs(20));
    assert_eq!(
        out.status.code(),
        Some(0),
        "the first deploy failed: {}",
        text(&out.stderr)
    );
    assert_eq!(get(&b.url("/")).1.trim(), "version=v2");
    let history = b.history("web");
    assert_eq!(history.len(), history_before + 1, "{history:?}");
    assert!(history.iter().all(|d| d["version"] != "v3"));
}

#[test]
fn stopping_an_instance_stops_its_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let workdir = std::fs::canonicalize(dir.path()).unwrap();
    let script = format!(
        "{BATON} sample-app --port $PORT --version $APP_VERSION & echo $! > worker-{{version}}.pid; \
         sleep 1000 & echo $! > sleeper-{{version}}.pid; wait"
    );
    let mut b = Baton::new(&format!(
        "[services.web]\ncommand = [\"sh\", \"-c\", {script:?}]\n\
         env = {{ APP_VERSION = \"{{version}}\" }}\n\
         workdir = {:?}\n\
         stop_timeout = \"60s\"\n\
         [services.web.health]\ninterval = \"100ms\"\ndeadline = \"10s\"\n\
         [services.web.switch]\nkeep_previous = \"0s\"\n",
        workdir.to_str().unwrap()
    ));
    b.start();
    let pid = |name: &str| -> u32 {
        let path = workdir.join(name);
        read(&path)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pid in {}", path.display()))
    };

    b.ok(&["deploy", "web", "v1"]);
    assert_eq!(get(&b.url("/")).1.trim(), "version=v1");
    let (worker1, sleeper1) = (pid("worker-v1.pid"), pid("sleeper-v1.pid"));
    assert!(pid_alive(worker1) && pid_alive(sleeper1));

    b.ok(&["deploy", "web", "v2"]);
    assert_eq!(get(&b.url("/")).1.trim(), "version=v2");
    // Well before the stop timeout: SIGTERM reached the whole group, not
    // just the shell baton started.
    wait_until(
        "v1's worker and sleeper (its whole process group) to stop",
        Duration::from_secs(5),
        || !pid_alive(worker1) && !pid_alive(sleeper1),
    );
    let (worker2, sleeper2) = (pid("worker-v2.pid"), pid("sleeper-v2.pid"));
    assert!(
        pid_alive(worker2) && pid_alive(sleeper2),
        "the live release's processes must keep running"
    );
    b.ok(&["shutdown", "--stop-apps"]);
    wait_until("v2's process group to stop", Duration::from_secs(5), || {
        !pid_alive(worker2) && !pid_alive(sleeper2)
    });
}
