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
