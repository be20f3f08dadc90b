//! The HTTP/1.1 path against targets and clients that behave at the edges
//! of the protocol, written as raw sockets so each behaviour is exact: an app
//! that closes a kept-alive connection just as it is reused (mechanism 3 of
//! `where-requests-get-lost.md`), an answer delimited by closing, and clients
//! that go quiet (the idle timeout, for HTTP/1.1 and HTTP/2).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_config::HostPattern;
use baton_core::Color;
use baton_proxy::{HostTable, Pool, Proxy, Service, Target, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ANSWER: Duration = Duration::from_secs(10);

/// A proxy on a free port whose only route is `target`.
async fn proxy_to(target: SocketAddr) -> (Proxy, SocketAddr) {
    proxy_with_idle_timeout(target, Duration::from_secs(30)).await
}

async fn proxy_with_idle_timeout(target: SocketAddr, idle: Duration) -> (Proxy, SocketAddr) {
    proxy_with(target, Duration::from_secs(5), idle).await
}

async fn proxy_with(target: SocketAddr, response: Duration, idle: Duration) -> (Proxy, SocketAddr) {
    let (proxy, addr, _) = proxy_serving(target, response, idle).await;
    (proxy, addr)
}

/// A proxy whose one service `app` has `target` live; the service too.
async fn proxy_serving(
    target: SocketAddr,
    response: Duration,
    idle: Duration,
) -> (Proxy, SocketAddr, Arc<Service>) {
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        response,
        idle,
    };
    let proxy = Proxy::new(timeouts, 1).unwrap();
    let service = Arc::new(Service::new("app"));
    let pool = Pool::new(
        Color::Blue,
        "v1",
        vec![Arc::new(Target::with_health(target, true))],
    );
    service.switch(Arc::new(pool));
    proxy.router().set(HostTable::new([(
        &[HostPattern::Default][..],
        service.clone(),
    )]));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = proxy.serve(listener).unwrap();
    (proxy, addr, service)
}

/// Serves `answer_one` on every connection it accepts; counts connections.
async fn backend<F, Fut>(answer_one: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let answer_one = Arc::new(answer_one);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn((answer_one.clone())(conn));
        }
    });
    (addr, accepted)
}

/// Reads one request head (and a body of `content-length`, if any).
async fn read_request(conn: &mut TcpStream) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if seen.len() >= end + 4 + length {
                return Some(head);
            }
        }
        match conn.read(&mut buf).await {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// One request on a kept-alive client connection: status line and body.
async fn exchange(client: &mut TcpStream, request: &str) -> String {
    client.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(ANSWER, async {
        loop {
            let text = String::from_utf8_lossy(&seen).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .to_ascii_lowercase()
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                if seen.len() >= end + 4 + length {
                    return text;
                }
            }
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "the proxy closed the connection: {text}");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("answered in time")
}

#[tokio::test]
async fn a_get_lost_to_a_closing_app_connection_is_sent_again_but_a_post_is_not() {
    // Answers the first request on each connection, then reads the next
    // and closes without answering: the app's keep-alive timer firing just
    // as the proxy reuses the connection.
    let (target, accepted) = backend(|mut conn| async move {
        if read_request(&mut conn).await.is_some() {
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            let _ = read_request(&mut conn).await;
        }
    })
    .await;
    let (_proxy, addr) = proxy_to(target).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let get = "GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    for i in 0..3 {
        let answer = exchange(&mut client, get).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "GET {i}: {answer}");
    }
    assert!(
        accepted.load(Ordering::SeqCst) >= 3,
        "every GET after the first needed a fresh connection"
    );

    // The pooled connection has served its one request: the POST on it
    // meets the closing app, and the app may have seen it.
    let post = "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi";
    let answer = exchange(&mut client, post).await;
    assert!(
        answer.starts_with("HTTP/1.1 502"),
        "a POST the app may have seen must not be sent twice: {answer}"
    );
}

