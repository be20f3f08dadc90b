//! The proxy's basics, through a real `baton serve`: HTTP/1.1 keep-alive,
//! HTTP/2 (h2c), WebSockets, routing by Host, the headers the app receives,
//! and clear answers when nothing can serve a request.

mod support;
use support::*;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Every request of these tests must be answered well within this.
const ANSWER: Duration = Duration::from_secs(5);

fn one_service() -> Baton {
    let mut b = Baton::new(&web_service());
    b.start();
    b
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async { tokio::time::timeout(ANSWER, f).await.expect("timed out") })
}

/// An HTTP/1.1 connection to the proxy.
async fn h1(port: u16) -> http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// One GET on `sender`: (status, body).
async fn send(
    sender: &mut http1::SendRequest<Empty<Bytes>>,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender.ready().await.unwrap();
    let resp = sender
        .send_request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, text(&body))
}

/// GET `/headers` through the proxy with `headers` sent: what the app got,
/// as name to values.
fn app_saw(port: u16, headers: &[(&str, &str)]) -> BTreeMap<String, Vec<String>> {
    let (status, body) = block_on(async {
        let mut sender = h1(port).await;
        send(&mut sender, "/headers", headers).await
    });
    assert_eq!(status, 200, "{body}");
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in body.lines() {
        let (name, value) = line.split_once(": ").unwrap_or((line, ""));
        seen.entry(name.to_string())
            .or_default()
            .push(value.to_string());
    }
    seen
}

#[test]
fn http1_keep_alive_serves_several_requests_on_one_connection() {
    let b = one_service();
    b.ok(&["deploy", "web", "v1"]);
    block_on(async {
        let mut sender = h1(b.port).await;
        for path in ["/", "/a", "/slow?ms=20", "/"] {
            let answer = send(&mut sender, path, &[("host", "app.test")]).await;
            assert_eq!((answer.0, answer.1.trim()), (200, "version=v1"), "{path}");
        }
        assert!(
            !sender.is_closed(),
            "the proxy closed a keep-alive connection"
        );
    });
}

#[test]
fn http2_prior_knowledge_h2c() {
    let b = one_service();
    b.ok(&["deploy", "web", "v1"]);
    block_on(async {
        let stream = TcpStream::connect(("127.0.0.1", b.port)).await.unwrap();
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        // Several streams at once on the one connection.
        let requests = (0..3).map(|i| {
            let mut sender = sender.clone();
            let uri = format!("http://127.0.0.1:{}/r{i}", b.port);
            async move {
                let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let (version, status) = (resp.version(), resp.status().as_u16());
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (version, status, text(&body))
            }
        });
        for (version, status, body) in futures_util::future::join_all(requests).await {
            assert_eq!(version, Version::HTTP_2);
            assert_eq!((status, body.trim()), (200, "version=v1"));
        }
    });
}

#[test]
fn websocket_through_the_proxy() {
    let b = one_service();
    b.ok(&["deploy", "web", "v1"]);
    block_on(async {
        let url = format!("ws://127.0.0.1:{}/ws", b.port);
        let (mut ws, resp) = tokio_tungstenite::connect_async(url).await.unwrap();
        assert_eq!(resp.status().as_u16(), 101);
        for m in ["hi", "again"] {
            ws.send(Message::Text(m.into())).await.unwrap();
            let answer = loop {
                match ws.next().await.expect("the socket closed").unwrap() {
                    Message::Text(t) => break t.to_string(),
                    Message::Ping(_) | Message::Pong(_) => continue,
                    other => panic!("unexpected {other:?}"),
                }
            };
            assert_eq!(answer, format!("v1:{m}"));
        }
        ws.close(None).await.unwrap();
    });
}

#[test]
fn routes_by_host() {
    let mut b = Baton::new(&format!(
        "[services.a]\nhosts = [\"a.test\"]\ncommand = {app}\n\
         [services.a.health]\ninterval = \"100ms\"\n\
         [services.b]\nhosts = [\"*\"]\ncommand = {app}\n\
         [services.b.health]\ninterval = \"100ms\"\n",
        app = sample_app(&[])
    ));
    b.start();
    b.ok(&["deploy", "b", "b1"]);
    // a has no live release yet: its requests are not sent to b.
    assert_eq!(get_host(&b.url("/"), "a.test").0, 503);
    b.ok(&["deploy", "a", "a1"]);
    for (host, want) in [
        ("a.test", "version=a1"),
        ("A.Test:8080", "version=a1"),
        ("b.test", "version=b1"),
        ("sub.a.test", "version=b1"),
        ("127.0.0.1", "version=b1"),
    ] {
        let answer = get_host(&b.url("/"), host);
        assert_eq!((answer.0, answer.1.trim()), (200, want), "Host: {host}");
    }
}

#[test]
fn forwarding_headers_reach_the_app() {
    let b = one_service();
    b.ok(&["deploy", "web", "v1"]);
    let first = app_saw(b.port, &[("host", "app.test")]);
    let one = |name: &str| -> String {
        let values = first
            .get(name)
            .unwrap_or_else(|| panic!("no {name}: {first:?}"));
        assert_eq!(values.len(), 1, "{name}: {values:?}");
        values[0].clone()
    };
    assert_eq!(one("host"), "app.test");
    assert_eq!(one("x-forwarded-for"), "127.0.0.1");
    assert_eq!(one("x-forwarded-proto"), "http");
    assert_eq!(one("x-forwarded-host"), "app.test");
    let id = one("x-request-id");
    assert!(!id.is_empty());
    let second = app_saw(b.port, &[("host", "app.test")]);
    assert_ne!(second["x-request-id"], vec![id], "request ids repeat");

    // What the client already set is extended or kept.
    let relayed = app_saw(
        b.port,
        &[
            ("host", "app.test"),
            ("x-forwarded-for", "10.9.8.7"),
            ("x-request-id", "abc-123"),
        ],
    );
    assert_eq!(relayed["x-forwarded-for"], vec!["10.9.8.7, 127.0.0.1"]);
    assert_eq!(relayed["x-request-id"], vec!["abc-123"]);
}

