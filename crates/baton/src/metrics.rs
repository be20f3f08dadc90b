//! `[metrics] listen`: Prometheus exposition of what the proxy and the
//! orchestrator know: open client connections; per service, color and
//! version, requests by status class, a latency histogram, upstream errors,
//! requests in flight and upgraded connections, each release's share of the
//! traffic; per service, deploys by outcome and switch and drain durations.
//!
//! Counters come from each pool's own [`Stats`](baton_proxy::stats::Stats),
//! so they start again when a pool is made anew (a restart, an instant
//! rollback): Prometheus's `rate()` treats that as the reset it is.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use baton_orchestrator::{Durations, Orchestrator, RoutedPool};
use baton_proxy::stats::BOUNDS_US;
use baton_proxy::Proxy;
use tokio::net::TcpListener;

/// The histogram's buckets as exposed, in seconds (Prometheus clients'
/// defaults); each is also a bound of the finer buckets kept in memory.
const EXPOSED_SECONDS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What the exposition reads.
#[derive(Clone)]
pub struct Sources {
    pub orchestrator: Arc<Orchestrator>,
    pub proxy: Arc<Proxy>,
}

/// Serves `/metrics` until the process ends.
pub async fn serve(listener: TcpListener, sources: Sources) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(sources);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics listener stopped");
    }
}

async fn metrics(State(sources): State<Sources>) -> impl IntoResponse {
    let orchestrator = &sources.orchestrator;
    let mut out = String::with_capacity(8192);
    family(
        &mut out,
        "baton_client_connections",
        "gauge",
        "Client connections open on the proxy's listeners.",
    );
    let _ = writeln!(
        out,
        "baton_client_connections {}",
        sources.proxy.client_connections()
    );
    render_pools(&mut out, &orchestrator.routed());
    render_durations(&mut out, &orchestrator.durations());
    match orchestrator.deploy_counts() {
        Ok(counts) => {
            family(
                &mut out,
                "baton_deploys_total",
                "counter",
                "Finished deploys and rollbacks, by outcome.",
            );
            for (service, kind, phase, n) in counts {
                let result = if phase == baton_core::Phase::Done {
                    "done"
                } else {
                    "failed"
                };
                let kind = format!("{kind:?}").to_lowercase();
                let labels = format!(
                    "service=\"{}\",kind=\"{kind}\",result=\"{result}\"",
                    escape(&service)
                );
                let _ = writeln!(out, "baton_deploys_total{{{labels}}} {n}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read deploy counts"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

fn render_pools(out: &mut String, pools: &[RoutedPool]) {
    let labels: Vec<String> = pools
        .iter()
        .map(|p| {
            format!(
                "service=\"{}\",color=\"{}\",version=\"{}\"",
                escape(&p.service),
                p.pool.color,
                escape(&p.pool.version)
            )
        })
        .collect();
    let snaps: Vec<_> = pools.iter().map(|p| p.pool.stats.snapshot()).collect();

    family(
        out,
        "baton_requests_total",
        "counter",
        "Requests answered, by release and status class.",
    );
    for (l, s) in labels.iter().zip(&snaps) {
        for (i, n) in s.by_class.iter().enumerate() {
            let _ = writeln!(out, "baton_requests_total{{{l},code=\"{}xx\"}} {n}", i + 1);
        }
    }

    family(
        out,
        "baton_request_duration_seconds",
        "histogram",
        "Time from routing a request to the end of its answer.",
    );
    for (l, s) in labels.iter().zip(&snaps) {
        let mut fine = BOUNDS_US.iter().zip(s.latency.iter()).peekable();
        let mut cumulative = 0;
        for le in EXPOSED_SECONDS {
            let le_us = (le * 1e6).round() as u64;
            while let Some((_, n)) = fine.next_if(|(bound, _)| **bound <= le_us) {
                cumulative += n;
            }
            let _ = writeln!(
                out,
                "baton_request_duration_seconds_bucket{{{l},le=\"{le}\"}} {cumulative}"
            );
        }
        let count: u64 = s.latency.iter().sum();
        let _ = writeln!(
            out,
            "baton_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "baton_request_duration_seconds_sum{{{l}}} {}",
            s.latency_sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "baton_request_duration_seconds_count{{{l}}} {count}");
    }

    family(
        out,
        "baton_upstream_errors_total",
        "counter",
        "Attempts toward a target that failed (unreachable, reset, bad answer).",
    );
    for (l, s) in labels.iter().zip(&snaps) {
        let _ = writeln!(
            out,
            "baton_upstream_errors_total{{{l}}} {}",
            s.upstream_errors
        );
    }

    family(
        out,
        "baton_in_flight",
        "gauge",
        "Requests and upgraded connections using the release now.",
    );
    for (l, p) in labels.iter().zip(pools) {
        let _ = writeln!(out, "baton_in_flight{{{l}}} {}", p.pool.in_flight());
    }

    family(
        out,
        "baton_upgraded_connections",
        "gauge",
        "Upgraded (WebSocket) connections open to the release.",
    );
    for (l, p) in labels.iter().zip(pools) {
        let open: usize = p.pool.targets().iter().map(|t| t.upgraded()).sum();
        let _ = writeln!(out, "baton_upgraded_connections{{{l}}} {open}");
    }

    family(
        out,
        "baton_traffic_weight_ratio",
        "gauge",
        "The share of new requests the release gets (0 to 1).",
    );
    for (l, p) in labels.iter().zip(pools) {
        let _ = writeln!(
            out,
            "baton_traffic_weight_ratio{{{l},role=\"{}\"}} {}",
            p.role,
            p.weight.percent() / 100.0
        );
    }
}

fn render_durations(out: &mut String, all: &[(&str, &Durations, &Durations)]) {
    summary(
        out,
        "baton_switch_duration_seconds",
        "Time to move a service's traffic (the route table swap).",
        all.iter()
            .map(|(service, switches, _)| (*service, *switches)),
    );
    summary(
        out,
        "baton_drain_duration_seconds",
        "Time for a release leaving traffic to finish what it served.",
        all.iter().map(|(service, _, drains)| (*service, *drains)),
    );
}

fn summary<'a>(
    out: &mut String,
    name: &str,
    help: &str,
    per_service: impl Iterator<Item = (&'a str, &'a Durations)>,
) {
    family(out, name, "summary", help);
    for (service, d) in per_service {
        let l = format!("service=\"{}\"", escape(service));
        let _ = writeln!(out, "{name}_sum{{{l}}} {}", d.sum().as_secs_f64());
        let _ = writeln!(out, "{name}_count{{{l}}} {}", d.count());
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value as the exposition format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
