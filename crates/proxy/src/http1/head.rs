//! Message heads: parse the client's request and the target's response
//! (httparse, no copies), decide how each body is framed, and write the head
//! the other side gets, rewritten as RFC 9110 asks of a proxy.
//!
//! Rewriting goes straight from the parsed slices into one output buffer: no
//! header map, no per-header allocation. Hop-by-hop headers stop here;
//! framing headers pass unchanged because the body passes unchanged.

use std::ops::Range;

use crate::ask::COLOR_HEADER;
use crate::canary::SetCookie;
use crate::forwarded::{push_field, Forwarding, Peer, RequestIds};

/// Largest request or response head accepted.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted in one head.
const MAX_HEADERS: usize = 128;
/// Most `Connection` header fields honoured in one head.
const MAX_CONNECTION_FIELDS: usize = 8;

/// How a message's body is delimited (RFC 9112 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    Length(u64),
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// A client request, as the exchange needs to know it. Ranges index the
/// buffer the head was parsed from.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) head_len: usize,
    pub(crate) framing: Framing,
    /// The client wants the connection kept open after this exchange.
    pub(crate) keep_alive: bool,
    /// An HTTP/1.0 request: sent on as HTTP/1.0, so the answer needs no chunking.
    pub(crate) http10: bool,
    /// An upgrade was asked for (`Connection: upgrade`); `websocket` if to WebSocket.
    pub(crate) upgrade: bool,
    pub(crate) websocket: bool,
    /// Safe to send twice (RFC 9110 §9.2.2), if its body is at hand.
    pub(crate) idempotent: bool,
    /// A HEAD request: the response has no body whatever its headers say.
    pub(crate) head_method: bool,
    /// The Host header's value, for routing.
    pub(crate) host: Option<Range<usize>>,
    /// The `X-Baton-Color` header's value.
    pub(crate) color: Option<Range<usize>>,
    /// The (first) Cookie header's value.
    pub(crate) cookies: Option<Range<usize>>,
}

/// A target's response head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Response {
    pub(crate) head_len: usize,
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    /// The target keeps the connection open for another request.
    pub(crate) reusable: bool,
    /// The client connection stays open after this response.
    pub(crate) keep_client: bool,
}

impl Response {
    /// An interim (1xx) response other than 101: relayed, then the real one follows.
    pub(crate) fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }
}

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("malformed head: {0}")]
    Malformed(String),
    #[error("head too large")]
    TooLarge,
    #[error("{0}")]
    Framing(&'static str),
    #[error("CONNECT is not supported")]
    Connect,
}

impl HeadError {
    /// The status a client gets for its bad request.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Self::TooLarge => 431,
            Self::Connect => 405,
            _ => 400,
        }
    }
}

impl From<httparse::Error> for HeadError {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => Self::TooLarge,
            e => Self::Malformed(e.to_string()),
        }
    }
}

/// Parses a request head from `buf` and writes the head the target gets to
/// `out`. `Ok(None)`: the head is not complete yet.
pub(crate) fn parse_request(
    buf: &[u8],
    peer: &Peer,
    ids: &RequestIds,
    out: &mut Vec<u8>,
) -> Result<Option<Request>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let Some(head_len) = head_length(req.parse(buf), buf.len())? else {
        return Ok(None);
    };
    let method = req.method.unwrap_or_default();
    let target = req.path.unwrap_or("/");
    let http10 = req.version == Some(0);
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(HeadError::Connect);
    }
    let scan = Scan::of(req.headers)?;
    let framing = match (scan.chunked, scan.length) {
        (Some(_), Some(_)) => {
            return Err(HeadError::Framing(
                "both Content-Length and Transfer-Encoding",
            ))
        }
        (Some(_), _) if http10 => return Err(HeadError::Framing("chunked body in HTTP/1.0")),
        (Some(true), None) => Framing::Chunked,
        (Some(false), None) => {
            return Err(HeadError::Framing(
                "Transfer-Encoding does not end in chunked",
            ))
        }
        (None, Some(0)) | (None, None) => Framing::Empty,
        (None, Some(n)) => Framing::Length(n),
    };
    // Absolute form (`GET http://host/path`): the path goes on, the
    // authority stands in for a missing Host.
    let (path, authority) = split_absolute(target);
    let host = scan.host.or(authority);
    let upgrade = !http10 && scan.upgrade.is_some() && scan.connection_has(b"upgrade");

    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(if http10 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name, h.value) || is_set_by_proxy(name) || scan.lists(name) {
            continue;
        }
        push_field(out, name, h.value);
    }
    if upgrade {
        push_field(out, b"connection", b"upgrade");
        push_field(out, b"upgrade", scan.upgrade.unwrap_or_default());
    }
    Forwarding {
        prior_for: scan.forwarded_for,
        host,
        add_host: scan.host.is_none(),
        has_request_id: scan.request_id,
    }
    .write(peer, ids, out);
    out.extend_from_slice(b"\r\n");

    Ok(Some(Request {
        head_len,
        framing,
        keep_alive: !http10 && !scan.connection_has(b"close"),
        http10,
        upgrade,
        websocket: upgrade
            && scan
                .upgrade
                .is_some_and(|u| u.eq_ignore_ascii_case(b"websocket")),
        idempotent: is_idempotent(method.as_bytes()),
        head_method: method == "HEAD",
        host: host.map(|h| range_in(buf, h)),
        color: scan.color.map(|c| range_in(buf, c)),
        cookies: scan.cookies.map(|c| range_in(buf, c)),
    }))
}