#[tokio::test]
async fn an_answer_delimited_by_close_reaches_the_client_whole_then_closes() {
    let body = "x".repeat(100_000);
    let sent = body.clone();
    let (target, _) = backend(move |mut conn| {
        let sent = sent.clone();
        async move {
            if read_request(&mut conn).await.is_some() {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
                let _ = conn.write_all(sent.as_bytes()).await;
            }
        }
    })
    .await;
    let (_proxy, addr) = proxy_to(target).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let mut all = String::new();
    tokio::time::timeout(ANSWER, client.read_to_string(&mut all))
        .await
        .expect("the proxy closes when the body ends")
        .unwrap();
    let (head, got) = all.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(got.len(), body.len());
}

/// Answers every request on a connection with `ok`, for as long as it is open.
async fn ok_backend() -> SocketAddr {
    backend(|mut conn| async move {
        while read_request(&mut conn).await.is_some() {
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if conn.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await
    .0
}

/// Waits for the proxy to close `client`; returns how long that took.
async fn closed_within(client: &mut TcpStream, limit: Duration) -> Duration {
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, client.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => started.elapsed(),
        Ok(Ok(n)) => panic!("unexpected bytes: {:?}", &buf[..n]),
        Err(_) => panic!("the proxy kept an idle connection open past {limit:?}"),
    }
}

#[tokio::test]
async fn idle_clients_are_closed_after_the_idle_timeout_and_busy_ones_are_not() {
    let idle = Duration::from_millis(800);
    let (_proxy, addr) = proxy_with_idle_timeout(ok_backend().await, idle).await;
    let get = "GET / HTTP/1.1\r\nhost: a\r\n\r\n";

    // A connection that keeps asking, more often than the timeout, stays.
    let mut busy = TcpStream::connect(addr).await.unwrap();
    for _ in 0..8 {
        assert!(exchange(&mut busy, get).await.starts_with("HTTP/1.1 200"));
        tokio::time::sleep(idle / 3).await;
    }

    // One that goes quiet after a request is closed, not before its time.
    let mut quiet = TcpStream::connect(addr).await.unwrap();
    assert!(exchange(&mut quiet, get).await.starts_with("HTTP/1.1 200"));
    let took = closed_within(&mut quiet, ANSWER).await;
    assert!(
        took >= idle * 9 / 10,
        "closed after {took:?}, before the timeout"
    );

    // One that never finishes its head is closed too.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled.write_all(b"GET / HTTP/1.1\r\nho").await.unwrap();
    closed_within(&mut stalled, ANSWER).await;

    // And one that never sends anything.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    closed_within(&mut silent, ANSWER).await;

    // One that connects and asks only later is served: its first read found
    // nothing, so it waits for the request like a kept-alive connection.
    let mut late = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(idle / 3).await;
    assert!(exchange(&mut late, get).await.starts_with("HTTP/1.1 200"));
}

/// An HTTP/2 (prior knowledge) connection to the proxy.
async fn h2_client<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    h2_connection(TcpStream::connect(addr).await.unwrap())
        .await
        .0
}

/// An HTTP/2 connection over `stream`: its sender, and its driver, which
/// ends when the proxy closes the connection.
async fn h2_connection<B>(
    stream: TcpStream,
) -> (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
)
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    (h2, tokio::spawn(conn))
}

/// A GET of `uri` over `h2`, answered in time.
async fn h2_get(
    h2: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    uri: &str,
) -> hyper::Response<hyper::body::Incoming> {
    let req = hyper::Request::get(uri)
        .body(http_body_util::Empty::new())
        .unwrap();
    tokio::time::timeout(ANSWER, h2.send_request(req))
        .await
        .expect("answered in time")
        .unwrap()
}

