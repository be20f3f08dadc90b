//! The connection against a client that writes frames by hand, so that
//! what the RFC asks of a server on each kind of frame, right or wrong,
//! can be sent and its answer read. Streams here answer from the request
//! alone (no target): `/echo` returns the body it got, `/hold` waits until
//! it is dropped, `/big` answers 100 KiB, `/big-head` has a 20 KiB field,
//! anything else answers its path.

use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::conn::{Connection, Ended};
use super::frame::{self, flag, kind, setting, Head, Reason};
use super::hpack::{Block, Decoder};
use super::request::Request;
use super::shared::{self, StreamIo};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// RST_STREAM's CANCEL, which clients send and baton does not.
const CANCEL: Reason = Reason(0x8);
const ANSWER: Duration = Duration::from_secs(5);

/// Counts the `/hold` streams dropped, so a test can see a reset take effect.
#[derive(Default)]
struct Dropped(AtomicUsize);

struct OnDrop(Arc<Dropped>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0 .0.fetch_add(1, Ordering::SeqCst);
    }
}

async fn answer(req: Request, io: StreamIo, dropped: Arc<Dropped>) {
    let mut block = Block::default();
    block.status(200);
    let body = match req.path() {
        b"/echo" => {
            let mut body = Vec::new();
            while let Some(data) = io.data().await {
                body.extend_from_slice(&data);
            }
            Bytes::from(body)
        }
        b"/hold" => {
            let _guard = OnDrop(dropped);
            std::future::pending::<()>().await;
            unreachable!()
        }
        b"/big" => Bytes::from(vec![b'x'; 100 * 1024]),
        b"/big-head" => {
            block.field(b"x-big", &[b'h'; 20 * 1024]);
            Bytes::new()
        }
        path => Bytes::copy_from_slice(path),
    };
    block.field(b"X-Length", body.len().to_string().as_bytes());
    io.send_headers(block.as_bytes(), false);
    let mut body = body;
    poll_fn(|_| io.poll_send(&mut body, true)).await;
}

/// A connection served in a task, and the client's end of it.
fn serve(idle: Duration) -> (Client, JoinHandle<Ended>, Arc<Dropped>) {
    serve_over(idle, 1 << 20)
}

/// The same over a socket that buffers `buffer` bytes each way.
fn serve_over(idle: Duration, buffer: usize) -> (Client, JoinHandle<Ended>, Arc<Dropped>) {
    let (client, server) = tokio::io::duplex(buffer);
    let dropped = Arc::new(Dropped::default());
    let counter = dropped.clone();
    let task = tokio::spawn(async move {
        let start = move |req, io| answer(req, io, counter.clone());
        let mut conn = Connection::new(server, idle, start);
        let ended = poll_fn(|cx| conn.poll(cx)).await;
        let _ = conn.flush().await;
        ended
    });
    let client = Client {
        io: client,
        buf: BytesMut::new(),
        decoder: Decoder::new(),
    };
    (client, task, dropped)
}

struct Client {
    io: DuplexStream,
    buf: BytesMut,
    decoder: Decoder,
}

/// A frame as the client reads it.
#[derive(Debug)]
struct Frame {
    head: Head,
    payload: Bytes,
}

