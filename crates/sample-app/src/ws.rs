//! A minimal RFC 6455 (WebSocket) codec.
//!
//! The sample app needs a WebSocket echo endpoint so baton's tests can prove
//! that upgraded, long-lived connections survive a blue-green switch. Pulling
//! in a full WebSocket library for that would be overkill, so this module
//! holds the handful of pieces an echo server needs: the handshake accept key,
//! a frame decoder/encoder, and a message assembler for fragmented messages.
//! It is pure (no I/O) so it can be unit tested byte for byte.

use base64::Engine as _;

/// The GUID that RFC 6455 §1.3 appends to the client key before hashing
/// (note the ending `85B11`; the RFC's own example in the tests pins it).
const HANDSHAKE_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest message (and frame) payload the echo server accepts: 1 MiB.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Largest payload a control frame may carry (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// Close status codes (RFC 6455 §7.4.1) the server sends on its own.
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutting down).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A message exceeded [`super::MAX_PAYLOAD`].
    pub const TOO_BIG: u16 = 1009;
}

/// Computes `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(client_key.trim().as_bytes());
    sha.update(HANDSHAKE_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Frame opcodes (RFC 6455 §5.2); reserved values are rejected while decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// Continues a fragmented message.
    Continuation,
    /// A UTF-8 text message (or its first fragment).
    Text,
    /// A binary message (or its first fragment).
    Binary,
    /// Starts or answers the closing handshake.
    Close,
    /// Asks the peer for a pong.
    Ping,
    /// Answers a ping.
    Pong,
}

impl Opcode {
    /// Maps the 4-bit wire value to an opcode, `None` for reserved values.
    fn from_bits(bits: u8) -> Option<Self> {
        match bits {
            0x0 => Some(Self::Continuation),
            0x1 => Some(Self::Text),
            0x2 => Some(Self::Binary),
            0x8 => Some(Self::Close),
            0x9 => Some(Self::Ping),
            0xA => Some(Self::Pong),
            _ => None,
        }
    }

    /// The 4-bit wire value.
    fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Control frames (close/ping/pong) may not be fragmented or exceed 125 bytes.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// One decoded frame with its payload already unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Whether this is the final fragment of a message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: Opcode,
    /// The unmasked payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A single, unfragmented frame.
    pub fn new(opcode: Opcode, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            fin: true,
            opcode,
            payload: payload.into(),
        }
    }

    /// A close frame carrying `code` and a short `reason`.
    pub fn close(code: u16, reason: &str) -> Self {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        Self::new(Opcode::Close, payload)
    }
}

/// Why a peer's bytes could not be accepted; each maps to a close code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    /// RSV bits set without a negotiated extension.
    ReservedBits,
    /// A reserved opcode.
    UnknownOpcode(u8),
    /// A client frame without a mask (RFC 6455 §5.1 requires one).
    Unmasked,
    /// A fragmented or oversized control frame.
    BadControlFrame,
    /// A continuation without a started message, or a new message mid-fragment.
    BadFragmentation,
    /// A 1-byte close payload, which cannot hold a status code.
    BadClosePayload,
    /// A frame or message larger than the limit.
    TooBig(u64),
    /// A text message that is not UTF-8.
    InvalidUtf8,
}

impl WsError {
    /// The close status code to send the peer for this error.
    pub fn close_code(&self) -> u16 {
        match self {
            Self::TooBig(_) => close_code::TOO_BIG,
            Self::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            _ => close_code::PROTOCOL_ERROR,
        }
    }
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ReservedBits => write!(f, "reserved bits set"),
            Self::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            Self::Unmasked => write!(f, "client frame is not masked"),
            Self::BadControlFrame => write!(f, "fragmented or oversized control frame"),
            Self::BadFragmentation => write!(f, "invalid message fragmentation"),
            Self::BadClosePayload => write!(f, "close payload of one byte"),
            Self::TooBig(len) => write!(f, "payload of {len} bytes exceeds the limit"),
            Self::InvalidUtf8 => write!(f, "text message is not valid UTF-8"),
        }
    }
}

impl std::error::Error for WsError {}