/// Parses a response head from `buf` and writes the head the client gets to
/// `out`. `keep_client`: the request side allows keeping the client
/// connection. `Ok(None)`: the head is not complete yet.
pub(crate) fn parse_response(
    buf: &[u8],
    req: &Request,
    keep_client: bool,
    out: &mut Vec<u8>,
) -> Result<Option<Response>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let Some(head_len) = head_length(resp.parse(buf), buf.len())? else {
        return Ok(None);
    };
    let status = resp.code.unwrap_or_default();
    let scan = Scan::of(resp.headers)?;
    let switching = status == 101;
    let framing = response_framing(status, req.head_method, &scan);
    let reusable = !req.http10 && reusable(&resp, framing, &scan);
    let keep_client = keep_client && framing != Framing::UntilClose;
    let interim = (100..200).contains(&status) && !switching;

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    out.extend_from_slice(resp.reason.unwrap_or_default().as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let upgrade_kept = switching && name.eq_ignore_ascii_case(b"upgrade");
        if !upgrade_kept && (is_hop_by_hop(name, h.value) || scan.lists(name)) {
            continue;
        }
        push_field(out, name, h.value);
    }
    if switching {
        push_field(out, b"connection", b"upgrade");
    } else if !keep_client && !interim {
        push_field(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");

    Ok(Some(Response {
        head_len,
        status,
        framing,
        reusable,
        keep_client,
    }))
}

/// A target's response head as the HTTP/2 path needs it; its fields go
/// to a callback as they are parsed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResponseParts {
    pub(crate) head_len: usize,
    pub(crate) status: u16,
    pub(crate) framing: Framing,
    pub(crate) reusable: bool,
}

/// Where the HTTP/2 path writes a response head as it is parsed.
pub(crate) trait ResponseSink {
    fn status(&mut self, code: u16);
    fn field(&mut self, name: &[u8], value: &[u8]);
}

/// Parses a response head from `buf` for the HTTP/2 path, handing its
/// status and then each end-to-end field to `sink`: connection-specific
/// fields, which HTTP/2 forbids, stay behind. `Ok(None)`: the head is not
/// complete yet.
pub(crate) fn parse_response_parts(
    buf: &[u8],
    head_method: bool,
    sink: &mut impl ResponseSink,
) -> Result<Option<ResponseParts>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let Some(head_len) = head_length(resp.parse(buf), buf.len())? else {
        return Ok(None);
    };
    let status = resp.code.unwrap_or_default();
    let scan = Scan::of(resp.headers)?;
    let framing = response_framing(status, head_method, &scan);
    sink.status(status);
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name, h.value)
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || scan.lists(name)
        {
            continue;
        }
        sink.field(name, h.value);
    }
    Ok(Some(ResponseParts {
        head_len,
        status,
        reusable: reusable(&resp, framing, &scan),
        framing,
    }))
}

/// The head's length once it is complete; `None` while more may come.
fn head_length(
    parsed: httparse::Result<usize>,
    buffered: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed? {
        httparse::Status::Complete(n) => Ok(Some(n)),
        httparse::Status::Partial if buffered >= MAX_HEAD => Err(HeadError::TooLarge),
        httparse::Status::Partial => Ok(None),
    }
}

