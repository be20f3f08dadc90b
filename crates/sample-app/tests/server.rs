//! End-to-end tests of the sample app over real sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use baton_sample_app::ws::{self, Frame, Opcode};
use baton_sample_app::{Options, Server};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A sample app running in-process on a free port.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(opts: Options) -> Self {
        let server = Server::bind(&opts).await.unwrap();
        let addr = server.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Self { addr, stop, task }
    }

    /// Triggers the graceful shutdown and returns the serve task.
    fn shutdown(self) -> JoinHandle<anyhow::Result<()>> {
        self.stop.send(()).unwrap();
        self.task
    }
}

fn opts(version: &str) -> Options {
    Options::new(0, version)
}

async fn client(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

struct Reply {
    status: StatusCode,
    version_header: String,
    body: String,
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    body: &str,
) -> Reply {
    sender.ready().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "app")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let version_header = resp
        .headers()
        .get("x-app-version")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        version_header,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(&mut client(addr).await, Method::GET, path, "").await
}

#[tokio::test]
async fn root_answers_version_over_keep_alive() {
    let app = Running::start(opts("v1")).await;
    let mut conn = client(app.addr).await;
    for (method, body) in [
        (Method::GET, ""),
        (Method::POST, "some payload"),
        (Method::PUT, "x"),
    ] {
        let reply = send(&mut conn, method, "/anything?q=1", body).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "version=v1\n");
        assert_eq!(reply.version_header, "v1");
    }
    app.shutdown().await.unwrap().unwrap();
}

