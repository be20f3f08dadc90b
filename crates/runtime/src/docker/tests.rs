use baton_config::{RuntimeKind, Template, INSTANCE_VARS};
use baton_core::Color;
use bollard::models::EventActor;

use super::*;

fn event(action: &str, id: &str, exit: Option<&str>) -> EventMessage {
    EventMessage {
        action: Some(action.to_string()),
        actor: Some(EventActor {
            id: Some(id.to_string()),
            attributes: exit
                .map(|code| HashMap::from([("exitCode".to_string(), code.to_string())])),
        }),
        ..Default::default()
    }
}

fn container(id: &str) -> Instance {
    Instance {
        addr: "127.0.0.1:4000".parse().unwrap(),
        log: PathBuf::from("/nonexistent/log"),
        handle: Handle::Container {
            container: id.to_string(),
        },
        host: None,
    }
}

fn describe(known: &Known, id: &str) -> Option<String> {
    match known.states.get(id) {
        None => Some("was removed".to_string()),
        Some(State::Ended(why)) => Some(why.clone()),
        Some(State::Running { .. }) => None,
    }
}

#[test]
fn events_say_how_a_container_ended() {
    let mut known = Known::default();
    for id in ["a", "b", "c"] {
        known
            .states
            .insert(id.to_string(), State::Running { oom: false });
    }
    apply(&mut known, event("die", "a", Some("3")));
    assert_eq!(describe(&known, "a").unwrap(), "exited with status 3");
    // A later die (an event replayed after a reconnection) changes nothing.
    apply(&mut known, event("die", "a", Some("0")));
    assert_eq!(describe(&known, "a").unwrap(), "exited with status 3");

    apply(&mut known, event("oom", "b", None));
    assert_eq!(
        describe(&known, "b"),
        None,
        "an oom kill alone may spare the app"
    );
    apply(&mut known, event("die", "b", Some("137")));
    assert_eq!(
        describe(&known, "b").unwrap(),
        "exited with status 137 (out of memory)"
    );

    apply(&mut known, event("destroy", "c", None));
    assert_eq!(describe(&known, "c").unwrap(), "was removed");
    assert_eq!(describe(&known, "never-seen").unwrap(), "was removed");
}

#[test]
fn a_listing_after_a_lost_stream_catches_up() {
    let mut known = Known::default();
    known
        .states
        .insert("gone".into(), State::Running { oom: false });
    known
        .states
        .insert("died".into(), State::Running { oom: false });
    known
        .states
        .insert("ended".into(), State::Ended("exited with status 2".into()));
    known
        .states
        .insert("runs".into(), State::Running { oom: false });
    let now = HashMap::from([
        (
            "died".to_string(),
            State::Ended(ended("Exited (1) 3 seconds ago")),
        ),
        (
            "ended".to_string(),
            State::Ended(ended("Exited (0) 1 second ago")),
        ),
        ("runs".to_string(), State::Running { oom: false }),
        ("new".to_string(), State::Running { oom: false }),
    ]);
    resync(&mut known, now);
    assert_eq!(describe(&known, "gone").unwrap(), "was removed");
    assert_eq!(describe(&known, "died").unwrap(), "exited with status 1");
    assert_eq!(describe(&known, "ended").unwrap(), "exited with status 2");
    assert_eq!(describe(&known, "runs"), None);
    assert_eq!(describe(&known, "new"), None);
}

#[test]
fn listed_statuses() {
    assert_eq!(
        ended("Exited (137) 5 minutes ago"),
        "exited with status 137"
    );
    assert_eq!(ended("Dead"), "is not running (Dead)");
}

#[test]
fn the_health_wait_follows_the_images_healthcheck() {
    let secs = Duration::from_secs;
    assert_eq!(health_limit(HealthConfig::default()), secs(4 * 60 + 5));
    let check = HealthConfig {
        interval: Some(500_000_000),
        timeout: Some(2_000_000_000),
        retries: Some(2),
        start_period: Some(10_000_000_000),
        ..Default::default()
    };
    assert_eq!(health_limit(check), secs(10) + secs_f(2.5) * 3 + secs(5));
}

fn secs_f(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn names_are_drawn_anew() {
    let names: HashSet<String> = (0..100).map(|_| short_random()).collect();
    assert!(names.len() > 95, "{names:?}");
    assert!(names.iter().all(|n| n.len() == 6));
}

#[test]
fn one_line_outputs() {
    assert_eq!(one_line("curl: (7)\n  refused\n"), "curl: (7) refused");
    assert_eq!(one_line(&"x".repeat(300)).len(), 203);
}

#[tokio::test]
async fn a_missing_socket_is_named() {
    let e = DockerRuntime::connect(Path::new("/nonexistent/docker.sock"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("cannot reach the Docker Engine at /nonexistent/docker.sock: "),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

/// The local engine; these tests fail, never skip, without one.
async fn engine() -> DockerRuntime {
    let socket = default_socket();
    DockerRuntime::connect(&socket)
        .await
        .unwrap_or_else(|e| panic!("these tests need the Docker Engine: {e}"))
}

#[tokio::test]
async fn a_missing_image_is_named() {
    let rt = engine().await;
    let dir = tempfile::tempdir().unwrap();
    let t = |s: &str| Template::new(s, INSTANCE_VARS).unwrap();
    let spec = InstanceSpec {
        service: "runtime-test".into(),
        version: "v0".into(),
        color: Color::Blue,
        index: 0,
        runtime: RuntimeKind::Docker,
        command: Vec::new(),
        env: Default::default(),
        workdir: t("."),
        image: Some(t("baton-runtime-test-missing:{version}")),
        port: Some(8000),
        log: dir.path().join("web.log"),
        host: None,
        unpacked: false,
    };
    let e = rt.start(&spec).await.unwrap_err().to_string();
    assert_eq!(
        e,
        "image baton-runtime-test-missing:v0 not found on this host"
    );
}

#[tokio::test]
async fn an_unknown_container_was_removed_and_a_process_is_not_ours() {
    let rt = engine().await;
    assert_eq!(
        rt.exited(&container("0000000000000000")).unwrap(),
        "was removed"
    );
    let process = Instance {
        handle: Handle::Process {
            pid: std::process::id(),
            start_ticks: 1,
        },
        ..container("x")
    };
    assert_eq!(rt.exited(&process).unwrap(), "is not a container");
}