/// How a response's body is delimited (RFC 9112 §6.3).
fn response_framing(status: u16, head_method: bool, scan: &Scan) -> Framing {
    if head_method || (100..200).contains(&status) || matches!(status, 204 | 304) {
        return Framing::Empty;
    }
    match (scan.chunked, scan.length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) | (None, None) => Framing::UntilClose,
        (None, Some(n)) => Framing::Length(n),
    }
}

/// The target keeps the connection for another request after this response.
fn reusable(resp: &httparse::Response, framing: Framing, scan: &Scan) -> bool {
    resp.version == Some(1)
        && framing != Framing::UntilClose
        && resp.code != Some(101)
        && !scan.connection_has(b"close")
}

/// Safe to send twice (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"PUT" | b"DELETE" | b"TRACE"
    )
}

/// Writes a complete plain-text response of baton's own.
pub(crate) fn error_response(status: u16, text: &str, close: bool, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n{text}",
        reason(status),
        text.len(),
        if close { "connection: close\r\n" } else { "" },
    );
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// What the exchange must know from a head's fields, found in one pass.
#[derive(Default)]
struct Scan<'a> {
    connection: [&'a [u8]; MAX_CONNECTION_FIELDS],
    connection_fields: usize,
    /// The Connection header lists a token other than `keep-alive` and
    /// `upgrade`, which name fields dropped as hop-by-hop anyway. Most heads
    /// (`Connection: keep-alive`) do not, and skip the per-field check.
    names_fields: bool,
    host: Option<&'a [u8]>,
    upgrade: Option<&'a [u8]>,
    forwarded_for: Option<&'a [u8]>,
    request_id: bool,
    color: Option<&'a [u8]>,
    cookies: Option<&'a [u8]>,
    length: Option<u64>,
    /// `Some(true)` when Transfer-Encoding ends in chunked.
    chunked: Option<bool>,
}

impl<'a> Scan<'a> {
    fn of(fields: &[httparse::Header<'a>]) -> Result<Self, HeadError> {
        let mut scan = Scan::default();
        for h in fields {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"connection") {
                if scan.connection_fields == MAX_CONNECTION_FIELDS {
                    return Err(HeadError::Framing("too many Connection fields"));
                }
                scan.connection[scan.connection_fields] = h.value;
                scan.connection_fields += 1;
            } else if name.eq_ignore_ascii_case(b"host") {
                if scan.host.replace(h.value).is_some() {
                    return Err(HeadError::Framing("more than one Host"));
                }
            } else if name.eq_ignore_ascii_case(b"content-length") {
                let n =
                    parse_length(h.value).ok_or(HeadError::Framing("invalid Content-Length"))?;
                if scan.length.replace(n).is_some_and(|m| m != n) {
                    return Err(HeadError::Framing("conflicting Content-Length"));
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                // Only the last coding decides the framing.
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
                scan.chunked = Some(trim(last).eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case(b"upgrade") {
                scan.upgrade = Some(h.value);
            } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
                scan.forwarded_for = Some(h.value);
            } else if name.eq_ignore_ascii_case(b"x-request-id") {
                scan.request_id = true;
            } else if name.eq_ignore_ascii_case(b"cookie") {
                scan.cookies.get_or_insert(h.value);
            } else if name.eq_ignore_ascii_case(COLOR_HEADER.as_bytes()) {
                scan.color = Some(h.value);
            }
        }
        let names_fields = scan.connection_tokens().any(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"keep-alive")
                && !t.eq_ignore_ascii_case(b"upgrade")
        });
        scan.names_fields = names_fields;
        Ok(scan)
    }

    /// The Connection header lists `token`.
    fn connection_has(&self, token: &[u8]) -> bool {
        self.connection_tokens()
            .any(|t| t.eq_ignore_ascii_case(token))
    }

    /// The Connection header names the field `name` as hop-by-hop. Framing
    /// and Host fields are never dropped for it: that would let a client
    /// change how the target reads the body.
    fn lists(&self, name: &[u8]) -> bool {
        self.names_fields
            && !is_framing_or_host(name)
            && self
                .connection_tokens()
                .any(|t| t.eq_ignore_ascii_case(name))
    }

