//! Loading a configuration with many services.
//! Run: `cargo bench -p baton-config --bench load`.

use std::hint::black_box;
use std::path::Path;

use baton_config::Config;
use criterion::{criterion_group, criterion_main, Criterion};

fn config_text(services: usize) -> String {
    let mut text = String::from("[proxy]\nlisten = [\"127.0.0.1:8080\"]\n");
    for i in 0..services {
        text.push_str(&format!(
            "\n[services.svc{i}]\nhosts = [\"svc{i}.example.com\"]\ncommand = [\"app\", \"--port\", \"{{port}}\"]\n\
             env = {{ APP_VERSION = \"{{version}}\" }}\n[services.svc{i}.health]\ninterval = \"1s\"\n"
        ));
    }
    text
}

fn load(c: &mut Criterion) {
    let text = config_text(10_000);
    let mut group = c.benchmark_group("config");
    group.sample_size(10);
    group.bench_function("parse_10000_services", |b| {
        b.iter(|| {
            black_box(
                Config::parse(Path::new("/bench/baton.toml"), &text).map(|c| c.services.len()),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
