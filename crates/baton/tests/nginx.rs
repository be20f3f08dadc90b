//! `traffic = "nginx"`: a real nginx (Debian's package), started by each
//! test with a config of its own that includes the upstream file baton
//! renders; clients send their requests to nginx.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// An nginx in front of baton's apps, stopped when dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// The service's location as people write it: keep-alive toward clients
/// (nginx's default 75 s) and toward the upstream.
const OWN_LOCATION: &str =
    "proxy_pass http://web;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";";
/// The service's location with the directives baton renders.
const RENDERED_LOCATION: &str = "include DIR/location.conf;";

impl Nginx {
    /// An nginx whose one server proxies `location` (`DIR` stands for `dir`).
    fn start(dir: &Path, location: &str) -> Self {
        let port = free_port();
        // Until baton's first switch, the upstream leads nowhere.
        std::fs::write(
            dir.join("web.conf"),
            "upstream web { server 127.0.0.1:9 down; }\n",
        )
        .unwrap();
        std::fs::write(dir.join("location.conf"), "proxy_pass http://web;\n").unwrap();
        std::fs::write(dir.join("extra.conf"), "").unwrap();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{}}\n\
                 http {{\n  access_log off;\n  include {d}/web.conf;\n  include {d}/extra.conf;\n\
                   server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      {location}\n    }}\n  }}\n}}\n",
                d = dir.display(),
                location = location.replace("DIR", &dir.display().to_string()),
            ),
        )
        .unwrap();
        Self::run(dir, port)
    }

    /// Starts nginx on the config already in `dir`.
    fn run(dir: &Path, port: u16) -> Self {
        let child = Command::new("nginx")
            .args(nginx_args(dir))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx (is Debian's nginx installed?)");
        let n = Self {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        wait_until("nginx's pid file", Duration::from_secs(10), || {
            n.dir.join("nginx.pid").exists()
        });
        n
    }

    /// Stops nginx and starts it again, as an operator's restart does.
    fn restart(self, while_stopped: impl FnOnce()) -> Self {
        let (dir, port) = (self.dir.clone(), self.port);
        drop(self);
        while_stopped();
        Self::run(&dir, port)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// `nginx -s reload`, as a script does it.
    fn reload(&self) {
        let out = Command::new("nginx")
            .args(["-s", "reload"])
            .args(nginx_args(&self.dir))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    /// nginx's workers: (pid, retired by a reload and not exited yet).
    fn workers(&self) -> Vec<(u32, bool)> {
        let master = read(&self.dir.join("nginx.pid"));
        let master = master.trim();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let parent = stat.rsplit(')').next()?.split(' ').nth(2)?;
                let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let retired = String::from_utf8_lossy(&title).contains("shutting down");
                (parent == master).then_some((pid, retired))
            })
            .collect()
    }

    fn retired_workers(&self) -> usize {
        self.workers()
            .iter()
            .filter(|(_, retired)| *retired)
            .count()
    }
}

impl Drop for Nginx {
    /// SIGTERM: nginx's master ends its workers too (SIGKILL would leave
    /// them running, holding the port).
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// Ends `child` as a supervisor would: SIGTERM, then waits for it.
fn terminate(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

/// nginx's own arguments for this test's config (its prefix and error log too,
/// so that nothing of the system's nginx is touched).
fn nginx_args(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec![
        "-p".into(),
        format!("{d}/"),
        "-e".into(),
        format!("{d}/error.log"),
        "-c".into(),
        format!("{d}/nginx.conf"),
    ]
}

fn toml_array(args: &[String]) -> String {
    let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// baton in front of `n`: `nginx_keys` go to `[services.web.nginx]`,
/// `switch_keys` to `[services.web.switch]`.
fn nginx_baton(n: &Nginx, nginx_keys: &str, switch_keys: &str) -> Baton {
    let args = nginx_args(&n.dir);
    let command = |words: &[&str]| {
        let argv: Vec<String> = words
            .iter()
            .map(|w| w.to_string())
            .chain(args.iter().cloned())
            .collect();
        toml_array(&argv)
    };
    Baton::new(&format!(
        "[services.web]\ncommand = {app}\ntraffic = \"nginx\"\ninstances = 2\n\
         [services.web.nginx]\nupstream_file = \"{d}/web.conf\"\npid_file = \"{d}/nginx.pid\"\n\
         test = {test}\nreload = {reload}\n{nginx_keys}\n\
         [services.web.health]\ninterval = \"100ms\"\n\
         [services.web.switch]\n{switch_keys}\n",
        app = sample_app(&[]),
        d = n.dir.display(),
        test = command(&["nginx", "-t", "-q"]),
        reload = command(&["nginx", "-s", "reload"]),
        nginx_keys = nginx_keys.replace("DIR", &n.dir.display().to_string()),
    ))
}

/// A test's nginx proxying `location`, and baton driving it (`nginx_keys`,
/// `switch_keys` as for [`nginx_baton`]) with v1 deployed. Dropped in
/// reverse: baton, nginx, then their directory.
fn nginx_with_v1(
    location: &str,
    nginx_keys: &str,
    switch_keys: &str,
) -> (tempfile::TempDir, Nginx, Baton) {
    let dir = tempfile::tempdir().unwrap();
    let n = Nginx::start(dir.path(), location);
    let mut b = nginx_baton(&n, nginx_keys, switch_keys);
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    (dir, n, b)
}

const QUICK_SWITCH: &str = "drain_timeout = \"5s\"\nkeep_previous = \"1s\"";

fn versions(from: u32, to: u32) -> Vec<String> {
    (from..=to).map(|i| format!("v{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switches_through_nginx_lose_nothing_with_the_location_baton_renders() {
    let (_dir, n, b) = nginx_with_v1(
        RENDERED_LOCATION,
        "location_file = \"DIR/location.conf\"",
        QUICK_SWITCH,
    );
    let location = read(&n.dir.join("location.conf"));
    assert!(location.contains("keepalive_timeout 0s;"), "{location}");
    let (_, body) = baton_loadgen::get_once(&n.url(), None).await.unwrap();
    assert_eq!(body.trim(), "version=v1");

    // The zero-loss scenario, 20 switches: each one an nginx reload.
    let versions = versions(2, 21);
    let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
    deploys_under_load_at(&b, &n.url(), "web", &versions).await;

    // status shows what nginx runs, beside what baton set.
    let live = active_addrs(&b.status("web"));
    wait_until(
        "status shows nginx's servers",
        Duration::from_secs(10),
        || {
            let report = &b.status("web")["traffic"];
            let servers: Vec<String> = report["servers"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|s| s["addr"].as_str().unwrap_or("").to_string())
                        .collect()
                })
                .unwrap_or_default();
            report["backend"] == "nginx web"
                && report["differences"]
                    .as_array()
                    .is_some_and(|d| d.is_empty())
                && servers.len() == 2
                && servers.iter().all(|s| live.contains(s))
        },
    );
}

/// The figures the README quotes: what nginx loses with keep-alive toward
/// clients, through baton's switch and through a script that rewrites the
/// upstream and reloads, measured in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_nginx_loses_with_client_keep_alive_is_measured_beside_the_scripts() {
    let versions = versions(2, 21);
    let versions: Vec<&str> = versions.iter().map(String::as_str).collect();

    let dir = tempfile::tempdir().unwrap();
    let script =
        std::thread::scope(|s| s.spawn(|| RewriteAndReload::start(dir.path())).join()).unwrap();
    let url = script.nginx.url();
    let script = std::sync::Mutex::new(script);
    let scripted = measure_switches_under_load(&url, &versions, |version: String| {
        // The script blocks (as scripts do), on a thread of its own.
        tokio::task::block_in_place(|| {
            std::thread::scope(|s| s.spawn(|| script.lock().unwrap().switch(&version)).join())
        })
        .unwrap();
        std::future::ready(())
    })
    .await;
    drop(script);

    let (_dir, n, b) = nginx_with_v1(OWN_LOCATION, "", QUICK_SWITCH);
    let baton = measure_deploys_under_load(&b, &n.url(), "web", &versions).await;

    let total = |run: &UnderLoad| run.stats.iter().map(|s| s.sent).sum::<u64>();
    eprintln!(
        "nginx, 20 switches under 64 keep-alive clients (half POST):\n\
         \x20 a script's rewrite and reload: lost {} of {}\n\
         \x20 baton's switch, keep-alive toward clients: lost {} of {}",
        scripted.lost(),
        total(&scripted),
        baton.lost(),
        total(&baton),
    );
    // The measurement sees what a reload loses; the zero of the test above
    // is the rendered location's doing.
    assert!(scripted.lost() > 0, "{:?}", scripted.stats);
    assert!(baton.lost() > 0, "{:?}", baton.stats);
}

/// The write-ups' blue-green script, done carefully: start the new version
/// on a port of its own, wait for it, point nginx at it (the upstream, as
/// baton does, so that both keep connections to the app alive), reload
/// nginx, wait until the new version answers through nginx and the old
/// workers are gone, stop the old version.
struct RewriteAndReload {
    nginx: Nginx,
    app: App,
}

/// A sample app the script started, ended when dropped.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        terminate(&mut self.0);
    }
}

impl RewriteAndReload {
    fn start(dir: &Path) -> Self {
        let nginx = Nginx::start(dir, OWN_LOCATION);
        let app = Self::app(dir, "v1");
        nginx.reload();
        wait_until("v1 through nginx", Duration::from_secs(10), || {
            get(&nginx.url()).1.trim() == "version=v1"
        });
        Self { nginx, app }
    }

    /// Starts `version` and points the upstream at it.
    fn app(dir: &Path, version: &str) -> App {
        let port = free_port();
        let child = Command::new(BATON)
            .args([
                "sample-app",
                "--port",
                &port.to_string(),
                "--version",
                version,
            ])
            .stdout(Stdio::null())
            .spawn()
            .map(App)
            .unwrap();
        let url = format!("http://127.0.0.1:{port}/");
        wait_until("the new version", Duration::from_secs(10), || {
            get(&url).1.trim() == format!("version={version}")
        });
        std::fs::write(
            dir.join("web.conf"),
            format!("upstream web {{ server 127.0.0.1:{port}; keepalive 32; }}\n"),
        )
        .unwrap();
        child
    }

    fn switch(&mut self, version: &str) {
        let new = Self::app(&self.nginx.dir, version);
        let old: Vec<u32> = self.nginx.workers().iter().map(|(pid, _)| *pid).collect();
        self.nginx.reload();
        wait_until(
            "the new version through nginx",
            Duration::from_secs(10),
            || get(&self.nginx.url()).1.trim() == format!("version={version}"),
        );
        // A careful script: the old version is stopped only once nginx's
        // old workers have finished with it, so what is lost is the reload's.
        wait_until("nginx's old workers", Duration::from_secs(10), || {
            let now = self.nginx.workers();
            !old.iter().any(|pid| now.iter().any(|(p, _)| p == pid))
        });
        // `docker stop`: SIGTERM, and the app finishes what it holds.
        drop(std::mem::replace(&mut self.app, new));
    }
}

#[test]
fn nginx_is_watched_and_what_baton_wrote_is_put_back() {
    let (_dir, n, b) = nginx_with_v1(OWN_LOCATION, "", QUICK_SWITCH);

    // Someone points the upstream elsewhere by hand and reloads.
    std::fs::write(
        n.dir.join("web.conf"),
        "upstream web { server 127.0.0.1:9; }\n",
    )
    .unwrap();
    n.reload();
    wait_until(
        "baton puts its upstream back",
        Duration::from_secs(15),
        || {
            let report = &b.status("web")["traffic"];
            report["restored"]
                .as_str()
                .is_some_and(|r| r.contains("restored after") && r.contains("127.0.0.1:9"))
                && get(&n.url()).1.trim() == "version=v1"
        },
    );
    let upstream = read(&n.dir.join("web.conf"));
    assert!(!upstream.contains("127.0.0.1:9;"), "{upstream}");
}

#[test]
fn a_stopped_nginx_is_reported_and_finds_baton_s_upstream_when_it_starts() {
    let (_dir, n, b) = nginx_with_v1(OWN_LOCATION, "", QUICK_SWITCH);
    let upstream_file = n.dir.join("web.conf");
    let written = read(&upstream_file);

    let n = n.restart(|| {
        wait_until(
            "status reports nginx stopped",
            Duration::from_secs(10),
            || {
                let report = &b.status("web")["traffic"];
                report["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("nginx is not running"))
            },
        );
        // Nothing is rewritten or reloaded while it is down.
        assert_eq!(read(&upstream_file), written);
    });
    wait_until(
        "nginx serves v1 again, as baton set it",
        Duration::from_secs(10),
        || {
            let report = &b.status("web")["traffic"];
            report["error"].is_null()
                && report["differences"]
                    .as_array()
                    .is_some_and(|d| d.is_empty())
                && get(&n.url()).1.trim() == "version=v1"
        },
    );
    assert!(
        b.status("web")["traffic"]["restored"].is_null(),
        "nothing needed restoring"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_drain_ends_the_workers_a_reload_retired_at_drain_timeout() {
    // The old release stays up long after the drain, so only the drain
    // can end the request it serves.
    let (_dir, n, b) = nginx_with_v1(
        OWN_LOCATION,
        "",
        "drain_timeout = \"1s\"\nkeep_previous = \"60s\"",
    );

    // A request v1 takes 30 s to answer, held by nginx's current worker,
    // which the next deploy's reload retires (the deploy's health checks
    // come first, so the request is there long before).
    let slow = format!("{}slow?ms=30000", n.url());
    let sent = std::time::Instant::now();
    let held = tokio::spawn(async move { baton_loadgen::get_once(&slow, None).await });
    cli_async(&b, &["deploy", "web", "v2"]).await;
    wait_until(
        "the retired worker is ended",
        Duration::from_secs(10),
        || n.retired_workers() == 0,
    );
    let answer = held.await.unwrap();
    assert!(
        sent.elapsed() < Duration::from_secs(25) && !matches!(answer, Ok((200, _))),
        "the held request was cut at the drain timeout, not answered: {answer:?}"
    );
    let (_, body) = baton_loadgen::get_once(&n.url(), None).await.unwrap();
    assert_eq!(body.trim(), "version=v2");
}

#[test]
fn a_config_nginx_refuses_fails_the_deploy_and_changes_nothing() {
    let (_dir, n, b) = nginx_with_v1(OWN_LOCATION, "", QUICK_SWITCH);
    let before = std::fs::read_to_string(n.dir.join("web.conf")).unwrap();

    // Someone leaves a broken line in the config nginx would load next.
    std::fs::write(n.dir.join("extra.conf"), "no_such_directive on;\n").unwrap();
    let out = b.cli(&["deploy", "web", "v2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown directive \"no_such_directive\""),
        "nginx's own words: {err}"
    );
    let after = std::fs::read_to_string(n.dir.join("web.conf")).unwrap();
    assert_eq!(after, before, "the upstream file was put back");
    assert_eq!(get(&n.url()).1.trim(), "version=v1");
    assert!(b.app_pids("v2").is_empty(), "the candidate was stopped");
}
