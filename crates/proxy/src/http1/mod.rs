//! baton's own HTTP/1.1 request path, client to target.
//!
//! Why not hyper here: a proxy only needs a request's head (to route and
//! rewrite it) and where each body ends; the bodies themselves pass through
//! untouched. Doing just that, in the connection's own task, costs a fraction
//! of a general-purpose server and client stacked back to back (header maps,
//! a task and channel per upstream connection, a timer per request), and an
//! idle connection holds no buffer, no timer, and on a busy worker no task.
//!
//! - `head`: parse and rewrite request and response heads.
//! - `chunked`, `body`: where bodies end, and streaming them through.
//! - `connections`: the worker's idle connections to targets.
//! - `exchange`: one request, from pick to last byte; upgrades become a tunnel.
//! - `idle`: the client idle timeout, one sweep per worker, and parking.
//! - here: a client connection's life ([`Conn`]), parked between requests
//!   when the worker holds many.
//!
//! HTTP/2 clients are recognised by their preface and handed to `crate::http2`.

mod body;
mod chunked;
mod connections;
mod exchange;
mod head;
mod idle;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;

pub(crate) use body::Remaining;
pub(crate) use connections::{Connections, Upstream};
pub(crate) use head::{
    is_idempotent, is_set_by_proxy, parse_response_parts, Framing, ResponseParts, ResponseSink,
};
pub(crate) use idle::IdleClients;
use idle::{IdleSlot, Parking};

use crate::client_socket::ClientSocket;
use crate::forward::Forwarder;
use crate::forwarded::Peer;
use crate::server::Listener;
use exchange::{After, Exchange};

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A request's working memory. An idle connection holds none: when a
/// request is done its buffers go to the worker's spares, for whichever
/// request comes next, so a busy worker allocates none per request.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    /// What the client sent and is not forwarded yet.
    client: BytesMut,
    /// What the target sent and is not relayed yet.
    upstream: BytesMut,
    /// A head rewritten for the other side, and body bytes that go with it.
    out: Vec<u8>,
}

/// Spare sets kept per worker: about as many requests as are usually in
/// flight on one, at a few KiB each.
const SPARE_BUFFERS: usize = 32;
/// A buffer grown past this (a large body read) is freed, not kept.
const SPARE_CAPACITY: usize = 64 * 1024;

thread_local! {
    /// The worker thread's spare buffers. Each worker is a single-threaded
    /// runtime, so this is never shared and never locked.
    static SPARES: RefCell<Vec<Buffers>> = const { RefCell::new(Vec::new()) };
}

impl Buffers {
    /// Buffers for a request, reading on from `read_ahead`.
    fn take(read_ahead: &mut BytesMut) -> Self {
        let mut bufs = SPARES
            .with(|spares| spares.borrow_mut().pop())
            .unwrap_or_else(|| Self {
                // A usual head fits: one allocation rather than one per doubling.
                out: Vec::with_capacity(1024),
                ..Self::default()
            });
        if !read_ahead.is_empty() {
            bufs.client = std::mem::take(read_ahead);
        }
        bufs
    }

    /// Keeps the buffers for the worker's next request, emptied; what is
    /// left to read of the client's next request moves to `read_ahead`.
    fn give_back(mut self, read_ahead: &mut BytesMut) {
        if !self.client.is_empty() {
            *read_ahead = std::mem::take(&mut self.client);
        }
        if [
            self.client.capacity(),
            self.upstream.capacity(),
            self.out.capacity(),
        ]
        .iter()
        .any(|&c| c > SPARE_CAPACITY)
        {
            return;
        }
        self.client.clear();
        self.upstream.clear();
        self.out.clear();
        SPARES.with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < SPARE_BUFFERS {
                spares.push(self);
            }
        });
    }
}

/// A client connection between two requests: all it holds while idle.
pub(crate) struct Conn {
    // Fields drop in order: the idle slot goes before the socket closes, so
    // the sweep never shuts down a descriptor the kernel has handed out again.
    idle: IdleSlot,
    client: ClientSocket,
    listener: Arc<Listener>,
    peer: Peer,
    /// No request was read yet (so it may still open with HTTP/2's preface).
    first: bool,
}

/// Serves a new client connection on the current worker.
pub(crate) fn start(listener: Arc<Listener>, client: ClientSocket, peer: Peer) {
    let idle = listener.forwarder.idle_clients.register(client.as_raw_fd());
    let conn = Conn {
        idle,
        client,
        listener,
        peer,
        first: true,
    };
    tokio::spawn(conn.serve(false));
}

