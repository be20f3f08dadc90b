//! One HTTP/2 stream: its request goes to the target as HTTP/1.1 over the
//! same pooled connections the HTTP/1.1 path uses, and the answer comes back
//! decoded from HTTP/1.1 framing.
//!
//! Rewriting follows RFC 9110 for a proxy and RFC 9113 §8.2 for the change
//! of version: `:authority` becomes `Host`, split `Cookie` fields are joined,
//! connection-specific fields never reach the client.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::body;
use super::frame::Reason;
use super::hpack::Block;
use super::request::Request;
use super::shared::StreamIo;
use crate::ask::{cookie_in, Ask};
use crate::canary::SetCookie;
use crate::forward::{
    body_and_answer, read_head_more, Attempts, Failed, Forwarder, Progress, Routing,
};
use crate::forwarded::{push_field, Forwarding, Peer, RequestIds};
use crate::http1::{
    is_idempotent, is_set_by_proxy, parse_response_parts, Framing, Remaining, ResponseParts,
    Upstream,
};
use crate::router::Picked;

impl Forwarder {
    /// Serves one stream: the request to a target, the answer back. A
    /// client that resets the stream has its future dropped, and with it
    /// the target's request.
    pub(super) async fn stream(&self, routing: &Routing, peer: &Peer, req: Request, io: StreamIo) {
        if let Some(refusal) = req.refusal {
            return body::text(&io, refusal.status(), refusal.text()).await;
        }
        let framing = request_framing(&req);
        let ask = Head::of(&req, peer);
        let mut head = Vec::with_capacity(1024);
        write_request_head(&ask, framing, &self.request_ids, &mut head);
        let Picked { hold, cookie } = match routing.pick(&ask) {
            Ok(picked) => picked,
            Err(no) => return body::text(&io, no.status(), &format!("baton: {no}\n")).await,
        };
        let outgoing = Outgoing {
            head: &head,
            io: &io,
            framing,
            head_method: req.method() == b"HEAD",
            cookie: cookie.as_ref(),
        };
        let replayable = framing == Framing::Empty && is_idempotent(req.method());

        let mut attempts = Attempts::new(hold);
        while let Some(mut upstream) = attempts.next(self).await {
            match outgoing
                .send(&mut upstream, &mut attempts, self.timeouts.response)
                .await
            {
                Ok(reusable) => {
                    let hold = attempts.into_hold();
                    if reusable {
                        self.connections.put(hold.target().addr(), upstream.stream);
                    }
                    return;
                }
                // Dropped unanswered on a reused connection: send it again.
                Err(Failed::Unanswered(e)) if upstream.reused && replayable => attempts.failed(e),
                Err(Failed::TimedOut) => {
                    attempts.answered(504);
                    let text = "baton: the target did not answer in time\n";
                    return body::text(&io, 504, text).await;
                }
                // The head went out: all that is left is to say it is not whole.
                Err(Failed::Broken) => return io.reset(Reason::INTERNAL_ERROR),
                Err(e) => {
                    attempts.failed(e.to_string());
                    break;
                }
            }
        }
        attempts.answered(502);
        let text = format!("baton: upstream error: {}\n", attempts.last_error);
        body::text(&io, 502, &text).await;
    }
}

/// A request as it goes to the target.
struct Outgoing<'a> {
    head: &'a [u8],
    io: &'a StreamIo,
    framing: Framing,
    head_method: bool,
    /// Set on the answer, for a canary's stickiness.
    cookie: Option<&'a SetCookie>,
}

