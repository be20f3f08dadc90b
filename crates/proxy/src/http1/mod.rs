//! baton's own HTTP/1.1 request path, client to target.
//!
//! Why not hyper here: a proxy only needs a request's head (to route and
//! rewrite it) and where each body ends; the bodies themselves pass through
//! untouched. Doing just that, in the connection's own task, costs a fraction
//! of a general-purpose server and client stacked back to back (header maps,
//! a task and channel per upstream connection, a timer per request), and an
//! idle connection holds no buffer at all.
//!
//! - `head`: parse and rewrite request and response heads.
//! - `chunked`, `body`: where bodies end, and streaming them through.
//! - `connections`: the worker's idle connections to targets.
//! - `exchange`: one request, from pick to last byte; upgrades become a tunnel.
//!
//! HTTP/2 clients are recognised by their preface and handed to hyper.

mod body;
mod chunked;
mod connections;
mod exchange;
mod head;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub(crate) use connections::Connections;

use crate::forward::{Forwarder, Routing};
use crate::forwarded::Peer;
use exchange::{After, Exchange};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request's working memory. Dropped whenever the connection waits for its
/// next request, so idle connections cost no buffers.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    /// What the client sent and is not forwarded yet.
    client: BytesMut,
    /// What the target sent and is not relayed yet.
    upstream: BytesMut,
    /// A head rewritten for the other side, and body bytes that go with it.
    out: Vec<u8>,
}

/// How a client connection ended.
pub(crate) enum Ended {
    Closed,
    /// It speaks HTTP/2: here is the connection and what was read of it.
    Http2(TcpStream, BytesMut),
}

/// Serves HTTP/1.1 requests on a client connection until it closes.
pub(crate) async fn serve(
    forwarder: &Forwarder,
    routing: &Routing,
    peer: &Peer,
    mut client: TcpStream,
) -> Ended {
    let mut bufs = Buffers::default();
    let mut first = true;
    loop {
        let req = match next_request(forwarder, peer, &mut client, &mut bufs, first).await {
            Next::Request(req) => req,
            Next::Http2 => return Ended::Http2(client, bufs.client),
            Next::Closed => return Ended::Closed,
        };
        first = false;
        let exchange = Exchange {
            forwarder,
            routing,
            client: &mut client,
            bufs: &mut bufs,
            req,
        };
        // Boxed: the exchange's state lives only while a request does, not
        // in every idle connection's task.
        if Box::pin(exchange.run()).await == After::Close {
            return Ended::Closed;
        }
    }
}

enum Next {
    Request(head::Request),
    Http2,
    Closed,
}

/// Reads until a whole request head is in `bufs.client`, answering (and
/// closing on) a malformed one.
async fn next_request(
    forwarder: &Forwarder,
    peer: &Peer,
    client: &mut TcpStream,
    bufs: &mut Buffers,
    first: bool,
) -> Next {
    let idle = forwarder.timeouts.idle;
    loop {
        if bufs.client.is_empty() {
            // Between requests: wait without holding memory.
            *bufs = Buffers::default();
            match tokio::time::timeout(idle, client.readable()).await {
                Ok(Ok(())) => {}
                _ => return Next::Closed,
            }
        } else if first && starts_like_http2(&bufs.client) {
            if bufs.client.len() >= HTTP2_PREFACE.len() {
                return Next::Http2;
            }
        } else if let Some(next) = parse(forwarder, peer, client, bufs).await {
            return next;
        }
        bufs.client.reserve(4096);
        match tokio::time::timeout(idle, client.read_buf(&mut bufs.client)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Next::Closed,
        }
    }
}

/// The bytes so far match the HTTP/2 preface.
fn starts_like_http2(buf: &[u8]) -> bool {
    HTTP2_PREFACE.starts_with(&buf[..buf.len().min(HTTP2_PREFACE.len())])
}

/// Parses what is buffered: a request, a refusal, or `None` for "read more".
async fn parse(
    forwarder: &Forwarder,
    peer: &Peer,
    client: &mut TcpStream,
    bufs: &mut Buffers,
) -> Option<Next> {
    use tokio::io::AsyncWriteExt;
    match head::parse_request(&bufs.client, peer, &forwarder.request_ids, &mut bufs.out) {
        Ok(Some(req)) => Some(Next::Request(req)),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %e, "bad request");
            head::error_response(e.status(), &format!("baton: {e}\n"), true, &mut bufs.out);
            let _ = client.write_all(&bufs.out).await;
            Some(Next::Closed)
        }
    }
}
