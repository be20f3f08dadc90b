//! `baton-bench record`: one tool's output becomes one JSON result line.
//!
//! A result line is `{"scenario", "proxy", "rps", "p50_ms", "p99_ms",
//! "errors", ...}`; helpers that already print JSON (`ws-echo`, `idle`) are
//! merged as they are, and `--extra key=value` adds fields (numbers when they
//! parse as numbers).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use serde_json::{json, Map, Value};

use crate::stats::Samples;

#[derive(clap::Args)]
pub struct Args {
    /// The file result lines are appended to.
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    scenario: String,
    #[arg(long)]
    proxy: String,
    /// What produced --file: wrk, h2load or json (a helper's JSON line).
    #[arg(long)]
    tool: String,
    /// The tool's output.
    #[arg(long)]
    file: PathBuf,
    /// h2load's --log-file (per-request durations), for its percentiles.
    #[arg(long)]
    log: Option<PathBuf>,
    /// More fields, key=value.
    #[arg(long = "extra", value_name = "KEY=VALUE")]
    extra: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let mut fields = match args.tool.as_str() {
        "wrk" => wrk(&text),
        "h2load" => {
            let log = match &args.log {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            h2load(&text, log.as_deref())
        }
        "json" => match serde_json::from_str::<Value>(text.trim()) {
            Ok(Value::Object(map)) => map,
            _ => {
                let mut map = Map::new();
                map.insert(
                    "failed".into(),
                    json!(format!("no JSON from the helper: {}", text.trim())),
                );
                map
            }
        },
        other => bail!("unknown --tool {other} (wrk, h2load, json)"),
    };
    for extra in &args.extra {
        let (key, value) = extra
            .split_once('=')
            .with_context(|| format!("--extra {extra:?}: expected KEY=VALUE"))?;
        let value = if let Ok(n) = value.parse::<i64>() {
            json!(n)
        } else if let Ok(n) = value.parse::<f64>() {
            json!(n)
        } else {
            json!(value)
        };
        fields.insert(key.to_owned(), value);
    }
    let mut line = Map::new();
    line.insert("scenario".into(), json!(args.scenario));
    line.insert("proxy".into(), json!(args.proxy));
    line.extend(fields);
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)
        .with_context(|| format!("opening {}", args.out.display()))?;
    writeln!(out, "{}", Value::Object(line.clone()))?;
    println!("{}", summary(&line));
    Ok(())
}

/// One line for the progress output: the numbers that matter, or the failure.
fn summary(line: &Map<String, Value>) -> String {
    let mut out = format!(
        "  {:<10} {:<8}",
        line["scenario"].as_str().unwrap_or(""),
        line["proxy"].as_str().unwrap_or("")
    );
    let num = |k: &str| line.get(k).and_then(Value::as_f64);
    if let Some(run) = num("run") {
        out += &format!(" #{run}");
    }
    if let Some(why) = line.get("failed").and_then(Value::as_str) {
        return format!("{out} FAILED: {why}");
    }
    if let Some(rss) = num("rss_during_kib") {
        out += &format!(" RSS {:.1} MiB", rss / 1024.0);
        if let Some(per) = num("kib_per_conn") {
            out += &format!(", {per:.1} KiB/conn");
        }
    }
    if let Some(rps) = num("rps") {
        out += &format!(" {rps:>10.0}/s");
    }
    if let (Some(p50), Some(p99)) = (num("p50_ms"), num("p99_ms")) {
        out += &format!("  p50 {p50:.2} ms  p99 {p99:.2} ms");
    }
    out += &format!("  errors {}", num("errors").unwrap_or(0.0));
    out
}

/// wrk's report (run with --latency): rate, p50, p99, errors.
pub fn wrk(text: &str) -> Map<String, Value> {
    let mut m = Map::new();
    let mut errors = 0u64;
    let mut non_2xx = 0u64;
    let mut socket_errors = 0u64;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", n] => {
                m.insert("rps".into(), json!(n.parse::<f64>().ok()));
            }
            ["50%", v] => {
                m.insert("p50_ms".into(), json!(wrk_ms(v)));
            }
            ["99%", v] => {
                m.insert("p99_ms".into(), json!(wrk_ms(v)));
            }
            [n, "requests", "in", secs, ..] => {
                m.insert("requests".into(), json!(n.parse::<u64>().ok()));
                m.insert(
                    "seconds".into(),
                    json!(secs
                        .trim_end_matches(',')
                        .trim_end_matches('s')
                        .parse::<f64>()
                        .ok()),
                );
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                non_2xx = n.parse().unwrap_or(0);
            }
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
                for pair in rest.chunks(2) {
                    if let [kind, n] = pair {
                        m.insert(
                            format!("socket_{kind}"),
                            json!(n.trim_end_matches(',').parse::<u64>().unwrap_or(0)),
                        );
                    }
                }
            }
            _ => {}
        }
    }
    errors += non_2xx + socket_errors;
    m.insert("non_2xx".into(), json!(non_2xx));
    m.insert("socket_errors".into(), json!(socket_errors));
    m.insert("errors".into(), json!(errors));
    if !m.contains_key("rps") {
        m.insert(
            "failed".into(),
            json!(format!("no wrk report: {}", tail(text))),
        );
    }
    m
}

