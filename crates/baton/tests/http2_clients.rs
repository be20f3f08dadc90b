//! HTTP/2 through a real `baton serve`, from the clients people use: curl,
//! nghttp and h2load (nghttp2), each with its own HTTP/2 and HPACK code.
//! Bodies both ways, small flow-control windows, many streams at once, and
//! what the app receives.

mod support;
use support::*;

use std::process::Command;

fn one_service() -> Baton {
    let mut b = Baton::new(&web_service());
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    b
}

/// Runs a client to its end; panics with its output if it failed.
fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not run (the test command installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A body no two runs share and no compressor shrinks.
fn random_body(len: usize) -> Vec<u8> {
    let mut state = std::process::id() as u64 | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[test]
fn curl_sends_and_gets_bodies_and_the_app_sees_its_fields() {
    let b = one_service();
    let body = random_body(3 << 20);
    let file = b.path("upload.bin");
    std::fs::write(&file, &body).unwrap();
    let file_arg = format!("@{}", file.display());
    // /echo streams the body back chunked: both directions at once.
    let echoed = run(
        "curl",
        &[
            "-sS",
            "--fail",
            "--http2-prior-knowledge",
            "--data-binary",
            &file_arg,
            &b.url("/echo"),
        ],
    );
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the echo differs from what was sent");

    let seen = text(&run(
        "curl",
        &[
            "-sS",
            "--fail",
            "--http2-prior-knowledge",
            "-H",
            "Cookie: a=1",
            "-H",
            "X-Custom: two words",
            &b.url("/headers"),
        ],
    ));
    let authority = format!("127.0.0.1:{}", b.port);
    for line in [
        format!("host: {authority}"),
        "cookie: a=1".to_string(),
        "x-custom: two words".to_string(),
        "x-forwarded-for: 127.0.0.1".to_string(),
        format!("x-forwarded-host: {authority}"),
    ] {
        assert!(seen.lines().any(|l| l == line), "no {line:?} in:\n{seen}");
    }
    assert!(!seen.contains("transfer-encoding"), "{seen}");
}

#[test]
fn nghttp_uploads_through_small_windows() {
    let b = one_service();
    let body = random_body(1 << 20);
    let file = b.path("upload.bin");
    std::fs::write(&file, &body).unwrap();
    let path = file.display().to_string();
    // 16 KiB per stream, 64 KiB per connection: the echo has to wait on
    // WINDOW_UPDATEs all the way, and baton on the client's.
    let echoed = run(
        "nghttp",
        &["-w", "14", "-W", "16", "-d", &path, &b.url("/echo")],
    );
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the echo differs from what was sent");
}

#[test]
fn h2load_many_streams_on_few_connections_all_succeed() {
    let b = one_service();
    let out = text(&run(
        "h2load",
        &[
            "-n",
            "5000",
            "-c",
            "4",
            "-m",
            "64",
            "-w",
            "12",
            "-W",
            "16",
            &b.url("/"),
        ],
    ));
    assert!(
        out.contains("5000 succeeded, 0 failed, 0 errored"),
        "h2load:\n{out}"
    );
    assert!(out.contains("status codes: 5000 2xx"), "h2load:\n{out}");
}
