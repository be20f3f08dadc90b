//! HTTP/1.1 on the wire, through a real `baton serve` and the sample app:
//! chunked bodies both ways at once, `Expect: 100-continue`, pipelining,
//! HTTP/1.0 clients, and refusals of heads that are malformed or too large.
//! Raw sockets, so that what is checked is exactly what crossed the wire.

mod support;
use support::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Every answer of these tests comes well within this.
const ANSWER: Duration = Duration::from_secs(10);

fn deployed() -> Baton {
    let mut b = Baton::new(&web_service());
    b.start();
    b.ok(&["deploy", "web", "v1"]);
    b
}

fn connect(b: &Baton) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", b.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Reads until `seen` holds `until`, or fails at the deadline. Returns
/// everything read so far.
fn read_until(s: &mut TcpStream, seen: &mut Vec<u8>, until: &str) -> String {
    let deadline = Instant::now() + ANSWER;
    let mut buf = [0u8; 8192];
    while !String::from_utf8_lossy(seen).contains(until) {
        assert!(
            Instant::now() < deadline,
            "no {until:?} in time; got {:?}",
            String::from_utf8_lossy(seen)
        );
        match s.read(&mut buf) {
            Ok(0) => panic!(
                "closed before {until:?}; got {:?}",
                String::from_utf8_lossy(seen)
            ),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(seen).into_owned()
}

/// Reads to EOF (the proxy closed the connection), within the deadline.
fn read_to_close(s: &mut TcpStream) -> String {
    let deadline = Instant::now() + ANSWER;
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        assert!(Instant::now() < deadline, "not closed in time");
        match s.read(&mut buf) {
            Ok(0) => return String::from_utf8_lossy(&seen).into_owned(),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return String::from_utf8_lossy(&seen).into_owned()
            }
            Err(e) => panic!("read: {e}"),
        }
    }
}

#[test]
fn chunked_bodies_stream_both_ways_at_once() {
    let b = deployed();
    let mut s = connect(&b);
    s.write_all(b"POST /echo HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .unwrap();
    // The app echoes as it reads: the first chunk comes back while the
    // request body is still open, and the rest still reaches the app.
    let mut seen = Vec::new();
    let head = read_until(&mut s, &mut seen, "hello");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    s.write_all(b"6\r\n world\r\n0\r\n\r\n").unwrap();
    let all = read_until(&mut s, &mut seen, "0\r\n\r\n");
    assert!(all.contains(" world"), "{all}");
}

#[test]
fn a_chunked_request_ends_where_its_last_chunk_does_and_the_connection_carries_on() {
    let b = deployed();
    let mut s = connect(&b);
    s.write_all(
        b"POST /echo HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .unwrap();
    let mut seen = Vec::new();
    let all = read_until(&mut s, &mut seen, "0\r\n\r\n");
    assert!(all.contains("hello"), "{all}");
    s.write_all(b"GET / HTTP/1.1\r\nhost: app.test\r\n\r\n")
        .unwrap();
    let mut next = Vec::new();
    let answer = read_until(&mut s, &mut next, "version=v1");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn expect_100_continue_gets_the_interim_answer_before_the_body_is_sent() {
    let b = deployed();
    let mut s = connect(&b);
    s.write_all(
        b"POST / HTTP/1.1\r\nhost: app.test\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let mut seen = Vec::new();
    let interim = read_until(&mut s, &mut seen, "\r\n\r\n");
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    s.write_all(b"hello").unwrap();
    let all = read_until(&mut s, &mut seen, "version=v1");
    assert!(all.contains("HTTP/1.1 200"), "{all}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let b = deployed();
    let mut s = connect(&b);
    s.write_all(
        b"GET /slow?ms=300 HTTP/1.1\r\nhost: app.test\r\n\r\nGET /headers HTTP/1.1\r\nhost: app.test\r\nx-second: yes\r\n\r\n",
    )
    .unwrap();
    let mut seen = Vec::new();
    let all = read_until(&mut s, &mut seen, "x-second: yes");
    let first = all.find("version=v1").expect("the first answer");
    let second = all.find("x-second: yes").expect("the second answer");
    assert!(first < second, "answers out of order: {all}");
    assert_eq!(all.matches("HTTP/1.1 200").count(), 2, "{all}");
}

#[test]
fn an_http10_client_gets_its_answer_and_a_close() {
    let b = deployed();
    let mut s = connect(&b);
    s.write_all(b"GET / HTTP/1.0\r\nhost: app.test\r\n\r\n")
        .unwrap();
    let all = read_to_close(&mut s);
    assert!(all.starts_with("HTTP/1.1 200"), "{all}");
    assert!(all.ends_with("version=v1\n"), "{all}");
    assert!(!all.to_ascii_lowercase().contains("chunked"), "{all}");
}

#[test]
fn malformed_or_ambiguous_heads_get_400_and_oversized_ones_431() {
    let b = deployed();
    let big = format!(
        "GET / HTTP/1.1\r\nhost: app.test\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    for (request, status) in [
        ("NOT HTTP AT ALL\r\n\r\n".to_string(), "400"),
        (
            "POST / HTTP/1.1\r\nhost: app.test\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
                .to_string(),
            "400",
        ),
        (
            "POST / HTTP/1.1\r\nhost: app.test\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"
                .to_string(),
            "400",
        ),
        (big, "431"),
    ] {
        let mut s = connect(&b);
        // A refused head may be answered before all of it is written.
        let _ = s.write_all(request.as_bytes());
        let all = read_to_close(&mut s);
        assert!(
            all.starts_with(&format!("HTTP/1.1 {status}")),
            "{status} for {:.80}: got {all:.200}",
            request
        );
    }
    // The proxy still serves.
    assert_eq!(get(&b.url("/")).0, 200);
}