impl Outgoing<'_> {
    /// Writes the request to the target and relays the answer to the
    /// client. Both bodies stream at once, as on the HTTP/1.1 path: an
    /// early answer gets through while the request body is still coming,
    /// and a target that answers as it reads gets the rest of it. The
    /// response timeout runs from the request body's end to the answer's
    /// head. `Ok(true)`: the connection can carry another request.
    async fn send(
        &self,
        upstream: &mut Upstream,
        attempts: &mut Attempts,
        timeout: Duration,
    ) -> Result<bool, Failed> {
        if let Err(e) = upstream.stream.write_all(self.head).await {
            return Err(Failed::Unanswered(format!("writing the request: {e}")));
        }
        let (mut from, mut to) = upstream.stream.split();
        let progress = Progress::default();
        progress
            .request_done
            .store(self.framing == Framing::Empty, Relaxed);
        let copy = copy_request_body(self.io, &mut to, self.framing);
        let answer = async {
            let mut buf = BytesMut::with_capacity(4096);
            let mut block = Block::default();
            let parts =
                read_response_head(&mut from, &mut buf, &mut block, self.head_method).await?;
            progress.answered.store(true, Relaxed);
            attempts.answered(parts.status);
            if let Some(cookie) = self.cookie {
                add_set_cookie(&mut block, cookie);
            }
            let remaining = Remaining::new(parts.framing);
            let ends_here = remaining.is_done();
            self.io.send_headers(block.as_bytes(), ends_here);
            let whole = ends_here || body::relay(&mut from, &mut buf, remaining, self.io).await?;
            Ok(parts.reusable && whole && buf.is_empty())
        };
        let reusable = body_and_answer(&progress, copy, answer, timeout).await?;
        Ok(reusable && progress.request_done.load(Relaxed))
    }
}

/// Streams the client's body to the target, chunked unless its length is known.
async fn copy_request_body<W>(body: &StreamIo, to: &mut W, framing: Framing) -> Result<(), Failed>
where
    W: AsyncWrite + Unpin,
{
    use std::io::Write;
    let chunked = framing == Framing::Chunked;
    let write_failed =
        |e: std::io::Error| Failed::Upstream(format!("writing the request body: {e}"));
    // A chunk goes out in one write, its framing around it.
    let mut framed = Vec::new();
    while let Some(data) = body.data().await {
        if !chunked {
            to.write_all(&data).await.map_err(write_failed)?;
            continue;
        }
        framed.clear();
        let _ = write!(framed, "{:x}\r\n", data.len());
        framed.extend_from_slice(&data);
        framed.extend_from_slice(b"\r\n");
        to.write_all(&framed).await.map_err(write_failed)?;
    }
    if chunked {
        to.write_all(b"0\r\n\r\n").await.map_err(write_failed)?;
    }
    Ok(())
}

/// Reads until a final response head is in `buf` (interim 1xx answers are
/// dropped: there is no HTTP/2 stream to send them on here), encodes it
/// for the client into `block`, and leaves what follows it in `buf`.
async fn read_response_head<R>(
    from: &mut R,
    buf: &mut BytesMut,
    block: &mut Block,
    head_method: bool,
) -> Result<ResponseParts, Failed>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut answered = false;
    loop {
        if !buf.is_empty() {
            answered = true;
            block.clear();
            match parse_response_parts(buf, head_method, block) {
                Ok(Some(resp)) if resp.status == 101 => {
                    return Err(Failed::Upstream("unexpected 101 from the target".into()))
                }
                Ok(Some(resp)) if (100..200).contains(&resp.status) => {
                    let _ = buf.split_to(resp.head_len);
                    continue;
                }
                Ok(Some(resp)) => {
                    let _ = buf.split_to(resp.head_len);
                    return Ok(resp);
                }
                Ok(None) => {}
                Err(e) => return Err(Failed::Upstream(format!("invalid response: {e}"))),
            }
        }
        read_head_more(from, buf, answered).await?;
    }
}

/// How the request's body goes to the target.
fn request_framing(req: &Request) -> Framing {
    if req.end_stream {
        return Framing::Empty;
    }
    match req.content_length {
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    }
}

/// The HTTP/1.1 head of the request as the target gets it, written
/// straight from the client's fields. Connection-specific fields cannot be
/// among them: RFC 9113 §8.2.2 makes such a request malformed, and it was
/// refused before it got here.
fn write_request_head(ask: &Head<'_>, framing: Framing, ids: &RequestIds, out: &mut Vec<u8>) {
    let req = ask.req;
    out.extend_from_slice(req.method());
    out.push(b' ');
    out.extend_from_slice(req.path());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if ask.cookies.is_some() {
        // HTTP/2 may split Cookie; HTTP/1.1 wants one field (RFC 9113 §8.2.3).
        out.extend_from_slice(b"cookie: ");
        for (i, c) in req.cookies().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(c);
        }
        out.extend_from_slice(b"\r\n");
    }
    let mut forwarding = Forwarding {
        prior_for: None,
        host: ask.host.map(str::as_bytes),
        add_host: !ask.has_host,
        has_request_id: false,
    };
    for (name, value) in req.fields() {
        if name == b"cookie" {
            continue;
        }
        if name == b"x-forwarded-for" {
            forwarding.prior_for.get_or_insert(value);
        }
        if is_set_by_proxy(name) {
            continue;
        }
        forwarding.has_request_id |= name == b"x-request-id";
        push_field(out, name, value);
    }
    forwarding.write(ask.peer, ids, out);
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The request as routing sees it.
struct Head<'a> {
    req: &'a Request,
    /// The Host field, or else `:authority`: HTTP/2 carries the host there.
    host: Option<&'a str>,
    /// The client sent a Host field (HTTP/2 clients mostly do not).
    has_host: bool,
    /// The first Cookie field.
    cookies: Option<&'a [u8]>,
    peer: &'a Peer,
}