/// The fixed part of a frame header, parsed before the payload is available.
struct Header {
    fin: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    payload_len: usize,
    header_len: usize,
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, otherwise the frame and how
/// many bytes it used. Errors as soon as the header shows the frame is
/// invalid, so an oversized frame is rejected before it is buffered.
pub fn decode(
    buf: &[u8],
    max_payload: usize,
    require_mask: bool,
) -> Result<Option<(Frame, usize)>, WsError> {
    let Some(header) = decode_header(buf, max_payload)? else {
        return Ok(None);
    };
    if require_mask && header.mask.is_none() {
        return Err(WsError::Unmasked);
    }
    let total = header.header_len.saturating_add(header.payload_len);
    if buf.len() < total {
        return Ok(None);
    }
    let mut payload = buf[header.header_len..total].to_vec();
    if let Some(mask) = header.mask {
        apply_mask(&mut payload, mask);
    }
    let frame = Frame {
        fin: header.fin,
        opcode: header.opcode,
        payload,
    };
    Ok(Some((frame, total)))
}

/// Parses and validates the header, `Ok(None)` if it is not complete yet.
fn decode_header(buf: &[u8], max_payload: usize) -> Result<Option<Header>, WsError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_bits(b0 & 0x0F).ok_or(WsError::UnknownOpcode(b0 & 0x0F))?;
    let masked = b1 & 0x80 != 0;
    let Some((declared_len, mut header_len)) = decode_length(buf, b1 & 0x7F) else {
        return Ok(None);
    };
    check_length(opcode, fin, declared_len, max_payload)?;
    let mask = if masked {
        let Some(key) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };
    // check_length bounded declared_len by max_payload, so this cannot truncate.
    let payload_len = declared_len as usize;
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        payload_len,
        header_len,
    }))
}

/// Reads the 7-bit / 16-bit / 64-bit payload length; `None` if incomplete.
fn decode_length(buf: &[u8], len7: u8) -> Option<(u64, usize)> {
    match len7 {
        126 => {
            let bytes = buf.get(2..4)?;
            Some((u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4))
        }
        127 => {
            let bytes: [u8; 8] = buf.get(2..10)?.try_into().ok()?;
            Some((u64::from_be_bytes(bytes), 10))
        }
        short => Some((u64::from(short), 2)),
    }
}

/// Enforces the control-frame rules and the payload limit.
fn check_length(opcode: Opcode, fin: bool, len: u64, max_payload: usize) -> Result<(), WsError> {
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(WsError::BadControlFrame);
    }
    if len > max_payload as u64 {
        return Err(WsError::TooBig(len));
    }
    Ok(())
}

/// XORs `data` with the 4-byte masking key (masking and unmasking are the same).
fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// Encodes `frame`; servers pass `mask: None`, clients (tests) pass a key.
pub fn encode(frame: &Frame, mask: Option<[u8; 4]>) -> Vec<u8> {
    let len = frame.payload.len();
    let mut out = Vec::with_capacity(len + 14);
    out.push(u8::from(frame.fin) << 7 | frame.opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        None => out.extend_from_slice(&frame.payload),
        Some(key) => {
            out.extend_from_slice(&key);
            let payload_start = out.len();
            out.extend_from_slice(&frame.payload);
            apply_mask(&mut out[payload_start..], key);
        }
    }
    out
}

/// What a decoded frame means for the session, after reassembly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete text message (validated UTF-8).
    Text(String),
    /// A complete binary message.
    Binary(Vec<u8>),
    /// A ping with its payload, to be answered with a pong.
    Ping(Vec<u8>),
    /// A pong; nothing to do.
    Pong,
    /// The peer started (or answered) the closing handshake.
    Close(Vec<u8>),
}

/// Reassembles fragmented messages and enforces fragmentation rules.
#[derive(Debug)]
pub struct Assembler {
    max_message: usize,
    in_progress: Option<(Opcode, Vec<u8>)>,
}

