//! `traffic = "haproxy"`: a real HAProxy (Debian's package), started by
//! each test with a backend of its own, that baton drives through its
//! runtime API while clients send their requests to HAProxy.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// An HAProxy in front of baton's apps, stopped when dropped.
struct Haproxy {
    child: Child,
    /// Its frontend's port, where the clients go.
    port: u16,
    /// The runtime API socket, at admin level.
    socket: PathBuf,
    /// A socket at user level, for the test that baton refuses it.
    user_socket: PathBuf,
    config: PathBuf,
}

fn spawn(config: &Path) -> Child {
    Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting haproxy (is Debian's haproxy installed?)")
}

impl Haproxy {
    /// An HAProxy whose backend `web` holds `servers` (config lines).
    fn start(dir: &Path, servers: &str) -> Self {
        let port = free_port();
        let socket = dir.join("admin.sock");
        let user_socket = dir.join("user.sock");
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n  stats socket {admin} mode 600 level admin\n  stats socket {user} mode 600 level user\n\
                 defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend fe\n  bind 127.0.0.1:{port}\n  default_backend web\n\
                 backend web\n  balance roundrobin\n{servers}\n",
                admin = socket.display(),
                user = user_socket.display(),
            ),
        )
        .unwrap();
        let mut h = Self {
            child: spawn(&config),
            port,
            socket,
            user_socket,
            config,
        };
        h.wait_ready();
        h
    }

    /// Stops it and starts it again from its config, as an operator's
    /// restart would: what baton added at run time is gone.
    fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn(&self.config);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        wait_until("haproxy's admin socket", Duration::from_secs(10), || {
            self.admin("show info").contains("Name: HAProxy")
        });
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// A command on the admin socket; its answer.
    fn admin(&self, command: &str) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::os::unix::net::UnixStream::connect(&self.socket) else {
            return String::new();
        };
        let _ = s.write_all(format!("{command}\n").as_bytes());
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    }

    /// The backend's servers: `(name, admin state, weight)`.
    fn servers(&self) -> Vec<(String, u32, u32)> {
        self.admin("show servers state web")
            .lines()
            .skip(2)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((
                    f.get(3)?.to_string(),
                    f.get(6)?.parse().ok()?,
                    f.get(7)?.parse().ok()?,
                ))
            })
            .collect()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A baton whose `web` service is moved by the HAProxy at `socket`;
/// `extra` is appended (tables of the service).
fn haproxy_baton(socket: &Path, extra: &str) -> Baton {
    haproxy_baton_with(socket, &[], extra)
}

