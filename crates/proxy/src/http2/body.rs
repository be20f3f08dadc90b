//! The response body an HTTP/2 client gets: the target's HTTP/1.1 body,
//! decoded from its framing as it arrives and sent within the client's
//! flow-control windows, or a short text of baton's own.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;

use super::hpack::Block;
use super::shared::StreamIo;
use crate::forward::Failed;
use crate::http1::Remaining;

/// Reads of a target's body are this large.
const READ_SIZE: usize = 16 * 1024;

/// Relays the rest of a target's body (`buf` holds what was read past its
/// head) to the stream. `Ok(true)`: it ended as its framing said, so the
/// connection may carry another request (if `buf` is left empty).
pub(super) async fn relay<R>(
    from: &mut R,
    buf: &mut BytesMut,
    framing: Remaining,
    io: &StreamIo,
) -> Result<bool, Failed>
where
    R: AsyncRead + Unpin,
{
    let mut relay = Relay {
        remaining: framing,
        waiting: None,
        reusable: true,
    };
    poll_fn(|cx| relay.poll(cx, from, buf, io)).await
}

/// A body on its way from a target into a stream.
struct Relay {
    remaining: Remaining,
    /// A run that waits for the client's window, and whether it ends the body.
    waiting: Option<(Bytes, bool)>,
    reusable: bool,
}

impl Relay {
    fn poll<R>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        buf: &mut BytesMut,
        io: &StreamIo,
    ) -> Poll<Result<bool, Failed>>
    where
        R: AsyncRead + Unpin,
    {
        loop {
            if let Some((data, end)) = &mut self.waiting {
                // Pending until the window (or room to write) allows; the
                // connection polls the stream again then.
                ready!(io.poll_send(data, *end));
                if *end {
                    return Poll::Ready(Ok(self.reusable));
                }
                self.waiting = None;
            }
            if self.remaining.is_done() {
                self.waiting = Some((Bytes::new(), true));
                continue;
            }
            if !buf.is_empty() {
                let (used, run) = self.remaining.take_data(buf).map_err(|_| Failed::Broken)?;
                let end = self.remaining.is_done();
                if used > 0 || end {
                    let consumed = buf.split_to(used).freeze();
                    if !run.is_empty() || end {
                        self.waiting = Some((consumed.slice(run), end));
                    }
                    continue;
                }
                // Part of a chunk's framing: more is needed to decode it.
            }
            buf.reserve(READ_SIZE);
            let read = ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *from), cx, buf));
            match read {
                Ok(0) if matches!(self.remaining, Remaining::UntilClose) => {
                    self.remaining = Remaining::Done;
                    self.reusable = false;
                }
                Ok(0) | Err(_) => return Poll::Ready(Err(Failed::Broken)),
                Ok(_) => {}
            }
        }
    }
}

/// Answers with baton's own status and line of text.
pub(super) async fn text(io: &StreamIo, status: u16, text: &str) {
    let mut block = Block::default();
    block.status(status);
    block.field(b"content-type", b"text/plain; charset=utf-8");
    block.field(b"content-length", text.len().to_string().as_bytes());
    io.send_headers(block.as_bytes(), false);
    let mut body = Bytes::copy_from_slice(text.as_bytes());
    poll_fn(|_| io.poll_send(&mut body, true)).await;
}
