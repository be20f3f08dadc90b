//! One proxied HTTP/1.1 request: pick a target, send the rewritten head (and
//! the body bytes already read) in one write, read the answer, and stream
//! the rest of both bodies through. Upgrades become a tunnel.
//!
//! A request that never reached an app goes to another target; one the app
//! dropped unanswered on a reused connection is sent again if it is
//! idempotent and whole in hand. Anything else becomes a 502, or a 504 when
//! the target took longer than the response timeout.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::body::Remaining;
use super::connections::Upstream;
use super::head::{self, Framing, Request, Response};
use super::idle::IdleSlot;
use super::Buffers;
use crate::ask::Ask;
use crate::canary::SetCookie;
use crate::client_socket::ClientSocket;
use crate::forward::{
    body_and_answer, read_head_more, Attempts, Failed, Forwarder, Progress, Routing,
};
use crate::forwarded::Peer;
use crate::router::Picked;
use crate::target::InFlight;
use crate::tunnel;

/// What the client connection does after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum After {
    KeepAlive,
    Close,
}

/// One request on a client connection.
pub(super) struct Exchange<'a> {
    pub(super) forwarder: &'a Forwarder,
    pub(super) routing: &'a Routing,
    pub(super) client: &'a mut ClientSocket,
    /// The connection's idle slot, for a tunnel to leave the parking set.
    pub(super) idle: &'a IdleSlot,
    pub(super) peer: &'a Peer,
    pub(super) bufs: &'a mut Buffers,
    pub(super) req: Request,
}

/// The request as routing sees it: the parsed head's facts over its bytes.
struct Head<'a> {
    bytes: &'a [u8],
    req: &'a Request,
    peer: &'a Peer,
}

impl Head<'_> {
    fn field(&self, range: &Option<std::ops::Range<usize>>) -> Option<&[u8]> {
        range.clone().map(|r| &self.bytes[r])
    }
}

impl Ask for Head<'_> {
    fn host(&self) -> Option<&str> {
        self.field(&self.req.host)
            .and_then(|h| std::str::from_utf8(h).ok())
    }
    fn color_header(&self) -> Option<&[u8]> {
        self.field(&self.req.color)
    }
    fn cookies(&self) -> Option<&[u8]> {
        self.field(&self.req.cookies)
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        head::find_field(&self.bytes[..self.req.head_len], name)
    }
    fn client_ip(&self) -> &str {
        self.peer.ip()
    }
}

