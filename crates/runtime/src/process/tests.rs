use std::collections::BTreeMap;
use std::path::Path;

use baton_config::{RuntimeKind, Template, INSTANCE_VARS};
use baton_core::Color;

use super::*;

fn spec(dir: &Path, script: &str) -> InstanceSpec {
    let t = |s: &str| Template::new(s, INSTANCE_VARS).unwrap();
    InstanceSpec {
        service: "web".into(),
        version: "v1".into(),
        color: Color::Blue,
        index: 0,
        runtime: RuntimeKind::Process,
        command: vec![t("sh"), t("-c"), t(script)],
        env: BTreeMap::from([("GREETING".to_string(), t("hello {version} on {port}"))]),
        workdir: t(&dir.to_string_lossy()),
        image: None,
        port: None,
        log: dir.join("logs/web.log"),
        host: None,
        unpacked: false,
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pid_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

#[tokio::test]
async fn stop_reaches_every_process_of_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new();
    let script = "echo \"$GREETING\"; sleep 1000 & echo $! > worker.pid; exec sleep 1000";
    let inst = rt.start(&spec(dir.path(), script)).await.unwrap();
    let worker_pid = dir.path().join("worker.pid");
    wait_for("the worker", || {
        std::fs::read_to_string(&worker_pid).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    let worker: u32 = std::fs::read_to_string(&worker_pid)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(rt.exited(&inst).is_none());
    assert!(pid_alive(worker));

    rt.stop(&inst, Duration::from_secs(5)).await.unwrap();
    wait_for("the leader's exit", || rt.exited(&inst).is_some()).await;
    assert!(!pid_alive(worker), "a forked worker was left behind");
    let log = rt.log_tail(&inst, 5).await;
    assert_eq!(log, format!("hello v1 on {}", inst.addr.port()));
}

#[tokio::test]
async fn an_instance_leads_its_own_session_and_group() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new();
    let inst = rt
        .start(&spec(dir.path(), "exec sleep 1000"))
        .await
        .unwrap();
    let Some((pid, _)) = process(&inst) else {
        panic!("not a process: {inst:?}");
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the name: state, ppid, pgrp, session.
    let fields: Vec<u32> = stat_fields(&stat)
        .unwrap()
        .skip(2)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    rt.stop(&inst, Duration::from_secs(5)).await.unwrap();
    // Its own: a session or group that is baton's would carry baton's id.
    assert_eq!(fields, [pid, pid], "process group and session of {pid}");
}

#[tokio::test]
async fn sigkill_after_grace_when_sigterm_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new();
    let inst = rt
        .start(&spec(
            dir.path(),
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        ))
        .await
        .unwrap();
    wait_for("the trap", || crate::logfile::tail(&inst.log, 1) == "ready").await;
    let started = Instant::now();
    rt.stop(&inst, Duration::from_millis(300)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    // It ignored SIGTERM, and stop returned: SIGKILL ended it. A stopped
    // child is forgotten, so that the table does not grow with every deploy.
    let Handle::Process { pid, start_ticks } = inst.handle else {
        panic!("not a process")
    };
    assert!(!is_alive(pid, start_ticks), "it is gone");
    assert_eq!(rt.exited(&inst).unwrap(), "the process is gone");
    assert!(rt.children.lock().unwrap().is_empty());
}

#[tokio::test]
async fn exit_status_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new();
    let inst = rt
        .start(&spec(dir.path(), "echo boom >&2; exit 3"))
        .await
        .unwrap();
    wait_for("the exit", || rt.exited(&inst).is_some()).await;
    assert_eq!(rt.exited(&inst).unwrap(), "exited with status 3");
    assert_eq!(rt.log_tail(&inst, 1).await, "boom");
}

#[tokio::test]
async fn an_adopting_runtime_sees_the_process_and_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = ProcessRuntime::new();
    let inst = first
        .start(&spec(dir.path(), "exec sleep 1000"))
        .await
        .unwrap();
    let adopter = ProcessRuntime::new();
    assert!(
        adopter.exited(&inst).is_none(),
        "a running process is adopted"
    );
    let mut reused = inst.clone();
    if let Handle::Process { start_ticks, .. } = &mut reused.handle {
        *start_ticks += 1;
    }
    assert!(
        adopter.exited(&reused).is_some(),
        "a reused pid is not ours"
    );
    adopter.stop(&inst, Duration::from_secs(5)).await.unwrap();
    wait_for("the exit", || first.exited(&inst).is_some()).await;
}

#[tokio::test]
async fn bad_program_and_workdir_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rt = ProcessRuntime::new();
    let mut s = spec(dir.path(), "true");
    s.command = vec![Template::new("/nonexistent/app", INSTANCE_VARS).unwrap()];
    let e = rt.start(&s).await.unwrap_err().to_string();
    assert!(e.contains("/nonexistent/app"), "{e}");
    let mut s = spec(dir.path(), "true");
    s.workdir = Template::new("/nonexistent/dir/{version}", INSTANCE_VARS).unwrap();
    let e = rt.start(&s).await.unwrap_err().to_string();
    assert_eq!(e, "workdir /nonexistent/dir/v1 does not exist");
}
