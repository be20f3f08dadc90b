//! `baton-bench ws-echo`: WebSocket echo round trips.
//!
//! Every connection first completes its handshake; then all of them start
//! together and, until the time is up, each sends one text message and waits
//! for its echo before sending the next. A reply must end with the message
//! (the sample app answers `M` with `v1:M`); anything else counts as an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::stats::{micros, Samples};

#[derive(clap::Args)]
pub struct Args {
    /// For example ws://127.0.0.1:8080/ws
    #[arg(long)]
    url: String,
    /// Host header to send (routes the request on a proxy that routes by host).
    #[arg(long)]
    host: Option<String>,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// How long to measure ("5s").
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    seconds: Duration,
    /// Size of each text message in bytes.
    #[arg(long, default_value_t = 32)]
    message_size: usize,
}

/// What one connection did.
#[derive(Default)]
struct Outcome {
    latencies: Vec<u32>,
    errors: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let message = "x".repeat(args.message_size);
    let mut request = args
        .url
        .as_str()
        .into_client_request()
        .with_context(|| format!("bad url {}", args.url))?;
    if let Some(host) = &args.host {
        request
            .headers_mut()
            .insert("host", HeaderValue::from_str(host)?);
    }

    let mut streams = Vec::with_capacity(args.connections);
    let mut connect_errors = 0u64;
    for _ in 0..args.connections {
        match tokio_tungstenite::connect_async(request.clone()).await {
            Ok((stream, _)) => streams.push(stream),
            Err(e) => {
                if connect_errors == 0 {
                    eprintln!("ws-echo: connect to {} failed: {e}", args.url);
                }
                connect_errors += 1;
            }
        }
    }

    let start = Arc::new(Barrier::new(streams.len() + 1));
    let mut tasks = Vec::with_capacity(streams.len());
    for mut ws in streams {
        let start = start.clone();
        let message = message.clone();
        let window = args.seconds;
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            start.wait().await;
            let deadline = Instant::now() + window;
            while Instant::now() < deadline {
                let sent = Instant::now();
                if ws.send(Message::text(message.clone())).await.is_err() {
                    out.errors += 1;
                    return out;
                }
                let echoed = loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(text))) => break text.as_str().ends_with(&message),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        _ => {
                            out.errors += 1;
                            return out;
                        }
                    }
                };
                if echoed {
                    out.latencies.push(micros(sent.elapsed()));
                } else {
                    out.errors += 1;
                }
            }
            let _ = ws.close(None).await;
            out
        }));
    }
    start.wait().await;
    let began = Instant::now();

    let mut samples = Samples::default();
    let mut errors = connect_errors;
    for task in tasks {
        let out = task.await?;
        errors += out.errors;
        samples.extend(out.latencies);
    }
    let elapsed = began.elapsed().as_secs_f64();
    let round_trips = samples.len();
    let result = json!({
        "round_trips": round_trips,
        "seconds": elapsed,
        "rps": round_trips as f64 / elapsed,
        "p50_ms": samples.percentile_ms(50.0),
        "p99_ms": samples.percentile_ms(99.0),
        "errors": errors,
        "connections": args.connections,
    });
    println!("{result}");
    Ok(())
}