#[test]
fn hop_by_hop_headers_stop_at_the_proxy() {
    let b = one_service();
    b.ok(&["deploy", "web", "v1"]);
    let seen = app_saw(
        b.port,
        &[
            ("host", "app.test"),
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "yes"),
        ],
    );
    assert_eq!(
        seen.get("x-kept"),
        Some(&vec!["yes".to_string()]),
        "{seen:?}"
    );
    for gone in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(!seen.contains_key(gone), "{gone} reached the app: {seen:?}");
    }
    assert!(
        !seen
            .get("connection")
            .is_some_and(|v| v.iter().any(|c| c.contains("x-hop") || c.contains("close"))),
        "the client's Connection header reached the app: {seen:?}"
    );
}

#[test]
fn no_live_release_is_a_503_not_a_hang() {
    let b = one_service();
    let started = Instant::now();
    let (status, body) = get(&b.url("/"));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no live release"), "{body}");
    // And the same through a kept-alive connection, twice.
    block_on(async {
        let mut sender = h1(b.port).await;
        for _ in 0..2 {
            assert_eq!(send(&mut sender, "/", &[("host", "x")]).await.0, 503);
        }
    });
}

#[test]
fn unclaimed_host_is_a_404_without_a_default_service() {
    let mut b = Baton::new(&format!(
        "[services.a]\nhosts = [\"a.test\"]\ncommand = {}\n[services.a.health]\ninterval = \"100ms\"\n",
        sample_app(&[])
    ));
    b.start();
    b.ok(&["deploy", "a", "a1"]);
    assert_eq!(get_host(&b.url("/"), "a.test").1.trim(), "version=a1");
    let (status, body) = get_host(&b.url("/"), "z.test");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no service for this host"), "{body}");
}

#[test]
fn a_target_slower_than_the_response_timeout_is_a_504() {
    let mut b = Baton::new(&web_service());
    let config = read(&b.config).replace("[proxy]\n", "[proxy]\nresponse_timeout = \"1s\"\n");
    std::fs::write(&b.config, config).unwrap();
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    let started = Instant::now();
    let (status, body) = get(&b.url("/slow?ms=4000"));
    assert_eq!(status, 504, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(
        get(&b.url("/")).0,
        200,
        "the target still serves normal requests"
    );
}

#[test]
fn a_target_that_died_is_a_502_or_503_never_a_hang() {
    let b = one_service();
    b.ok(&["deploy", "web", "v1"]);
    for pid in b.app_pids("v1") {
        // SAFETY: kill(2) on a pid this test's own baton started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    wait_until("the app to be gone", Duration::from_secs(10), || {
        b.app_pids("v1").is_empty()
    });
    let started = Instant::now();
    let (status, _) = get(&b.url("/"));
    assert!(status == 502 || status == 503, "got {status}");
    assert!(started.elapsed() < ANSWER);
    wait_until(
        "the proxy's health check to take the target out",
        Duration::from_secs(10),
        || b.status("web")["active"]["targets"][0]["healthy"] == false,
    );
    assert_eq!(get(&b.url("/")).0, 503);
}

/// baton's heap is built without transparent huge pages (see main.rs): where
/// the system grants them on request, a heap on them grows 2 MiB at a time,
/// which on a proxy holding many small idle connections is mostly waste.
#[test]
fn the_heap_is_not_on_huge_pages() {
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if !thp.contains("[madvise]") {
        // "always" gives huge pages unasked, "never" to no one: nothing to tell.
        eprintln!("skipped: transparent huge pages are not granted on request here ({thp:?})");
        return;
    }
    let b = one_service();
    b.ok(&["deploy", "web", "v1"]);
    for _ in 0..100 {
        assert_eq!(get(&b.url("/")).0, 200);
    }
    let pid = b.serve_pid().expect("baton serve runs");
    let rollup = read(Path::new(&format!("/proc/{pid}/smaps_rollup")));
    let huge: u64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("AnonHugePages in smaps_rollup");
    assert_eq!(huge, 0, "baton serve has {huge} KiB on huge pages");
}

/// `baton serve`'s listeners defer accepting: a client that connects and
/// says nothing yet is held by the kernel (SYN-RECV on the listener's side,
/// as `ss` lists it) rather than handed to baton at once.
#[test]
fn a_silent_connect_waits_in_the_kernel_for_its_request() {
    let b = one_service();
    let client = std::net::TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    let connected = Instant::now();
    let mine = client.local_addr().unwrap().to_string();
    let out = std::process::Command::new("ss")
        .args(["-Htn", "state", "syn-recv", &format!("sport = :{}", b.port)])
        .output()
        .expect("ss (iproute2) runs");
    // After a second the kernel sends its SYN-ACK again, and the client's
    // answer hands the connection over: too slow a machine tells nothing.
    if connected.elapsed() >= Duration::from_millis(900) {
        eprintln!("skipped: ss took {:?}", connected.elapsed());
        return;
    }
    let held = String::from_utf8_lossy(&out.stdout);
    assert!(
        held.split_whitespace().any(|field| field == mine),
        "{mine} not waiting for its request: {held:?}"
    );
}
