//! The chunked transfer coding (RFC 9112 §7.1), tracked rather than decoded.
//!
//! The proxy passes chunked bodies through byte for byte; it only has to know
//! where one ends, so that the connection can carry the next message. It is
//! strict (CRLF only, bounded sizes): a body two parsers would split
//! differently is how requests get smuggled.

use std::ops::Range;

/// Where a chunked body is, across reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct Chunked {
    state: State,
    /// Bytes left in the current chunk's data, or the size being read.
    size: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size; `true` once one was seen.
    #[default]
    Size,
    SizeDigits,
    /// A chunk extension, skipped up to the line's end.
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: a trailer field line, or the final CRLF.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// The body is not valid chunked coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub(crate) struct BadChunk;

impl Chunked {
    /// Consumes the body's next bytes. Returns how many of `buf` belong to
    /// the body: all of it, unless the body ends inside it.
    pub(crate) fn advance(&mut self, buf: &[u8]) -> Result<usize, BadChunk> {
        let mut i = 0;
        while i < buf.len() && self.state != State::Done {
            if self.state == State::Data {
                let n = self.size.min((buf.len() - i) as u64);
                self.size -= n;
                i += n as usize;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            self.state = self.step(buf[i])?;
            i += 1;
        }
        Ok(i)
    }

    /// Like [`Chunked::advance`], but stops after the first run of chunk
    /// data: returns the bytes consumed and, among them, the data's range.
    /// For a reader that needs the body decoded (an HTTP/2 client).
    pub(crate) fn decode(&mut self, buf: &[u8]) -> Result<(usize, Range<usize>), BadChunk> {
        let mut i = 0;
        while i < buf.len() && self.state != State::Done {
            if self.state == State::Data {
                let n = self.size.min((buf.len() - i) as u64) as usize;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok((i + n, i..i + n));
            }
            self.state = self.step(buf[i])?;
            i += 1;
        }
        Ok((i, i..i))
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    fn step(&mut self, b: u8) -> Result<State, BadChunk> {
        use State::*;
        Ok(match (self.state, b) {
            (Size | SizeDigits, _) if b.is_ascii_hexdigit() => {
                // 15 hex digits is far beyond any real chunk; more would overflow.
                if self.size >> 60 != 0 {
                    return Err(BadChunk);
                }
                self.size = self.size * 16 + u64::from(hex(b));
                SizeDigits
            }
            (SizeDigits, b';' | b' ' | b'\t') => Extension,
            (SizeDigits | Extension, b'\r') => SizeLf,
            (Extension, b'\n') => return Err(BadChunk),
            (Extension, _) => Extension,
            (SizeLf, b'\n') if self.size == 0 => TrailerStart,
            (SizeLf, b'\n') => Data,
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart | TrailerLine, b'\n') => return Err(BadChunk),
            (TrailerLine, b'\r') => TrailerLf,
            (TrailerStart | TrailerLine, _) => TrailerLine,
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            _ => return Err(BadChunk),
        })
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; returns the bytes consumed.
    fn feed(body: &[u8], step: usize) -> Result<(usize, bool), BadChunk> {
        let mut c = Chunked::default();
        let mut used = 0;
        for piece in body.chunks(step) {
            let n = c.advance(piece)?;
            used += n;
            if n < piece.len() {
                break;
            }
        }
        Ok((used, c.is_done()))
    }

    #[test]
    fn finds_the_end_whatever_the_read_sizes() {
        let body = b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\n";
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"GET / HTTP/1.1\r\n");
        for step in 1..=with_next.len() {
            assert_eq!(
                feed(&with_next, step),
                Ok((body.len(), true)),
                "step {step}"
            );
        }
    }

    #[test]
    fn decodes_the_data_whatever_the_read_sizes() {
        let body =
            b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 1\r\n\r\nNEXT";
        for step in 1..=body.len() {
            let mut c = Chunked::default();
            let (mut data, mut used) = (Vec::new(), 0);
            for piece in body.chunks(step) {
                let mut at = 0;
                while at < piece.len() && !c.is_done() {
                    let (n, run) = c.decode(&piece[at..]).unwrap();
                    data.extend_from_slice(&piece[at..][run]);
                    at += n;
                }
                used += at;
            }
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            assert_eq!(used, body.len() - 4, "step {step}");
        }
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        assert_eq!(feed(b"5\r\nhel", 3), Ok((6, false)));
        assert_eq!(feed(b"0\r\n\r", 1), Ok((4, false)));
    }

    #[test]
    fn rejects_what_another_parser_might_read_differently() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"5\nhello\r\n",
            b"5\r\nhello\n",
            b"5\r\nhelloX\r\n",
            b"0\r\n\n",
            b"1ffffffffffffffff\r\n",
            b"0;ext\n",
        ] {
            assert_eq!(feed(bad, 64).map(|r| r.1), Err(BadChunk), "{bad:?}");
        }
    }
}
