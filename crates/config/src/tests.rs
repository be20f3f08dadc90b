use super::*;

const FULL: &str = r#"
[proxy]
listen = ["127.0.0.1:8080"]

[control]
socket = ".baton/baton.sock"

[state]
dir = ".baton"

[services.web]
hosts = ["*"]
runtime = "process"
command = ["python3", "app.py", "--port", "{port}"]
env = { APP_VERSION = "{version}" }
workdir = "."
instances = 2

[services.web.health]
path = "/healthz"
interval = "250ms"
timeout = "1s"
healthy_threshold = 2
unhealthy_threshold = 3
deadline = "60s"

[services.web.switch]
drain_timeout = "30s"
keep_previous = "5m"
smoke = ["./smoke.sh", "{preview_url}"]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/app/baton.toml"), text)
}

fn error(text: &str) -> String {
    parse(text)
        .expect_err("config should be rejected")
        .to_string()
}

#[test]
fn contract_example_parses() {
    let c = parse(FULL).unwrap();
    assert_eq!(c.control_socket, Path::new("/etc/app/.baton/baton.sock"));
    assert_eq!(c.state_dir, Path::new("/etc/app/.baton"));
    let web = &c.services["web"];
    assert_eq!(web.instances, 2);
    assert_eq!(web.hosts, vec![HostPattern::Default]);
    assert_eq!(web.health.interval, Duration::from_millis(250));
    assert_eq!(web.switch.keep_previous, Duration::from_secs(300));
    let vars = Vars {
        port: Some(4000),
        version: "v2",
        ..Vars::default()
    };
    let argv: Vec<_> = web.command.iter().map(|t| t.render(&vars)).collect();
    assert_eq!(argv, ["python3", "app.py", "--port", "4000"]);
    assert_eq!(web.env["APP_VERSION"].render(&vars), "v2");
}

