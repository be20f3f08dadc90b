//! Canary rollouts through the real binary: automatic rollback of a
//! candidate that errs, promotion of a healthy one, inconclusive intervals,
//! the split's accuracy, sticky users, X-Baton-Color previews and /metrics.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

fn canary_status(b: &Baton) -> serde_json::Value {
    b.status("web")["deploy"]["canary"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_answering_five_percent_errors_is_rolled_back() {
    let (mut b, _) = canary_baton(Setup {
        steps: "steps = [ { weight = 5, pause = \"1m\" }, { weight = 50, pause = \"1m\" } ]",
        analysis: "interval = \"1s\"\nmin_requests = 20\nfailure_limit = 2",
        ..Setup::default()
    });
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let load = keep_alive_load(&b, 8);

    let started = Instant::now();
    let out = tokio::task::block_in_place(|| b.cli(&["deploy", "web", "bad"]));
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("analysis failed 2 time(s)") && stderr.contains("error_rate"),
        "the failure names the metric: {stderr}"
    );
    assert!(stderr.contains("step 1/2: 5%"), "{stderr}");
    assert!(!stderr.contains("step 2/2"), "never went past 5%: {stderr}");
    assert!(
        took < Duration::from_secs(30),
        "rolled back within two intervals, took {took:?}"
    );

    let during = load.take_phase();
    assert!(
        during.non_2xx > 0,
        "the candidate took some traffic: {during:?}"
    );
    let candidate = during.non_2xx + during.versions.get("bad").copied().unwrap_or(0);
    assert!(
        during.non_2xx <= candidate && candidate * 100 <= during.sent * 8,
        "errors stay within the candidate's 5% share: {during:?}"
    );

    // Weight back to 0: everything goes to v1 from now on.
    let status = b.status("web");
    assert_eq!(status["active"]["version"], "v1", "{status}");
    assert!(status["deploy"].is_null(), "{status}");
    let seen = load.snapshot().sent;
    wait_until("200 more requests", Duration::from_secs(20), || {
        load.snapshot().sent > seen + 200
    });
    let after = load.take_phase();
    load.stop().await;
    assert_eq!(after.failed(), 0, "no error after the rollback: {after:?}");
    assert_eq!(
        after.versions.keys().collect::<Vec<_>>(),
        ["v1"],
        "only v1 serves after the rollback: {after:?}"
    );
    let history = b.history("web");
    assert_eq!(history[0]["phase"], "failed", "{history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_goes_through_every_step_and_is_promoted() {
    // Blue-green by default here; `--canary` asks for the rollout.
    let (mut b, metrics) = canary_baton(Setup {
        steps: "steps = [ { weight = 5, pause = \"1s\" }, { weight = 25, pause = \"1s\" }, { weight = 50, pause = \"1s\" } ]",
        analysis: "interval = \"500ms\"\nmin_requests = 5",
        blue_green: true,
        ..Setup::default()
    });
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let load = keep_alive_load(&b, 8);

    let out = tokio::task::block_in_place(|| b.cli(&["deploy", "web", "v2", "--canary"]));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", b.serve_log());
    for line in [
        "step 1/3: 5%",
        "step 2/3: 25%",
        "step 3/3: 50%",
        "switched: v2 (green) is live",
    ] {
        assert!(stderr.contains(line), "{line:?} missing from:\n{stderr}");
    }
    let (_, during) = tokio::task::block_in_place(|| get(&metrics));
    let open = during
        .lines()
        .find_map(|l| l.strip_prefix("baton_client_connections "))
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(open, Some(8), "the load's 8 connections are open: {during}");
    let stats = load.stop().await;
    assert_eq!(
        stats.failed(),
        0,
        "no request lost during the rollout: {stats:?}"
    );
    assert!(
        stats.versions.get("v1").is_some_and(|&n| n > 0),
        "{stats:?}"
    );
    assert!(
        stats.versions.get("v2").is_some_and(|&n| n > 0),
        "{stats:?}"
    );
    assert_eq!(b.status("web")["active"]["version"], "v2");

    let (code, metrics) = tokio::task::block_in_place(|| get(&metrics));
    assert_eq!(code, 200);
    let served = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "baton_requests_total{service=\"web\",color=\"green\",version=\"v2\",code=\"2xx\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(served.is_some_and(|n| n > 0), "{metrics}");
    assert!(
        metrics.contains("baton_deploys_total{service=\"web\",kind=\"deploy\",result=\"done\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("baton_switch_duration_seconds_count{service=\"web\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("baton_request_duration_seconds_bucket{service=\"web\",color=\"green\",version=\"v2\",le=\"+Inf\"}"));
}

#[test]
fn too_little_traffic_is_inconclusive_never_a_pass() {
    let (mut b, _) = canary_baton(Setup {
        steps: "steps = [ { weight = 10, pause = \"200ms\" } ]",
        analysis: "interval = \"300ms\"\nmin_requests = 50\ninconclusive = \"pause\"",
        ..Setup::default()
    });
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let deploy = b.spawn_cli(&["deploy", "web", "v2"]);

    wait_until("the rollout to pause", Duration::from_secs(30), || {
        canary_status(&b)["paused"] == true
    });
    let canary = canary_status(&b);
    let reason = canary["paused_because"].as_str().unwrap_or_default();
    assert!(reason.contains("min_requests 50"), "{canary}");
    assert_eq!(canary["analyses"][0]["verdict"], "inconclusive", "{canary}");
    assert_eq!(canary["weight"], 1000, "{canary}");
    // Its pause is long over, yet it holds: no silent pass.
    wait_until(
        "three inconclusive intervals",
        Duration::from_secs(30),
        || {
            canary_status(&b)["analyses"]
                .as_array()
                .is_some_and(|a| a.len() >= 3)
        },
    );
    let status = b.status("web");
    assert_eq!(status["deploy"]["phase"], "canary", "{status}");
    assert_eq!(status["active"]["version"], "v1", "{status}");
    let shown = b.ok(&["status", "web"]);
    assert!(
        shown.contains("canary    step 1/1 at 10%, 0/2 failed intervals, paused: inconclusive"),
        "{shown}"
    );

    b.ok(&["promote", "web", "--full"]);
    let out = wait_child("the promoted deploy", deploy, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(b.status("web")["active"]["version"], "v2");
    let out = b.cli(&["promote", "web"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no canary rollout is under way"));
}

#[test]
fn inconclusive_as_failure_rolls_back() {
    let (mut b, _) = canary_baton(Setup {
        steps: "steps = [ { weight = 10, pause = \"200ms\" } ]",
        analysis:
            "interval = \"300ms\"\nmin_requests = 50\ninconclusive = \"fail\"\nfailure_limit = 2",
        ..Setup::default()
    });
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let out = b.cli(&["deploy", "web", "v2"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("fewer than min_requests 50"), "{stderr}");
    assert_eq!(b.status("web")["active"]["version"], "v1");
}

/// A keep-alive HTTP/1.1 connection that sends one request at a time.
struct Client {
    reader: BufReader<TcpStream>,
}

/// One answer: status, Set-Cookie values, body.
struct Answer {
    status: u16,
    cookies: Vec<String>,
    body: String,
}

impl Answer {
    fn version(&self) -> &str {
        self.body.trim().trim_start_matches("version=")
    }
}

impl Client {
    fn new(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    fn get(&mut self, headers: &str) -> Answer {
        let req = format!("GET / HTTP/1.1\r\nhost: web\r\n{headers}\r\n");
        self.reader.get_mut().write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (mut length, mut cookies) = (0, Vec::new());
        loop {
            line.clear();
            self.reader.read_line(&mut line).unwrap();
            let Some((name, value)) = line.trim_end().split_once(':') else {
                break;
            };
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "set-cookie" => cookies.push(value.trim().to_string()),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        Answer {
            status,
            cookies,
            body: text(&body),
        }
    }
}

/// Starts `b` with v1 live and a rollout of v2 at its first step; the
/// running `deploy`.
fn rollout_at_step_one(b: &mut Baton) -> std::process::Child {
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let deploy = b.spawn_cli(&["deploy", "web", "v2"]);
    wait_until("step 1", Duration::from_secs(30), || {
        canary_status(b)["step"] == 1
    });
    deploy
}

/// `name=value` of a Set-Cookie value.
fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

#[test]
fn the_split_is_accurate_and_each_user_sees_one_version() {
    let (mut b, _) = canary_baton(Setup {
        steps: "steps = [ { weight = 5, pause = \"forever\" }, { weight = 25, pause = \"forever\" }, { weight = 50, pause = \"forever\" } ]",
        canary: "sticky = \"cookie\"",
        analysis: "interval = \"1s\"\nmin_requests = 0",
        ..Setup::default()
    });
    let deploy = rollout_at_step_one(&mut b);

    // 20,000 distinct users: the candidate's share is within 4-6%.
    let mut client = Client::new(b.port);
    let mut candidate = 0;
    for _ in 0..20_000 {
        let answer = client.get("");
        assert_eq!(answer.status, 200);
        assert!(
            answer.cookies.iter().any(|c| c.starts_with("baton-web=")),
            "a new user gets its cookie"
        );
        if answer.version() == "v2" {
            candidate += 1;
        }
    }
    assert!(
        (800..=1200).contains(&candidate),
        "{candidate} of 20000 on the candidate at 5%"
    );

    // 1,000 users, each with its own cookie, see one version throughout.
    let mut users: Vec<(String, String)> = (0..1000)
        .map(|_| {
            let a = client.get("");
            (pair(&a.cookies[0]), a.version().to_string())
        })
        .collect();
    for step in [2, 3] {
        b.ok(&["promote", "web"]);
        wait_until("the next step", Duration::from_secs(30), || {
            canary_status(&b)["step"] == step
        });
        for (cookie, version) in &mut users {
            let a = client.get(&format!("cookie: other=1; {cookie}\r\n"));
            assert_eq!(
                a.version(),
                version,
                "user {cookie} changed version at step {step}"
            );
            assert!(a.cookies.is_empty(), "a known user gets no new cookie");
        }
    }
    let on_candidate = users.iter().filter(|(_, v)| v == "v2").count();
    assert!(
        (20..=90).contains(&on_candidate),
        "{on_candidate} of 1000 users on the candidate"
    );

    b.ok(&["promote", "web", "--full"]);
    let out = wait_child("the deploy", deploy, Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(client.get("").version(), "v2");
}

#[test]
fn x_baton_color_reaches_each_color_before_and_during_a_rollout() {
    // The smoke test waits for the file `go`: the test looks in meanwhile.
    let (mut b, _) = canary_baton(Setup {
        steps: "steps = [ { weight = 5, pause = \"forever\" } ]",
        analysis: "interval = \"1s\"",
        switch: "smoke = [\"sh\", \"-c\", \"while [ ! -e go ]; do sleep 0.05; done\"]",
        ..Setup::default()
    });
    b.start();
    std::fs::write(b.path("go"), "").unwrap();
    b.ok(&["deploy", "web", "v1"]);
    std::fs::remove_file(b.path("go")).unwrap();
    let deploy = b.spawn_cli(&["deploy", "web", "v2"]);
    wait_until("the smoke test", Duration::from_secs(30), || {
        b.status("web")["deploy"]["phase"] == "smoke"
    });

    let mut client = Client::new(b.port);
    let check = |client: &mut Client| {
        assert_eq!(
            client.get("").version(),
            "v1",
            "users stay on the live release"
        );
        let green = client.get("x-baton-color: green\r\n");
        assert_eq!(green.version(), "v2");
        assert_eq!(green.cookies, ["baton-color=green; Path=/; SameSite=Lax"]);
        assert_eq!(client.get("cookie: baton-color=green\r\n").version(), "v2");
        assert_eq!(client.get("x-baton-color: blue\r\n").version(), "v1");
        assert_eq!(client.get("x-baton-color: purple\r\n").status, 400);
    };
    check(&mut client);

    std::fs::write(b.path("go"), "").unwrap();
    wait_until("step 1", Duration::from_secs(30), || {
        canary_status(&b)["step"] == 1
    });
    let mut client = Client::new(b.port);
    for _ in 0..20 {
        assert_eq!(client.get("x-baton-color: blue\r\n").version(), "v1");
        assert_eq!(client.get("x-baton-color: green\r\n").version(), "v2");
    }

    b.ok(&["abort", "web"]);
    let out = wait_child("the aborted deploy", deploy, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("aborted by request"),
        "{}",
        text(&out.stderr)
    );
    let mut client = Client::new(b.port);
    assert_eq!(
        client.get("x-baton-color: green\r\n").status,
        503,
        "green is gone"
    );
    // A stale color cookie falls back to the live release.
    assert_eq!(client.get("cookie: baton-color=green\r\n").version(), "v1");
}

#[test]
fn a_restart_resumes_the_rollout_at_its_step_and_weight() {
    let (mut b, _) = canary_baton(Setup {
        steps:
            "steps = [ { weight = 5, pause = \"forever\" }, { weight = 25, pause = \"forever\" } ]",
        analysis: "interval = \"500ms\"\ninconclusive = \"continue\"",
        ..Setup::default()
    });
    let deploy = rollout_at_step_one(&mut b);
    b.ok(&["promote", "web"]);
    wait_until("step 2", Duration::from_secs(30), || {
        canary_status(&b)["step"] == 2
    });
    let candidate = b.app_pids("v2");

    b.kill9();
    let lost = wait_child("the deploy's client", deploy, Duration::from_secs(30));
    assert_eq!(lost.status.code(), Some(3), "{}", text(&lost.stderr));
    b.start();
    wait_until("the resumed rollout", Duration::from_secs(30), || {
        let canary = canary_status(&b);
        canary["step"] == 2 && canary["weight"] == 2500
    });
    assert_eq!(
        b.app_pids("v2"),
        candidate,
        "the candidate was adopted, not restarted"
    );
    let status = b.status("web");
    assert_eq!(status["active"]["version"], "v1", "{status}");
    assert_eq!(status["deploy"]["phase"], "canary", "{status}");
    let mut client = Client::new(b.port);
    let on_candidate = (0..400)
        .filter(|_| client.get("").version() == "v2")
        .count();
    assert!(
        (40..=180).contains(&on_candidate),
        "{on_candidate} of 400 at 25%"
    );

    b.ok(&["promote", "web", "--full"]);
    wait_until("the promotion", Duration::from_secs(30), || {
        b.status("web")["active"]["version"] == "v2"
    });
    assert_eq!(b.history("web")[0]["phase"], "done");
}

#[test]
fn a_rollout_whose_deadline_passed_while_baton_was_down_is_rolled_back() {
    let (mut b, _) = canary_baton(Setup {
        steps: "steps = [ { weight = 5, pause = \"forever\" } ]",
        canary: "deadline = \"3s\"",
        analysis: "interval = \"500ms\"\ninconclusive = \"continue\"",
        ..Setup::default()
    });
    let deploy = rollout_at_step_one(&mut b);
    let candidate = b.app_pids("v2");
    let deadline = Instant::now() + Duration::from_secs(3);
    b.kill9();
    wait_child("the deploy's client", deploy, Duration::from_secs(30));
    wait_until("the deadline to pass", Duration::from_secs(10), || {
        Instant::now() > deadline
    });

    b.start();
    let status = b.status("web");
    assert_eq!(status["active"]["version"], "v1", "{status}");
    assert!(status["deploy"].is_null(), "{status}");
    let last = &b.history("web")[0];
    assert_eq!(last["phase"], "failed", "{last}");
    assert!(
        last["error"]
            .as_str()
            .unwrap_or_default()
            .contains("deadline passed"),
        "{last}"
    );
    assert!(
        candidate.iter().all(|&pid| !pid_alive(pid)),
        "the candidate is stopped"
    );
    let mut client = Client::new(b.port);
    assert!((0..100).all(|_| client.get("").version() == "v1"));
}

#[test]
fn shutdown_with_stop_apps_during_a_rollout_rolls_it_back_and_stops_everything() {
    let (mut b, _) = canary_baton(Setup {
        steps: "steps = [ { weight = 5, pause = \"forever\" } ]",
        analysis: "interval = \"500ms\"\ninconclusive = \"continue\"",
        ..Setup::default()
    });
    let deploy = rollout_at_step_one(&mut b);
    b.ok(&["shutdown", "--stop-apps"]);
    let out = wait_child("the rolled-back deploy", deploy, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    wait_until("every app to stop", Duration::from_secs(30), || {
        b.app_pids("v1").is_empty() && b.app_pids("v2").is_empty()
    });
}
