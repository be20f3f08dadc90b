//! The client commands: each talks to `baton serve` through the control API
//! and prints for people, or with `--json` for programs.

use std::path::Path;
use std::time::Instant;

use baton_orchestrator::{describe, Command, RolloutStatus, ServiceStatus};
use baton_store::DeployRecord;
use serde_json::json;

use crate::api::{DeployEvent, Outcome};
use crate::client::Client;
use crate::exit;

/// `baton deploy SERVICE VERSION [--canary]`
pub async fn deploy(
    config: &Path,
    service: &str,
    version: &str,
    canary: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let body = json!({ "version": version, "requested_by": requested_by(), "canary": canary });
    let path = format!("/v1/services/{service}/deploy");
    run_streamed(config, &path, body, json).await
}

/// `baton rollback SERVICE [--to VERSION]`
pub async fn rollback(
    config: &Path,
    service: &str,
    to: Option<&str>,
    json: bool,
) -> anyhow::Result<u8> {
    let body = json!({ "to": to, "requested_by": requested_by() });
    let path = format!("/v1/services/{service}/rollback");
    run_streamed(config, &path, body, json).await
}

async fn run_streamed(
    config: &Path,
    path: &str,
    body: serde_json::Value,
    json: bool,
) -> anyhow::Result<u8> {
    let client = Client::for_config(config)?;
    let started = Instant::now();
    let outcome = client
        .stream(path, body, |event| {
            if json {
                println!("{}", serde_json::to_string(event).unwrap_or_default());
            } else if let DeployEvent::Progress(p) = event {
                eprintln!("{:>6.1}s  {}", started.elapsed().as_secs_f64(), p.message);
            }
        })
        .await?;
    if !json {
        print_outcome(&outcome, started);
    }
    Ok(outcome.code)
}

fn print_outcome(outcome: &Outcome, started: Instant) {
    let took = started.elapsed().as_secs_f64();
    match (&outcome.deploy, outcome.ok) {
        (Some(d), true) => println!(
            "{} {} is live ({}), deploy #{} in {took:.1}s",
            d.service, d.version, d.color, d.id
        ),
        _ => {
            eprintln!("error: {}", outcome.error.as_deref().unwrap_or("failed"));
            if let Some(tail) = outcome.deploy.as_ref().and_then(|d| d.log_tail.as_deref()) {
                eprintln!("last lines of the candidate's log:");
                for line in tail.lines() {
                    eprintln!("  | {line}");
                }
            }
        }
    }
}

/// `baton status [SERVICE]`
pub async fn status(config: &Path, service: Option<&str>, json: bool) -> anyhow::Result<u8> {
    let client = Client::for_config(config)?;
    let path = match service {
        Some(s) => format!("/v1/status?service={s}"),
        None => "/v1/status".to_string(),
    };
    let all: Vec<ServiceStatus> = client.get(&path).await?;
    if json {
        let out = match service {
            Some(_) => serde_json::to_string_pretty(&all.first())?,
            None => serde_json::to_string_pretty(&all)?,
        };
        println!("{out}");
        return Ok(0);
    }
    for s in &all {
        print_status(s);
    }
    Ok(0)
}

fn print_status(s: &ServiceStatus) {
    println!("{}", s.service);
    match &s.active {
        Some(a) => {
            let healthy = a.targets.iter().filter(|t| t.healthy).count();
            println!(
                "  live      {} ({})  {healthy}/{} healthy",
                a.version,
                a.color,
                a.targets.len()
            );
            for t in &a.targets {
                let h = if t.healthy { "healthy" } else { "UNHEALTHY" };
                let on = t
                    .host
                    .as_deref()
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default();
                println!("            {}{on}  {h}  in flight {}", t.addr, t.in_flight);
            }
        }
        None => println!("  live      nothing"),
    }
    if let Some(p) = &s.previous {
        println!("  previous  {} ({})  {}", p.version, p.color, p.state);
    }
    if let Some(d) = &s.deploy {
        let id = d.id.map(|i| format!("#{i} ")).unwrap_or_default();
        println!("  deploying {id}{} ({:?})", d.version, d.phase);
        if let Some(c) = &d.canary {
            print_canary(c);
        }
    }
    if let Some(d) = &s.last_deploy {
        let result = d
            .error
            .as_deref()
            .map(|e| format!("failed: {e}"))
            .unwrap_or_else(|| format!("{:?}", d.phase).to_lowercase());
        println!(
            "  last      #{} {:?} {} by {}: {result}",
            d.id, d.kind, d.version, d.requested_by
        );
    }
    if let Some(t) = &s.traffic {
        let agree = match (&t.error, t.differences.is_empty()) {
            (Some(e), _) => format!("cannot be asked: {e}"),
            (None, true) => format!("{} server(s), as baton set them", t.servers.len()),
            (None, false) => format!("differs: {}", t.differences.join("; ")),
        };
        println!("  traffic   {}: {agree}", t.backend);
        if let Some(restored) = &t.restored {
            println!("            last {restored}");
        }
    }
    for l in &s.leftovers {
        let host = l.host.as_deref().unwrap_or("this machine");
        println!(
            "  left over {} on {host}, not stopped yet: {}",
            l.addr, l.reason
        );
    }
}