impl Exchange<'_> {
    /// Runs the exchange to its end; the head is at the front of `bufs.client`
    /// and its rewritten form in `bufs.out`.
    pub(super) async fn run(mut self) -> After {
        let picked = self.routing.pick(&Head {
            bytes: &self.bufs.client,
            req: &self.req,
            peer: self.peer,
        });
        self.bufs.client.advance(self.req.head_len);
        let Picked { hold, cookie } = match picked {
            Ok(picked) => picked,
            Err(no) => return self.reply(no.status(), &format!("baton: {no}\n")).await,
        };
        let mut body = Remaining::new(self.req.framing);
        if body
            .take_into(&mut self.bufs.client, &mut self.bufs.out)
            .is_err()
        {
            return self.reply(400, "baton: malformed chunked body\n").await;
        }
        let replayable = self.req.idempotent && body.is_done();

        let mut attempts = Attempts::new(hold);
        while let Some(mut upstream) = attempts.next(self.forwarder).await {
            match self.send(&mut upstream, &mut body, cookie.as_ref()).await {
                Ok(resp) => {
                    let hold = attempts.into_hold();
                    return self.finish(upstream, resp, body, hold).await;
                }
                // Dropped unanswered on a reused connection: send it again.
                Err(Failed::Unanswered(e)) if upstream.reused && replayable => attempts.failed(e),
                Err(Failed::Unanswered(e) | Failed::Upstream(e)) => {
                    attempts.failed(e);
                    break;
                }
                Err(Failed::TimedOut) => {
                    attempts.answered(504);
                    return self
                        .reply(504, "baton: the target did not answer in time\n")
                        .await;
                }
                Err(Failed::Client(_) | Failed::Broken) => return After::Close,
            }
        }
        attempts.answered(502);
        let text = format!("baton: upstream error: {}\n", attempts.last_error);
        self.reply_closing(502, &text, !body.is_done()).await
    }

    /// Writes the request to the target and relays the answer to the client.
    /// Both bodies stream at once: an early answer (or a `100 Continue`)
    /// gets through while the request body is still coming, and a target
    /// that answers as it reads gets the rest of it.
    async fn send(
        &mut self,
        upstream: &mut Upstream,
        body: &mut Remaining,
        cookie: Option<&SetCookie>,
    ) -> Result<Response, Failed> {
        let Buffers {
            client: client_buf,
            upstream: upstream_buf,
            out,
        } = &mut *self.bufs;
        let timeouts = self.forwarder.timeouts;
        if let Err(e) = upstream.stream.write_all(out).await {
            return Err(Failed::Unanswered(format!("writing the request: {e}")));
        }
        upstream_buf.clear();
        let (mut upstream_read, mut upstream_write) = upstream.stream.split();
        let progress = Progress::default();
        progress.request_done.store(body.is_done(), Relaxed);
        if body.is_done() {
            // Nothing more to read from the client: its socket is only
            // written, and stays whole (splitting registers it).
            let leg = ResponseLeg {
                from: &mut upstream_read,
                to: self.client,
                buf: upstream_buf,
                out,
            };
            let answer = relay_response(leg, &self.req, &progress, cookie, timeouts.response);
            return body_and_answer(&progress, async { Ok(()) }, answer, timeouts.response).await;
        }
        let (mut client_read, mut client_write) = self
            .client
            .registered()
            .map(TcpStream::split)
            .map_err(|e| Failed::Client(e.to_string()))?;
        let copy = async {
            let copied = body
                .relay(
                    &mut client_read,
                    &mut upstream_write,
                    client_buf,
                    timeouts.idle,
                )
                .await;
            copied.map_err(|e| {
                if e.by_reader() {
                    Failed::Client(e.to_string())
                } else {
                    Failed::Upstream(e.to_string())
                }
            })
        };
        let leg = ResponseLeg {
            from: &mut upstream_read,
            to: &mut client_write,
            buf: upstream_buf,
            out,
        };
        let answer = relay_response(leg, &self.req, &progress, cookie, timeouts.response);
        body_and_answer(&progress, copy, answer, timeouts.response).await
    }

    /// Pools the target connection if it can carry another request, or hands
    /// an upgrade to the tunnel.
    async fn finish(
        self,
        upstream: Upstream,
        resp: Response,
        request: Remaining,
        mut hold: InFlight,
    ) -> After {
        hold.answered(resp.status);
        if resp.status == 101 {
            return self.tunnel(upstream, hold).await;
        }
        let request_done = request.is_done();
        if resp.reusable && request_done && self.bufs.upstream.is_empty() {
            let addr = hold.target().addr();
            self.forwarder.connections.put(addr, upstream.stream);
        }
        drop(hold);
        if resp.keep_client && request_done {
            After::KeepAlive
        } else {
            After::Close
        }
    }

    /// Relays a `101 Switching Protocols` and then the raw connection, until
    /// either side closes it or a drain runs out of time.
    async fn tunnel(self, upstream: Upstream, hold: InFlight) -> After {
        if !self.req.upgrade {
            return self
                .reply(502, "baton: unexpected 101 from the target\n")
                .await;
        }
        if self.client.write_all(&self.bufs.out).await.is_err() {
            return After::Close;
        }
        self.idle.unwatch();
        let hold = hold.upgraded();
        // Boxed: the tunnel's closing state (2 KiB of buffers) would otherwise
        // be part of every request's future, held by each request in flight.
        Box::pin(tunnel::relay(
            &self.forwarder.tunnels,
            tunnel::Side::new(self.client, &self.bufs.client),
            tunnel::Side::new(upstream.stream, &self.bufs.upstream),
            hold.closing(),
            self.req.websocket,
        ))
        .await;
        drop(hold);
        After::Close
    }

    /// Answers with baton's own response. The connection stays open only if
    /// the request had no body left unread.
    async fn reply(self, status: u16, text: &str) -> After {
        let unread = self.req.framing != Framing::Empty;
        self.reply_closing(status, text, unread).await
    }

    async fn reply_closing(self, status: u16, text: &str, close: bool) -> After {
        let close = close || !self.req.keep_alive;
        head::error_response(status, text, close, &mut self.bufs.out);
        if self.client.write_all(&self.bufs.out).await.is_err() || close {
            return After::Close;
        }
        After::KeepAlive
    }
}

