//! Bad input: each mistake is one clear line on stderr, a non-zero exit, and
//! changes nothing.

mod support;
use support::*;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn good() -> Baton {
    Baton::new(&web_service())
}

/// `baton ARGS -c CONFIG`.
fn run_with(config: &Path, args: &[&str]) -> Output {
    Command::new(BATON)
        .args(args)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The one line a refused command printed; checks its exit code.
fn one_line(out: &Output, code: i32) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "not one line: {stderr:?}"
    );
    assert!(stderr.starts_with("error: "), "{stderr:?}");
    stderr.trim_end().to_string()
}

/// What a running installation shows; must be the same before and after a
/// refused command.
fn snapshot(b: &Baton) -> (serde_json::Value, Vec<serde_json::Value>, Vec<u32>) {
    let mut s = b.status("web");
    // In-flight counts and health may flicker; what runs must not.
    let keep = serde_json::json!({
        "active": s["active"]["version"].take(),
        "addrs": active_addrs(&b.status("web")),
        "previous": s["previous"].take(),
        "deploy": s["deploy"].take(),
        "last_deploy": s["last_deploy"].take(),
    });
    let mut pids = b.app_pids("v1");
    pids.extend(b.app_pids("v2"));
    (keep, b.history("web"), pids)
}

/// Runs `args` with `bad` as the configuration (next to the good one, so
/// it names the same control socket) against a running installation with
/// v1 live; it must be refused with exit 2 and change nothing.
fn refused_config(bad: &str, args: &[&str]) -> String {
    let mut b = good();
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let before = snapshot(&b);
    let path = b.path("bad.toml");
    std::fs::write(&path, bad).unwrap();
    let line = one_line(&run_with(&path, args), 2);
    assert!(line.contains("bad.toml"), "does not name the file: {line}");
    assert_eq!(snapshot(&b), before, "a refused command changed something");
    assert_eq!(get(&b.url("/")).1.trim(), "version=v1");
    line
}

fn bad_config(service: &str) -> String {
    format!(
        "[proxy]\nlisten = [\"127.0.0.1:{}\"]\n\n{service}\n",
        free_port()
    )
}

#[test]
fn malformed_toml_names_the_file_line_and_column() {
    let line = refused_config(
        &bad_config("[services.web\ncommand = [\"x\"]"),
        &["deploy", "web", "v2"],
    );
    assert!(line.contains("bad.toml:4:14:"), "no :LINE:COL: {line}");
}

#[test]
fn unknown_key_is_named() {
    let line = refused_config(
        &bad_config(&format!(
            "[services.web]\ncommand = {}\ncomand = [\"typo\"]",
            sample_app(&[])
        )),
        &["deploy", "web", "v2"],
    );
    assert!(line.contains("`comand`"), "does not name the key: {line}");
    assert!(line.contains("bad.toml:6:1:"), "no :LINE:COL: {line}");
}

#[test]
fn service_without_a_command_is_refused() {
    let line = refused_config(
        &bad_config("[services.web]\nhosts = [\"*\"]"),
        &["deploy", "web", "v2"],
    );
    assert!(line.contains("missing field `command`"), "{line}");
    assert!(line.contains("bad.toml:4:"), "no line: {line}");
    let line = refused_config(&bad_config("[services.web]\ncommand = []"), &["status"]);
    assert!(
        line.contains("services.web.command: must name a program to run"),
        "{line}"
    );
}

#[test]
fn unknown_placeholder_is_refused_at_load_time() {
    let line = refused_config(
        &bad_config("[services.web]\ncommand = [\"app\", \"--port\", \"{prot}\"]"),
        &["deploy", "web", "v2"],
    );
    assert!(
        line.contains("services.web.command") && line.contains("{prot}"),
        "{line}"
    );
}

#[test]
fn unknown_service_is_refused_and_changes_nothing() {
    let mut b = good();
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let before = snapshot(&b);
    for args in [
        &["deploy", "nosuch", "v1"][..],
        &["rollback", "nosuch"],
        &["status", "nosuch"],
        &["history", "nosuch"],
    ] {
        let line = one_line(&b.cli(args), 2);
        assert!(line.contains("nosuch"), "{args:?}: {line}");
    }
    assert_eq!(snapshot(&b), before);
    assert_eq!(get(&b.url("/")).1.trim(), "version=v1");
    // And a rollback with nothing to roll back to is bad input too.
    let line = one_line(&b.cli(&["rollback", "web"]), 2);
    assert!(line.contains("nothing to roll back to"), "{line}");
    assert_eq!(snapshot(&b), before);
}