/// The same, the sample app given `args`.
fn haproxy_baton_with(socket: &Path, args: &[&str], extra: &str) -> Baton {
    Baton::new(&format!(
        "[services.web]\ncommand = {app}\ntraffic = \"haproxy\"\ninstances = 2\n\
         [services.web.haproxy]\nsocket = \"{socket}\"\nbackend = \"web\"\nstate_file = \"haproxy.state\"\n\
         [services.web.health]\ninterval = \"100ms\"\n\
         [services.web.switch]\ndrain_timeout = \"5s\"\nkeep_previous = \"1s\"\n{extra}",
        app = sample_app(args),
        socket = socket.display(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploys_through_haproxy_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let h = Haproxy::start(dir.path(), "");
    let mut b = haproxy_baton(&h.socket, "");
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let names: Vec<String> = h.servers().into_iter().map(|s| s.0).collect();
    assert_eq!(names, ["baton-blue-0", "baton-blue-1"]);

    let versions: Vec<String> = (2..=21).map(|i| format!("v{i}")).collect();
    let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
    deploys_under_load_at(&b, &h.url(), "web", &versions).await;

    // Only the live release's servers are left, at full weight, and the
    // state file says the same as HAProxy.
    wait_until("the old servers removed", Duration::from_secs(20), || {
        h.servers().len() == 2
    });
    let live_color = b.status("web")["active"]["color"]
        .as_str()
        .unwrap()
        .to_string();
    for (name, admin, weight) in h.servers() {
        assert!(name.starts_with(&format!("baton-{live_color}-")), "{name}");
        assert_eq!((admin, weight), (0, 256), "{name}");
    }
    let state = std::fs::read_to_string(b.path("haproxy.state")).unwrap();
    assert!(state.contains(&format!("baton-{live_color}-0")), "{state}");
}

/// A baton behind `h` with v1 live and v2's canary rollout held at 5%;
/// the deploy command, still running.
fn canary_held_at_5_percent(h: &Haproxy) -> (Baton, Child) {
    let mut b = haproxy_baton(
        &h.socket,
        "[services.web.canary]\nsteps = [{ weight = 5, pause = \"forever\" }]\n",
    );
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let deploy = b.spawn_cli(&["deploy", "web", "v2", "--canary"]);
    wait_until("the canary at 5%", Duration::from_secs(20), || {
        b.status("web")["deploy"]["canary"]["weight"] == 500
    });
    (b, deploy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_weights_reach_haproxy() {
    let dir = tempfile::tempdir().unwrap();
    let h = Haproxy::start(dir.path(), "");
    let (b, deploy) = canary_held_at_5_percent(&h);

    let mut cfg = baton_loadgen::LoadConfig::new(h.url());
    cfg.connections = 8;
    let load = baton_loadgen::start(cfg);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while load.snapshot().ok < 20_000 {
        assert!(std::time::Instant::now() < deadline, "too slow");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = load.stop().await;
    let total = stats.ok as f64;
    let canary = *stats.versions.get("v2").unwrap_or(&0) as f64;
    let share = canary / total;
    eprintln!("{stats}\ncandidate share {share:.4}");
    assert_eq!(stats.non_2xx + stats.conn_errors, 0, "{stats}");
    assert!(
        (0.04..=0.06).contains(&share),
        "candidate share {share} of {total}"
    );

    b.ok(&["promote", "web", "--full"]);
    let out = wait_child("the deploy", deploy, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (_, body) = baton_loadgen::get_once(&h.url(), None).await.unwrap();
    assert_eq!(body.trim(), "version=v2");
}

#[test]
fn a_restarted_haproxy_is_put_back_as_baton_set_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Haproxy::start(dir.path(), "");
    let (b, deploy) = canary_held_at_5_percent(&h);
    let set = h.servers();
    assert_eq!(set.len(), 4, "{set:?}");

    // Someone restarts HAProxy mid-rollout: its servers are gone.
    h.restart();
    wait_until("the servers put back", Duration::from_secs(20), || {
        h.servers() == set
    });
    let status = b.status("web");
    let traffic = &status["traffic"];
    let restored = traffic["restored"].as_str().unwrap_or_default();
    assert!(restored.contains("baton-blue-0 is missing"), "{traffic}");
    assert_eq!(traffic["differences"], serde_json::json!([]), "{traffic}");
    let weights: Vec<_> = traffic["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["weight"].clone(), s["intended_weight"].clone()))
        .collect();
    assert!(weights.iter().all(|(w, i)| w == i), "{traffic}");
    let human = b.ok(&["status", "web"]);
    assert!(
        human.contains("haproxy web") && human.contains("restored after"),
        "{human}"
    );
    assert_eq!(get(&format!("http://127.0.0.1:{}/", h.port)).0, 200);

    b.ok(&["abort", "web"]);
    let out = wait_child("the deploy", deploy, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    wait_until("only v1's servers left", Duration::from_secs(20), || {
        h.servers().iter().all(|s| s.0.starts_with("baton-blue-"))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_behind_haproxy_is_judged_by_haproxys_counts() {
    let dir = tempfile::tempdir().unwrap();
    let h = Haproxy::start(dir.path(), "");
    let mut b = haproxy_baton_with(
        &h.socket,
        &["--behave", "bad=error-rate:0.2"],
        "[services.web.canary]\nsteps = [{ weight = 20, pause = \"1m\" }]\n\
         [services.web.canary.analysis]\ninterval = \"1s\"\nmin_requests = 20\n",
    );
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let mut cfg = baton_loadgen::LoadConfig::new(h.url());
    cfg.connections = 8;
    cfg.pause_between_requests = Duration::from_millis(1);
    let load = baton_loadgen::start(cfg);

    // None of these requests passes through baton's proxy: the analysis
    // sees them through HAProxy's counters.
    let deploy = b.spawn_cli(&["deploy", "web", "bad", "--canary"]);
    let out = wait_child("the canary's rollback", deploy, Duration::from_secs(30));
    let stats = load.stop().await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("error_rate"), "{err}");
    assert!(
        stats.versions.contains_key("bad"),
        "the canary got traffic: {stats}"
    );
    let servers = h.servers();
    assert!(
        !servers.is_empty() && servers.iter().all(|s| s.0.starts_with("baton-blue-")),
        "only v1's servers are left: {servers:?}"
    );
    let (_, body) = baton_loadgen::get_once(&h.url(), None).await.unwrap();
    assert_eq!(body.trim(), "version=v1");
}

/// A deploy against `h` with `socket` fails before traffic moves, with
/// HAProxy's own words, and changes nothing there.
fn refused(h: &Haproxy, socket: &Path, says: &str) {
    let before = h.admin("show servers state web");
    let mut b = haproxy_baton(socket, "");
    b.start();
    let out = b.cli(&["deploy", "web", "v1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(says), "{err}");
    assert_eq!(b.status("web")["active"], serde_json::Value::Null);
    assert!(b.app_pids("v1").is_empty(), "the candidate was stopped");
    let after = h.admin("show servers state web");
    // The servers' timers tick; what they are must not change.
    let servers = |s: &str| -> Vec<String> {
        s.lines()
            .skip(2)
            .map(|l| l.split_whitespace().take(8).collect::<Vec<_>>().join(" "))
            .collect()
    };
    assert_eq!(servers(&after), servers(&before), "haproxy was changed");
}

#[test]
fn haproxy_refusals_fail_the_deploy_before_traffic_moves() {
    // A backend holding a server baton does not manage.
    let dir = tempfile::tempdir().unwrap();
    let h = Haproxy::start(dir.path(), "  server legacy 127.0.0.1:9 weight 1");
    refused(&h, &h.socket, "has servers baton does not manage (legacy)");
    // A socket without admin level.
    let dir = tempfile::tempdir().unwrap();
    let h = Haproxy::start(dir.path(), "");
    refused(
        &h,
        &h.user_socket,
        "Permission denied (the socket needs `level admin`)",
    );
    // No HAProxy there at all.
    refused(
        &h,
        &dir.path().join("nowhere.sock"),
        "nowhere.sock: No such file",
    );
}