#[tokio::test]
async fn health_turns_green_after_unhealthy_for() {
    let mut o = opts("v1");
    o.unhealthy_for = Duration::from_millis(300);
    let app = Running::start(o).await;
    let early = get(app.addr, "/healthz").await;
    assert_eq!(early.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(early.body, "starting\n");
    assert_eq!(early.version_header, "v1");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let late = get(app.addr, "/healthz").await;
    assert_eq!(late.status, StatusCode::OK);
    assert_eq!(late.body, "ok\n");
}

#[tokio::test]
async fn never_healthy_stays_red_but_serves() {
    let mut o = opts("v1");
    o.never_healthy = true;
    let app = Running::start(o).await;
    assert_eq!(
        get(app.addr, "/healthz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(get(app.addr, "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn broken_passes_health_but_fails_traffic() {
    let mut o = opts("v9");
    o.broken = true;
    let app = Running::start(o).await;
    assert_eq!(get(app.addr, "/healthz").await.status, StatusCode::OK);
    let reply = get(app.addr, "/").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body, "broken version=v9\n");
    assert_eq!(reply.version_header, "v9");
}

#[tokio::test]
async fn error_rate_fails_exact_fraction_of_traffic() {
    let mut o = opts("v1");
    o.error_rate = 0.5;
    let app = Running::start(o).await;
    let mut conn = client(app.addr).await;
    let mut failed = 0;
    for _ in 0..10 {
        let health = send(&mut conn, Method::GET, "/healthz", "").await;
        assert_eq!(health.status, StatusCode::OK);
        let reply = send(&mut conn, Method::GET, "/", "").await;
        if reply.status == StatusCode::INTERNAL_SERVER_ERROR {
            failed += 1;
        }
    }
    assert_eq!(failed, 5);
}

#[tokio::test]
async fn slow_waits_then_answers() {
    let app = Running::start(opts("v1")).await;
    let started = Instant::now();
    let reply = get(app.addr, "/slow?ms=200").await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(reply.body, "version=v1\n");
    assert_eq!(
        get(app.addr, "/slow?ms=nope").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_and_closes_idle() {
    let app = Running::start(opts("v1")).await;
    let addr = app.addr;
    let mut idle = client(addr).await;
    assert_eq!(
        send(&mut idle, Method::GET, "/", "").await.status,
        StatusCode::OK
    );
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=600").await });
    tokio::time::sleep(Duration::from_millis(150)).await;

    let started = Instant::now();
    let serve = app.shutdown();
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "version=v1\n");
    serve.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));

    // The idle keep-alive connection was closed, and nobody listens anymore.
    assert!(idle.ready().await.is_err());
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn drain_timeout_bounds_shutdown() {
    let mut o = opts("v1");
    o.drain_timeout = Duration::from_millis(200);
    let app = Running::start(o).await;
    let addr = app.addr;
    let _slow = tokio::spawn(async move {
        let mut conn = client(addr).await;
        let req = Request::get("/slow?ms=10000")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let _ = conn.send_request(req).await;
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    app.shutdown().await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A raw WebSocket client: enough to drive the echo endpoint.
struct WsClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

const MASK: [u8; 4] = [1, 2, 3, 4];

impl WsClient {
    async fn connect(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: app\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut client = Self {
            stream,
            buf: Vec::new(),
        };
        let head = client.read_head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="));
        assert!(head.contains("x-app-version: v1"));
        client
    }

    async fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
                self.buf.drain(..end + 4);
                return head;
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await.unwrap();
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    async fn send(&mut self, frame: Frame) {
        let bytes = ws::encode(&frame, Some(MASK));
        self.stream.write_all(&bytes).await.unwrap();
    }

    async fn recv(&mut self) -> Frame {
        loop {
            if let Some((frame, used)) = ws::decode(&self.buf, usize::MAX, false).unwrap() {
                self.buf.drain(..used);
                return frame;
            }
            assert!(self.fill().await > 0, "connection closed mid-frame");
        }
    }

    async fn expect_eof(&mut self) {
        assert_eq!(self.fill().await, 0);
    }
}

#[tokio::test]
async fn websocket_echoes_with_version_prefix() {
    let app = Running::start(opts("v1")).await;
    let mut ws = WsClient::connect(app.addr).await;

    ws.send(Frame::new(Opcode::Text, "hello")).await;
    assert_eq!(ws.recv().await, Frame::new(Opcode::Text, "v1:hello"));

    let big = vec![7u8; 200_000];
    ws.send(Frame::new(Opcode::Binary, big.clone())).await;
    assert_eq!(ws.recv().await, Frame::new(Opcode::Binary, big));

    ws.send(Frame::new(Opcode::Ping, "p")).await;
    assert_eq!(ws.recv().await, Frame::new(Opcode::Pong, "p"));

    ws.send(Frame::close(1000, "done")).await;
    assert_eq!(ws.recv().await, Frame::new(Opcode::Close, vec![0x03, 0xE8]));
    ws.expect_eof().await;
    app.shutdown().await.unwrap().unwrap();
}

#[tokio::test]
async fn websocket_rejects_unmasked_frames() {
    let app = Running::start(opts("v1")).await;
    let mut ws = WsClient::connect(app.addr).await;
    let unmasked = ws::encode(&Frame::new(Opcode::Text, "x"), None);
    ws.stream.write_all(&unmasked).await.unwrap();
    let close = ws.recv().await;
    assert_eq!(close.opcode, Opcode::Close);
    assert_eq!(close.payload[..2], 1002u16.to_be_bytes());
}

#[tokio::test]
async fn websocket_is_told_to_go_away_on_shutdown() {
    let app = Running::start(opts("v1")).await;
    let mut ws = WsClient::connect(app.addr).await;
    ws.send(Frame::new(Opcode::Text, "a")).await;
    assert_eq!(ws.recv().await, Frame::new(Opcode::Text, "v1:a"));
    let serve = app.shutdown();
    let close = ws.recv().await;
    assert_eq!(close.opcode, Opcode::Close);
    assert_eq!(close.payload[..2], 1001u16.to_be_bytes());
    ws.expect_eof().await;
    serve.await.unwrap().unwrap();
}

#[tokio::test]
async fn websocket_handshake_validation() {
    let app = Running::start(opts("v1")).await;
    let plain = get(app.addr, "/ws").await;
    assert_eq!(plain.status, StatusCode::BAD_REQUEST);
    assert_eq!(plain.version_header, "v1");
}
