//! `baton-bench report`: the recorded result lines as a markdown table, the
//! ratios baton/nginx and baton/HAProxy, the switch-under-load summary, and
//! the same in JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::{json, Map, Value};

#[derive(clap::Args)]
pub struct Args {
    /// Result lines written by `record`.
    #[arg(long)]
    results: PathBuf,
    /// Machine facts and settings, one `key=value` a line, in order.
    #[arg(long)]
    facts: Option<PathBuf>,
    /// Also write the markdown here.
    #[arg(long)]
    md: Option<PathBuf>,
    /// Write the JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The columns, in order: key in the result lines, heading.
const PROXIES: [(&str, &str); 4] = [
    ("direct", "direct"),
    ("baton", "baton"),
    ("nginx", "nginx"),
    ("haproxy", "HAProxy"),
];

/// How a scenario's cells read.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// req/s · p50 · p99
    Rate,
    /// RSS · KiB per connection
    Memory,
}

/// The scenarios of the main table, in order: id, label, kind.
const SCENARIOS: [(&str, &str, Kind); 9] = [
    ("ka50", "keep-alive, 50 conns, tiny body", Kind::Rate),
    ("ka1000", "keep-alive, 1,000 conns, tiny body", Kind::Rate),
    ("close", "new connection per request, 50 conns", Kind::Rate),
    (
        "h2",
        "HTTP/2 (h2c) clients, 50 conns × 10 streams",
        Kind::Rate,
    ),
    ("body1k", "1 KiB body, 50 conns", Kind::Rate),
    ("body256k", "256 KiB body, 50 conns", Kind::Rate),
    ("upload1m", "1 MiB upload (POST), 50 conns", Kind::Rate),
    ("ws", "WebSocket echo round trips, 50 conns", Kind::Rate),
    ("idle", "memory, 10,000 idle keep-alive conns", Kind::Memory),
];