impl Assembler {
    /// An assembler that rejects messages larger than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        Self {
            max_message,
            in_progress: None,
        }
    }

    /// Feeds one frame; returns an event once something is complete.
    pub fn push(&mut self, frame: Frame) -> Result<Option<Event>, WsError> {
        match frame.opcode {
            Opcode::Ping => Ok(Some(Event::Ping(frame.payload))),
            Opcode::Pong => Ok(Some(Event::Pong)),
            Opcode::Close if frame.payload.len() == 1 => Err(WsError::BadClosePayload),
            Opcode::Close => Ok(Some(Event::Close(frame.payload))),
            Opcode::Text | Opcode::Binary => self.start(frame),
            Opcode::Continuation => self.continue_message(frame),
        }
    }

    /// Handles the first (possibly only) frame of a data message.
    fn start(&mut self, frame: Frame) -> Result<Option<Event>, WsError> {
        if self.in_progress.is_some() {
            return Err(WsError::BadFragmentation);
        }
        if frame.fin {
            return finish(frame.opcode, frame.payload).map(Some);
        }
        self.in_progress = Some((frame.opcode, frame.payload));
        Ok(None)
    }

    /// Appends a continuation frame, completing the message on `fin`.
    fn continue_message(&mut self, frame: Frame) -> Result<Option<Event>, WsError> {
        let Some((opcode, mut data)) = self.in_progress.take() else {
            return Err(WsError::BadFragmentation);
        };
        let new_len = data.len() + frame.payload.len();
        if new_len > self.max_message {
            return Err(WsError::TooBig(new_len as u64));
        }
        data.extend_from_slice(&frame.payload);
        if frame.fin {
            return finish(opcode, data).map(Some);
        }
        self.in_progress = Some((opcode, data));
        Ok(None)
    }
}

