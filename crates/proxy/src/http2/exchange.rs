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
use h2::server::SendResponse;
use h2::RecvStream;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{request, Method, Request, Response, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::body::{ResponseBody, TargetBody};
use crate::ask::{cookie_in, Ask, COLOR_HEADER};
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

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl Forwarder {
    /// Serves one stream: the request to a target, the answer back. A
    /// client that resets the stream before the answer comes ends the
    /// exchange, and with it the target's request.
    pub(crate) async fn stream(
        &self,
        routing: &Routing,
        peer: &Peer,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
    ) {
        let reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
        let resp = tokio::select! {
            biased;
            resp = self.handle(routing, peer, req) => resp,
            _ = reset => return,
        };
        super::body::send(resp, respond).await;
    }

    /// The response to one HTTP/2 client request.
    async fn handle(
        &self,
        routing: &Routing,
        peer: &Peer,
        req: Request<RecvStream>,
    ) -> Response<ResponseBody> {
        let (parts, mut body) = req.into_parts();
        let framing = request_framing(&parts, &body);
        let ask = Head::of(&parts, peer);
        let mut out = Vec::with_capacity(1024);
        write_request_head(&ask, framing, &self.request_ids, &mut out);
        let Picked { hold, cookie } = match pick(routing, &ask) {
            Ok(picked) => picked,
            Err(resp) => return resp,
        };
        let head_method = parts.method == Method::HEAD;
        let replayable = framing == Framing::Empty && is_idempotent(parts.method.as_str());

        let mut attempts = Attempts::new(hold);
        while let Some(mut upstream) = attempts.next(self).await {
            let request = Outgoing {
                head: &out,
                body: &mut body,
                framing,
                head_method,
            };
            match send(&mut upstream, request, self.timeouts.response).await {
                Ok((mut resp, buf, request_done)) => {
                    let hold = attempts.into_hold();
                    if let Some(cookie) = &cookie {
                        add_set_cookie(resp.head.headers_mut(), cookie);
                    }
                    return self.respond(upstream, resp, buf, request_done, hold);
                }
                // Dropped unanswered on a reused connection: send it again.
                Err(Failed::Unanswered(e)) if upstream.reused && replayable => attempts.failed(e),
                Err(Failed::TimedOut) => {
                    attempts.answered(504);
                    return error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "baton: the target did not answer in time\n",
                    );
                }
                Err(e) => {
                    attempts.failed(e.to_string());
                    break;
                }
            }
        }
        attempts.answered(502);
        error(
            StatusCode::BAD_GATEWAY,
            format!("baton: upstream error: {}\n", attempts.last_error),
        )
    }

    /// The client's response; its body reads the rest from the target.
    fn respond(
        &self,
        upstream: Upstream,
        resp: ResponseParts,
        buf: BytesMut,
        request_done: bool,
        mut hold: InFlight,
    ) -> Response<ResponseBody> {
        hold.answered(resp.head.status().as_u16());
        let target = TargetBody {
            stream: upstream.stream,
            buf,
            remaining: Remaining::new(resp.framing),
            reusable: resp.reusable && request_done,
            addr: hold.target().addr(),
            connections: self.connections.clone(),
        };
        let (parts, ()) = resp.head.into_parts();
        Response::from_parts(parts, ResponseBody::target(target, hold))
    }
}

/// A request as it goes to the target.
struct Outgoing<'a> {
    head: &'a [u8],
    body: &'a mut RecvStream,
    framing: Framing,
    head_method: bool,
}

/// Writes the request and reads the response head, the request body
/// streaming meanwhile; the response timeout runs from the body's end.
/// Returns the head, what was read past it, and whether the whole request
/// body went out.
async fn send(
    upstream: &mut Upstream,
    req: Outgoing<'_>,
    timeout: Duration,
) -> Result<(ResponseParts, BytesMut, bool), Failed> {
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
    let progress = Progress::default();
    progress
        .request_done
        .store(framing == Framing::Empty, Relaxed);
    let copy = copy_request_body(body, &mut to, framing);
    let answer = read_response_head(&mut from, &mut buf, head_method);
    let resp = body_and_answer(&progress, copy, answer, timeout).await?;
    Ok((resp, buf, progress.request_done.load(Relaxed)))
}

/// Streams the client's body to the target, chunked unless its length is known.
async fn copy_request_body<W>(
    body: &mut RecvStream,
    to: &mut W,
    framing: Framing,
) -> Result<(), Failed>
where
    W: AsyncWrite + Unpin,
{
    let chunked = framing == Framing::Chunked;
    let write_failed =
        |e: std::io::Error| Failed::Upstream(format!("writing the request body: {e}"));
    // Trailers, if any, are not carried over HTTP/1.1 here.
    while let Some(data) = body.data().await {
        let data = data.map_err(|e| Failed::Client(format!("request body: {e}")))?;
        // Taken off the stream's window, so the client may send more.
        let _ = body.flow_control().release_capacity(data.len());
        if chunked && !data.is_empty() {
            to.write_all(format!("{:x}\r\n", data.len()).as_bytes())
                .await
                .map_err(write_failed)?;
        }
        to.write_all(&data).await.map_err(write_failed)?;
        if chunked && !data.is_empty() {
            to.write_all(b"\r\n").await.map_err(write_failed)?;
        }
    }
    if chunked {
        to.write_all(b"0\r\n\r\n").await.map_err(write_failed)?;
    }
    Ok(())
}

