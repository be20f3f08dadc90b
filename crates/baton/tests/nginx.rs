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

impl Nginx {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        // Until baton's first switch, the upstream leads nowhere.
        std::fs::write(
            dir.join("web.conf"),
            "upstream web { server 127.0.0.1:9 down; }\n",
        )
        .unwrap();
        std::fs::write(dir.join("extra.conf"), "").unwrap();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                 events {{}}\n\
                 http {{\n  access_log off;\n  include {d}/web.conf;\n  include {d}/extra.conf;\n\
                   server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://web;\n\
                       proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
                d = dir.display(),
            ),
        )
        .unwrap();
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

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

fn nginx_baton(n: &Nginx) -> Baton {
    let args = nginx_args(&n.dir);
    let test: Vec<String> = ["nginx".to_string(), "-t".into(), "-q".into()]
        .into_iter()
        .chain(args.iter().cloned())
        .collect();
    let reload: Vec<String> = ["nginx".to_string(), "-s".into(), "reload".into()]
        .into_iter()
        .chain(args.iter().cloned())
        .collect();
    Baton::new(&format!(
        "[services.web]\ncommand = {app}\ntraffic = \"nginx\"\ninstances = 2\n\
         [services.web.nginx]\nupstream_file = \"{d}/web.conf\"\npid_file = \"{d}/nginx.pid\"\n\
         test = {test}\nreload = {reload}\n\
         [services.web.health]\ninterval = \"100ms\"\n\
         [services.web.switch]\ndrain_timeout = \"5s\"\nkeep_previous = \"1s\"\n",
        app = sample_app(&[]),
        d = n.dir.display(),
        test = toml_array(&test),
        reload = toml_array(&reload),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploys_through_nginx_are_measured() {
    let dir = tempfile::tempdir().unwrap();
    let n = Nginx::start(dir.path());
    let mut b = nginx_baton(&n);
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let upstream = std::fs::read_to_string(n.dir.join("web.conf")).unwrap();
    assert!(upstream.contains("upstream web {"), "{upstream}");
    let (_, body) = baton_loadgen::get_once(&n.url(), None).await.unwrap();
    assert_eq!(body.trim(), "version=v1");

    // The zero-loss scenario, 20 switches: each is an nginx reload.
    let versions: Vec<String> = (2..=21).map(|i| format!("v{i}")).collect();
    let versions: Vec<&str> = versions.iter().map(String::as_str).collect();
    let run = measure_deploys_under_load(&b, &n.url(), "web", &versions).await;
    let lost = run.lost();
    eprintln!("nginx, 20 switches under 64 keep-alive clients: lost {lost}");
    // The write-ups' rewrite-and-reload lost 566 in 20 switches on this
    // machine; what baton's switch through nginx loses is printed above.
    assert!(lost < 566, "lost {lost}");
}

#[test]
fn a_config_nginx_refuses_fails_the_deploy_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = Nginx::start(dir.path());
    let mut b = nginx_baton(&n);
    b.start();
    b.ok(&["deploy", "web", "v1"]);
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
