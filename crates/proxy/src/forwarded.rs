//! What the proxy tells a target about the request's origin: the client's
//! address for `X-Forwarded-For`, and a request id for `X-Request-Id`. Shared
//! by the HTTP/1.1 and HTTP/2 request paths.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The client side of a connection. It lives as long as the connection
/// (HTTP/1.1, parked or HTTP/2), so it also counts it as open.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The client's IP as `X-Forwarded-For` carries it, formatted once per
    /// connection rather than per request, in place: with a connection per
    /// request, a `String` and the formatter cost more than the rest of
    /// accepting it.
    ip: IpText,
    open: Option<Arc<AtomicUsize>>,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            ip: IpText::of(addr.ip()),
            open: None,
        }
    }

    /// A peer counted in `open` until its connection ends.
    pub(crate) fn counted(addr: SocketAddr, open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        let mut peer = Self::new(addr);
        peer.open = Some(open.clone());
        peer
    }

    pub(crate) fn ip(&self) -> &str {
        self.ip.as_str()
    }
}

/// An IP address as text, held inline.
#[derive(Debug)]
struct IpText {
    /// The longest IPv6 text is 45 bytes (an IPv4-mapped one).
    buf: [u8; 46],
    len: u8,
}

impl IpText {
    fn of(ip: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; 46],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::fmt::Write;
                let _ = write!(text, "{v6}");
            }
        }
        text
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(self.len as usize) {
            *slot = b;
            self.len += 1;
        }
    }

    fn as_str(&self) -> &str {
        // Only ASCII is ever pushed.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or_default()
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        s.bytes().for_each(|b| self.push(b));
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The fields the proxy adds to a request head for its target, written
/// after the client's own: `X-Forwarded-For` (the client's IP after any
/// prior hops), `X-Forwarded-Proto`, `X-Forwarded-Host`, a `Host` when the
/// client gave it elsewhere (absolute form, HTTP/2's `:authority`), and an
/// `X-Request-Id` when the client sent none. The client's own
/// `X-Forwarded-Proto` and `-Host` are dropped by the caller.
pub(crate) struct Forwarding<'a> {
    /// The client's `X-Forwarded-For`, extended rather than replaced.
    pub(crate) prior_for: Option<&'a [u8]>,
    pub(crate) host: Option<&'a [u8]>,
    /// The client sent no Host field: `host` is written as one.
    pub(crate) add_host: bool,
    pub(crate) has_request_id: bool,
}

impl Forwarding<'_> {
    /// Appends the fields, each ending in CRLF.
    pub(crate) fn write(&self, peer: &Peer, ids: &RequestIds, out: &mut Vec<u8>) {
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(prior) = self.prior_for {
            out.extend_from_slice(prior);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(peer.ip().as_bytes());
        out.extend_from_slice(b"\r\nx-forwarded-proto: http\r\n");
        if let Some(host) = self.host {
            if self.add_host {
                push_field(out, b"host", host);
            }
            push_field(out, b"x-forwarded-host", host);
        }
        if !self.has_request_id {
            out.extend_from_slice(b"x-request-id: ");
            ids.write_next(out);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends one `name: value` field.
pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Request ids unique across restarts: a per-process prefix and a counter.
#[derive(Debug)]
pub(crate) struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    pub(crate) fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            prefix: nanos ^ (u64::from(std::process::id()) << 40),
            next: AtomicU64::new(0),
        }
    }

    /// Appends the next id to `out` (24 hex digits), without allocating.
    pub(crate) fn write_next(&self, out: &mut Vec<u8>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // By hand: `write!` with `{:x}` costs several times more, per request.
        push_hex(out, self.prefix, 16);
        push_hex(out, n & 0xffff_ffff, 8);
    }
}

/// Appends the low `digits` hex digits of `value`, zero-padded.
fn push_hex(out: &mut Vec<u8>, value: u64, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend(
        (0..digits)
            .rev()
            .map(|i| HEX[(value >> (i * 4)) as usize & 0xf]),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_and_have_a_fixed_width() {
        let ids = RequestIds::new();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        ids.write_next(&mut a);
        ids.write_next(&mut b);
        assert_eq!(a.len(), 24);
        assert_eq!(b.len(), 24);
        assert_ne!(a, b);
        assert!(a
            .iter()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn addresses_read_as_the_formatter_writes_them() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "192.168.100.255",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:255.255.255.255",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::of(addr).as_str(), addr.to_string(), "{ip}");
        }
    }

    #[test]
    fn hex_is_zero_padded_and_matches_the_formatter() {
        let mut out = Vec::new();
        push_hex(&mut out, 0xbeef, 8);
        push_hex(&mut out, u64::MAX - 1, 16);
        assert_eq!(
            out,
            format!("{:08x}{:016x}", 0xbeef, u64::MAX - 1).as_bytes()
        );
    }
}
