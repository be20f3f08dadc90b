//! `baton-bench idle`: memory with many idle keep-alive client connections.
//!
//! Reads the resident size (VmRSS, summed) of the given processes, opens N
//! connections (a bounded number at a time), sends one GET on each and reads
//! the answer, so each is a real keep-alive connection the server has served,
//! then leaves them idle for `--hold` while sampling the resident size again.
//! Finally one more GET on every connection tells how many were still open.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(clap::Args)]
pub struct Args {
    /// For example http://127.0.0.1:8080/
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// How long to hold the connections idle while sampling memory.
    #[arg(long, default_value = "3s", value_parser = crate::parse_duration)]
    hold: std::time::Duration,
    /// Processes whose resident sizes are summed (comma-separated pids).
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
}

type Sender = SendRequest<Empty<Bytes>>;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let uri: hyper::Uri = args.url.parse().context("bad --url")?;
    let authority = uri
        .authority()
        .context("--url needs host:port")?
        .as_str()
        .to_owned();
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());

    let rss_before = rss_kib(&args.pids)?;

    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut opening = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let permit = gate.clone().acquire_owned().await?;
        let (authority, path) = (authority.clone(), path.clone());
        opening.push(tokio::spawn(async move {
            let result = open(&authority, &path).await;
            drop(permit);
            result
        }));
    }
    let mut senders = Vec::with_capacity(args.connections);
    let mut failed = 0u64;
    let mut first_error = None;
    for task in opening {
        match task.await? {
            Ok(sender) => senders.push(sender),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    if let Some(e) = &first_error {
        eprintln!("idle: {failed} connection(s) failed, first: {e}");
    }

    // Idle: sample the resident size while nothing happens, keep the peak.
    let mut rss_during = 0u64;
    let step = Duration::from_millis(100);
    let samples = (args.hold.as_millis() / step.as_millis()).max(1);
    for _ in 0..samples {
        tokio::time::sleep(step).await;
        rss_during = rss_during.max(rss_kib(&args.pids)?);
    }

    // Still open? One more request on each (a closed one fails fast).
    let mut probing = Vec::with_capacity(senders.len());
    for mut sender in senders {
        let permit = gate.clone().acquire_owned().await?;
        let (authority, path) = (authority.clone(), path.clone());
        probing.push(tokio::spawn(async move {
            let ok = get(&mut sender, &authority, &path).await.is_ok();
            drop(permit);
            ok
        }));
    }
    let mut alive = 0u64;
    for task in probing {
        alive += u64::from(task.await?);
    }

    let opened = args.connections as u64 - failed;
    let per_conn = if opened > 0 {
        Some(rss_during.saturating_sub(rss_before) as f64 / opened as f64)
    } else {
        None
    };
    let result = json!({
        "connections": args.connections,
        "opened": opened,
        "failed_to_open": failed,
        "alive_after_hold": alive,
        "closed_during_hold": opened - alive,
        "rss_before_kib": rss_before,
        "rss_during_kib": rss_during,
        "kib_per_conn": per_conn,
        "errors": failed + (opened - alive),
    });
    println!("{result}");
    Ok(())
}

/// Connects, handshakes and sends one GET; returns the idle connection.
async fn open(authority: &str, path: &str) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    get(&mut sender, authority, path).await?;
    Ok(sender)
}

/// One GET on the connection, body read to the end; fails unless 2xx.
async fn get(sender: &mut Sender, authority: &str, path: &str) -> anyhow::Result<()> {
    sender.ready().await?;
    let request = Request::get(path)
        .header("host", authority)
        .body(Empty::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    anyhow::ensure!(status.is_success(), "status {status}");
    Ok(())
}

/// The summed VmRSS of `pids` in KiB (a process that is gone counts 0).
fn rss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            eprintln!("idle: process {pid} is gone");
            continue;
        };
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}