impl Frame {
    fn u32_at(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

impl Client {
    async fn write(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    async fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut out = Vec::new();
        frame::write(&mut out, kind, flags, stream, payload);
        self.write(&out).await;
    }

    /// The preface and SETTINGS, and the server's preface read.
    async fn handshake(&mut self, settings: &[(u16, u32)]) -> Frame {
        let mut out = PREFACE.to_vec();
        frame::settings(&mut out, settings);
        self.write(&out).await;
        let server_settings = self.next().await.expect("server SETTINGS");
        assert_eq!(server_settings.head.kind, kind::SETTINGS);
        let window = self.next().await.expect("connection WINDOW_UPDATE");
        assert_eq!(window.head.kind, kind::WINDOW_UPDATE);
        let ack = self.next().await.expect("SETTINGS ACK");
        assert_eq!((ack.head.kind, ack.head.flags), (kind::SETTINGS, flag::ACK));
        server_settings
    }

    /// A request with a plain-literal header block.
    async fn request(
        &mut self,
        stream: u32,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        end: bool,
    ) {
        let block = literal_block(method, path, extra);
        let flags = flag::END_HEADERS | if end { flag::END_STREAM } else { 0 };
        self.frame(kind::HEADERS, flags, stream, &block).await;
    }

    /// The next frame, or `None` once the server closed.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= frame::HEADER_LEN {
                let head = Head::parse(&self.buf);
                if self.buf.len() >= frame::HEADER_LEN + head.len {
                    self.buf.advance(frame::HEADER_LEN);
                    let payload = self.buf.split_to(head.len).freeze();
                    return Some(Frame { head, payload });
                }
            }
            let read = tokio::time::timeout(ANSWER, self.io.read_buf(&mut self.buf))
                .await
                .expect("the server answers in time");
            if read.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    /// The next frame of a kind, skipping others (PINGs, window updates).
    async fn next_of(&mut self, want: u8) -> Frame {
        loop {
            let f = self.next().await.expect("a frame before the end");
            if f.head.kind == want {
                return f;
            }
        }
    }

    /// A stream's whole response: its fields, its body, and how many
    /// frames its header block took.
    async fn response(&mut self, stream: u32) -> (Vec<(String, String)>, Vec<u8>) {
        self.response_framed(stream).await.0
    }

    async fn response_framed(&mut self, stream: u32) -> ((Vec<(String, String)>, Vec<u8>), usize) {
        let mut fields = Vec::new();
        let mut block = Vec::new();
        let mut block_frames = 0;
        let mut body = Vec::new();
        let mut ended = false;
        loop {
            let f = self.next().await.expect("the response before the end");
            if f.head.stream != stream {
                continue;
            }
            match f.head.kind {
                kind::HEADERS | kind::CONTINUATION => {
                    ended |= f.head.has(flag::END_STREAM);
                    block_frames += 1;
                    block.extend_from_slice(&f.payload);
                    if f.head.has(flag::END_HEADERS) {
                        self.decoder
                            .decode(&block, |n, v| {
                                fields.push((
                                    String::from_utf8_lossy(n).into_owned(),
                                    String::from_utf8_lossy(v).into_owned(),
                                ))
                            })
                            .unwrap();
                    } else {
                        continue;
                    }
                }
                kind::DATA => {
                    ended |= f.head.has(flag::END_STREAM);
                    body.extend_from_slice(&f.payload);
                }
                k => panic!("frame {k} on stream {stream}"),
            }
            if ended {
                return ((fields, body), block_frames);
            }
        }
    }

    /// The GOAWAY the server ends with, and that it then closes.
    async fn goaway(&mut self) -> Reason {
        let f = self.next_of(kind::GOAWAY).await;
        while self.next().await.is_some() {}
        Reason(f.u32_at(4))
    }
}

fn literal_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    let fields = [(":method", method), (":scheme", "http"), (":path", path)];
    for (n, v) in fields.iter().chain(extra) {
        // Literal without indexing, new name, no Huffman.
        block.push(0x00);
        block.push(n.len() as u8);
        block.extend_from_slice(n.as_bytes());
        block.push(v.len() as u8);
        block.extend_from_slice(v.as_bytes());
    }
    block
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

const IDLE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_prefaces_are_exchanged_and_a_request_answered() {
    let (mut c, _task, _) = serve(IDLE);
    let settings = c.handshake(&[]).await;
    let values: Vec<(u16, u32)> = settings
        .payload
        .chunks(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    assert!(
        values.contains(&(setting::MAX_CONCURRENT_STREAMS, 200)),
        "{values:?}"
    );
    assert!(
        values.contains(&(setting::INITIAL_WINDOW_SIZE, 1 << 20)),
        "{values:?}"
    );
    c.request(1, "GET", "/hello", &[], true).await;
    let (fields, body) = c.response(1).await;
    assert_eq!(field(&fields, ":status"), Some("200"));
    assert_eq!(
        field(&fields, "x-length"),
        Some("6"),
        "lower-cased: {fields:?}"
    );
    assert_eq!(body, b"/hello");
    // The same connection serves the next stream.
    c.request(3, "GET", "/again", &[], true).await;
    assert_eq!(c.response(3).await.1, b"/again");
}

#[tokio::test]
async fn a_body_arrives_in_order_and_its_window_comes_back() {
    let (mut c, _task, _) = serve(IDLE);
    c.handshake(&[(setting::INITIAL_WINDOW_SIZE, 1 << 30)])
        .await;
    c.frame(kind::WINDOW_UPDATE, 0, 0, &(1u32 << 30).to_be_bytes())
        .await;
    c.request(1, "POST", "/echo", &[], false).await;
    let chunk = vec![7u8; frame::DEFAULT_MAX_FRAME];
    let mut sent = Vec::new();
    for i in 0..40u8 {
        let mut data = chunk.clone();
        data[0] = i;
        sent.extend_from_slice(&data);
        c.frame(kind::DATA, 0, 1, &data).await;
    }
    c.frame(kind::DATA, flag::END_STREAM, 1, b"end").await;
    sent.extend_from_slice(b"end");
    let mut updates = (0, 0);
    let mut body = Vec::new();
    loop {
        let f = c.next().await.expect("the response");
        match (f.head.kind, f.head.stream) {
            (kind::WINDOW_UPDATE, 0) => updates.0 += f.u32_at(0),
            (kind::WINDOW_UPDATE, 1) => updates.1 += f.u32_at(0),
            (kind::DATA, 1) => body.extend_from_slice(&f.payload),
            _ => {}
        }
        if f.head.has(flag::END_STREAM) {
            break;
        }
    }
    assert_eq!(body, sent, "the body echoed whole and in order");
    // 640 KiB taken: half the window granted again on both levels.
    assert!(updates.0 >= 512 * 1024, "{updates:?}");
    assert!(updates.1 >= 512 * 1024, "{updates:?}");
}

#[tokio::test]
async fn a_response_waits_for_the_clients_window() {
    let (mut c, _task, _) = serve(IDLE);
    c.handshake(&[(setting::INITIAL_WINDOW_SIZE, 1000)]).await;
    c.request(1, "GET", "/big", &[], true).await;
    c.next_of(kind::HEADERS).await;
    let first = c.next_of(kind::DATA).await;
    assert_eq!(first.payload.len(), 1000, "no more than the window");
    // Nothing more until a WINDOW_UPDATE: a PING's answer comes first.
    c.frame(kind::PING, 0, 0, b"12345678").await;
    let pong = c.next().await.unwrap();
    assert_eq!((pong.head.kind, pong.head.flags), (kind::PING, flag::ACK));
    assert_eq!(&pong.payload[..], b"12345678");
    c.frame(kind::WINDOW_UPDATE, 0, 1, &200_000u32.to_be_bytes())
        .await;
    // The connection window (65,535) is what holds it back now.
    let mut got = first.payload.len();
    while got < 65_535 {
        got += c.next_of(kind::DATA).await.payload.len();
    }
    assert_eq!(got, 65_535);
    c.frame(kind::WINDOW_UPDATE, 0, 0, &100_000u32.to_be_bytes())
        .await;
    loop {
        let f = c.next_of(kind::DATA).await;
        got += f.payload.len();
        if f.head.has(flag::END_STREAM) {
            break;
        }
    }
    assert_eq!(got, 100 * 1024);
}

#[tokio::test]
async fn a_header_block_in_continuation_frames_is_one_request() {
    let (mut c, _task, _) = serve(IDLE);
    c.handshake(&[]).await;
    let block = literal_block("GET", "/split", &[("x-a", "1"), ("x-b", "2")]);
    let (a, rest) = block.split_at(5);
    let (b, d) = rest.split_at(10);
    c.frame(kind::HEADERS, flag::END_STREAM, 1, a).await;
    c.frame(kind::CONTINUATION, 0, 1, b).await;
    c.frame(kind::CONTINUATION, flag::END_HEADERS, 1, d).await;
    assert_eq!(c.response(1).await.1, b"/split");
}

#[tokio::test]
async fn malformed_requests_reset_their_stream_only() {
    let (mut c, _task, _) = serve(IDLE);
    c.handshake(&[]).await;
    let bad: [&[(&str, &str)]; 4] = [
        &[("connection", "keep-alive")],
        &[("X-Upper", "1")],
        &[("x-a", "a\r\nb")],
        &[("content-length", "1")],
    ];
    let mut id = 1;
    for extra in bad {
        c.request(id, "GET", "/", extra, true).await;
        let rst = c.next_of(kind::RST_STREAM).await;
        assert_eq!(rst.head.stream, id, "{extra:?}");
        assert_eq!(Reason(rst.u32_at(0)), Reason::PROTOCOL_ERROR, "{extra:?}");
        id += 2;
    }
    // A body longer than its content-length.
    c.request(id, "POST", "/echo", &[("content-length", "2")], false)
        .await;
    c.frame(kind::DATA, flag::END_STREAM, id, b"abc").await;
    let rst = c.next_of(kind::RST_STREAM).await;
    assert_eq!(
        (rst.head.stream, Reason(rst.u32_at(0))),
        (id, Reason::PROTOCOL_ERROR)
    );
    id += 2;
    c.request(id, "GET", "/fine", &[], true).await;
    assert_eq!(c.response(id).await.1, b"/fine");
}

#[tokio::test]
async fn a_reset_drops_the_streams_work() {
    let (mut c, _task, dropped) = serve(IDLE);
    c.handshake(&[]).await;
    c.request(1, "GET", "/hold", &[], true).await;
    c.request(3, "GET", "/ping", &[], true).await;
    c.response(3).await;
    assert_eq!(dropped.0.load(Ordering::SeqCst), 0);
    c.frame(kind::RST_STREAM, 0, 1, &CANCEL.0.to_be_bytes())
        .await;
    c.request(5, "GET", "/after", &[], true).await;
    c.response(5).await;
    assert_eq!(
        dropped.0.load(Ordering::SeqCst),
        1,
        "the held stream dropped"
    );
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused() {
    let (mut c, _task, _) = serve(IDLE);
    c.handshake(&[]).await;
    for i in 0..200 {
        c.request(1 + 2 * i, "GET", "/hold", &[], true).await;
    }
    c.request(401, "GET", "/one-too-many", &[], true).await;
    let rst = c.next_of(kind::RST_STREAM).await;
    assert_eq!(
        (rst.head.stream, Reason(rst.u32_at(0))),
        (401, Reason::REFUSED_STREAM)
    );
}

/// Each of these ends the connection with GOAWAY and the reason given.
#[tokio::test]
async fn connection_errors_end_with_goaway() {
    /// A frame to send: its kind, flags, stream and payload.
    type Raw = (u8, u8, u32, Vec<u8>);
    async fn after_handshake(frames: &[Raw]) -> Reason {
        let (mut c, _task, _) = serve(IDLE);
        c.handshake(&[]).await;
        for (kind, flags, stream, payload) in frames {
            c.frame(*kind, *flags, *stream, payload).await;
        }
        c.goaway().await
    }
    let get = literal_block("GET", "/", &[]);
    let cases: Vec<(&str, Vec<Raw>, Reason)> = vec![
        (
            "HEADERS on an even stream",
            vec![(
                kind::HEADERS,
                flag::END_HEADERS | flag::END_STREAM,
                2,
                get.clone(),
            )],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "a frame over the size limit",
            vec![(kind::DATA, 0, 1, vec![0; frame::DEFAULT_MAX_FRAME + 1])],
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "an undecodable header block",
            vec![(kind::HEADERS, flag::END_HEADERS, 1, vec![0xbf, 0xff])],
            Reason::COMPRESSION_ERROR,
        ),
        (
            "a header block interrupted",
            vec![
                (kind::HEADERS, 0, 1, get[..4].to_vec()),
                (kind::PING, 0, 0, vec![0; 8]),
            ],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "DATA on an idle stream",
            vec![(kind::DATA, 0, 7, b"x".to_vec())],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "a zero connection window increment",
            vec![(kind::WINDOW_UPDATE, 0, 0, vec![0; 4])],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "a connection window overflow",
            vec![(
                kind::WINDOW_UPDATE,
                0,
                0,
                0x7fff_ffffu32.to_be_bytes().to_vec(),
            )],
            Reason::FLOW_CONTROL_ERROR,
        ),
        (
            "PUSH_PROMISE",
            vec![(kind::PUSH_PROMISE, flag::END_HEADERS, 1, vec![0; 4])],
            Reason::PROTOCOL_ERROR,
        ),
        (
            "a bad SETTINGS length",
            vec![(kind::SETTINGS, 0, 0, vec![0; 5])],
            Reason::FRAME_SIZE_ERROR,
        ),
    ];
    for (what, frames, reason) in cases {
        assert_eq!(after_handshake(&frames).await, reason, "{what}");
    }
    // More DATA than the connection window, over streams that never read it.
    let (mut c, _task, _) = serve(IDLE);
    c.handshake(&[]).await;
    let chunk = vec![0u8; frame::DEFAULT_MAX_FRAME];
    let mut stream = 1;
    let mut sent = 0;
    while sent <= 1 << 20 {
        c.request(stream, "POST", "/hold", &[], false).await;
        for _ in 0..8 {
            c.frame(kind::DATA, 0, stream, &chunk).await;
            sent += chunk.len();
        }
        stream += 2;
    }
    assert_eq!(c.goaway().await, Reason::FLOW_CONTROL_ERROR);
    // Not a preface at all.
    let (mut c, _task, _) = serve(IDLE);
    c.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(c.goaway().await, Reason::PROTOCOL_ERROR);
}

#[tokio::test]
async fn a_reset_flood_ends_the_connection() {
    let (mut c, _task, _) = serve(IDLE);
    c.handshake(&[]).await;
    let mut out = Vec::new();
    for i in 0..1200u32 {
        let id = 1 + 2 * i;
        let block = literal_block("GET", "/hold", &[]);
        frame::write(
            &mut out,
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            id,
            &block,
        );
        frame::rst_stream(&mut out, id, CANCEL);
    }
    c.write(&out).await;
    assert_eq!(c.goaway().await, Reason::ENHANCE_YOUR_CALM);
}

#[tokio::test]
async fn a_large_response_head_goes_out_in_continuation_frames() {
    let (mut c, _task, _) = serve(IDLE);
    c.handshake(&[]).await;
    c.request(1, "GET", "/big-head", &[], true).await;
    let ((fields, _), frames) = c.response_framed(1).await;
    assert_eq!(frames, 2, "HEADERS and one CONTINUATION for 20 KiB");
    assert_eq!(field(&fields, "x-big").map(str::len), Some(20 * 1024));
}

#[tokio::test]
async fn an_idle_connection_is_asked_to_go() {
    let (mut c, task, _) = serve(Duration::from_millis(200));
    c.handshake(&[]).await;
    c.request(1, "GET", "/x", &[], true).await;
    c.response(1).await;
    let goaway = c.next_of(kind::GOAWAY).await;
    assert_eq!(goaway.u32_at(0), 1, "the last stream served");
    assert_eq!(Reason(goaway.u32_at(4)), Reason::NO_ERROR);
    let ended = tokio::time::timeout(ANSWER, task).await.unwrap().unwrap();
    assert!(matches!(ended, Ended::Closed), "{ended:?}");
}

#[tokio::test]
async fn a_header_table_size_setting_is_acknowledged_in_the_next_block() {
    let (mut c, _task, _) = serve(IDLE);
    c.handshake(&[(setting::HEADER_TABLE_SIZE, 0)]).await;
    c.request(1, "GET", "/t", &[], true).await;
    let headers = c.next_of(kind::HEADERS).await;
    assert_eq!(headers.payload[0], 0x20, "a size update to zero first");
    assert!(c.decoder.decode(&headers.payload, |_, _| {}).is_ok());
}

#[tokio::test]
async fn a_client_that_reads_late_is_read_again() {
    // PINGs whose answers fill the socket and then baton's queue (which
    // makes it stop reading); the request behind them must be read once
    // the client reads its answers, even when one read makes room for the
    // whole queue at once (so no write is left pending to wake baton).
    const BUFFER: usize = 1 << 20;
    const PINGS: usize = 200_000;
    let (c, _task, _) = serve_over(IDLE, BUFFER);
    let Client {
        io,
        mut buf,
        mut decoder,
    } = c;
    let (mut from, mut to) = tokio::io::split(io);
    let (progress, mut written) = tokio::sync::watch::channel(0usize);
    let writer = tokio::spawn(async move {
        let mut out = PREFACE.to_vec();
        frame::settings(&mut out, &[]);
        for _ in 0..PINGS {
            frame::write(&mut out, kind::PING, 0, 0, b"pingpong");
        }
        frame::write(
            &mut out,
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
            &literal_block("GET", "/late", &[]),
        );
        let mut rest = &out[..];
        while !rest.is_empty() {
            let n = to.write(rest).await.unwrap();
            rest = &rest[n..];
            progress.send_modify(|written| *written += n);
        }
        to
    });
    // Once this much is written (at most a socket's worth unread), baton
    // has read PINGs whose answers fill the other way's socket and its
    // queue: it has stopped reading.
    let enough = shared::OUT_HIGH + 2 * BUFFER;
    tokio::time::timeout(ANSWER, written.wait_for(|n| *n >= enough))
        .await
        .expect("baton reads until its queue is full")
        .unwrap();
    let mut pongs = 0;
    loop {
        while buf.len() >= frame::HEADER_LEN {
            let head = Head::parse(&buf);
            if buf.len() < frame::HEADER_LEN + head.len {
                break;
            }
            buf.advance(frame::HEADER_LEN);
            let payload = buf.split_to(head.len);
            match head.kind {
                kind::PING => pongs += 1,
                kind::HEADERS => decoder.decode(&payload, |_, _| {}).unwrap(),
                kind::DATA if head.stream == 1 => {
                    assert_eq!(&payload[..], b"/late");
                    assert_eq!(pongs, PINGS, "every PING answered first");
                    writer.await.unwrap();
                    return;
                }
                _ => {}
            }
        }
        buf.reserve(2 * BUFFER);
        let read = tokio::time::timeout(ANSWER, from.read_buf(&mut buf))
            .await
            .expect("baton goes on reading once its answers are read");
        assert!(read.unwrap() > 0, "closed");
    }
}
