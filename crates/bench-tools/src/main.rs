//! `baton-bench`: the compiled helpers of `bench/run`.
//!
//! - `ws-echo`: WebSocket echo round trips over N connections (rate, p50, p99);
//! - `idle`: opens N keep-alive connections, one request each, holds them idle
//!   and reads the proxy's resident memory meanwhile;
//! - `sink`: the upload scenario's backend (reads each body, then answers);
//! - `record`: turns one wrk / h2load / helper output into a JSON line;
//! - `report`: renders the recorded lines as a markdown table and JSON.
//!
//! Measurements print JSON on stdout; nothing here ever fails because a
//! number is slow: a benchmark reports, it does not judge.

mod idle;
mod parse;
mod report;
mod sink;
mod stats;
mod ws;

use std::path::Path;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "baton-bench",
    about = "Helpers for baton's benchmark (bench/run)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// WebSocket echo round trips: each connection sends a text message and
    /// waits for its echo, again and again, for the given time.
    WsEcho(ws::Args),
    /// Opens N keep-alive connections (one GET each), holds them idle and
    /// samples the resident memory of the given processes meanwhile.
    Idle(idle::Args),
    /// The upload scenario's backend: reads each body to the end, then answers.
    Sink(sink::Args),
    /// Parses one tool's output and appends a result line (JSON) to a file.
    Record(parse::Args),
    /// Renders recorded results as a markdown table (stdout and --md) and JSON.
    Report(report::Args),
    /// Prints one value of the JSON document on stdin, e.g.
    /// `active.targets.0.addr` (strings without quotes); fails if absent.
    JsonGet {
        /// Dot-separated keys and array indexes.
        path: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::WsEcho(args) => runtime()?.block_on(ws::run(args)),
        Command::Idle(args) => runtime()?.block_on(idle::run(args)),
        Command::Sink(args) => runtime()?.block_on(sink::run(args)),
        Command::Record(args) => parse::run(args),
        Command::Report(args) => report::run(args),
        Command::JsonGet { path } => {
            let doc: serde_json::Value = serde_json::from_reader(std::io::stdin().lock())?;
            let value = json_get(&doc, &path)
                .ok_or_else(|| anyhow::anyhow!("no {path} in the JSON on stdin"))?;
            match value {
                serde_json::Value::String(s) => println!("{s}"),
                other => println!("{other}"),
            }
            Ok(())
        }
    }
}

/// The value at a dot-separated path of keys and array indexes.
fn json_get<'a>(doc: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.')
        .filter(|k| !k.is_empty())
        .try_fold(doc, |v, key| match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(key),
        })
        .filter(|v| !v.is_null())
}

/// A single-threaded runtime: the load generator takes one core, like wrk -t1.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Parses "3s", "500ms", "2m" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {text:?} (ms, s, m)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// The lines of a text file (results, facts).
pub fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    use anyhow::Context as _;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths() {
        let doc =
            serde_json::json!({"active": {"targets": [{"addr": "127.0.0.1:1"}]}, "previous": null});
        assert_eq!(
            json_get(&doc, "active.targets.0.addr"),
            Some(&serde_json::json!("127.0.0.1:1"))
        );
        assert_eq!(json_get(&doc, "previous.state"), None);
        assert_eq!(json_get(&doc, "previous"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
    }
}