fn print_canary(c: &RolloutStatus) {
    let paused = match (&c.paused_because, c.paused) {
        (Some(why), true) => format!(", paused: {why}"),
        (None, true) => ", paused".to_string(),
        _ => String::new(),
    };
    println!(
        "  canary    step {}/{} at {}, {}/{} failed intervals{paused}",
        c.step, c.steps, c.weight, c.failures, c.failure_limit
    );
    if let Some(last) = c.analyses.last() {
        println!("            last {}", describe(last));
    }
}

/// `baton history SERVICE`
pub async fn history(config: &Path, service: &str, limit: usize, json: bool) -> anyhow::Result<u8> {
    let client = Client::for_config(config)?;
    let records: Vec<DeployRecord> = client
        .get(&format!("/v1/services/{service}/history?limit={limit}"))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(0);
    }
    println!(
        "{:>5}  {:<19}  {:<8}  {:<12}  {:<5}  {:<8}  {:<16}  error",
        "id", "started (UTC)", "kind", "version", "color", "result", "by"
    );
    for d in &records {
        println!(
            "{:>5}  {:<19}  {:<8}  {:<12}  {:<5}  {:<8}  {:<16}  {}",
            d.id,
            utc(d.started_at),
            format!("{:?}", d.kind).to_lowercase(),
            d.version,
            d.color.as_str(),
            format!("{:?}", d.phase).to_lowercase(),
            d.requested_by,
            d.error.as_deref().unwrap_or("")
        );
    }
    Ok(0)
}

/// `baton promote|pause|resume|abort SERVICE`
pub async fn rollout(config: &Path, service: &str, command: Command) -> anyhow::Result<u8> {
    let client = Client::for_config(config)?;
    let path = format!("/v1/services/{service}/rollout");
    client.post(&path, serde_json::to_value(command)?).await?;
    println!("{service}: {command:?} sent to the rollout");
    Ok(0)
}

/// `baton shutdown [--stop-apps]`
pub async fn shutdown(config: &Path, stop_apps: bool) -> anyhow::Result<u8> {
    let client = Client::for_config(config)?;
    client
        .post("/v1/shutdown", json!({ "stop_apps": stop_apps }))
        .await?;
    Ok(0)
}

/// `baton check URL`: a smoke check that needs no curl.
pub async fn check(url: &str, requests: u32) -> anyhow::Result<u8> {
    for i in 0..requests {
        let (status, body) = baton_loadgen::get_once(url, None).await?;
        if !(200..300).contains(&status) {
            eprintln!(
                "request {} of {requests} to {url}: HTTP {status}: {}",
                i + 1,
                body.trim()
            );
            return Ok(exit::FAILED);
        }
    }
    println!("{requests} requests to {url}: all 2xx");
    Ok(0)
}

/// Who is asking, for the history: `$BATON_ACTOR`, else the CI's user, else user@host.
fn requested_by() -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(actor) = env("BATON_ACTOR")
        .or_else(|| env("GITHUB_ACTOR"))
        .or_else(|| env("GITLAB_USER_LOGIN"))
    {
        return actor;
    }
    let user = env("USER")
        .or_else(|| env("LOGNAME"))
        .unwrap_or_else(|| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{user}@{}", host.trim())
}

/// `2026-11-22 10:04:05` from unix milliseconds.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::utc(1_795_000_000_000), "2026-11-18 11:06:40");
    }
}
