//! Per-request routing cost and switch cost as the number of services grows.
//! Run: `cargo bench -p baton-proxy --bench routing`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use baton_config::HostPattern;
use baton_core::Color;
use baton_proxy::{HostTable, Pool, Router, Service, Target};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn pool(i: usize, color: Color) -> Arc<Pool> {
    let targets = (0..2u16)
        .map(|t| {
            Arc::new(Target::with_health(
                SocketAddr::from(([127, 0, 0, 1], 10_000 + t)),
                true,
            ))
        })
        .collect();
    Arc::new(Pool::new(color, format!("v{i}"), targets))
}

/// `n` services, each on its own host, each with a live pool.
fn table(n: usize) -> (Router, Vec<Arc<Service>>, Vec<String>) {
    let hosts: Vec<String> = (0..n).map(|i| format!("svc{i}.example.com")).collect();
    let services: Vec<Arc<Service>> = (0..n)
        .map(|i| Arc::new(Service::new(format!("svc{i}"))))
        .collect();
    for (i, s) in services.iter().enumerate() {
        s.switch(pool(i, Color::Blue));
    }
    let patterns: Vec<Vec<HostPattern>> = hosts
        .iter()
        .map(|h| vec![HostPattern::Exact(h.clone())])
        .collect();
    let router = Router::default();
    router.set(HostTable::new(
        patterns
            .iter()
            .map(Vec::as_slice)
            .zip(services.iter().cloned()),
    ));
    (router, services, hosts)
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_and_pick");
    for n in [10, 1_000, 100_000] {
        let (router, _services, hosts) = table(n);
        let mut i = 0usize;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                i = (i + 7919) % hosts.len();
                black_box(router.probe(Some(hosts[i].as_str())))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("switch_one_service");
    for n in [10, 1_000, 100_000] {
        let (_router, services, _hosts) = table(n);
        let (blue, green) = (pool(0, Color::Blue), pool(0, Color::Green));
        let mut flip = false;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                flip = !flip;
                let next = if flip { green.clone() } else { blue.clone() };
                black_box(services[n / 2].switch(next))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