    fn connection_tokens(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        self.connection[..self.connection_fields]
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(trim)
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) other than the framing ones. `TE:
/// trailers` is end to end.
fn is_hop_by_hop(name: &[u8], value: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"connection")
        || name.eq_ignore_ascii_case(b"keep-alive")
        || name.eq_ignore_ascii_case(b"proxy-connection")
        || name.eq_ignore_ascii_case(b"upgrade")
        || (name.eq_ignore_ascii_case(b"te") && !trim(value).eq_ignore_ascii_case(b"trailers"))
}

/// Fields the proxy writes itself.
pub(crate) fn is_set_by_proxy(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"x-forwarded-for")
        || name.eq_ignore_ascii_case(b"x-forwarded-proto")
        || name.eq_ignore_ascii_case(b"x-forwarded-host")
}

fn is_framing_or_host(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-length")
        || name.eq_ignore_ascii_case(b"transfer-encoding")
        || name.eq_ignore_ascii_case(b"host")
}

/// Adds a `Set-Cookie` field to a rendered head (it ends with its blank line).
pub(crate) fn add_set_cookie(out: &mut Vec<u8>, cookie: &SetCookie) {
    out.truncate(out.len().saturating_sub(2));
    out.extend_from_slice(b"set-cookie: ");
    cookie.write_value(out);
    out.extend_from_slice(b"\r\n\r\n");
}

/// The first field named `name` (lower-case) in a raw request head: the
/// rare lookup of a header chosen by configuration, after parsing.
pub(crate) fn find_field<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let (field, value) = line.split_at(line.iter().position(|&b| b == b':')?);
        field
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| trim(&value[1..]))
    })
}

