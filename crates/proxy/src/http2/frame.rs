//! HTTP/2 frames (RFC 9113 §4, §6): the nine-byte header, the codes, and
//! writing the frames a server sends.

use bytes::BufMut;

pub(super) const HEADER_LEN: usize = 9;
/// The frame size every peer accepts; baton never asks for more.
pub(super) const DEFAULT_MAX_FRAME: usize = 16_384;
/// The largest window a peer may grant (§6.9.1).
pub(super) const MAX_WINDOW: i64 = (1 << 31) - 1;
/// Every stream's window before SETTINGS say otherwise (§6.9.2).
pub(super) const DEFAULT_WINDOW: i64 = 65_535;

pub(super) mod kind {
    pub(in crate::http2) const DATA: u8 = 0x0;
    pub(in crate::http2) const HEADERS: u8 = 0x1;
    pub(in crate::http2) const PRIORITY: u8 = 0x2;
    pub(in crate::http2) const RST_STREAM: u8 = 0x3;
    pub(in crate::http2) const SETTINGS: u8 = 0x4;
    pub(in crate::http2) const PUSH_PROMISE: u8 = 0x5;
    pub(in crate::http2) const PING: u8 = 0x6;
    pub(in crate::http2) const GOAWAY: u8 = 0x7;
    pub(in crate::http2) const WINDOW_UPDATE: u8 = 0x8;
    pub(in crate::http2) const CONTINUATION: u8 = 0x9;
}

pub(super) mod flag {
    /// DATA, HEADERS.
    pub(in crate::http2) const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING.
    pub(in crate::http2) const ACK: u8 = 0x1;
    /// HEADERS, CONTINUATION.
    pub(in crate::http2) const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS.
    pub(in crate::http2) const PADDED: u8 = 0x8;
    /// HEADERS.
    pub(in crate::http2) const PRIORITY: u8 = 0x20;
}

pub(super) mod setting {
    pub(in crate::http2) const HEADER_TABLE_SIZE: u16 = 0x1;
    pub(in crate::http2) const ENABLE_PUSH: u16 = 0x2;
    pub(in crate::http2) const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub(in crate::http2) const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub(in crate::http2) const MAX_FRAME_SIZE: u16 = 0x5;
    pub(in crate::http2) const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// Error codes (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reason(pub(super) u32);

impl Reason {
    pub(super) const NO_ERROR: Self = Self(0x0);
    pub(super) const PROTOCOL_ERROR: Self = Self(0x1);
    pub(super) const INTERNAL_ERROR: Self = Self(0x2);
    pub(super) const FLOW_CONTROL_ERROR: Self = Self(0x3);
    pub(super) const STREAM_CLOSED: Self = Self(0x5);
    pub(super) const FRAME_SIZE_ERROR: Self = Self(0x6);
    pub(super) const REFUSED_STREAM: Self = Self(0x7);
    pub(super) const COMPRESSION_ERROR: Self = Self(0x9);
    pub(super) const ENHANCE_YOUR_CALM: Self = Self(0xb);
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    pub(super) len: usize,
    pub(super) kind: u8,
    pub(super) flags: u8,
    pub(super) stream: u32,
}

impl Head {
    /// Reads a header from the first nine bytes of `buf`, which must hold them.
    pub(super) fn parse(buf: &[u8]) -> Self {
        Self {
            len: u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize,
            kind: buf[3],
            flags: buf[4],
            // The reserved high bit is ignored (§4.1).
            stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
        }
    }

    pub(super) fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub(super) fn write(&self, out: &mut impl BufMut) {
        let len = self.len as u32;
        out.put_slice(&len.to_be_bytes()[1..]);
        out.put_u8(self.kind);
        out.put_u8(self.flags);
        out.put_u32(self.stream);
    }
}

/// A frame's payload without its padding (§6.1), or `None` when the
/// padding is longer than the frame.
pub(super) fn unpadded(head: &Head, payload: &[u8]) -> Option<std::ops::Range<usize>> {
    if !head.has(flag::PADDED) {
        return Some(0..payload.len());
    }
    let pad = *payload.first()? as usize;
    let end = payload.len().checked_sub(pad)?;
    (end >= 1).then_some(1..end)
}

/// Writes a frame with a payload of its own.
pub(super) fn write(out: &mut impl BufMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    Head {
        len: payload.len(),
        kind,
        flags,
        stream,
    }
    .write(out);
    out.put_slice(payload);
}

pub(super) fn rst_stream(out: &mut impl BufMut, stream: u32, reason: Reason) {
    write(out, kind::RST_STREAM, 0, stream, &reason.0.to_be_bytes());
}

pub(super) fn window_update(out: &mut impl BufMut, stream: u32, increment: u32) {
    write(
        out,
        kind::WINDOW_UPDATE,
        0,
        stream,
        &increment.to_be_bytes(),
    );
}

pub(super) fn goaway(out: &mut impl BufMut, last_stream: u32, reason: Reason) {
    let mut payload = [0u8; 8];
    payload[..4].copy_from_slice(&last_stream.to_be_bytes());
    payload[4..].copy_from_slice(&reason.0.to_be_bytes());
    write(out, kind::GOAWAY, 0, 0, &payload);
}

pub(super) fn settings(out: &mut impl BufMut, values: &[(u16, u32)]) {
    Head {
        len: values.len() * 6,
        kind: kind::SETTINGS,
        flags: 0,
        stream: 0,
    }
    .write(out);
    for &(id, value) in values {
        out.put_u16(id);
        out.put_u32(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_written() {
        let head = Head {
            len: 0x01_02_03,
            kind: kind::HEADERS,
            flags: flag::END_STREAM | flag::END_HEADERS,
            stream: 0x7fff_fffe,
        };
        let mut out = Vec::new();
        head.write(&mut out);
        assert_eq!(out.len(), HEADER_LEN);
        assert_eq!(Head::parse(&out), head);
        out[5] |= 0x80;
        assert_eq!(
            Head::parse(&out).stream,
            0x7fff_fffe,
            "reserved bit ignored"
        );
    }

    #[test]
    fn padding_is_taken_off_or_refused() {
        let padded = Head {
            len: 6,
            kind: kind::DATA,
            flags: flag::PADDED,
            stream: 1,
        };
        assert_eq!(unpadded(&padded, &[2, b'a', b'b', b'c', 0, 0]), Some(1..4));
        assert_eq!(unpadded(&padded, &[5, 0, 0, 0, 0, 0]), Some(1..1));
        assert_eq!(unpadded(&padded, &[6, 0, 0, 0, 0, 0]), None);
        assert_eq!(unpadded(&padded, &[]), None);
        let plain = Head { flags: 0, ..padded };
        assert_eq!(unpadded(&plain, b"abc"), Some(0..3));
    }
}
