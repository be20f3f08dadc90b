//! What the proxy tells a target about the request's origin: the client's
//! address for `X-Forwarded-For`, and a request id for `X-Request-Id`. Shared
//! by the HTTP/1.1 and HTTP/2 request paths.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The client side of a connection. It lives as long as the connection
/// (HTTP/1.1, parked or HTTP/2), so it also counts it as open.
#[derive(Debug)]
pub(crate) struct Peer {
    /// The client's IP as `X-Forwarded-For` carries it, formatted once per
    /// connection rather than per request.
    ip: String,
    open: Option<Arc<AtomicUsize>>,
}

impl Peer {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            ip: addr.ip().to_string(),
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
        &self.ip
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