fn parse_length(value: &[u8]) -> Option<u64> {
    let value = trim(value);
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(value.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// Splits an absolute-form request target into path and authority.
fn split_absolute(target: &str) -> (&str, Option<&[u8]>) {
    let Some(rest) = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    else {
        return (target, None);
    };
    match rest.find('/') {
        Some(i) => (&rest[i..], Some(&rest.as_bytes()[..i])),
        None => ("/", Some(rest.as_bytes())),
    }
}

/// Where `part`, a slice of `buf`, sits in it.
fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &str) -> Result<(Request, String), HeadError> {
        let peer = Peer::new("10.1.2.3:5555".parse().unwrap());
        let mut out = Vec::new();
        let req = parse_request(head.as_bytes(), &peer, &RequestIds::new(), &mut out)?
            .expect("complete head");
        Ok((req, String::from_utf8(out).unwrap()))
    }

    fn response(head: &str, req: &Request, keep: bool) -> (Response, String) {
        let mut out = Vec::new();
        let resp = parse_response(head.as_bytes(), req, keep, &mut out)
            .unwrap()
            .expect("complete head");
        (resp, String::from_utf8(out).unwrap())
    }

    fn get() -> Request {
        request("GET / HTTP/1.1\r\nhost: a\r\n\r\n").unwrap().0
    }

    #[test]
    fn partial_heads_wait_for_more() {
        let peer = Peer::new("10.1.2.3:5555".parse().unwrap());
        let r = parse_request(
            b"GET / HTTP/1.1\r\nho",
            &peer,
            &RequestIds::new(),
            &mut Vec::new(),
        );
        assert_eq!(r.unwrap().map(|r| r.head_len), None);
    }

    #[test]
    fn strips_hop_by_hop_and_connection_listed_fields() {
        let (_, out) = request(
            "GET /a?b=1 HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, x-secret, content-length\r\n\
             Keep-Alive: timeout=5\r\nx-secret: 1\r\nTE: gzip\r\nx-kept: yes\r\n\r\n",
        )
        .unwrap();
        assert!(out.starts_with("GET /a?b=1 HTTP/1.1\r\n"), "{out}");
        for gone in ["Connection", "Keep-Alive", "x-secret", "TE"] {
            assert!(!out.contains(&format!("{gone}:")), "{gone} in {out}");
        }
        assert!(out.contains("x-kept: yes\r\n"), "{out}");
        let (_, out) = request("GET / HTTP/1.1\r\nTE: trailers\r\n\r\n").unwrap();
        assert!(
            out.contains("TE: trailers\r\n"),
            "TE: trailers is end to end: {out}"
        );
    }

    #[test]
    fn adds_forwarding_fields_and_keeps_a_request_id() {
        let (req, out) = request(
            "GET / HTTP/1.1\r\nhost: app.example\r\nx-forwarded-for: 1.1.1.1\r\nx-forwarded-proto: https\r\n\r\n",
        )
        .unwrap();
        assert!(
            out.contains("x-forwarded-for: 1.1.1.1, 10.1.2.3\r\n"),
            "{out}"
        );
        assert!(out.contains("x-forwarded-proto: http\r\n"), "{out}");
        assert!(!out.contains("https"), "{out}");
        assert!(out.contains("x-forwarded-host: app.example\r\n"), "{out}");
        assert!(out.contains("x-request-id: "), "{out}");
        assert!(out.ends_with("\r\n\r\n"));
        assert!(req.keep_alive);
        let (_, out) = request("GET / HTTP/1.1\r\nx-request-id: abc\r\n\r\n").unwrap();
        assert_eq!(out.matches("x-request-id").count(), 1, "{out}");
    }

    #[test]
    fn absolute_form_supplies_path_and_host() {
        let head = "GET http://app.example:8080/p?q HTTP/1.1\r\n\r\n";
        let (req, out) = request(head).unwrap();
        assert!(out.starts_with("GET /p?q HTTP/1.1\r\n"), "{out}");
        assert!(out.contains("host: app.example:8080\r\n"), "{out}");
        assert_eq!(&head.as_bytes()[req.host.unwrap()], b"app.example:8080");
    }

    #[test]
    fn decides_request_framing_and_refuses_ambiguity() {
        let framing = |h: &str| request(h).map(|(r, _)| r.framing);
        assert_eq!(framing("GET / HTTP/1.1\r\n\r\n"), Ok(Framing::Empty));
        assert_eq!(
            framing("POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\ntransfer-encoding: gzip, Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        for bad in [
            "POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert_eq!(framing(bad).map_err(|e| e.status()), Err(400), "{bad}");
        }
        assert_eq!(
            framing("CONNECT a:443 HTTP/1.1\r\n\r\n").map_err(|e| e.status()),
            Err(405)
        );
    }

    #[test]
    fn upgrades_keep_their_fields_and_http10_closes() {
        let (req, out) = request(
            "GET /ws HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        assert!(req.upgrade && req.websocket);
        assert!(
            out.contains("connection: upgrade\r\nupgrade: websocket\r\n"),
            "{out}"
        );
        let (req, out) = request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(req.http10 && !req.keep_alive);
        assert!(out.starts_with("GET / HTTP/1.0\r\n"), "{out}");
        let (req, _) = request("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!req.keep_alive);
    }

    #[test]
    fn decides_response_framing_and_reuse() {
        let req = get();
        let (r, out) = response(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\nkeep-alive: timeout=5\r\n\r\nok",
            &req,
            true,
        );
        assert_eq!(
            (r.framing, r.reusable, r.keep_client),
            (Framing::Length(2), true, true)
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n");

        let (r, _) = response(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
            &req,
            true,
        );
        assert_eq!((r.framing, r.reusable), (Framing::Chunked, true));

        let (r, out) = response("HTTP/1.1 200 OK\r\n\r\n", &req, true);
        assert_eq!(
            (r.framing, r.reusable, r.keep_client),
            (Framing::UntilClose, false, false)
        );
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");

        let (r, _) = response(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n",
            &req,
            true,
        );
        assert!(!r.reusable && r.keep_client);

        let (r, _) = response("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n", &req, true);
        assert!(!r.reusable);

        let (r, _) = response("HTTP/1.1 204 No Content\r\n\r\n", &req, true);
        assert_eq!(r.framing, Framing::Empty);

        let head = request("HEAD / HTTP/1.1\r\n\r\n").unwrap().0;
        let (r, _) = response("HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n", &head, true);
        assert_eq!((r.framing, r.reusable), (Framing::Empty, true));
    }

    #[test]
    fn interim_and_switching_responses() {
        let req = get();
        let (r, out) = response("HTTP/1.1 100 Continue\r\n\r\n", &req, false);
        assert!(r.is_interim());
        assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
        let (r, out) = response(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: x\r\n\r\n",
            &req,
            true,
        );
        assert!(!r.is_interim() && !r.reusable);
        assert!(out.contains("Upgrade: websocket\r\n"), "{out}");
        assert!(out.contains("connection: upgrade\r\n"), "{out}");
    }

    #[test]
    fn error_responses_are_complete() {
        let mut out = Vec::new();
        error_response(503, "baton: no\n", true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(
            text.contains("content-length: 10\r\nconnection: close\r\n\r\nbaton: no\n"),
            "{text}"
        );
    }
}
