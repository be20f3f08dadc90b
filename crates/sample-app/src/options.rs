//! Command-line options for the sample app.
//!
//! Every flag here exists to let baton's demo and tests stage a specific kind
//! of release: a healthy one, a slow starter, one that never becomes healthy,
//! one that crashes at boot, and ones that pass health checks but fail real
//! traffic (always or sometimes).

use std::time::Duration;

/// How the sample app behaves; parsed by clap (`baton sample-app ...`).
///
/// It defines its own `--version <STRING>`, so the subcommand embedding it
/// must not also get clap's automatic `--version` flag: if the root command
/// uses `propagate_version`, mark the subcommand
/// `#[command(disable_version_flag = true)]`.
#[derive(clap::Args, Debug, Clone)]
pub struct Options {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT")]
    pub port: u16,

    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_host: String,

    /// Version string reported in bodies and the `x-app-version` header.
    #[arg(long, env = "APP_VERSION", default_value = "v0")]
    pub version: String,

    /// Answer 503 on /healthz for this long after start (e.g. "2s", "500ms").
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub unhealthy_for: Duration,

    /// Never report healthy on /healthz.
    #[arg(long)]
    pub never_healthy: bool,

    /// Exit with code 3 immediately, before listening.
    #[arg(long)]
    pub crash: bool,

    /// Pass /healthz but answer 500 to every other request.
    #[arg(long)]
    pub broken: bool,

    /// Fraction (0..=1) of non-/healthz requests that answer 500.
    #[arg(long, default_value_t = 0.0, value_parser = parse_error_rate)]
    pub error_rate: f64,

    /// How long a graceful shutdown waits for in-flight requests.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Misbehave only as one version: `v3=broken`, `v2=unhealthy-for:2s`,
    /// `bad=crash,never-healthy`, `v4=error-rate:0.05`. Lets one fixed
    /// command line (a service's config) stage good and bad releases.
    #[arg(long = "behave", value_name = "VERSION=FLAGS")]
    pub behave: Vec<String>,
}

impl Options {
    /// Options for a healthy app on `port` reporting `version` (handy in tests).
    pub fn new(port: u16, version: impl Into<String>) -> Self {
        Self {
            port,
            listen_host: "127.0.0.1".to_owned(),
            version: version.into(),
            unhealthy_for: Duration::ZERO,
            never_healthy: false,
            crash: false,
            broken: false,
            error_rate: 0.0,
            drain_timeout: Duration::from_secs(30),
            behave: Vec::new(),
        }
    }

    /// Applies the `--behave` rules that name this version.
    pub fn apply_behaviour(mut self) -> Result<Self, String> {
        let rules = std::mem::take(&mut self.behave);
        for rule in &rules {
            let (version, flags) = rule
                .split_once('=')
                .ok_or_else(|| format!("--behave {rule:?}: expected VERSION=FLAGS"))?;
            if version != self.version {
                continue;
            }
            for flag in flags.split(',').map(str::trim) {
                let (name, value) = flag.split_once(':').unwrap_or((flag, ""));
                match name {
                    "crash" => self.crash = true,
                    "broken" => self.broken = true,
                    "never-healthy" => self.never_healthy = true,
                    "unhealthy-for" => self.unhealthy_for = parse_duration(value)?,
                    "error-rate" => self.error_rate = parse_error_rate(value)?,
                    other => return Err(format!("--behave {rule:?}: unknown flag {other:?}")),
                }
            }
        }
        Ok(self)
    }
}

/// Parses durations such as "2s", "500ms", "1m 30s" or a bare "0".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("invalid duration {text:?}: {e}"))
}

/// Parses a failure fraction and insists it lies in `0..=1`.
fn parse_error_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|e| format!("invalid error rate {text:?}: {e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("error rate must be between 0 and 1, got {rate}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A stand-in for the real binary's hidden subcommand.
    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        opts: Options,
    }

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        let argv = std::iter::once("sample-app").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.opts)
    }

    #[test]
    fn behaviour_applies_to_its_version_only() {
        let base = [
            "--port",
            "1",
            "--behave",
            "v3=broken,unhealthy-for:2s",
            "--behave",
            "v4=crash",
        ];
        let v3 = parse(&[&base[..], &["--version", "v3"]].concat())
            .unwrap()
            .apply_behaviour()
            .unwrap();
        assert!(v3.broken && !v3.crash);
        assert_eq!(v3.unhealthy_for, Duration::from_secs(2));
        let v2 = parse(&[&base[..], &["--version", "v2"]].concat())
            .unwrap()
            .apply_behaviour()
            .unwrap();
        assert!(!v2.broken && !v2.crash);
        let bad = parse(&["--port", "1", "--behave", "v1=explode", "--version", "v1"]).unwrap();
        assert!(bad.apply_behaviour().unwrap_err().contains("explode"));
    }

    #[test]
    fn defaults() {
        let opts = parse(&["--port", "8080"]).unwrap();
        assert_eq!(opts.port, 8080);
        assert_eq!(opts.listen_host, "127.0.0.1");
        assert_eq!(opts.unhealthy_for, Duration::ZERO);
        assert_eq!(opts.error_rate, 0.0);
        assert_eq!(opts.drain_timeout, Duration::from_secs(30));
        assert!(!opts.crash && !opts.broken && !opts.never_healthy);
    }

    #[test]
    fn all_flags() {
        let opts = parse(&[
            "--port",
            "1",
            "--listen-host",
            "0.0.0.0",
            "--version",
            "v2",
            "--unhealthy-for",
            "500ms",
            "--never-healthy",
            "--crash",
            "--broken",
            "--error-rate",
            "0.25",
        ])
        .unwrap();
        assert_eq!(opts.version, "v2");
        assert_eq!(opts.listen_host, "0.0.0.0");
        assert_eq!(opts.unhealthy_for, Duration::from_millis(500));
        assert!(opts.crash && opts.broken && opts.never_healthy);
        assert_eq!(opts.error_rate, 0.25);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--port", "1", "--error-rate", "1.5"]).is_err());
        assert!(parse(&["--port", "1", "--unhealthy-for", "soon"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
    }
}