/// A wrk duration ("449.00us", "1.23ms", "2.00s", "1.00m") in milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// h2load's report, with p50/p99 from its per-request log (tab-separated:
/// start µs, status, duration µs).
///
/// Errors are answers other than 2xx plus timeouts; h2load's "errored"
/// count is kept apart because in a timed run (-D) the requests still in
/// flight when the time is up are counted there too.
pub fn h2load(text: &str, log: Option<&str>) -> Map<String, Value> {
    let mut m = Map::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            // "3.00s, 40000.00 req/s, 1.2MB/s"
            let parts: Vec<&str> = rest.split(", ").collect();
            if let Some(secs) = parts.first() {
                m.insert(
                    "seconds".into(),
                    json!(secs.trim_end_matches('s').parse::<f64>().ok()),
                );
            }
            if let Some(rate) = parts.get(1) {
                m.insert(
                    "rps".into(),
                    json!(rate.trim_end_matches(" req/s").parse::<f64>().ok()),
                );
            }
        } else if let Some(rest) = line.strip_prefix("requests: ") {
            for part in rest.split(", ") {
                if let Some((n, what)) = part.split_once(' ') {
                    if let Ok(n) = n.parse::<u64>() {
                        m.insert(format!("h2_{what}"), json!(n));
                    }
                }
            }
        } else if let Some(rest) = line.strip_prefix("status codes: ") {
            let mut bad = 0u64;
            for part in rest.split(", ") {
                if let Some((n, class)) = part.split_once(' ') {
                    if class != "2xx" {
                        bad += n.parse::<u64>().unwrap_or(0);
                    }
                }
            }
            m.insert("non_2xx".into(), json!(bad));
        }
    }
    let timeouts = m.get("h2_timeout").and_then(Value::as_u64).unwrap_or(0);
    let non_2xx = m.get("non_2xx").and_then(Value::as_u64).unwrap_or(0);
    m.insert("errors".into(), json!(non_2xx + timeouts));
    if let Some(log) = log {
        let mut samples = Samples::default();
        samples.extend(
            log.lines()
                .filter_map(|l| l.split('\t').nth(2)?.trim().parse::<u32>().ok())
                .collect(),
        );
        m.insert("p50_ms".into(), json!(samples.percentile_ms(50.0)));
        m.insert("p99_ms".into(), json!(samples.percentile_ms(99.0)));
    }
    if !m.contains_key("rps") {
        m.insert(
            "failed".into(),
            json!(format!("no h2load report: {}", tail(text))),
        );
    }
    m
}

/// The last few lines of a tool's output, for a failure note.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 3s test @ http://127.0.0.1:19101/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   237.67us  111.34us   2.48ms   68.33%
    Req/Sec     9.58k     1.24k   11.51k    72.73%
  Latency Distribution
     50%  246.00us
     75%  303.00us
     90%  356.00us
     99%    1.50ms
  10480 requests in 1.10s, 1.45MB read
  Socket errors: connect 0, read 3, write 1, timeout 0
  Non-2xx or 3xx responses: 12
Requests/sec:   9522.69
Transfer/sec:      1.32MB
";

    #[test]
    fn wrk_report() {
        let m = wrk(WRK);
        assert_eq!(m["rps"], json!(9522.69));
        assert_eq!(m["p50_ms"], json!(0.246));
        assert_eq!(m["p99_ms"], json!(1.5));
        assert_eq!(m["requests"], json!(10480));
        assert_eq!(m["seconds"], json!(1.1));
        assert_eq!(m["socket_read"], json!(3));
        assert_eq!(m["errors"], json!(16));
        assert!(!m.contains_key("failed"));
    }

    #[test]
    fn wrk_without_errors_or_output() {
        let clean: String = WRK
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(wrk(&clean)["errors"], json!(0));
        assert!(wrk("unable to connect to 127.0.0.1:1 Connection refused").contains_key("failed"));
    }

    #[test]
    fn wrk_units() {
        assert_eq!(wrk_ms("2.00s"), Some(2000.0));
        assert_eq!(wrk_ms("1.00m"), Some(60000.0));
        assert_eq!(wrk_ms("12"), None);
    }

    #[test]
    fn h2load_report() {
        let text = "finished in 1.00s, 4000.00 req/s, 269.79KB/s
requests: 4002 total, 4004 started, 4002 done, 4000 succeeded, 2 failed, 2 errored, 0 timeout
status codes: 4000 2xx, 0 3xx, 1 4xx, 0 5xx
";
        let log = "1795318490521151\t200\t263\n1795318490521152\t200\t1000\n";
        let m = h2load(text, Some(log));
        assert_eq!(m["rps"], json!(4000.0));
        assert_eq!(m["h2_errored"], json!(2));
        assert_eq!(m["errors"], json!(1));
        assert_eq!(m["p50_ms"], json!(0.263));
        assert_eq!(m["p99_ms"], json!(1.0));
    }
}
