//! Just enough of WebSocket framing (RFC 6455 §5.2) to know where frames end.
//!
//! The proxy relays upgraded connections byte for byte, never decoding them;
//! but when a drain times out it must close a WebSocket properly, with a close
//! frame, and a close frame may only be sent between two frames. This tracker
//! follows the frame boundaries in one direction of the stream for that.

/// Where one direction of a WebSocket stream stands.
#[derive(Debug, Default)]
pub(crate) struct FrameTracker {
    /// Header bytes of the frame being read (at most 14).
    header: [u8; 14],
    have: usize,
    /// Payload bytes left in the current frame, once its header is complete.
    payload_left: u64,
}

impl FrameTracker {
    /// True between two frames: a close frame may be injected here.
    pub(crate) fn at_boundary(&self) -> bool {
        self.have == 0 && self.payload_left == 0
    }

    /// Follows `data` through the stream. With `stop_at_boundary`, stops at
    /// the first frame end (returning 0 if already at one); returns how many
    /// bytes of `data` belong before that point.
    pub(crate) fn advance(&mut self, data: &[u8], stop_at_boundary: bool) -> usize {
        let mut used = 0;
        while used < data.len() {
            if stop_at_boundary && self.at_boundary() {
                break;
            }
            if self.payload_left > 0 {
                let take = (data.len() - used)
                    .min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                self.payload_left -= take as u64;
                used += take;
                continue;
            }
            // A whole header in this read, as usual: no byte-by-byte copy.
            if self.have == 0 {
                if let Some((len, payload)) = parse_header(&data[used..]) {
                    used += len;
                    self.payload_left = payload;
                    continue;
                }
            }
            self.header[self.have] = data[used];
            self.have += 1;
            used += 1;
            if let Some((_, payload)) = parse_header(&self.header[..self.have]) {
                self.have = 0;
                self.payload_left = payload;
            }
        }
        used
    }
}

/// The header's length and the frame's payload length, once `h` (which
/// starts with a frame header) holds all of the header.
fn parse_header(h: &[u8]) -> Option<(usize, u64)> {
    let [_, second, ..] = *h else {
        return None;
    };
    let len7 = second & 0x7f;
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let len = 2 + ext + if second & 0x80 != 0 { 4 } else { 0 };
    if h.len() < len {
        return None;
    }
    let payload = match len7 {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[2..10]);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    Some((len, payload))
}

/// Close code 1001, "going away": the endpoint is being taken down.
const GOING_AWAY: [u8; 2] = 1001u16.to_be_bytes();

/// A close frame as a server sends it (unmasked).
pub(crate) fn close_frame_to_client() -> [u8; 4] {
    [0x88, 0x02, GOING_AWAY[0], GOING_AWAY[1]]
}

/// A close frame as a client must send it (masked with `mask`).
pub(crate) fn close_frame_to_server(mask: [u8; 4]) -> [u8; 8] {
    [
        0x88,
        0x82,
        mask[0],
        mask[1],
        mask[2],
        mask[3],
        GOING_AWAY[0] ^ mask[0],
        GOING_AWAY[1] ^ mask[1],
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload_len: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match payload_len {
            n if n < 126 => f.push(m | n as u8),
            n if n < 65536 => {
                f.push(m | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(m | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, payload_len));
        f
    }

    #[test]
    fn finds_boundaries_across_all_length_forms_and_split_reads() {
        for (len, masked) in [
            (0, false),
            (5, true),
            (125, false),
            (300, true),
            (70_000, false),
        ] {
            let mut stream = frame(len, masked);
            stream.extend(frame(3, masked));
            let first_end = stream.len() - frame(3, masked).len();
            for chunk in [1, 2, 7, 4096] {
                // Mid-frame, as when a drain times out during a transfer.
                let mut t = FrameTracker::default();
                let mut pos = t.advance(&stream[..1], false);
                while pos < first_end {
                    let end = (pos + chunk).min(stream.len());
                    pos += t.advance(&stream[pos..end], true);
                    assert!(
                        pos <= first_end,
                        "len {len} chunk {chunk}: overran the boundary"
                    );
                    if t.at_boundary() {
                        break;
                    }
                }
                assert_eq!(pos, first_end, "len {len} chunk {chunk}");
                assert!(t.at_boundary());
                assert_eq!(t.advance(&stream[pos..], true), 0, "already at a boundary");
            }
        }
    }

    #[test]
    fn without_stopping_it_consumes_everything() {
        let mut stream = frame(10, true);
        stream.extend(frame(200, true));
        let mut t = FrameTracker::default();
        assert_eq!(
            t.advance(&stream[..stream.len() - 1], false),
            stream.len() - 1
        );
        assert!(!t.at_boundary());
        t.advance(&stream[stream.len() - 1..], false);
        assert!(t.at_boundary());
    }

    #[test]
    fn close_frames_carry_going_away() {
        assert_eq!(close_frame_to_client(), [0x88, 2, 0x03, 0xe9]);
        let f = close_frame_to_server([9, 8, 7, 6]);
        assert_eq!([f[6] ^ 9, f[7] ^ 8], [0x03, 0xe9]);
    }
}