/// Turns a complete data message into an event, validating text.
fn finish(opcode: Opcode, data: Vec<u8>) -> Result<Event, WsError> {
    match opcode {
        Opcode::Text => String::from_utf8(data)
            .map(Event::Text)
            .map_err(|_| WsError::InvalidUtf8),
        _ => Ok(Event::Binary(data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn accept_key_matches_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn decodes_rfc_masked_hello() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let bytes = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (frame, used) = decode(&bytes, MAX_PAYLOAD, true).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame, Frame::new(Opcode::Text, "Hello"));
    }

    #[test]
    fn encodes_rfc_unmasked_hello() {
        let bytes = encode(&Frame::new(Opcode::Text, "Hello"), None);
        assert_eq!(bytes, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    }

    #[test]
    fn masked_encode_matches_rfc() {
        let bytes = encode(&Frame::new(Opcode::Text, "Hello"), Some(KEY));
        assert_eq!(
            bytes,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn round_trips_all_length_forms() {
        for len in [0, 1, 125, 126, 65_535, 65_536, MAX_PAYLOAD] {
            let frame = Frame::new(Opcode::Binary, vec![0xAB; len]);
            let bytes = encode(&frame, Some(KEY));
            let (decoded, used) = decode(&bytes, MAX_PAYLOAD, true).unwrap().unwrap();
            assert_eq!(used, bytes.len(), "len {len}");
            assert_eq!(decoded, frame, "len {len}");
        }
    }

    #[test]
    fn partial_input_needs_more() {
        let bytes = encode(&Frame::new(Opcode::Binary, vec![7; 300]), Some(KEY));
        for cut in 0..bytes.len() {
            assert_eq!(
                decode(&bytes[..cut], MAX_PAYLOAD, true),
                Ok(None),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn decodes_back_to_back_frames() {
        let mut bytes = encode(&Frame::new(Opcode::Text, "a"), Some(KEY));
        bytes.extend(encode(&Frame::new(Opcode::Ping, "p"), Some(KEY)));
        let (first, used) = decode(&bytes, MAX_PAYLOAD, true).unwrap().unwrap();
        let (second, _) = decode(&bytes[used..], MAX_PAYLOAD, true).unwrap().unwrap();
        assert_eq!(first, Frame::new(Opcode::Text, "a"));
        assert_eq!(second, Frame::new(Opcode::Ping, "p"));
    }

    #[test]
    fn rejects_unmasked_client_frame() {
        let bytes = encode(&Frame::new(Opcode::Text, "hi"), None);
        assert_eq!(decode(&bytes, MAX_PAYLOAD, true), Err(WsError::Unmasked));
        assert!(decode(&bytes, MAX_PAYLOAD, false).unwrap().is_some());
    }

    #[test]
    fn rejects_oversized_frame_from_header_alone() {
        let mut bytes = vec![0x82, 0xFF];
        bytes.extend_from_slice(&((MAX_PAYLOAD as u64) + 1).to_be_bytes());
        let err = decode(&bytes, MAX_PAYLOAD, true).unwrap_err();
        assert_eq!(err, WsError::TooBig(MAX_PAYLOAD as u64 + 1));
        assert_eq!(err.close_code(), close_code::TOO_BIG);
    }

    #[test]
    fn rejects_reserved_bits_and_opcodes() {
        assert_eq!(decode(&[0xC1, 0x80], 10, true), Err(WsError::ReservedBits));
        assert_eq!(
            decode(&[0x83, 0x80], 10, true),
            Err(WsError::UnknownOpcode(3))
        );
    }

    #[test]
    fn rejects_bad_control_frames() {
        let long_ping = Frame::new(Opcode::Ping, vec![0; 126]);
        let bytes = encode(&long_ping, Some(KEY));
        assert_eq!(
            decode(&bytes, MAX_PAYLOAD, true),
            Err(WsError::BadControlFrame)
        );
        let fragmented = Frame {
            fin: false,
            ..Frame::new(Opcode::Ping, "x")
        };
        let bytes = encode(&fragmented, Some(KEY));
        assert_eq!(
            decode(&bytes, MAX_PAYLOAD, true),
            Err(WsError::BadControlFrame)
        );
    }

    #[test]
    fn close_frame_carries_code_and_reason() {
        let frame = Frame::close(close_code::GOING_AWAY, "bye");
        assert_eq!(frame.payload, [0x03, 0xE9, b'b', b'y', b'e']);
    }

    fn fragment(opcode: Opcode, fin: bool, data: &str) -> Frame {
        Frame {
            fin,
            opcode,
            payload: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn assembles_fragmented_text_with_interleaved_ping() {
        let mut asm = Assembler::new(MAX_PAYLOAD);
        assert_eq!(asm.push(fragment(Opcode::Text, false, "Hel")), Ok(None));
        assert_eq!(
            asm.push(Frame::new(Opcode::Ping, "p")),
            Ok(Some(Event::Ping(b"p".to_vec())))
        );
        assert_eq!(
            asm.push(fragment(Opcode::Continuation, false, "l")),
            Ok(None)
        );
        assert_eq!(
            asm.push(fragment(Opcode::Continuation, true, "o")),
            Ok(Some(Event::Text("Hello".into())))
        );
    }

    #[test]
    fn rejects_bad_fragmentation() {
        let mut asm = Assembler::new(MAX_PAYLOAD);
        assert_eq!(
            asm.push(fragment(Opcode::Continuation, true, "x")),
            Err(WsError::BadFragmentation)
        );
        asm.push(fragment(Opcode::Text, false, "a")).unwrap();
        assert_eq!(
            asm.push(fragment(Opcode::Binary, true, "b")),
            Err(WsError::BadFragmentation)
        );
    }

    #[test]
    fn rejects_oversized_reassembled_message() {
        let mut asm = Assembler::new(4);
        asm.push(fragment(Opcode::Binary, false, "abc")).unwrap();
        assert_eq!(
            asm.push(fragment(Opcode::Continuation, true, "de")),
            Err(WsError::TooBig(5))
        );
    }

    #[test]
    fn rejects_invalid_utf8_text() {
        let mut asm = Assembler::new(MAX_PAYLOAD);
        let frame = Frame::new(Opcode::Text, vec![0xFF, 0xFE]);
        assert_eq!(asm.push(frame), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn close_events() {
        let mut asm = Assembler::new(MAX_PAYLOAD);
        assert_eq!(
            asm.push(Frame::new(Opcode::Close, vec![0x03])),
            Err(WsError::BadClosePayload)
        );
        assert_eq!(
            asm.push(Frame::new(Opcode::Close, vec![])),
            Ok(Some(Event::Close(vec![])))
        );
    }
}
