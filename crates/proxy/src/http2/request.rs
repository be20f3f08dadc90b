//! A client's request head as HPACK hands it over, checked as RFC 9113
//! §8.2-8.3 asks before any of it can reach an HTTP/1.1 target: a field
//! that could not be written on an HTTP/1.1 line (CR, LF, NUL, upper-case
//! names) or that only makes sense per connection makes the request
//! malformed, and it is refused.

use std::ops::Range;

use crate::ask::COLOR_HEADER;

/// Largest header list accepted, counted as §6.5.2 counts it.
pub(super) const MAX_HEADER_LIST: usize = 16 * 1024;
/// What a field costs beyond its bytes, in that count.
const FIELD_OVERHEAD: usize = 32;

/// A request's head: its fields' names and values back to back in one
/// buffer, found by ranges.
#[derive(Debug, Default)]
pub(super) struct Request {
    text: Vec<u8>,
    fields: Vec<Field>,
    method: Range<u32>,
    path: Range<u32>,
    authority: Option<Range<u32>>,
    /// The first Host field; HTTP/2 clients mostly send `:authority` instead.
    host: Option<usize>,
    /// The first Cookie field: HTTP/2 may split cookies over several.
    cookie: Option<usize>,
    color: Option<usize>,
    pub(super) content_length: Option<u64>,
    /// The request has no body (END_STREAM on its HEADERS).
    pub(super) end_stream: bool,
    /// Answered without a target.
    pub(super) refusal: Option<Refusal>,
}

/// A request baton answers itself rather than forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The header list is over [`MAX_HEADER_LIST`].
    TooLarge,
    /// CONNECT: no tunnels over HTTP/2.
    Connect,
}

impl Refusal {
    pub(super) fn status(self) -> u16 {
        match self {
            Self::TooLarge => 431,
            Self::Connect => 405,
        }
    }

    pub(super) fn text(self) -> &'static str {
        match self {
            Self::TooLarge => "baton: request header fields too large\n",
            Self::Connect => "baton: CONNECT is not supported\n",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Field {
    at: u32,
    name_len: u32,
    value_len: u32,
}

impl Request {
    pub(super) fn method(&self) -> &[u8] {
        self.bytes(self.method.clone())
    }

    pub(super) fn path(&self) -> &[u8] {
        self.bytes(self.path.clone())
    }

    pub(super) fn authority(&self) -> Option<&str> {
        // Checked to be visible ASCII when decoded.
        let bytes = self.bytes(self.authority.clone()?);
        std::str::from_utf8(bytes).ok()
    }

    /// The regular fields, in order.
    pub(super) fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|f| self.field(f))
    }

    pub(super) fn host(&self) -> Option<&[u8]> {
        self.host.map(|i| self.field(&self.fields[i]).1)
    }

    pub(super) fn color(&self) -> Option<&[u8]> {
        self.color.map(|i| self.field(&self.fields[i]).1)
    }

    /// The first Cookie field's value.
    pub(super) fn first_cookie(&self) -> Option<&[u8]> {
        self.cookie.map(|i| self.field(&self.fields[i]).1)
    }

    /// Every Cookie field's value, in order.
    pub(super) fn cookies(&self) -> impl Iterator<Item = &[u8]> {
        let from = self.cookie.unwrap_or(self.fields.len());
        self.fields[from..]
            .iter()
            .map(|f| self.field(f))
            .filter(|(name, _)| *name == b"cookie")
            .map(|(_, value)| value)
    }

    /// The first field named `name`, in any case.
    pub(super) fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    fn field(&self, f: &Field) -> (&[u8], &[u8]) {
        let at = f.at as usize;
        let name_end = at + f.name_len as usize;
        (
            &self.text[at..name_end],
            &self.text[name_end..name_end + f.value_len as usize],
        )
    }

    fn bytes(&self, r: Range<u32>) -> &[u8] {
        &self.text[r.start as usize..r.end as usize]
    }
}

/// Why a request was refused (a stream error, PROTOCOL_ERROR).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed request: {0}")]
pub(super) struct Malformed(pub(super) &'static str);

/// Builds a [`Request`] from decoded fields, remembering the first thing
/// wrong with them. Every field of the block must be taken even then, so
/// that the decoder's table stays in step with the client's.
#[derive(Debug)]
pub(super) struct Builder {
    req: Request,
    scheme: bool,
    regular: bool,
    list_size: usize,
    error: Option<&'static str>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            // A usual request's head fits: one allocation each, no regrowth.
            req: Request {
                text: Vec::with_capacity(512),
                fields: Vec::with_capacity(16),
                ..Request::default()
            },
            scheme: false,
            regular: false,
            list_size: 0,
            error: None,
        }
    }
}

