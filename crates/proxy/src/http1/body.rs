//! A message body in transit: how much of it is left, and copying it from
//! one side to the other as it arrives. Bodies pass through unchanged
//! (chunked stays chunked); the proxy only tracks where each one ends, so the
//! bytes after it stay for the next message.

use std::ops::Range;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::chunked::{BadChunk, Chunked};
use super::head::Framing;

/// Reads of a body in progress are this large (more for big bodies).
const READ_SIZE: usize = 16 * 1024;
const LARGE_READ_SIZE: usize = 64 * 1024;

/// The unsent rest of one body.
#[derive(Debug)]
pub(crate) enum Remaining {
    Done,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

/// A body copy stopped short.
#[derive(Debug, thiserror::Error)]
pub(super) enum Broken {
    #[error("reading: {0}")]
    Read(std::io::Error),
    #[error("closed before the body ended")]
    Truncated,
    #[error("no data for {0:?}")]
    Stalled(Duration),
    #[error(transparent)]
    Malformed(#[from] BadChunk),
    #[error("writing: {0}")]
    Write(std::io::Error),
}

impl Broken {
    /// The reading side is at fault (rather than the one written to).
    pub(super) fn by_reader(&self) -> bool {
        !matches!(self, Self::Write(_))
    }
}

impl Remaining {
    pub(crate) fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty | Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(Chunked::default()),
            Framing::UntilClose => Self::UntilClose,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }

    /// Counts the body's next bytes: how many of `buf` belong to it.
    pub(crate) fn take(&mut self, buf: &[u8]) -> Result<usize, BadChunk> {
        let n = match self {
            Self::Done => 0,
            Self::Length(left) => {
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = Self::Done;
                }
                n as usize
            }
            Self::Chunked(c) => {
                let n = c.advance(buf)?;
                if c.is_done() {
                    *self = Self::Done;
                }
                n
            }
            Self::UntilClose => buf.len(),
        };
        Ok(n)
    }

    /// Like [`Remaining::take`], but for a reader that needs the payload without
    /// its framing: how many bytes of `buf` were consumed, and the range of
    /// payload among them (chunked bodies yield one chunk's data per call).
    pub(crate) fn take_data(&mut self, buf: &[u8]) -> Result<(usize, Range<usize>), BadChunk> {
        if let Self::Chunked(c) = self {
            let decoded = c.decode(buf)?;
            if c.is_done() {
                *self = Self::Done;
            }
            return Ok(decoded);
        }
        let n = self.take(buf)?;
        Ok((n, 0..n))
    }

    /// Moves the body's bytes at the front of `from` to the end of `to`.
    pub(super) fn take_into(
        &mut self,
        from: &mut BytesMut,
        to: &mut Vec<u8>,
    ) -> Result<(), BadChunk> {
        let n = self.take(from)?;
        to.extend_from_slice(&from[..n]);
        from.advance(n);
        Ok(())
    }

    /// Copies the rest of the body from `from` to `to`, through `buf`, which
    /// must be empty; bytes read past the body's end stay in it. Each read
    /// waits at most `stall`.
    pub(super) async fn relay<R, W>(
        &mut self,
        from: &mut R,
        to: &mut W,
        buf: &mut BytesMut,
        stall: Duration,
    ) -> Result<(), Broken>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut reads = 0;
        while !self.is_done() {
            reads += 1;
            let size = if reads > 2 {
                LARGE_READ_SIZE
            } else {
                READ_SIZE
            };
            buf.reserve(size);
            let n = match tokio::time::timeout(stall, from.read_buf(buf)).await {
                Err(_) => return Err(Broken::Stalled(stall)),
                Ok(Err(e)) => return Err(Broken::Read(e)),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                if matches!(self, Self::UntilClose) {
                    *self = Self::Done;
                    break;
                }
                return Err(Broken::Truncated);
            }
            let n = self.take(buf)?;
            to.write_all(&buf[..n]).await.map_err(Broken::Write)?;
            buf.advance(n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_bodies_stop_at_their_end() {
        let mut b = Remaining::new(Framing::Length(5));
        assert_eq!(b.take(b"abc"), Ok(3));
        assert!(!b.is_done());
        assert_eq!(b.take(b"deNEXT"), Ok(2));
        assert!(b.is_done());
        assert_eq!(b.take(b"NEXT"), Ok(0));
        assert!(Remaining::new(Framing::Length(0)).is_done());
        assert!(Remaining::new(Framing::Empty).is_done());
    }

    #[tokio::test]
    async fn relays_a_chunked_body_and_leaves_what_follows() {
        let (mut tx, mut rx) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for piece in [&b"3\r\nab"[..], b"c\r\n0\r\n", b"\r\nGET / HTTP/1.1\r\n"] {
                tx.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let mut body = Remaining::new(Framing::Chunked);
        let mut out = Vec::new();
        let mut buf = BytesMut::new();
        body.relay(&mut rx, &mut out, &mut buf, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(out, b"3\r\nabc\r\n0\r\n\r\n");
        assert!(b"GET / HTTP/1.1\r\n".starts_with(&buf), "{buf:?}");
    }

    /// A stream that yields `bytes`, then end of file.
    async fn closed_after(bytes: &[u8]) -> tokio::io::DuplexStream {
        let (mut tx, rx) = tokio::io::duplex(64);
        tx.write_all(bytes).await.unwrap();
        rx
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_unless_it_runs_until_close() {
        let mut rx = closed_after(b"abc").await;
        let mut out = Vec::new();
        let err = Remaining::new(Framing::Length(10))
            .relay(
                &mut rx,
                &mut out,
                &mut BytesMut::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Broken::Truncated) && err.by_reader(), "{err}");

        let mut rx = closed_after(b"abc").await;
        let mut out = Vec::new();
        Remaining::new(Framing::UntilClose)
            .relay(
                &mut rx,
                &mut out,
                &mut BytesMut::new(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(out, b"abc");
    }
}