impl Conn {
    /// Serves HTTP/1.1 requests until the connection closes, is parked, or
    /// turns out to speak HTTP/2. This is the connection's task: what it
    /// holds while idle is what an idle connection costs. `woken`: its next
    /// request has arrived (it was parked).
    // An async block rather than an `async fn`, which would keep the
    // connection twice in its future (as passed, and moved into the body):
    // this future is what every idle connection's task holds (see the test).
    #[allow(clippy::manual_async_fn)]
    fn serve(mut self, woken: bool) -> impl Future<Output = ()> {
        async move {
            // Bytes of the next request read ahead with the last one (pipelining).
            let mut read_ahead = BytesMut::new();
            // A new connection is read at once: most clients send their
            // request as they connect, and need no wait (see `ClientSocket`).
            let mut wait = !(self.first || woken);
            loop {
                if wait && read_ahead.is_empty() {
                    // Idle: the worker's sweep enforces the idle timeout.
                    let mut wait_here = true;
                    if self.idle.idle() {
                        (self, wait_here) = match self.park() {
                            Parking::Parked => return,
                            Parking::Ready(back) => (back, false),
                            Parking::Refused(back) => (back, true),
                        };
                    }
                    if wait_here
                        && std::future::poll_fn(|cx| self.client.poll_read_ready(cx))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                self.idle.busy();
                wait = true;
                // Boxed: a request's state (buffers, both connections' futures)
                // lives only while the request does, not in every idle task.
                let next = Box::pin(one_request(&mut self, &mut read_ahead));
                match next.await {
                    Next::KeepAlive => self.first = false,
                    Next::NothingYet => {}
                    Next::Closed => return,
                    Next::Http2 => break,
                }
            }
            let Conn {
                idle,
                client,
                listener,
                peer,
                ..
            } = self;
            drop(idle);
            // Boxed: HTTP/2's state would otherwise sit in every connection's task.
            Box::pin(listener.serve_http2(client, read_ahead, peer)).await;
        }
    }

    /// Leaves the connection in the worker's table of idle ones, with no
    /// task, until its next request wakes it ([`IdleClients::park`]).
    fn park(self) -> Parking {
        let clients = self.idle.clients().clone();
        clients.park(self)
    }

    /// Serves a parked connection whose next request has arrived.
    fn resume(self) {
        tokio::spawn(self.serve(true));
    }
}

enum Next {
    KeepAlive,
    /// A new connection has sent nothing yet.
    NothingYet,
    Http2,
    Closed,
}

/// Reads one request and forwards it.
async fn one_request(conn: &mut Conn, read_ahead: &mut BytesMut) -> Next {
    let forwarder = &conn.listener.forwarder;
    let mut bufs = Buffers::take(read_ahead);
    let req = match read_head(
        forwarder,
        &conn.peer,
        &mut conn.client,
        &mut bufs,
        conn.first,
    )
    .await
    {
        Head::Request(req) => req,
        Head::Http2 => {
            *read_ahead = std::mem::take(&mut bufs.client);
            return Next::Http2;
        }
        Head::NothingYet => {
            bufs.give_back(read_ahead);
            return Next::NothingYet;
        }
        Head::Closed => return Next::Closed,
    };
    let exchange = Exchange {
        forwarder,
        routing: &conn.listener.routing,
        client: &mut conn.client,
        idle: &conn.idle,
        peer: &conn.peer,
        bufs: &mut bufs,
        req,
    };
    let after = exchange.run().await;
    // Kept for the worker's next request even when this connection ends:
    // with a connection per request, that is every request.
    bufs.give_back(read_ahead);
    match after {
        After::Close => Next::Closed,
        After::KeepAlive => Next::KeepAlive,
    }
}

enum Head {
    Request(head::Request),
    NothingYet,
    Http2,
    Closed,
}

/// Reads until a whole request head is in `bufs.client`, answering (and
/// closing on) a malformed one.
async fn read_head(
    forwarder: &Forwarder,
    peer: &Peer,
    client: &mut ClientSocket,
    bufs: &mut Buffers,
    first: bool,
) -> Head {
    loop {
        if first && starts_like_http2(&bufs.client) {
            if bufs.client.len() >= HTTP2_PREFACE.len() {
                return Head::Http2;
            }
        } else if !bufs.client.is_empty() {
            if let Some(head) = parse(forwarder, peer, client, bufs).await {
                return head;
            }
        }
        bufs.client.reserve(4096);
        if first && bufs.client.is_empty() {
            // Not waited for: a new connection's request is most likely here.
            match client.read_unregistered(&mut bufs.client) {
                Some(Ok(n)) if n > 0 => continue,
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => return Head::NothingYet,
                Some(_) => return Head::Closed,
                // Registered: it waited for readiness, and is read below.
                None => {}
            }
        }
        let read = client.read_buf(&mut bufs.client);
        match tokio::time::timeout(forwarder.timeouts.idle, read).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Head::Closed,
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
    client: &mut ClientSocket,
    bufs: &mut Buffers,
) -> Option<Head> {
    use tokio::io::AsyncWriteExt;
    match head::parse_request(&bufs.client, peer, &forwarder.request_ids, &mut bufs.out) {
        Ok(Some(req)) => Some(Head::Request(req)),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %e, "bad request");
            head::error_response(e.status(), &format!("baton: {e}\n"), true, &mut bufs.out);
            let _ = client.write_all(&bufs.out).await;
            Some(Head::Closed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, known from its type alone.
    fn size_of_output<A, B, R>(_: impl FnOnce(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn an_idle_connection_holds_its_state_once() {
        // What an idle connection's task holds: the connection, the bytes
        // read ahead, a pointer to the request in progress. Were the
        // connection kept twice (as `async fn` arguments are), the task
        // would take 384 bytes instead of 256 (tokio rounds tasks up to
        // 128 bytes).
        let serve = size_of_output(Conn::serve);
        let held = std::mem::size_of::<Conn>() + std::mem::size_of::<BytesMut>() + 24;
        assert!(serve <= held, "{serve} bytes, more than {held}");
    }
}