pub fn run(args: Args) -> anyhow::Result<()> {
    let results: Vec<Map<String, Value>> = crate::read_lines(&args.results)?
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Map<String, Value>>(l).context("a result line"))
        .collect::<anyhow::Result<_>>()?;
    let facts: Vec<(String, String)> = match &args.facts {
        Some(path) => crate::read_lines(path)?
            .iter()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        None => Vec::new(),
    };
    // With repeated runs (BENCH_REPEAT), a cell shows the median run; a
    // memory cell its first (see `representative`).
    let mut runs: BTreeMap<(String, String), Vec<&Map<String, Value>>> = BTreeMap::new();
    for r in &results {
        runs.entry((text(r, "scenario"), text(r, "proxy")))
            .or_default()
            .push(r);
    }
    let by_key: BTreeMap<(String, String), &Map<String, Value>> = runs
        .into_iter()
        .map(|(key, runs)| {
            let run = representative(&key.0, runs);
            (key, run)
        })
        .collect();
    let get = |scenario: &str, proxy: &str| {
        by_key
            .get(&(scenario.to_owned(), proxy.to_owned()))
            .copied()
    };

    let mut md = String::new();
    let mut notes = Vec::new();
    writeln!(md, "# baton benchmark\n")?;
    for (k, v) in &facts {
        writeln!(md, "- {k}: {v}")?;
    }
    writeln!(md)?;

    let main_rows = SCENARIOS
        .iter()
        .any(|(id, _, _)| PROXIES.iter().any(|(p, _)| get(id, p).is_some()));
    let mut ratios = Vec::new();
    if main_rows {
        main_table(&mut md, &mut notes, &get)?;
        ratios = ratio_table(&mut md, &get)?;
    }

    // Switch under load.
    let switchers: Vec<(&str, &str)> = PROXIES
        .iter()
        .copied()
        .filter(|(p, _)| get("switch", p).is_some())
        .collect();
    if !switchers.is_empty() {
        writeln!(
            md,
            "\nSwitch under load, 50 keep-alive conns (baton: `baton rollback` between two warm \
             releases, back to back; nginx and HAProxy, for comparison: configuration reloads):\n"
        )?;
        write!(md, "| |")?;
        for (_, heading) in &switchers {
            write!(md, " {heading} |")?;
        }
        writeln!(md)?;
        writeln!(md, "|---|{}", "---:|".repeat(switchers.len()))?;
        let columns: Vec<Vec<String>> = switchers
            .iter()
            .map(|(proxy, _)| {
                switch_cells(
                    get("switch", proxy).expect("filtered"),
                    get("switch-baseline", proxy),
                    get("switch-control", proxy),
                )
            })
            .collect();
        for (i, label) in SWITCH_ROWS.iter().enumerate() {
            write!(md, "| {label} |")?;
            for column in &columns {
                write!(md, " {} |", column[i])?;
            }
            writeln!(md)?;
        }
        for (proxy, heading) in &switchers {
            for scenario in ["switch", "switch-baseline", "switch-control"] {
                let Some(r) = get(scenario, proxy) else {
                    continue;
                };
                if let Some(why) = r.get("failed").and_then(Value::as_str) {
                    notes.push(format!("{scenario}, {heading}: {why}"));
                } else if num(r, "errors").unwrap_or(0.0) > 0.0 {
                    notes.push(error_note(scenario, heading, r));
                }
            }
        }
    }

    if !notes.is_empty() {
        writeln!(md, "\nNotes:\n")?;
        for note in &notes {
            writeln!(md, "- {note}")?;
        }
    }

    print!("{md}");
    if let Some(path) = &args.md {
        std::fs::write(path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let facts: Map<String, Value> = facts.into_iter().map(|(k, v)| (k, json!(v))).collect();
        // "cells": what the tables show (the median run of each cell);
        // "results": every run.
        let cells: Vec<&Map<String, Value>> = by_key.values().copied().collect();
        let doc = json!({
            "facts": facts, "cells": cells, "ratios": ratios, "notes": notes, "results": results,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

type Lookup<'a> = dyn Fn(&str, &str) -> Option<&'a Map<String, Value>> + 'a;

/// One row per scenario, one column per proxy.
fn main_table(md: &mut String, notes: &mut Vec<String>, get: &Lookup<'_>) -> anyhow::Result<()> {
    // The main table.
    writeln!(
        md,
        "Cells: requests (or round trips) per second · p50 · p99 latency in ms; \
         memory: resident size (all processes of the proxy) · KiB per connection.\n"
    )?;
    write!(md, "| scenario |")?;
    for (_, heading) in PROXIES {
        write!(md, " {heading} |")?;
    }
    writeln!(md)?;
    writeln!(md, "|---|{}", "---:|".repeat(PROXIES.len()))?;
    for (id, label, kind) in SCENARIOS {
        if PROXIES.iter().all(|(p, _)| get(id, p).is_none()) {
            continue;
        }
        write!(md, "| {label} |")?;
        for (proxy, heading) in PROXIES {
            let cell = match get(id, proxy) {
                None => "n/a".to_owned(),
                Some(r) => {
                    if let Some(why) = r.get("failed").and_then(Value::as_str) {
                        notes.push(format!("{label}, {heading}: {why}"));
                        "failed".to_owned()
                    } else {
                        let mut cell = match kind {
                            Kind::Rate => format!(
                                "{} · {} · {}",
                                thousands(num(r, "rps")),
                                ms(num(r, "p50_ms")),
                                ms(num(r, "p99_ms"))
                            ),
                            Kind::Memory => format!(
                                "{} MiB · {} KiB",
                                fixed(num(r, "rss_during_kib").map(|k| k / 1024.0), 1),
                                fixed(num(r, "kib_per_conn"), 1)
                            ),
                        };
                        let errors = num(r, "errors").unwrap_or(0.0);
                        if errors > 0.0 {
                            write!(cell, " ({} errors)", errors as u64)?;
                            notes.push(error_note(label, heading, r));
                        }
                        cell
                    }
                }
            };
            write!(md, " {cell} |")?;
        }
        writeln!(md)?;
    }

    Ok(())
}

/// baton/nginx and baton/HAProxy for each scenario's rate and p99 (memory:
/// resident size and KiB per connection).
fn ratio_table(md: &mut String, get: &Lookup<'_>) -> anyhow::Result<Vec<Value>> {
    // Ratios.
    let mut ratios = Vec::new();
    writeln!(
        md,
        "\nRatios (req/s: higher is better for baton; p99 and memory: lower is better):\n"
    )?;
    writeln!(md, "| scenario | measure | baton/nginx | baton/HAProxy |")?;
    writeln!(md, "|---|---|---:|---:|")?;
    for (id, label, kind) in SCENARIOS {
        let measures: &[(&str, &str)] = match kind {
            Kind::Rate => &[("rps", "req/s"), ("p99_ms", "p99")],
            Kind::Memory => &[("rss_during_kib", "RSS"), ("kib_per_conn", "KiB/conn")],
        };
        for (field, measure) in measures {
            let baton = get(id, "baton").and_then(|r| num(r, field));
            let nginx = get(id, "nginx").and_then(|r| num(r, field));
            let haproxy = get(id, "haproxy").and_then(|r| num(r, field));
            if baton.is_none() {
                continue;
            }
            let vs_nginx = ratio(baton, nginx);
            let vs_haproxy = ratio(baton, haproxy);
            writeln!(
                md,
                "| {label} | {measure} | {} | {} |",
                times(vs_nginx),
                times(vs_haproxy)
            )?;
            ratios.push(json!({
                "scenario": id, "measure": field,
                "baton_over_nginx": vs_nginx, "baton_over_haproxy": vs_haproxy,
            }));
        }
    }

    Ok(ratios)
}

/// The run a cell shows. Memory: the first, from a fresh process; later
/// rounds reuse what the first grew, so every server reads near zero per
/// connection in them. Anything else: the median.
fn representative<'a>(scenario: &str, runs: Vec<&'a Map<String, Value>>) -> &'a Map<String, Value> {
    let memory = SCENARIOS
        .iter()
        .any(|&(id, _, kind)| id == scenario && kind == Kind::Memory);
    let run = |r: &Map<String, Value>| num(r, "run").unwrap_or(f64::INFINITY);
    let first = runs
        .iter()
        .copied()
        .min_by(|a, b| run(a).total_cmp(&run(b)));
    match first {
        Some(first) if memory => first,
        _ => median(runs),
    }
}

/// The median of a cell's runs by its rate (or resident size); of an even
/// number, the higher middle one. A failed run counts as the lowest.
fn median(mut runs: Vec<&Map<String, Value>>) -> &Map<String, Value> {
    let key = |r: &Map<String, Value>| {
        if r.contains_key("failed") {
            f64::NEG_INFINITY
        } else {
            num(r, "rps")
                .or_else(|| num(r, "rss_during_kib"))
                .unwrap_or(f64::NEG_INFINITY)
        }
    };
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    runs[runs.len() / 2]
}

/// The rows of the switch-under-load table.
const SWITCH_ROWS: [&str; 9] = [
    "switches (rollbacks or reloads) done / asked",
    "failed commands",
    "time for the switches",
    "switches per second",
    "requests during the run",
    "errors (non-2xx + socket), goal 0",
    "req/s · p99 ms, no switch (a run just before)",
    "req/s · p99 ms during the switches",
    "req/s · p99 ms, as many `baton status` calls instead (CLI cost, no switch)",
];

/// One column of the switch table: the run with switches, the run without
/// just before, and the control run with CLI calls that switch nothing.
fn switch_cells(
    r: &Map<String, Value>,
    base: Option<&Map<String, Value>>,
    control: Option<&Map<String, Value>>,
) -> Vec<String> {
    let rate = |r: Option<&Map<String, Value>>| match r {
        Some(r) if !r.contains_key("failed") => {
            format!("{} · {}", thousands(num(r, "rps")), ms(num(r, "p99_ms")))
        }
        Some(_) => "failed".to_owned(),
        None => "n/a".to_owned(),
    };
    let per_s = num(r, "switches_done")
        .zip(num(r, "switch_seconds"))
        .map(|(n, s)| n / s);
    vec![
        format!(
            "{} / {}",
            int(num(r, "switches_done")),
            int(num(r, "switches"))
        ),
        int(num(r, "switch_failures")),
        format!("{} s", fixed(num(r, "switch_seconds"), 1)),
        fixed(per_s, 1),
        thousands(num(r, "requests")),
        int(num(r, "errors")),
        rate(base),
        rate(Some(r)),
        rate(control),
    ]
}

fn text(r: &Map<String, Value>, key: &str) -> String {
    r.get(key).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn num(r: &Map<String, Value>, key: &str) -> Option<f64> {
    r.get(key).and_then(Value::as_f64)
}

/// What the errors of one cell were made of.
fn error_note(label: &str, heading: &str, r: &Map<String, Value>) -> String {
    let parts: Vec<String> = r
        .iter()
        .filter(|(k, v)| {
            ((k.starts_with("socket_") && *k != "socket_errors")
                || k.starts_with("non_2xx")
                || ["h2_failed", "h2_errored", "h2_timeout"].contains(&k.as_str())
                || *k == "failed_to_open"
                || *k == "closed_during_hold")
                && v.as_f64().is_some_and(|n| n > 0.0)
        })
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    format!(
        "{label}, {heading}: {} errors ({})",
        int(num(r, "errors")),
        parts.join(", ")
    )
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn times(r: Option<f64>) -> String {
    r.map_or("n/a".to_owned(), |r| format!("{r:.2}×"))
}

fn int(v: Option<f64>) -> String {
    v.map_or("n/a".to_owned(), |v| format!("{}", v.round() as i64))
}

fn fixed(v: Option<f64>, decimals: usize) -> String {
    v.map_or("n/a".to_owned(), |v| format!("{v:.decimals$}"))
}

/// Milliseconds with three significant digits or so.
fn ms(v: Option<f64>) -> String {
    match v {
        None => "n/a".to_owned(),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) if v < 100.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

/// 12345.6 → "12,346".
fn thousands(v: Option<f64>) -> String {
    let Some(v) = v else {
        return "n/a".to_owned();
    };
    let digits = format!("{}", v.round() as i64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 && c != '-' {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_cell_shows_the_first_run() {
        let run = |n: f64, rss: f64| {
            let mut r = Map::new();
            r.insert("run".into(), json!(n));
            r.insert("rss_during_kib".into(), json!(rss));
            r
        };
        let (first, second, third) = (run(1.0, 30.0), run(2.0, 20.0), run(3.0, 25.0));
        let runs = || vec![&second, &first, &third];
        assert_eq!(num(representative("idle", runs()), "run"), Some(1.0));
        assert_eq!(num(representative("ka50", runs()), "run"), Some(3.0));
    }

    #[test]
    fn median_run() {
        let run = |rps: f64| json!({"rps": rps}).as_object().unwrap().clone();
        let failed = json!({"failed": "no report"}).as_object().unwrap().clone();
        let (a, b, c) = (run(3.0), run(1.0), run(2.0));
        assert_eq!(num(median(vec![&a, &b, &c]), "rps"), Some(2.0));
        assert_eq!(num(median(vec![&a, &failed]), "rps"), Some(3.0));
        assert!(median(vec![&failed]).contains_key("failed"));
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(Some(12345.6)), "12,346");
        assert_eq!(thousands(Some(999.0)), "999");
        assert_eq!(thousands(Some(1_000_000.0)), "1,000,000");
        assert_eq!(ms(Some(0.2461)), "0.25");
        assert_eq!(ms(Some(12.34)), "12.3");
        assert_eq!(ms(None), "n/a");
        assert_eq!(times(ratio(Some(1.0), Some(2.0))), "0.50×");
        assert_eq!(times(ratio(Some(1.0), Some(0.0))), "n/a");
    }
}