impl<'a> Head<'a> {
    fn of(req: &'a Request, peer: &'a Peer) -> Self {
        let field = req.host();
        // Checked to be visible ASCII when decoded.
        let host = match field {
            Some(h) => std::str::from_utf8(h).ok(),
            None => req.authority(),
        };
        Self {
            req,
            host,
            has_host: field.is_some(),
            cookies: req.first_cookie(),
            peer,
        }
    }
}

impl Ask for Head<'_> {
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn color_header(&self) -> Option<&[u8]> {
        self.req.color()
    }
    fn cookies(&self) -> Option<&[u8]> {
        self.cookies
    }
    /// HTTP/2 may split cookies over several fields: each is looked in.
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.cookies?;
        self.req.cookies().find_map(|v| cookie_in(v, name))
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.req.header(name)
    }
    fn client_ip(&self) -> &str {
        self.peer.ip()
    }
}

fn add_set_cookie(block: &mut Block, cookie: &SetCookie) {
    let mut value = Vec::with_capacity(64);
    cookie.write_value(&mut value);
    block.field(b"set-cookie", &value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http2::request::Builder;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut b = Builder::default();
        for (n, v) in [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "example.com"),
            (":path", "/a?b=1"),
        ]
        .iter()
        .chain(headers)
        {
            b.field(n.as_bytes(), v.as_bytes());
        }
        b.finish(true).unwrap()
    }

    fn head_for_target(headers: &[(&str, &str)]) -> String {
        let ids = RequestIds::new();
        let peer = Peer::new("10.1.2.3:5555".parse().unwrap());
        let req = request(headers);
        let mut out = Vec::new();
        write_request_head(&Head::of(&req, &peer), Framing::Empty, &ids, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn adds_forwarding_headers_and_keeps_a_request_id() {
        let out = head_for_target(&[
            ("host", "app.example"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        assert!(out.starts_with("GET /a?b=1 HTTP/1.1\r\n"), "{out}");
        assert!(out.contains("host: app.example\r\n"), "{out}");
        assert!(
            out.contains("x-forwarded-for: 1.1.1.1, 10.1.2.3\r\n"),
            "{out}"
        );
        assert!(out.contains("x-forwarded-proto: http\r\n"), "{out}");
        assert!(
            !out.contains("https"),
            "the client's proto is replaced: {out}"
        );
        assert!(out.contains("x-forwarded-host: app.example\r\n"), "{out}");
        assert_eq!(out.matches("x-request-id: ").count(), 1, "{out}");
        assert!(out.ends_with("\r\n\r\n"), "{out}");
        let out = head_for_target(&[("x-request-id", "abc")]);
        assert!(out.contains("x-request-id: abc\r\n"), "{out}");
        assert_eq!(out.matches("x-request-id: ").count(), 1, "{out}");
    }

    #[test]
    fn http2_authority_becomes_host() {
        let out = head_for_target(&[]);
        assert_eq!(out.matches("host: example.com\r\n").count(), 2, "{out}");
        assert!(out.contains("\r\nhost: example.com\r\n"), "{out}");
        assert!(out.contains("x-forwarded-host: example.com\r\n"), "{out}");
    }

    #[test]
    fn split_cookies_are_joined() {
        let out = head_for_target(&[("cookie", "a=1"), ("cookie", "b=2")]);
        assert!(out.contains("cookie: a=1; b=2\r\n"), "{out}");
        assert_eq!(out.matches("cookie: ").count(), 1, "{out}");
    }
}
