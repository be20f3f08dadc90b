//! One HTTP/2 stream: its request goes to the target as HTTP/1.1 over the
//! same pooled connections the HTTP/1.1 path uses, and the answer comes back
//! decoded from HTTP/1.1 framing.
//!
//! Rewriting follows RFC 9110 for a proxy and RFC 9113 §8.2 for the change
//! of version: `:authority` becomes `Host`, split `Cookie` fields are joined,
//! connection-specific fields never reach the client.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::body::{ResponseBody, TargetBody};
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
use crate::target::InFlight;

/// What a stream answers: its header block and body.
pub(super) struct Response {
    pub(super) block: Block,
    pub(super) body: ResponseBody,
}

impl Forwarder {
    /// Serves one stream: the request to a target, the answer back. A
    /// client that resets the stream has its future dropped, and with it
    /// the target's request.
    pub(super) async fn stream(&self, routing: &Routing, peer: &Peer, req: Request, io: StreamIo) {
        let resp = self.handle(routing, peer, &req, &io).await;
        drop(req);
        super::body::send(resp, &io).await;
    }

    /// The response to one HTTP/2 client request.
    async fn handle(
        &self,
        routing: &Routing,
        peer: &Peer,
        req: &Request,
        io: &StreamIo,
    ) -> Response {
        match req.refusal {
            Some(431) => return error(431, "baton: request header fields too large\n"),
            Some(status) => return error(status, "baton: CONNECT is not supported\n"),
            None => {}
        }
        let framing = request_framing(req);
        let ask = Head::of(req, peer);
        let mut out = Vec::with_capacity(1024);
        write_request_head(&ask, framing, &self.request_ids, &mut out);
        let Picked { hold, cookie } = match routing.pick(&ask) {
            Ok(picked) => picked,
            Err(no) => return error(no.status(), format!("baton: {no}\n")),
        };
        let head_method = req.method() == "HEAD";
        let replayable = framing == Framing::Empty && is_idempotent(req.method());

        let mut attempts = Attempts::new(hold);
        while let Some(mut upstream) = attempts.next(self).await {
            let request = Outgoing {
                head: &out,
                body: io,
                framing,
                head_method,
            };
            match send(&mut upstream, request, self.timeouts.response).await {
                Ok(answer) => {
                    let mut answer = answer;
                    if let Some(cookie) = &cookie {
                        add_set_cookie(&mut answer.block, cookie);
                    }
                    return self.respond(upstream, answer, attempts.into_hold());
                }
                // Dropped unanswered on a reused connection: send it again.
                Err(Failed::Unanswered(e)) if upstream.reused && replayable => attempts.failed(e),
                Err(Failed::TimedOut) => {
                    attempts.answered(504);
                    return error(504, "baton: the target did not answer in time\n");
                }
                Err(e) => {
                    attempts.failed(e.to_string());
                    break;
                }
            }
        }
        attempts.answered(502);
        error(
            502,
            format!("baton: upstream error: {}\n", attempts.last_error),
        )
    }

    /// The client's response; its body reads the rest from the target.
    fn respond(&self, upstream: Upstream, answer: Answer, mut hold: InFlight) -> Response {
        let Answer {
            parts,
            block,
            buf,
            request_done,
        } = answer;
        hold.answered(parts.status);
        let target = TargetBody {
            stream: upstream.stream,
            buf,
            remaining: Remaining::new(parts.framing),
            reusable: parts.reusable && request_done,
            addr: hold.target().addr(),
            connections: self.connections.clone(),
        };
        Response {
            block,
            body: ResponseBody::target(target, hold),
        }
    }
}

/// A request as it goes to the target.
struct Outgoing<'a> {
    head: &'a [u8],
    body: &'a StreamIo,
    framing: Framing,
    head_method: bool,
}

/// A target's answer: its head, encoded for the client, what was read past
/// it, and whether the whole request body went out.
struct Answer {
    parts: ResponseParts,
    block: Block,
    buf: BytesMut,
    request_done: bool,
}

/// Writes the request and reads the response head, the request body
/// streaming meanwhile; the response timeout runs from the body's end.
async fn send(
    upstream: &mut Upstream,
    req: Outgoing<'_>,
    timeout: Duration,
) -> Result<Answer, Failed> {
    let Outgoing {
        head,
        body,
        framing,
        head_method,
    } = req;
    if let Err(e) = upstream.stream.write_all(head).await {
        return Err(Failed::Unanswered(format!("writing the request: {e}")));
    }
    let (mut from, mut to) = upstream.stream.split();
    let mut buf = BytesMut::with_capacity(4096);
    let mut block = Block::default();
    let progress = Progress::default();
    progress
        .request_done
        .store(framing == Framing::Empty, Relaxed);
    let copy = copy_request_body(body, &mut to, framing);
    let answer = read_response_head(&mut from, &mut buf, &mut block, head_method);
    let parts = body_and_answer(&progress, copy, answer, timeout).await?;
    Ok(Answer {
        parts,
        block,
        buf,
        request_done: progress.request_done.load(Relaxed),
    })
}

/// Streams the client's body to the target, chunked unless its length is known.
async fn copy_request_body<W>(body: &StreamIo, to: &mut W, framing: Framing) -> Result<(), Failed>
where
    W: AsyncWrite + Unpin,
{
    let chunked = framing == Framing::Chunked;
    let write_failed =
        |e: std::io::Error| Failed::Upstream(format!("writing the request body: {e}"));
    while let Some(data) = body.data().await {
        if chunked {
            to.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await
                .map_err(write_failed)?;
        }
        to.write_all(&data).await.map_err(write_failed)?;
        if chunked {
            to.write_all(b"\r\n").await.map_err(write_failed)?;
        }
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
    out.extend_from_slice(req.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path().as_bytes());
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

/// baton's own answer: a status and a line of text.
fn error(status: u16, text: impl Into<Bytes>) -> Response {
    let text = text.into();
    let mut block = Block::default();
    block.status(status);
    block.field(b"content-type", b"text/plain; charset=utf-8");
    block.field(b"content-length", text.len().to_string().as_bytes());
    Response {
        block,
        body: ResponseBody::full(text),
    }
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