impl Builder {
    pub(super) fn field(&mut self, name: &[u8], value: &[u8]) {
        if self.error.is_some() || self.req.refusal.is_some() {
            return;
        }
        self.list_size += name.len() + value.len() + FIELD_OVERHEAD;
        if self.list_size > MAX_HEADER_LIST {
            self.req.refusal = Some(Refusal::TooLarge);
            return;
        }
        if let Err(e) = self.check(name, value) {
            self.error = Some(e);
        }
    }

    fn check(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        if let Some(pseudo) = name.strip_prefix(b":") {
            return self.pseudo(pseudo, value);
        }
        self.regular = true;
        if name.is_empty() || !all(name, LOWER_TOKEN) {
            return Err("a field name that is not a lower-case token");
        }
        if !valid_value(value) {
            return Err("a field value with a control character or edge whitespace");
        }
        match name {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => return Err("a connection-specific field"),
            b"te" if value != b"trailers" => return Err("TE other than trailers"),
            b"content-length" => {
                let n = parse_length(value).ok_or("an invalid content-length")?;
                if self.req.content_length.is_some_and(|m| m != n) {
                    return Err("conflicting content-length fields");
                }
                self.req.content_length = Some(n);
            }
            _ => {}
        }
        let index = self.req.fields.len();
        match name {
            b"host" => {
                if !all(value, VISIBLE) {
                    return Err("an invalid host");
                }
                self.req.host.get_or_insert(index);
            }
            b"cookie" => {
                self.req.cookie.get_or_insert(index);
            }
            _ if name == COLOR_HEADER.as_bytes() => self.req.color = Some(index),
            _ => {}
        }
        let at = self.push(name);
        self.push(value);
        self.req.fields.push(Field {
            at,
            name_len: name.len() as u32,
            value_len: value.len() as u32,
        });
        Ok(())
    }

    fn pseudo(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        if self.regular {
            return Err("a pseudo-header after a regular field");
        }
        match name {
            b"method" if self.req.method.is_empty() => {
                if value.is_empty() || !all(value, TOKEN) {
                    return Err("an invalid :method");
                }
                self.req.method = self.range(value);
            }
            b"path" if self.req.path.is_empty() => {
                if value.is_empty() || !all(value, TARGET) {
                    return Err("an invalid :path");
                }
                self.req.path = self.range(value);
            }
            b"authority" if self.req.authority.is_none() => {
                if !all(value, VISIBLE) {
                    return Err("an invalid :authority");
                }
                self.req.authority = Some(self.range(value));
            }
            b"scheme" if !self.scheme => self.scheme = true,
            b"method" | b"path" | b"authority" | b"scheme" => {
                return Err("a repeated pseudo-header")
            }
            _ => return Err("an unknown pseudo-header"),
        }
        Ok(())
    }

    /// The request, once its block has been decoded whole.
    pub(super) fn finish(mut self, end_stream: bool) -> Result<Request, Malformed> {
        if let Some(e) = self.error {
            return Err(Malformed(e));
        }
        self.req.end_stream = end_stream;
        if self.req.refusal.is_some() {
            return Ok(self.req);
        }
        if self.req.method() == b"CONNECT" {
            self.req.refusal = Some(Refusal::Connect);
            return Ok(self.req);
        }
        if self.req.method.is_empty() || self.req.path.is_empty() || !self.scheme {
            return Err(Malformed("a missing :method, :scheme or :path"));
        }
        let path = self.req.path();
        let asterisk = path == b"*" && self.req.method() == b"OPTIONS";
        if !path.starts_with(b"/") && !asterisk {
            return Err(Malformed("a :path that is not absolute"));
        }
        if end_stream && self.req.content_length.is_some_and(|n| n > 0) {
            return Err(Malformed("a content-length with no body"));
        }
        Ok(self.req)
    }

    fn push(&mut self, bytes: &[u8]) -> u32 {
        let at = self.req.text.len() as u32;
        self.req.text.extend_from_slice(bytes);
        at
    }

    fn range(&mut self, value: &[u8]) -> Range<u32> {
        let at = self.push(value);
        at..at + value.len() as u32
    }
}

/// Trailers: decoded to keep the table in step, checked, then dropped (they
/// are not carried over HTTP/1.1 here).
#[derive(Debug, Default)]
pub(super) struct Trailers {
    pub(super) pseudo: bool,
}

impl Trailers {
    pub(super) fn field(&mut self, name: &[u8], _value: &[u8]) {
        self.pseudo |= name.starts_with(b":");
    }
}

/// Byte classes, one bit each, looked up once per byte.
const TOKEN: u8 = 1;
const LOWER_TOKEN: u8 = 2;
/// In a field value: no control character but tab.
const VALUE: u8 = 4;
/// Visible ASCII: a host.
const VISIBLE: u8 = 8;
/// In a request target: no space or control character.
const TARGET: u8 = 16;