/// Reads until a final response head is in `buf` (interim 1xx answers are
/// dropped: there is no HTTP/2 stream to send them on here), and leaves
/// what follows it in `buf`.
async fn read_response_head<R>(
    from: &mut R,
    buf: &mut BytesMut,
    head_method: bool,
) -> Result<ResponseParts, Failed>
where
    R: tokio::io::AsyncRead + Unpin,
{
    let mut answered = false;
    loop {
        if !buf.is_empty() {
            answered = true;
            match parse_response_parts(buf, head_method) {
                Ok(Some(resp)) if resp.head.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    return Err(Failed::Upstream("unexpected 101 from the target".into()))
                }
                Ok(Some(resp)) if resp.head.status().is_informational() => {
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
fn request_framing(parts: &request::Parts, body: &RecvStream) -> Framing {
    if body.is_end_stream() {
        return Framing::Empty;
    }
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok());
    match length {
        Some(n) => Framing::Length(n),
        None => Framing::Chunked,
    }
}

/// The HTTP/1.1 head of the request as the target gets it, written
/// straight from the client's fields. Connection-specific fields cannot be
/// among them: RFC 9113 §8.2.2 makes such a request malformed, and h2
/// resets its stream before it gets here.
fn write_request_head(ask: &Head<'_>, framing: Framing, ids: &RequestIds, out: &mut Vec<u8>) {
    let parts = ask.parts;
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if ask.cookies.is_some() {
        // HTTP/2 may split Cookie; HTTP/1.1 wants one field (RFC 9113 §8.2.3).
        out.extend_from_slice(b"cookie: ");
        for (i, c) in parts.headers.get_all(header::COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(c.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    let mut forwarding = Forwarding {
        prior_for: None,
        host: ask.host.map(str::as_bytes),
        add_host: !ask.has_host,
        has_request_id: false,
    };
    for (name, value) in &parts.headers {
        if name == header::COOKIE {
            continue;
        }
        if name == X_FORWARDED_FOR {
            forwarding.prior_for.get_or_insert(value.as_bytes());
        }
        if is_set_by_proxy(name.as_str().as_bytes()) {
            continue;
        }
        forwarding.has_request_id |= name == X_REQUEST_ID;
        push_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    forwarding.write(ask.peer, ids, out);
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The request as routing sees it, its fields found in one pass rather
/// than a hash lookup each.
struct Head<'a> {
    parts: &'a request::Parts,
    /// The Host field, or else `:authority`: HTTP/2 carries the host there.
    host: Option<&'a str>,
    /// The client sent a Host field (HTTP/2 clients mostly do not).
    has_host: bool,
    color: Option<&'a [u8]>,
    /// The first Cookie field.
    cookies: Option<&'a [u8]>,
    peer: &'a Peer,
}

impl<'a> Head<'a> {
    fn of(parts: &'a request::Parts, peer: &'a Peer) -> Self {
        let mut head = Self {
            parts,
            host: None,
            has_host: false,
            color: None,
            cookies: None,
            peer,
        };
        for (name, value) in &parts.headers {
            if name == header::HOST {
                head.has_host = true;
                head.host = value.to_str().ok();
            } else if name == header::COOKIE {
                head.cookies.get_or_insert(value.as_bytes());
            } else if name.as_str() == COLOR_HEADER {
                head.color = Some(value.as_bytes());
            }
        }
        if !head.has_host {
            head.host = parts.uri.authority().map(|a| a.as_str());
        }
        head
    }
}

impl Ask for Head<'_> {
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn color_header(&self) -> Option<&[u8]> {
        self.color
    }
    fn cookies(&self) -> Option<&[u8]> {
        self.cookies
    }
    /// HTTP/2 may split cookies over several fields: each is looked in.
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.cookies?;
        self.parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .find_map(|v| cookie_in(v.as_bytes(), name))
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.parts.headers.get(name).map(|v| v.as_bytes())
    }
    fn client_ip(&self) -> &str {
        self.peer.ip()
    }
}

fn add_set_cookie(headers: &mut HeaderMap, cookie: &SetCookie) {
    let mut value = Vec::with_capacity(64);
    cookie.write_value(&mut value);
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        headers.append(header::SET_COOKIE, v);
    }
}

/// Takes a target for the request, or says why there is none.
// The error is the response to send, built on the cold path only.
#[allow(clippy::result_large_err)]
fn pick(routing: &Routing, ask: &Head<'_>) -> Result<Picked, Response<ResponseBody>> {
    routing.pick(ask).map_err(|no| {
        let status = StatusCode::from_u16(no.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        error(status, format!("baton: {no}\n"))
    })
}

fn error(status: StatusCode, text: impl Into<Bytes>) -> Response<ResponseBody> {
    let text = text.into();
    let length = HeaderValue::from(text.len());
    let mut resp = Response::new(ResponseBody::full(text));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(header::CONTENT_LENGTH, length);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> request::Parts {
        let mut b = Request::get("http://example.com/a?b=1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn head_for_target(headers: &[(&str, &str)]) -> String {
        let ids = RequestIds::new();
        let peer = Peer::new("10.1.2.3:5555".parse().unwrap());
        let p = parts(headers);
        let mut out = Vec::new();
        write_request_head(&Head::of(&p, &peer), Framing::Empty, &ids, &mut out);
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