/// The idle timeout for HTTP/2: a connection with no stream open is sent a
/// GOAWAY and closed after one to one and a half timeouts, while one whose
/// stream waits on a slow target for longer than that is served and stays
/// open for more.
#[tokio::test]
async fn idle_http2_clients_are_closed_after_the_idle_timeout_and_busy_ones_are_not() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};

    let (target, _) = backend(|mut conn| async move {
        while let Some(head) = read_request(&mut conn).await {
            if head.starts_with("get /slow") {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if conn.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let idle = Duration::from_secs(1);
    let (_proxy, addr) = proxy_with_idle_timeout(target, idle).await;
    let get = |path: &str| {
        hyper::Request::get(format!("http://app.test{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };

    let (mut busy, busy_conn) = h2_connection(TcpStream::connect(addr).await.unwrap()).await;
    let mut slow_sender = busy.clone();
    let slow = tokio::spawn(async move {
        let resp = slow_sender.send_request(get("/slow")).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });

    let (mut quiet, quiet_conn) = h2_connection(TcpStream::connect(addr).await.unwrap()).await;
    let resp = quiet.send_request(get("/")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let started = std::time::Instant::now();
    // Closed within one and a half timeouts; the deadline leaves slack for
    // a loaded machine while still failing a connection left open.
    tokio::time::timeout(idle * 5, quiet_conn)
        .await
        .expect("the proxy closed the idle HTTP/2 connection in time")
        .unwrap()
        .expect("closed with a GOAWAY, not cut");
    let took = started.elapsed();
    assert!(
        took >= idle * 9 / 10,
        "closed after {took:?}, before the timeout"
    );

    let (status, body) = tokio::time::timeout(ANSWER, slow)
        .await
        .expect("the slow request was answered")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"ok");
    // Still open, with no GOAWAY: it takes another request.
    assert!(!busy_conn.is_finished(), "the busy connection stays open");
    let resp = tokio::time::timeout(ANSWER, busy.send_request(get("/")))
        .await
        .expect("answered in time")
        .expect("the busy connection takes another request");
    assert_eq!(resp.status(), 200);
}

/// A client that stops answering (here: never acknowledges a PING) while
/// its stream waits on the target is closed after a PING goes unanswered,
/// long before the target answers or the stream times out.
#[tokio::test]
async fn an_http2_client_that_leaves_a_ping_unanswered_is_closed() {
    let (target, _) = backend(|mut conn| async move {
        let _ = read_request(&mut conn).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let idle = Duration::from_secs(1);
    let (_proxy, addr) = proxy_with(target, Duration::from_secs(20), idle).await;

    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
                                                             // HEADERS on stream 1, END_STREAM | END_HEADERS: GET http://a/slow in
                                                             // HPACK (static-table method, scheme; literal path and authority).
    let block = [
        0x82, 0x86, 0x44, 5, b'/', b's', b'l', b'o', b'w', 0x41, 1, b'a',
    ];
    opening.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1]);
    opening.extend_from_slice(&block);
    client.write_all(&opening).await.unwrap();

    // Read what the proxy sends (its SETTINGS, PINGs), answering nothing.
    let started = std::time::Instant::now();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(idle * 5, async {
        while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection was still open {:?} after an unanswered PING",
        started.elapsed()
    );
}

/// Reads one request, head and body (by length or chunked), as raw bytes.
async fn read_raw_request(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
            let body = &seen[end + 4..];
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap());
            let done = match length {
                Some(n) => body.len() >= n,
                None if head.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
                None => true,
            };
            if done {
                return Some(seen);
            }
        }
        match conn.read(&mut buf).await {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

#[tokio::test]
async fn http2_clients_reach_http11_targets_over_the_same_pool() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};
    use hyper::body::Frame;

    // Answers with the request exactly as it arrived, chunked.
    let (target, accepted) = backend(|mut conn| async move {
        while let Some(raw) = read_raw_request(&mut conn).await {
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n{:x}\r\n",
                raw.len()
            )
            .into_bytes();
            answer.extend_from_slice(&raw);
            answer.extend_from_slice(b"\r\n0\r\n\r\n");
            if conn.write_all(&answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let (_proxy, addr) = proxy_to(target).await;
    let mut h2 = h2_client(addr).await;

    type Sent = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
    async fn seen_by_target(
        h2: &mut hyper::client::conn::http2::SendRequest<Sent>,
        req: hyper::Request<Sent>,
    ) -> String {
        let resp = tokio::time::timeout(ANSWER, h2.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().get("transfer-encoding").is_none());
        assert!(resp.headers().get("connection").is_none());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).to_ascii_lowercase()
    }

    // A GET with its cookie split in two fields, as HTTP/2 allows.
    let get = hyper::Request::get("http://app.test/p?q=1")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Full::new(Bytes::new()).boxed())
        .unwrap();
    let saw = seen_by_target(&mut h2, get).await;
    assert!(saw.starts_with("get /p?q=1 http/1.1\r\n"), "{saw}");
    assert!(saw.contains("host: app.test\r\n"), "{saw}");
    assert!(saw.contains("cookie: a=1; b=2\r\n"), "{saw}");
    assert!(saw.contains("x-forwarded-proto: http\r\n"), "{saw}");

    // A body of unknown length goes chunked.
    let frames = futures_util::stream::iter(
        ["ab", "c"].map(|s| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(s)))),
    );
    let post = hyper::Request::post("http://app.test/up")
        .body(StreamBody::new(frames).boxed())
        .unwrap();
    let saw = seen_by_target(&mut h2, post).await;
    assert!(saw.contains("transfer-encoding: chunked\r\n"), "{saw}");
    assert!(
        saw.ends_with("\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"),
        "{saw}"
    );

    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "both requests went over one pooled connection"
    );
}

#[tokio::test]
async fn an_http2_request_the_target_never_answers_is_a_504_in_time() {
    let (target, _) = backend(|mut conn| async move {
        // Reads the request and says nothing, for longer than the timeout.
        let _ = read_request(&mut conn).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let timeout = Duration::from_millis(500);
    let (_proxy, addr) = proxy_with(target, timeout, Duration::from_secs(30)).await;
    let mut h2 = h2_client(addr).await;
    let started = std::time::Instant::now();
    let resp = h2_get(&mut h2, "http://app.test/").await;
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() >= timeout, "504 before the timeout");
}

/// A served listener's accept queue is as deep as the system allows (the
/// standard library's is 128), as `ss` reports it.
#[tokio::test]
async fn a_served_listener_queues_what_the_system_allows() {
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("somaxconn")
        .trim()
        .parse()
        .expect("a number");
    let (_proxy, addr) = proxy_with_idle_timeout(ok_backend().await, ANSWER).await;
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{}", addr.port())])
        .output()
        .expect("ss (iproute2) runs");
    let listing = String::from_utf8_lossy(&out.stdout);
    // State, Recv-Q, Send-Q (for a listener: its backlog), ...
    let backlog: usize = listing
        .split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no listener in: {listing:?}"));
    assert_eq!(backlog, somaxconn);
}

/// On a listener with `defer_accept`, a connection reaches the proxy with its
/// first bytes: one that says nothing is not handed over, even though it
/// connected before one that asks, which is served at once.
#[tokio::test]
async fn a_deferred_listener_hands_over_connections_with_their_request() {
    let (proxy, _) = proxy_with_idle_timeout(ok_backend().await, Duration::from_secs(30)).await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    if !baton_proxy::defer_accept(&listener) {
        eprintln!("skipped: no TCP_DEFER_ACCEPT here");
        return;
    }
    let addr = proxy.serve(listener).unwrap();
    // The accept queue is in order: accepted at once, the silent one would
    // be open before the other is answered.
    let connected = std::time::Instant::now();
    let _silent = TcpStream::connect(addr).await.unwrap();
    let mut asking = TcpStream::connect(addr).await.unwrap();
    let get = "GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    assert!(exchange(&mut asking, get).await.starts_with("HTTP/1.1 200"));
    let open = proxy.client_connections();
    // After a second the kernel sends its SYN-ACK again, and the silent
    // client's answer hands it over: too slow a machine tells nothing.
    if connected.elapsed() >= Duration::from_millis(900) {
        eprintln!("skipped: {:?} to connect and ask", connected.elapsed());
        return;
    }
    assert_eq!(open, 1, "the connection that sent nothing was handed over");
}

#[tokio::test]
async fn many_idle_connections_are_parked_and_still_served_and_timed_out() {
    // More connections than a worker keeps as tasks while idle (256): the
    // idle ones beyond are parked, woken by their next request.
    const KEPT: usize = 256;
    const CONNECTIONS: usize = 300;
    let idle = Duration::from_secs(6);
    let (proxy, addr) = proxy_with_idle_timeout(ok_backend().await, idle).await;
    let get = "GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..KEPT {
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(exchange(&mut c, get).await.starts_with("HTTP/1.1 200"));
        clients.push(c);
    }
    // The listener, the sweeps and the connections kept as tasks.
    let kept = proxy.tasks();
    let settled = |what: &str| {
        let deadline = std::time::Instant::now() + idle / 3;
        let what = what.to_owned();
        let proxy = &proxy;
        async move {
            while proxy.tasks() > kept {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} tasks, {kept} before: {what}",
                    proxy.tasks()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    // The rest ask only once the proxy has found nothing to read and parked
    // them, so their first request comes through the parked path; once
    // answered, each is parked again, holding no task (nor a request's
    // buffers).
    for _ in KEPT..CONNECTIONS {
        let mut c = connect_silently(&proxy, addr).await;
        settled("a new connection with nothing to read was not parked").await;
        assert!(exchange(&mut c, get).await.starts_with("HTTP/1.1 200"));
        settled("a connection idle after its first request was not parked").await;
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let answer = exchange(c, get).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "connection {i}: {answer}"
        );
    }
    settled("connections idle after a second request were not parked").await;
    // All idle on a worker holding more than 256, all are parked: their
    // sockets wait in a set of their own, not in the runtime's I/O driver
    // (whose set holds the listener and its own waker too), which would
    // keep 256 bytes for each.
    let parked = accepted_on(addr);
    assert_eq!(parked.len(), CONNECTIONS);
    assert_watched_alone(&parked);
    // One parked before it spoke turns out to speak HTTP/2: it is served,
    // and its socket leaves the parked ones' set.
    let h2 = connect_silently(&proxy, addr).await;
    settled("a new connection with nothing to read was not parked").await;
    let (mut h2, _driver) = h2_connection(h2).await;
    assert_eq!(h2_get(&mut h2, "http://a/").await.status(), 200);
    assert_watched_alone(&parked);
    // Parked or not, each is closed once idle for the timeout.
    for c in &mut clients {
        closed_within(c, idle + ANSWER).await;
    }
}

#[tokio::test]
async fn a_parked_connection_answers_a_request_pipelined_while_it_was_busy() {
    // A request that arrives while its connection waits for the target
    // sends the socket's only edge then: parking again must look first.
    let (got_slow, mut slow_arrived) = tokio::sync::mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let released = release.clone();
    let (target, _) = backend(move |mut conn| {
        let (got_slow, release) = (got_slow.clone(), released.clone());
        async move {
            while let Some(head) = read_request(&mut conn).await {
                if head.starts_with("get /slow") {
                    let _ = got_slow.send(());
                    release.notified().await;
                } else if head.starts_with("get /release") {
                    release.notify_one();
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if conn.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let (_proxy, addr) = proxy_to(target).await;
    // Past 256, connections idle after a request are parked.
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: a\r\n\r\n");
    let mut clients = Vec::new();
    for _ in 0..300 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(exchange(&mut c, &get("/"))
            .await
            .starts_with("HTTP/1.1 200"));
        clients.push(c);
    }
    let (mut released_by, mut busy) = (clients.pop().unwrap(), clients.pop().unwrap());
    // Or Nagle would hold the pipelined request until the first's answer.
    busy.set_nodelay(true).unwrap();
    busy.write_all(get("/slow").as_bytes()).await.unwrap();
    tokio::time::timeout(ANSWER, slow_arrived.recv())
        .await
        .expect("the slow request reached the target");
    // Pipelined while the first waits: the worker takes the edge as it
    // wakes the other parked connection, whose request releases the first.
    busy.write_all(get("/next").as_bytes()).await.unwrap();
    assert!(exchange(&mut released_by, &get("/release"))
        .await
        .starts_with("HTTP/1.1 200"));
    let mut answers = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(ANSWER, async {
        while answers.windows(6).filter(|w| w == b"\r\n\r\nok").count() < 2 {
            let n = busy.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed");
            answers.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("both pipelined requests answered");
}

/// A connection to `addr` that sends nothing, once `proxy` has accepted it.
async fn connect_silently(proxy: &Proxy, addr: SocketAddr) -> TcpStream {
    let before = proxy.client_connections();
    let client = TcpStream::connect(addr).await.unwrap();
    let deadline = std::time::Instant::now() + ANSWER;
    while proxy.client_connections() <= before {
        assert!(std::time::Instant::now() < deadline, "never accepted");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    client
}

/// Every epoll set that watches one of `parked` watches only them, and
/// together they watch them all.
fn assert_watched_alone(parked: &std::collections::BTreeSet<i32>) {
    let mut watched = std::collections::BTreeSet::new();
    for set in epoll_sets() {
        if set.iter().any(|fd| parked.contains(fd)) {
            let others: Vec<_> = set.difference(parked).collect();
            assert!(
                others.is_empty(),
                "parked sockets share a set with {others:?}"
            );
            watched.extend(set);
        }
    }
    assert_eq!(&watched, parked, "parked sockets in no set");
}

/// The sockets accepted on `addr` in this process (the proxy's side of its
/// client connections).
fn accepted_on(addr: SocketAddr) -> std::collections::BTreeSet<i32> {
    use std::os::fd::FromRawFd;
    let mut fds = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // SAFETY: borrowed for two queries, never closed (ManuallyDrop).
        let socket = std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        if socket.local_addr().ok() == Some(addr) && socket.peer_addr().is_ok() {
            fds.insert(fd);
        }
    }
    fds
}

/// The descriptors each epoll set of this process watches.
fn epoll_sets() -> Vec<std::collections::BTreeSet<i32>> {
    let mut sets = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let is_epoll = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy() == "anon_inode:[eventpoll]");
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ));
        if let (true, Ok(info)) = (is_epoll, info) {
            sets.push(
                info.lines()
                    .filter_map(|l| l.strip_prefix("tfd:"))
                    .filter_map(|l| l.split_whitespace().next()?.parse().ok())
                    .collect(),
            );
        }
    }
    sets
}

/// A target that answers every request with `name`.
async fn named_backend(name: &'static str) -> SocketAddr {
    backend(move |mut conn| async move {
        while read_request(&mut conn).await.is_some() {
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                name.len()
            );
            if conn.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
    .0
}

#[tokio::test]
async fn http2_clients_get_the_canary_split_sticky_cookies_and_color_previews() {
    use baton_core::{Sticky, Weight};
    use baton_proxy::Canary;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};

    let (_proxy, addr, service) = proxy_serving(named_backend("blue").await, ANSWER, ANSWER).await;
    let green = Arc::new(Pool::new(
        Color::Green,
        "v2",
        vec![Arc::new(Target::with_health(
            named_backend("green").await,
            true,
        ))],
    ));
    let half = Weight::from_percent(50.0).unwrap();
    service.split(Canary::new("app", green, half, Sticky::Cookie, 7));
    let mut h2 = h2_client(addr).await;

    async fn get(
        h2: &mut hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
        headers: &[(&str, &str)],
    ) -> (Vec<String>, String) {
        let mut req = hyper::Request::get("http://app/");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = tokio::time::timeout(ANSWER, h2.send_request(req.body(Empty::new()).unwrap()))
            .await
            .unwrap()
            .unwrap();
        let cookies = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_string())
            .collect();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (cookies, String::from_utf8_lossy(&body).into_owned())
    }

    // New users are drawn and told their assignment; each keeps it, even
    // with the cookie in the second of two Cookie fields.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (cookies, first) = get(&mut h2, &[]).await;
        assert_eq!(cookies.len(), 1, "{cookies:?}");
        assert!(cookies[0].starts_with("baton-app=7."), "{cookies:?}");
        for _ in 0..5 {
            let (again, body) = get(&mut h2, &[("cookie", "a=1"), ("cookie", &cookies[0])]).await;
            assert_eq!(body, first);
            assert!(again.is_empty());
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "both colors drawn at 50%: {seen:?}");

    // A color asked for by header is served whatever the split, and kept by cookie.
    for _ in 0..10 {
        let (cookies, body) = get(&mut h2, &[("x-baton-color", "green")]).await;
        assert_eq!(
            (cookies.as_slice(), body.as_str()),
            (&["baton-color=green".to_string()][..], "green")
        );
        let (_, body) = get(&mut h2, &[("cookie", "baton-color=blue")]).await;
        assert_eq!(body, "blue");
    }
}