const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        let token = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        let mut class = 0;
        if token {
            class |= TOKEN;
            if !c.is_ascii_uppercase() {
                class |= LOWER_TOKEN;
            }
        }
        if (c >= b' ' && c != 0x7f) || c == b'\t' {
            class |= VALUE;
        }
        if c > b' ' && c < 0x7f {
            class |= VISIBLE;
        }
        if c > b' ' && c != 0x7f {
            class |= TARGET;
        }
        table[b] = class;
        b += 1;
    }
    table
};

/// Every byte of `bytes` is of `class`.
fn all(bytes: &[u8], class: u8) -> bool {
    bytes.iter().all(|&b| CLASSES[b as usize] & class != 0)
}

/// No control character but tab, no whitespace at either end.
fn valid_value(value: &[u8]) -> bool {
    let edge = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    !edge(value.first()) && !edge(value.last()) && all(value, VALUE)
}

fn parse_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(fields: &[(&str, &str)], end_stream: bool) -> Result<Request, Malformed> {
        let mut b = Builder::default();
        for (n, v) in fields {
            b.field(n.as_bytes(), v.as_bytes());
        }
        b.finish(end_stream)
    }

    const GET: [(&str, &str); 3] = [(":method", "GET"), (":scheme", "http"), (":path", "/a?b")];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        GET.iter().chain(extra).copied().collect()
    }

    #[test]
    fn a_request_keeps_its_pseudo_headers_and_fields() {
        let req = build(
            &with(&[
                (":authority", "app.example:8080"),
                ("cookie", "a=1"),
                ("accept", "*/*"),
                ("cookie", "b=2"),
                ("x-baton-color", "green"),
            ]),
            true,
        )
        .unwrap();
        assert_eq!(req.method(), b"GET");
        assert_eq!(req.path(), b"/a?b");
        assert_eq!(req.authority(), Some("app.example:8080"));
        assert_eq!(req.host(), None);
        assert_eq!(req.first_cookie(), Some(&b"a=1"[..]));
        assert_eq!(req.cookies().collect::<Vec<_>>(), [&b"a=1"[..], b"b=2"]);
        assert_eq!(req.color(), Some(&b"green"[..]));
        assert_eq!(req.header("Accept"), Some(&b"*/*"[..]));
        assert_eq!(req.fields().count(), 4);
        assert!(req.end_stream);
        assert_eq!(req.refusal, None);
    }

    #[test]
    fn what_http11_could_not_carry_is_malformed() {
        let refused = [
            ("x-a", "one\r\ntwo"),
            ("x-a", "nul\0"),
            ("x-a", " edge"),
            ("x-a", "edge\t"),
            ("X-Upper", "v"),
            ("bad name", "v"),
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip"),
            ("content-length", "12a"),
            ("host", "a b"),
            (":unknown", "x"),
        ];
        for field in refused {
            assert!(build(&with(&[field]), false).is_err(), "{field:?}");
        }
        assert!(build(&with(&[("te", "trailers"), ("x-a", "in\tside")]), false).is_ok());
        let late = [
            (":method", "GET"),
            ("x-a", "1"),
            (":scheme", "http"),
            (":path", "/"),
        ];
        assert!(build(&late, true).is_err(), "pseudo after regular");
        let twice = with(&[(":path", "/again")]);
        assert!(build(&twice, true).is_err(), "repeated :path");
        assert!(
            build(&[(":method", "GET"), (":path", "/")], true).is_err(),
            "no :scheme"
        );
        let relative = [(":method", "GET"), (":scheme", "http"), (":path", "a")];
        assert!(build(&relative, true).is_err());
        let bad_path = [(":method", "GET"), (":scheme", "http"), (":path", "/a b")];
        assert!(build(&bad_path, true).is_err());
        let star = [(":method", "OPTIONS"), (":scheme", "http"), (":path", "*")];
        assert!(build(&star, true).is_ok());
    }

    #[test]
    fn content_length_must_agree_with_itself_and_the_body() {
        let req = build(&with(&[("content-length", "5")]), false).unwrap();
        assert_eq!(req.content_length, Some(5));
        assert!(build(
            &with(&[("content-length", "5"), ("content-length", "6")]),
            false
        )
        .is_err());
        assert!(build(&with(&[("content-length", "5")]), true).is_err());
        assert!(build(&with(&[("content-length", "0")]), true).is_ok());
    }

    #[test]
    fn a_large_list_or_connect_is_answered_not_forwarded() {
        let big = "x".repeat(MAX_HEADER_LIST);
        let mut b = Builder::default();
        for (n, v) in GET {
            b.field(n.as_bytes(), v.as_bytes());
        }
        b.field(b"x-big", big.as_bytes());
        b.field(b"x-after", b"\r\n");
        let req = b.finish(true).unwrap();
        assert_eq!(req.refusal, Some(Refusal::TooLarge));
        assert_eq!(req.fields().count(), 0, "nothing of it kept");
        let connect = [(":method", "CONNECT"), (":authority", "a:443")];
        assert_eq!(
            build(&connect, false).unwrap().refusal,
            Some(Refusal::Connect)
        );
    }
}