#[test]
fn malformed_toml_names_line_and_column() {
    let e = error("[proxy]\nlisten = [\"127.0.0.1:8080\" \"x\"]\n");
    assert!(e.starts_with("/etc/app/baton.toml:2:"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
}

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let e = error("[services.web]\ncomand = [\"x\"]\n");
    assert!(e.starts_with("/etc/app/baton.toml:2:1:"), "{e}");
    assert!(e.contains("comand"), "{e}");
}

#[test]
fn service_without_command_is_rejected() {
    let e = error("[services.web]\nhosts = [\"*\"]\n");
    assert!(e.contains("missing field `command`"), "{e}");
    assert!(
        e.starts_with("/etc/app/baton.toml:1:"),
        "names the table's line: {e}"
    );
    let e = error("[services.web]\ncommand = []\n");
    assert!(e.contains("services.web.command"), "{e}");
}

#[test]
fn unknown_placeholder_is_rejected() {
    let e = error("[services.web]\ncommand = [\"app\", \"{prot}\"]\n");
    assert!(
        e.contains("services.web.command") && e.contains("{prot}"),
        "{e}"
    );
}

#[test]
fn bad_duration_names_line() {
    let e =
        error("[services.web]\ncommand = [\"app\"]\n[services.web.health]\ninterval = \"fast\"\n");
    assert!(e.starts_with("/etc/app/baton.toml:4:"), "{e}");
    assert!(e.contains("fast"), "{e}");
}

#[test]
fn host_claimed_twice_is_rejected() {
    let e = error("[services.a]\ncommand = [\"a\"]\n[services.b]\ncommand = [\"b\"]\n");
    assert!(e.contains("services.b.hosts") && e.contains("\"a\""), "{e}");
}

#[test]
fn host_patterns_parse() {
    assert_eq!(
        HostPattern::parse("*.Example.com").unwrap(),
        HostPattern::Suffix(".example.com".into())
    );
    assert_eq!(
        HostPattern::parse("api.example.com").unwrap(),
        HostPattern::Exact("api.example.com".into())
    );
    assert!(HostPattern::parse("a..b").is_err());
    assert!(HostPattern::parse("*.").is_err());
}

#[test]
fn templates_escape_braces() {
    let t = Template::new("{{literal}} {service}-{color}", INSTANCE_VARS_FOR_TEST).unwrap();
    let vars = Vars {
        service: "web",
        color: "blue",
        ..Vars::default()
    };
    assert_eq!(t.render(&vars), "{literal} web-blue");
    assert!(Template::new("{unclosed", INSTANCE_VARS_FOR_TEST).is_err());
}

const INSTANCE_VARS_FOR_TEST: &[&str] = crate::template::INSTANCE_VARS;

#[test]
fn zero_instances_rejected() {
    let e = error("[services.web]\ncommand = [\"app\"]\ninstances = 0\n");
    assert!(e.contains("services.web.instances"), "{e}");
}

// --- strategy, canary, metrics ---

use baton_core::{Inconclusive, Pause, Plan, Step, Sticky, Weight};

/// A `web` service with `extra` appended (tables after `[services.web]`).
fn web(extra: &str) -> Result<ServiceConfig, ConfigError> {
    parse(&format!("[services.web]\ncommand = [\"app\"]\n{extra}\n"))
        .map(|mut c| c.services.remove("web").unwrap())
}

fn web_error(extra: &str) -> String {
    let e = web(extra)
        .expect_err("config should be rejected")
        .to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

/// The error for `[services.web.canary]` holding `body`.
fn canary_error(body: &str) -> String {
    web_error(&format!("[services.web.canary]\n{body}"))
}

fn canary(body: &str) -> CanaryConfig {
    web(&format!("[services.web.canary]\n{body}"))
        .unwrap()
        .canary
}

fn pct(p: f64) -> Weight {
    Weight::from_percent(p).unwrap()
}

fn step(p: f64, pause: Pause) -> Step {
    Step {
        weight: pct(p),
        pause,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const PREFIX: &str = "/etc/app/baton.toml: ";

const CANARY_CONTRACT: &str = r#"
[metrics]
listen = "127.0.0.1:9180"

[services.web]
command = ["app"]
strategy = "canary"

[services.web.canary]
steps = [ { weight = 5, pause = "30s" }, { weight = 25, pause = "1m" }, { weight = 50, pause = "1m" } ]
sticky = "cookie"
deadline = "1h"

[services.web.canary.analysis]
interval = "10s"
min_requests = 200
max_error_rate = 0.01
max_p99 = "500ms"
max_p99_ratio = 1.5
failure_limit = 2
inconclusive = "pause"

[[services.web.canary.analysis.prometheus]]
server = "http://127.0.0.1:9090"
query = "sum(rate(errors[1m]))"
max = 0.01

[[services.web.canary.analysis.prometheus]]
server = "http://prom.internal:9090/"
query = "up"
min = 1

[[services.web.canary.analysis.webhook]]
url = "http://127.0.0.1:8000/check"
timeout = "5s"

[[services.web.canary.analysis.webhook]]
url = "http://127.0.0.1:8000/other"
"#;

#[test]
fn canary_contract_example_parses() {
    let c = parse(CANARY_CONTRACT).unwrap();
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9180".parse().unwrap()));
    let web = &c.services["web"];
    assert_eq!(web.strategy, Strategy::Canary);
    let expected = CanaryConfig {
        plan: Plan {
            steps: vec![
                step(5.0, Pause::For(secs(30))),
                step(25.0, Pause::For(secs(60))),
                step(50.0, Pause::For(secs(60))),
            ],
            failure_limit: 2,
            inconclusive: Inconclusive::Pause,
        },
        sticky: Sticky::Cookie,
        deadline: secs(3600),
        analysis: AnalysisConfig {
            interval: secs(10),
            min_requests: 200,
            max_error_rate: Some(0.01),
            max_p99: Some(Duration::from_millis(500)),
            max_p99_ratio: Some(1.5),
            prometheus: vec![
                PrometheusCheck {
                    server: "http://127.0.0.1:9090".into(),
                    query: "sum(rate(errors[1m]))".into(),
                    max: Some(0.01),
                    min: None,
                },
                PrometheusCheck {
                    // The trailing slash goes, so the API path can be appended.
                    server: "http://prom.internal:9090".into(),
                    query: "up".into(),
                    max: None,
                    min: Some(1.0),
                },
            ],
            webhook: vec![
                WebhookCheck {
                    url: "http://127.0.0.1:8000/check".into(),
                    timeout: secs(5),
                },
                WebhookCheck {
                    url: "http://127.0.0.1:8000/other".into(),
                    timeout: secs(10),
                },
            ],
        },
    };
    assert_eq!(web.canary, expected);
}

#[test]
fn canary_defaults_when_tables_are_absent() {
    let c = parse("[services.web]\ncommand = [\"app\"]\n").unwrap();
    assert_eq!(c.metrics.listen, None);
    let web = &c.services["web"];
    assert_eq!(web.strategy, Strategy::BlueGreen);
    assert_eq!(web.canary, CanaryConfig::default());
    let d = &web.canary;
    assert_eq!(
        d.plan.steps,
        [
            step(10.0, Pause::For(secs(60))),
            step(50.0, Pause::For(secs(60)))
        ]
    );
    assert_eq!(d.plan.failure_limit, 2);
    assert_eq!(d.plan.inconclusive, Inconclusive::Pause);
    assert_eq!(d.sticky, Sticky::None);
    assert_eq!(d.deadline, secs(3600));
    let a = &d.analysis;
    assert_eq!(a.interval, secs(10));
    assert_eq!(a.min_requests, 100);
    assert_eq!(a.max_error_rate, Some(0.01));
    assert_eq!(a.max_p99, None);
    assert_eq!(a.max_p99_ratio, None);
    assert!(a.prometheus.is_empty() && a.webhook.is_empty());
    // An empty canary table, or an analysis table without the key, means the same.
    assert_eq!(canary(""), CanaryConfig::default());
    assert_eq!(
        canary("[services.web.canary.analysis]\nmin_requests = 5")
            .analysis
            .max_error_rate,
        Some(0.01)
    );
}

#[test]
fn strategy_is_blue_green_or_canary() {
    assert_eq!(
        web("strategy = \"blue-green\"").unwrap().strategy,
        Strategy::BlueGreen
    );
    assert_eq!(
        web("strategy = \"canary\"").unwrap().strategy,
        Strategy::Canary
    );
    assert_eq!(
        web_error("strategy = \"rolling\""),
        format!(
            "{PREFIX}services.web.strategy: unknown strategy \"rolling\" (expected \"blue-green\" or \"canary\")"
        )
    );
}

#[test]
fn weights_take_integers_and_floats() {
    let c = canary(
        "steps = [ { weight = 2.5, pause = \"10s\" }, { weight = 5, pause = \"10s\" }, { weight = 100, pause = \"10s\" } ]",
    );
    let bp: Vec<_> = c
        .plan
        .steps
        .iter()
        .map(|s| s.weight.basis_points())
        .collect();
    assert_eq!(bp, [250, 500, 10_000]);
}

#[test]
fn a_step_without_weight_keeps_the_previous_one() {
    let c = canary(
        "steps = [ { weight = 5, pause = \"30s\" }, { pause = \"forever\" }, { weight = 50, pause = \"1m\" }, { pause = \"2m\" } ]",
    );
    assert_eq!(
        c.plan.steps,
        [
            step(5.0, Pause::For(secs(30))),
            step(5.0, Pause::Forever),
            step(50.0, Pause::For(secs(60))),
            step(50.0, Pause::For(secs(120))),
        ]
    );
}

#[test]
fn weights_must_rise() {
    let e = canary_error(
        "steps = [ { weight = 5, pause = \"1s\" }, { weight = 25, pause = \"1s\" }, { weight = 25, pause = \"1s\" } ]",
    );
    assert_eq!(
        e,
        format!("{PREFIX}services.web.canary.steps[2].weight: must be above the previous step's 25% (weights rise)")
    );
    let e = canary_error(
        "steps = [ { weight = 50, pause = \"1s\" }, { weight = 2.5, pause = \"1s\" } ]",
    );
    assert!(
        e.contains("services.web.canary.steps[1].weight: must be above the previous step's 50%"),
        "{e}"
    );
    // A weightless step repeats the weight, so the next must still rise above it.
    let e = canary_error(
        "steps = [ { weight = 10, pause = \"1s\" }, { pause = \"1s\" }, { weight = 10, pause = \"1s\" } ]",
    );
    assert!(
        e.contains("steps[2].weight: must be above the previous step's 10%"),
        "{e}"
    );
}

#[test]
fn weights_must_be_in_range() {
    for w in ["0", "-5", "150", "100.5", "nan"] {
        let e = canary_error(&format!("steps = [ {{ weight = {w}, pause = \"1s\" }} ]"));
        assert!(
            e.contains("services.web.canary.steps[0].weight: must be a percentage above 0 and at most 100, got"),
            "{w}: {e}"
        );
    }
    let e = canary_error("steps = [ { weight = 0.001, pause = \"1s\" } ]");
    assert!(
        e.contains("services.web.canary.steps[0].weight: 0.001 is below 0.01%"),
        "{e}"
    );
}

#[test]
fn only_the_last_step_may_be_full() {
    let e = canary_error("steps = [ { weight = 100, pause = \"1s\" }, { pause = \"forever\" } ]");
    assert!(
        e.contains("services.web.canary.steps[0].weight: only the last step may be 100%"),
        "{e}"
    );
    canary("steps = [ { weight = 50, pause = \"1s\" }, { weight = 100, pause = \"forever\" } ]");
}

#[test]
fn step_shape_is_checked() {
    assert_eq!(
        canary_error("steps = []"),
        format!("{PREFIX}services.web.canary.steps: needs at least one step")
    );
    let e = canary_error("steps = [ { pause = \"forever\" } ]");
    assert!(
        e.contains("services.web.canary.steps[0].weight: the first step needs a weight"),
        "{e}"
    );
    let e =
        canary_error("steps = [ { weight = 5, pause = \"1s\" }, { weight = 10, pause = \"0s\" } ]");
    assert_eq!(
        e,
        format!(
            "{PREFIX}services.web.canary.steps[1].pause: must be longer than 0s (or \"forever\")"
        )
    );
    // Serde's errors: with the line.
    let e = canary_error("steps = [ { weight = 5, pause = \"soon\" } ]");
    assert!(e.starts_with("/etc/app/baton.toml:4:"), "{e}");
    assert!(e.contains("invalid pause \"soon\""), "{e}");
    let e = canary_error("steps = [ { weight = 5, pause = \"1s\", wieght = 6 } ]");
    assert!(e.starts_with("/etc/app/baton.toml:4:"), "{e}");
    assert!(e.contains("wieght"), "{e}");
    let e = canary_error("steps = [ { weight = 5 } ]");
    assert!(e.contains("missing field `pause`"), "{e}");
}

#[test]
fn sticky_modes() {
    assert_eq!(canary("sticky = \"cookie\"").sticky, Sticky::Cookie);
    assert_eq!(canary("sticky = \"ip\"").sticky, Sticky::Ip);
    assert_eq!(
        canary("sticky = \"header:X-User-Id\"").sticky,
        Sticky::Header("x-user-id".into())
    );
    assert_eq!(
        canary_error("sticky = \"x\""),
        format!(
            "{PREFIX}services.web.canary.sticky: unknown sticky mode \"x\" (expected \"cookie\", \"header:<name>\" or \"ip\")"
        )
    );
    for bad in ["header:", "header:X User", "header:X:Y"] {
        let e = canary_error(&format!("sticky = {bad:?}"));
        assert!(
            e.contains("services.web.canary.sticky: invalid header name"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn deadline_must_outlast_the_pauses() {
    assert_eq!(
        canary_error("deadline = \"0s\""),
        format!("{PREFIX}services.web.canary.deadline: must be longer than 0s")
    );
    let e = canary_error(
        "deadline = \"2m\"\nsteps = [ { weight = 5, pause = \"1m\" }, { weight = 50, pause = \"1m\" } ]",
    );
    assert_eq!(
        e,
        format!("{PREFIX}services.web.canary.deadline: 2m must be longer than the steps' pauses, which add up to 2m")
    );
    // The default deadline is checked too, and the message says it is the default.
    let e = canary_error("steps = [ { weight = 5, pause = \"2h\" } ]");
    assert!(
        e.contains("services.web.canary.deadline: the default 1h must be longer than the steps' pauses, which add up to 2h"),
        "{e}"
    );
    // Forever waits for a person; only the finite pauses count.
    let c = canary(
        "deadline = \"2m\"\nsteps = [ { weight = 5, pause = \"1m\" }, { pause = \"forever\" }, { weight = 50, pause = \"59s\" } ]",
    );
    assert_eq!(c.deadline, secs(120));
}

#[test]
fn analysis_limits() {
    let table = "[services.web.canary.analysis]";
    let err = |body: &str| canary_error(&format!("{table}\n{body}"));
    let ok = |body: &str| canary(&format!("{table}\n{body}")).analysis;
    let key = |k: &str| format!("{PREFIX}services.web.canary.analysis.{k}: ");
    assert_eq!(
        err("interval = \"0s\""),
        key("interval") + "must be longer than 0s"
    );
    assert_eq!(
        err("failure_limit = 0"),
        key("failure_limit") + "must be at least 1"
    );
    for bad in ["1.5", "-0.1", "2"] {
        assert!(
            err(&format!("max_error_rate = {bad}"))
                .starts_with(&(key("max_error_rate") + "must be between 0 and 1")),
            "{bad}"
        );
    }
    assert_eq!(ok("max_error_rate = 0").max_error_rate, Some(0.0));
    assert_eq!(ok("max_error_rate = 1").max_error_rate, Some(1.0));
    for bad in ["0", "-1", "inf"] {
        assert!(
            err(&format!("max_p99_ratio = {bad}"))
                .starts_with(&(key("max_p99_ratio") + "must be a number above 0")),
            "{bad}"
        );
    }
    assert_eq!(ok("max_p99_ratio = 2").max_p99_ratio, Some(2.0));
    assert_eq!(
        err("max_p99 = \"0ms\""),
        key("max_p99") + "must be longer than 0s"
    );
    assert_eq!(ok("min_requests = 0").min_requests, 0);
    let e = err("min_requests = -1");
    assert!(e.starts_with("/etc/app/baton.toml:5:"), "{e}");
    let plan = |v: &str| canary(&format!("{table}\ninconclusive = \"{v}\"")).plan;
    assert_eq!(plan("pause").inconclusive, Inconclusive::Pause);
    assert_eq!(plan("fail").inconclusive, Inconclusive::Fail);
    assert_eq!(plan("continue").inconclusive, Inconclusive::Continue);
    assert_eq!(
        canary(&format!("{table}\nfailure_limit = 5"))
            .plan
            .failure_limit,
        5
    );
    assert_eq!(
        err("inconclusive = \"retry\""),
        key("inconclusive")
            + "unknown inconclusive mode \"retry\" (expected \"pause\", \"fail\" or \"continue\")"
    );
    let e = err("max_errror_rate = 0.1");
    assert!(
        e.starts_with("/etc/app/baton.toml:5:") && e.contains("max_errror_rate"),
        "{e}"
    );
}

#[test]
fn prometheus_checks() {
    let check = |body: &str| {
        canary_error(&format!(
            "[[services.web.canary.analysis.prometheus]]\n{body}"
        ))
    };
    let key = |k: &str| format!("{PREFIX}services.web.canary.analysis.prometheus[0]{k}: ");
    let e = check("server = \"https://prom:9090\"\nquery = \"up\"\nmin = 1");
    assert!(
        e.starts_with(&key(".server")) && e.contains("https is not supported"),
        "{e}"
    );
    for bad in ["prom:9090", "http://", "ftp://prom", "http:///x"] {
        let e = check(&format!("server = {bad:?}\nquery = \"up\"\nmin = 1"));
        assert!(
            e.starts_with(&(key(".server") + "must be an http:// URL")),
            "{bad}: {e}"
        );
    }
    assert_eq!(
        check("server = \"http://prom:9090\"\nquery = \" \"\nmin = 1"),
        key(".query") + "must not be empty"
    );
    assert!(check("server = \"http://prom:9090\"\nquery = \"up\"")
        .starts_with(&(key("") + "needs max, min or both")));
    assert!(
        check("server = \"http://prom:9090\"\nquery = \"up\"\nmin = 2\nmax = 1")
            .starts_with(&(key(".min") + "2 is above max 1")),
    );
    assert!(
        check("server = \"http://prom:9090\"\nquery = \"up\"\nmax = nan")
            .starts_with(&(key(".max") + "must be a finite number"))
    );
    let e = check("query = \"up\"\nmax = 1");
    assert!(e.contains("missing field `server`"), "{e}");
    // Both bounds, equal: a value must be exactly that.
    let c = canary(
        "[[services.web.canary.analysis.prometheus]]\nserver = \"http://prom:9090//\"\nquery = \"up\"\nmin = 1\nmax = 1",
    );
    assert_eq!(c.analysis.prometheus[0].server, "http://prom:9090");
}

#[test]
fn webhook_checks() {
    let hook =
        |body: &str| canary_error(&format!("[[services.web.canary.analysis.webhook]]\n{body}"));
    let key = |k: &str| format!("{PREFIX}services.web.canary.analysis.webhook[0].{k}: ");
    let e = hook("url = \"https://hooks.example/check\"");
    assert!(
        e.starts_with(&key("url")) && e.contains("https is not supported"),
        "{e}"
    );
    assert!(
        hook("url = \"hooks.example/check\"").starts_with(&(key("url") + "must be an http:// URL"))
    );
    assert_eq!(
        hook("url = \"http://h/check\"\ntimeout = \"0s\""),
        key("timeout") + "must be longer than 0s"
    );
}

#[test]
fn metrics_listen() {
    let e = error("[metrics]\nlisten = \"localhost\"\n");
    assert!(e.starts_with("/etc/app/baton.toml:2:"), "{e}");
    let e = error("[metrics]\nlisten = \"127.0.0.1:9180\"\nport = 1\n");
    assert!(
        e.starts_with("/etc/app/baton.toml:3:") && e.contains("port"),
        "{e}"
    );
    let e =
        error("[proxy]\nlisten = [\"127.0.0.1:8080\"]\n[metrics]\nlisten = \"127.0.0.1:8080\"\n");
    assert_eq!(
        e,
        format!("{PREFIX}metrics.listen: 127.0.0.1:8080 is also in proxy.listen; the metrics need their own address")
    );
    let c = parse("[metrics]\nlisten = \"[::1]:9180\"\n").unwrap();
    assert_eq!(c.metrics.listen, Some("[::1]:9180".parse().unwrap()));
}

#[test]
fn unknown_canary_keys_are_rejected_with_their_line() {
    let e = canary_error("stikcy = \"ip\"");
    assert!(
        e.starts_with("/etc/app/baton.toml:4:") && e.contains("stikcy"),
        "{e}"
    );
    let e =
        canary_error("[[services.web.canary.analysis.webhook]]\nurl = \"http://h/\"\nretries = 3");
    assert!(
        e.starts_with("/etc/app/baton.toml:6:") && e.contains("retries"),
        "{e}"
    );
}

// --- runtimes: process and docker ---

/// The error for a `web` service made of `body` alone.
fn service_error(body: &str) -> String {
    let e = error(&format!("[services.web]\n{body}\n"));
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

fn service(body: &str) -> ServiceConfig {
    parse(&format!("[services.web]\n{body}\n"))
        .unwrap()
        .services
        .remove("web")
        .unwrap()
}

#[test]
fn docker_contract_example_parses() {
    let web = service(
        r#"runtime = "docker"
image = "registry.example.com/web:{version}"
port = 8000
env = { APP_VERSION = "{version}" }"#,
    );
    assert_eq!(web.runtime, RuntimeKind::Docker);
    assert_eq!(web.port, Some(8000));
    let vars = Vars {
        version: "v2",
        ..Vars::default()
    };
    let image = web.image.as_ref().unwrap().render(&vars);
    assert_eq!(image, "registry.example.com/web:v2");
    assert!(web.command.is_empty(), "absent: the image's own command");
    assert_eq!(web.env["APP_VERSION"].render(&vars), "v2");
}

#[test]
fn docker_command_and_port_are_optional() {
    let web = service(
        "runtime = \"docker\"\nimage = \"web:{version}\"\ncommand = [\"--port\", \"{port}\"]",
    );
    assert_eq!(web.port, None);
    let vars = Vars {
        port: Some(4000),
        ..Vars::default()
    };
    let argv: Vec<_> = web.command.iter().map(|t| t.render(&vars)).collect();
    assert_eq!(argv, ["--port", "4000"]);
}

#[test]
fn process_is_the_default_runtime() {
    let web = service("command = [\"app\"]");
    assert_eq!(web.runtime, RuntimeKind::Process);
    assert_eq!((web.image, web.port), (None, None));
    assert_eq!(web.workdir.as_str(), "/etc/app/.");
}

#[test]
fn docker_needs_an_image() {
    let e = service_error("runtime = \"docker\"");
    assert!(
        e.ends_with("services.web.image: is required with runtime = \"docker\""),
        "{e}"
    );
    let e = service_error("runtime = \"docker\"\nimage = \" \"");
    assert!(e.contains("services.web.image: must name an image"), "{e}");
    let e = service_error("runtime = \"docker\"\nimage = \"web:{tag}\"");
    assert!(
        e.contains("services.web.image") && e.contains("{tag}"),
        "{e}"
    );
}

#[test]
fn docker_refuses_workdir() {
    let e = service_error("runtime = \"docker\"\nimage = \"web\"\nworkdir = \"releases\"");
    assert!(
        e.contains("services.web.workdir: is not allowed with runtime = \"docker\""),
        "{e}"
    );
}

#[test]
fn docker_command_may_not_be_empty() {
    let e = service_error("runtime = \"docker\"\nimage = \"web\"\ncommand = []");
    assert!(
        e.contains("services.web.command: must not be empty (leave it out"),
        "{e}"
    );
}

#[test]
fn docker_port_is_checked() {
    let e = service_error("runtime = \"docker\"\nimage = \"web\"\nport = 0");
    assert!(
        e.contains("services.web.port: must be between 1 and 65535"),
        "{e}"
    );
    let e = service_error("runtime = \"docker\"\nimage = \"web\"\nport = 70000");
    assert!(e.starts_with("/etc/app/baton.toml:4:"), "{e}");
}

#[test]
fn image_and_port_are_errors_with_the_process_runtime() {
    let e = service_error("command = [\"app\"]\nimage = \"web:{version}\"");
    assert!(
        e.contains("services.web.image: is only for runtime = \"docker\""),
        "{e}"
    );
    let e = service_error("runtime = \"process\"\ncommand = [\"app\"]\nport = 8000");
    assert!(
        e.contains("services.web.port: is only for runtime = \"docker\""),
        "{e}"
    );
}

#[test]
fn unknown_runtime_is_rejected() {
    let e = service_error("runtime = \"podman\"\ncommand = [\"app\"]");
    assert!(
        e.contains(
            "services.web.runtime: unknown runtime \"podman\" (expected \"process\" or \"docker\")"
        ),
        "{e}"
    );
}

const FLEET: &str = r#"
[hosts.app1]
address = "10.77.0.2"
user = "deploy"
port = 2222
identity = "keys/id_ed25519"
known_hosts = "~/.ssh/baton_known_hosts"

[hosts.app2]
address = "app2.internal"

[services.web]
command = ["./bin/web", "--port", "{port}"]
on = ["app1", "app2"]
instances = 2
artifact = "dist/web-{version}.tar.gz"
deliver = "push"
"#;

#[test]
fn fleet_contract_example_parses() {
    let c = parse(FLEET).unwrap();
    let app1 = &c.hosts["app1"];
    assert_eq!(app1.address, "10.77.0.2");
    assert_eq!(app1.user.as_deref(), Some("deploy"));
    assert_eq!(app1.port, Some(2222));
    assert_eq!(
        app1.identity.as_deref(),
        Some(Path::new("/etc/app/keys/id_ed25519"))
    );
    // ssh expands `~` itself.
    assert_eq!(
        app1.known_hosts.as_deref(),
        Some(Path::new("~/.ssh/baton_known_hosts"))
    );
    assert_eq!(app1.dir, "baton");
    assert_eq!(c.hosts["app2"].user, None);
    let web = &c.services["web"];
    assert_eq!(web.on, ["app1", "app2"]);
    assert_eq!(web.deliver, Deliver::Push);
    let vars = Vars {
        version: "v2",
        ..Vars::default()
    };
    let artifact = web.artifact.as_ref().unwrap().render(&vars);
    assert_eq!(artifact, "/etc/app/dist/web-v2.tar.gz");
    // The workdir is the host's, not anchored to the config's directory.
    assert_eq!(web.workdir.render(&vars), ".");
}

#[test]
fn fleet_mistakes_name_the_key() {
    let with = |service_keys: &str| {
        error(&format!(
            "[hosts.app1]\naddress = \"10.0.0.2\"\n[services.web]\ncommand = [\"app\"]\n{service_keys}\n"
        ))
    };
    let e = with("on = [\"app1\", \"app3\"]");
    assert!(
        e.contains("services.web.on: unknown host \"app3\" (defined: \"app1\")"),
        "{e}"
    );
    let e = with("on = []");
    assert!(
        e.contains("services.web.on: needs at least one host"),
        "{e}"
    );
    let e = with("on = [\"app1\", \"app1\"]");
    assert!(e.contains("listed twice"), "{e}");
    let e = with("on = [\"app1\"]\ndeliver = \"carrier-pigeon\"");
    assert!(e.contains("services.web.deliver: unknown delivery"), "{e}");
    let e = with("on = [\"app1\"]\ndeliver = \"pull\"");
    assert!(e.contains("tarballs are pushed"), "{e}");
    let e = with("artifact = \"web.tar.gz\"");
    assert!(e.contains("services.web.artifact: needs on = [...]"), "{e}");
    let e = with("on = [\"app1\"]\nartifact = \"web-{versoin}.tar.gz\"");
    assert!(e.contains("unknown placeholder {versoin}"), "{e}");
    let e = error("[hosts.app1]\nadress = \"10.0.0.2\"\n");
    assert!(e.contains("baton.toml:2:1") && e.contains("adress"), "{e}");
    let e = error("[hosts.app1]\naddress = \"\"\n");
    assert!(e.contains("hosts.app1.address: must be an address"), "{e}");
    let e = error("[hosts.app1]\naddress = \"10.0.0.2\"\ndir = \"a b; rm -rf /\"\n");
    assert!(e.contains("hosts.app1.dir: may use only"), "{e}");
    let e = error("[hosts.\"app 1\"]\naddress = \"10.0.0.2\"\n");
    assert!(e.contains("hosts.app 1: host names may use only"), "{e}");
}

#[test]
fn haproxy_traffic_parses_and_its_mistakes_name_the_key() {
    let haproxy = web("traffic = \"haproxy\"\n[services.web.haproxy]\nsocket = \"run/admin.sock\"\nbackend = \"web\"\n").unwrap();
    assert_eq!(
        haproxy.traffic,
        TrafficConfig::Haproxy(HaproxyConfig {
            socket: "/etc/app/run/admin.sock".into(),
            backend: "web".into(),
            state_file: None,
        })
    );
    assert_eq!(web("").unwrap().traffic, TrafficConfig::Builtin);
    let e = web_error("traffic = \"haproxy\"");
    assert!(e.contains("services.web.haproxy: is required"), "{e}");
    let e = web_error("[services.web.haproxy]\nsocket = \"s\"\nbackend = \"web\"");
    assert!(
        e.contains("services.web.haproxy: is only for traffic = \"haproxy\""),
        "{e}"
    );
    let e = web_error("traffic = \"nginx\"");
    assert!(e.contains("services.web.nginx: is required"), "{e}");
    let nginx =
        web("traffic = \"nginx\"\n[services.web.nginx]\nupstream_file = \"nginx/web.conf\"\n")
            .unwrap();
    assert_eq!(
        nginx.traffic,
        TrafficConfig::Nginx(NginxConfig {
            upstream_file: "/etc/app/nginx/web.conf".into(),
            reload: vec!["nginx".into(), "-s".into(), "reload".into()],
            test: vec!["nginx".into(), "-t".into()],
            pid_file: "/run/nginx.pid".into(),
            confirm: None,
            location_file: None,
            client_keepalive: Duration::ZERO,
        })
    );
    let nginx = web(
        "traffic = \"nginx\"\n[services.web.nginx]\nupstream_file = \"u.conf\"\n\
         location_file = \"l.conf\"\nclient_keepalive = \"75s\"\nconfirm = \"127.0.0.1:8099\"\n",
    )
    .unwrap();
    let TrafficConfig::Nginx(n) = nginx.traffic else {
        panic!("{:?}", nginx.traffic)
    };
    assert_eq!(n.location_file, Some("/etc/app/l.conf".into()));
    assert_eq!(n.client_keepalive, Duration::from_secs(75));
    assert_eq!(n.confirm, Some("127.0.0.1:8099".parse().unwrap()));
    let e = web_error(
        "traffic = \"nginx\"\n[services.web.nginx]\nupstream_file = \"u.conf\"\nconfirm = \"0.0.0.0:80\"",
    );
    assert!(
        e.contains("services.web.nginx.confirm: \"0.0.0.0:80\" is not a loopback address"),
        "{e}"
    );
    let e = web_error(
        "traffic = \"nginx\"\n[services.web.nginx]\nupstream_file = \"u.conf\"\nclient_keepalive = \"5s\"",
    );
    assert!(
        e.contains("services.web.nginx.client_keepalive: is rendered into location_file"),
        "{e}"
    );
    let e = web_error(
        "traffic = \"nginx\"\n[services.web.nginx]\nupstream_file = \"w.conf\"\ntest = []",
    );
    assert!(
        e.contains("services.web.nginx.test: must name a program"),
        "{e}"
    );
    let e = web_error("[services.web.nginx]\nupstream_file = \"w.conf\"");
    assert!(
        e.contains("services.web.nginx: is only for traffic = \"nginx\""),
        "{e}"
    );
    let e = web_error("traffic = \"envoy\"");
    assert!(e.contains("unknown traffic backend \"envoy\""), "{e}");
    let e = web_error(
        "traffic = \"haproxy\"\n[services.web.haproxy]\nsocket = \"s\"\nbackend = \"we b\"",
    );
    assert!(e.contains("services.web.haproxy.backend"), "{e}");
}
