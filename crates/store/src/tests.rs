use baton_runtime::Handle;

use super::*;

fn release(color: Color, version: &str, role: Role) -> Release {
    Release {
        service: "web".into(),
        color,
        version: version.into(),
        role,
        instances: vec![Instance {
            addr: "127.0.0.1:4000".parse().unwrap(),
            log: "/tmp/web.log".into(),
            handle: Handle::Process {
                pid: 42,
                start_ticks: 7,
            },
            host: None,
        }],
        retire_at: None,
    }
}

#[test]
fn a_switch_swaps_roles_and_ends_the_deploy_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_release(&release(Color::Blue, "v1", Role::Active))
        .unwrap();
    let id = store
        .begin_deploy("web", DeployKind::Deploy, "v2", Color::Green, "ci@host")
        .unwrap();
    store
        .put_release(&release(Color::Green, "v2", Role::Candidate))
        .unwrap();
    store.set_phase(id, Phase::Switching).unwrap();
    assert_eq!(store.unfinished_deploys().unwrap().len(), 1);

    store.record_switch(id, "web", Color::Green, 1234).unwrap();
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let rels = store.releases("web").unwrap();
    assert_eq!(rels.len(), 2);
    assert_eq!(
        (rels[0].color, rels[0].role, rels[0].retire_at),
        (Color::Blue, Role::Previous, Some(1234))
    );
    assert_eq!((rels[1].color, rels[1].role), (Color::Green, Role::Active));
    assert_eq!(
        rels[1].instances[0].handle,
        Handle::Process {
            pid: 42,
            start_ticks: 7
        }
    );
    assert!(store.unfinished_deploys().unwrap().is_empty());
    let last = store.last_deploy("web").unwrap().unwrap();
    assert_eq!(
        (last.phase, last.requested_by.as_str()),
        (Phase::Done, "ci@host")
    );
}

#[test]
fn failures_keep_their_reason_and_history_is_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = store
        .begin_deploy("web", DeployKind::Deploy, "v2", Color::Green, "me")
        .unwrap();
    store
        .fail_deploy(a, "not healthy before the health deadline", Some("boom"))
        .unwrap();
    let b = store
        .begin_deploy("web", DeployKind::Rollback, "v1", Color::Blue, "me")
        .unwrap();
    let h = store.history("web", 10).unwrap();
    assert_eq!(h.iter().map(|d| d.id).collect::<Vec<_>>(), [b, a]);
    assert_eq!(h[1].phase, Phase::Failed);
    assert_eq!(
        h[1].error.as_deref(),
        Some("not healthy before the health deadline")
    );
    assert_eq!(h[1].log_tail.as_deref(), Some("boom"));
    assert_eq!(h[0].kind, DeployKind::Rollback);
    assert!(store.history("other", 10).unwrap().is_empty());
    store.remove_release("web", Color::Green).unwrap();
}

#[test]
fn leftovers_are_kept_across_restarts_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut instance = release(Color::Blue, "v1", Role::Active).instances.remove(0);
    instance.host = Some("app2".into());
    store
        .add_leftover("web", &instance, "host app2: no answer")
        .unwrap();
    store
        .add_leftover("web", &instance, "host app2: still no answer")
        .unwrap();
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    let left = store.leftovers().unwrap();
    assert_eq!(left.len(), 1, "one row per instance: {left:?}");
    assert_eq!(left[0].instance, instance);
    assert_eq!(left[0].reason, "host app2: still no answer");
    store.remove_leftover("web", &instance).unwrap();
    assert!(store.leftovers().unwrap().is_empty());
}