#[test]
fn commands_without_a_running_serve_exit_3() {
    let b = good();
    for args in [
        &["deploy", "web", "v1"][..],
        &["rollback", "web"],
        &["status"],
        &["history", "web"],
        &["shutdown"],
    ] {
        let started = Instant::now();
        let line = one_line(&b.cli(args), 3);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            line.contains("is `baton serve` running?"),
            "{args:?}: {line}"
        );
    }
    assert!(!b.path(".baton").exists(), "a client created the state dir");
    // A missing config file is one line too.
    let line = one_line(&run_with(&b.path("missing.toml"), &["status"]), 2);
    assert!(line.contains("missing.toml: cannot read"), "{line}");
}

#[test]
fn serve_with_a_malformed_config_exits_and_creates_nothing() {
    let b = Baton::new("[services.web]\ncommand = [\"x\"\n");
    let started = Instant::now();
    let out = b.cli(&["serve"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    let line = one_line(&out, 2);
    assert!(line.contains("baton.toml:"), "{line}");
    assert!(!b.path(".baton").exists(), "serve created its state dir");
    assert_eq!(get(&b.url("/")).0, 0, "something listens on the proxy port");
}

#[test]
fn second_serve_on_the_same_config_refuses_and_the_first_keeps_serving() {
    let mut b = good();
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let before = snapshot(&b);
    let started = Instant::now();
    let out = b.cli(&["serve"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    let line = one_line(&out, 2);
    assert!(
        line.contains("already running") && line.contains("baton.sock"),
        "does not name the socket: {line}"
    );
    // The first one still serves, on its socket and its port.
    assert_eq!(snapshot(&b), before);
    assert_eq!(get(&b.url("/")).1.trim(), "version=v1");
    b.ok(&["deploy", "web", "v2"]);
    assert_eq!(get(&b.url("/")).1.trim(), "version=v2");
}

#[test]
fn serve_on_a_busy_port_refuses_and_creates_nothing() {
    let mut b = good();
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    // Another installation in its own directory, on the same proxy port.
    let other = tempfile::tempdir().unwrap();
    let config = other.path().join("baton.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{}\"]\n\n[services.web]\ncommand = {}\n",
            b.port,
            sample_app(&[])
        ),
    )
    .unwrap();
    let line = one_line(&run_with(&config, &["serve"]), 2);
    assert!(
        line.contains(&format!("127.0.0.1:{}", b.port)) && line.contains("proxy.listen"),
        "does not name the port: {line}"
    );
    let left: Vec<_> = std::fs::read_dir(other.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec!["baton.toml"],
        "the refused serve left files behind"
    );
    assert_eq!(get(&b.url("/")).1.trim(), "version=v1");
}

/// `[services.web]` that would run, with `extra` after it.
fn web_with(extra: &str) -> String {
    bad_config(&format!(
        "[services.web]\ncommand = {}\n{extra}",
        sample_app(&[])
    ))
}

#[test]
fn canary_weights_that_do_not_rise_are_refused() {
    let line = refused_config(
        &web_with(
            "[services.web.canary]\nsteps = [ { weight = 5, pause = \"1s\" }, { weight = 25, pause = \"1s\" }, { weight = 25, pause = \"1s\" } ]",
        ),
        &["deploy", "web", "v2"],
    );
    assert!(
        line.contains(
            "services.web.canary.steps[2].weight: must be above the previous step's 25% (weights rise)"
        ),
        "{line}"
    );
}

#[test]
fn canary_weight_above_100_is_refused() {
    let line = refused_config(
        &web_with("[services.web.canary]\nsteps = [ { weight = 150, pause = \"1s\" } ]"),
        &["deploy", "web", "v2"],
    );
    assert!(
        line.contains(
            "services.web.canary.steps[0].weight: must be a percentage above 0 and at most 100, got 150"
        ),
        "{line}"
    );
}

#[test]
fn unknown_sticky_mode_is_refused() {
    let line = refused_config(
        &web_with("[services.web.canary]\nsticky = \"session\""),
        &["deploy", "web", "v2"],
    );
    assert!(
        line.contains(
            "services.web.canary.sticky: unknown sticky mode \"session\" (expected \"cookie\", \"header:<name>\" or \"ip\")"
        ),
        "{line}"
    );
}

#[test]
fn unknown_strategy_is_refused() {
    let line = refused_config(
        &web_with("strategy = \"rolling\""),
        &["deploy", "web", "v2"],
    );
    assert!(
        line.contains(
            "services.web.strategy: unknown strategy \"rolling\" (expected \"blue-green\" or \"canary\")"
        ),
        "{line}"
    );
}