/// Bodies up to this size go to the client in the same write as their head.
const COALESCE: u64 = 16 * 1024;

/// The response's way from the target to the client.
struct ResponseLeg<'a, R, W> {
    from: &'a mut R,
    to: &'a mut W,
    /// What the target sent and is not relayed yet.
    buf: &'a mut BytesMut,
    /// The head the client gets.
    out: &'a mut Vec<u8>,
}

/// Reads the response head (relaying interim ones), then sends it and the
/// body to the client. A 101 returns before its head is sent: the tunnel
/// takes over.
async fn relay_response<R, W>(
    leg: ResponseLeg<'_, R, W>,
    req: &Request,
    progress: &Progress,
    cookie: Option<&SetCookie>,
    stall: Duration,
) -> Result<Response, Failed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let resp = read_response(
        leg.from,
        leg.buf,
        leg.to,
        req,
        &progress.request_done,
        leg.out,
    )
    .await?;
    progress.answered.store(true, Relaxed);
    leg.buf.advance(resp.head_len);
    if resp.status == 101 {
        return Ok(resp);
    }
    if let Some(cookie) = cookie {
        head::add_set_cookie(leg.out, cookie);
    }
    if let Framing::Length(n) = resp.framing {
        // A small body often trails its head by microseconds (a separate
        // write on the target's side): waiting for it sends both in one
        // write and one segment instead of two of each.
        while n <= COALESCE && (leg.buf.len() as u64) < n {
            leg.buf.reserve(n as usize - leg.buf.len());
            match tokio::time::timeout(stall, leg.from.read_buf(leg.buf)).await {
                Ok(Ok(read)) if read > 0 => {}
                // The relay below reports what went wrong.
                _ => break,
            }
        }
    }
    let mut body = Remaining::new(resp.framing);
    // What trails the head goes out with it: room for it at once.
    leg.out.reserve(leg.buf.len());
    if body.take_into(leg.buf, leg.out).is_err() {
        return Err(Failed::Upstream("malformed chunked response".into()));
    }
    leg.to
        .write_all(leg.out)
        .await
        .map_err(|e| Failed::Client(e.to_string()))?;
    if let Err(e) = body.relay(leg.from, leg.to, leg.buf, stall).await {
        tracing::debug!(error = %e, "response body relay ended early");
        return Err(Failed::Broken);
    }
    Ok(resp)
}

/// Reads the target's response head into `buf`, relaying interim (1xx)
/// responses to the client, and renders the client's head into `out`.
async fn read_response<R, W>(
    from: &mut R,
    buf: &mut BytesMut,
    client: &mut W,
    req: &Request,
    request_done: &AtomicBool,
    out: &mut Vec<u8>,
) -> Result<Response, Failed>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut answered = false;
    loop {
        if !buf.is_empty() {
            answered = true;
            // Answered before the whole request came: the rest of it may
            // never be read, so the connection cannot carry another request.
            let keep_client = req.keep_alive && request_done.load(Relaxed);
            match head::parse_response(buf, req, keep_client, out) {
                Ok(Some(resp)) if resp.is_interim() => {
                    client
                        .write_all(out)
                        .await
                        .map_err(|e| Failed::Client(e.to_string()))?;
                    buf.advance(resp.head_len);
                    continue;
                }
                Ok(Some(resp)) => return Ok(resp),
                Ok(None) => {}
                Err(e) => return Err(Failed::Upstream(format!("invalid response: {e}"))),
            }
        }
        read_head_more(from, buf, answered).await?;
    }
}
