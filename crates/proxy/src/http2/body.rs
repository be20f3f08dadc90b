//! The response body an HTTP/2 client gets: the target's HTTP/1.1 body,
//! decoded from its framing as it arrives, or a short text of baton's own.
//!
//! It carries the request's in-flight hold, so a request counts toward its
//! target's drain until its last byte is sent, and gives the target
//! connection back to the pool once the body has been read to its end.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

use super::exchange::Response;
use super::frame::Reason;
use super::shared::StreamIo;
use crate::http1::{Connections, Remaining};
use crate::target::InFlight;

/// Reads of a target's body are this large.
const READ_SIZE: usize = 16 * 1024;

/// What the proxy sends to an HTTP/2 client.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    kind: Kind,
    /// Released when the body is done or dropped.
    hold: Option<InFlight>,
}

#[derive(Debug)]
enum Kind {
    /// Streamed from the target; `None` once it ended.
    Target(Option<TargetBody>),
    Full(Option<Bytes>),
}

/// A target's body in transit, and the connection it comes on.
#[derive(Debug)]
pub(crate) struct TargetBody {
    pub(crate) stream: TcpStream,
    /// Read from the target and not passed on yet.
    pub(crate) buf: BytesMut,
    pub(crate) remaining: Remaining,
    /// The connection may carry another request once the body is read.
    pub(crate) reusable: bool,
    pub(crate) addr: SocketAddr,
    pub(crate) connections: Arc<Connections>,
}

impl ResponseBody {
    pub(crate) fn target(body: TargetBody, hold: InFlight) -> Self {
        let mut this = Self {
            kind: Kind::Target(Some(body)),
            hold: Some(hold),
        };
        // A body empty from the start is never polled.
        if this.is_end_stream() {
            this.done();
        }
        this
    }

    pub(crate) fn full(text: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(text.into())),
            hold: None,
        }
    }

    /// The body ended: pool its connection if it can serve again, release the hold.
    fn done(&mut self) {
        self.hold = None;
        if let Kind::Target(target) = &mut self.kind {
            if let Some(t) = target.take() {
                if t.reusable && t.buf.is_empty() && t.remaining.is_done() {
                    t.connections.put(t.addr, t.stream);
                }
            }
        }
    }
}

impl TargetBody {
    /// The next run of payload, reading from the target as needed.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            if !self.buf.is_empty() && !self.remaining.is_done() {
                let (used, run) = self
                    .remaining
                    .take_data(&self.buf)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let consumed = self.buf.split_to(used).freeze();
                if !run.is_empty() {
                    return Poll::Ready(Ok(Some(consumed.slice(run))));
                }
                continue;
            }
            if self.remaining.is_done() {
                return Poll::Ready(Ok(None));
            }
            self.buf.reserve(READ_SIZE);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.stream),
                cx,
                &mut self.buf
            ))?;
            if read == 0 {
                if matches!(self.remaining, Remaining::UntilClose) {
                    self.remaining = Remaining::Done;
                    self.reusable = false;
                    return Poll::Ready(Ok(None));
                }
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

impl ResponseBody {
    /// The next run of the body; `None` at its end.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        let polled = match &mut self.kind {
            Kind::Target(Some(t)) => ready!(t.poll_data(cx)).transpose(),
            Kind::Target(None) => None,
            Kind::Full(b) => b.take().map(Ok),
        };
        // The end is noticed both ways: a final `None`, or a run after
        // which it is over (the stream then ends with that run).
        if polled.is_none() || self.is_end_stream() {
            self.done();
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Target(Some(t)) => t.remaining.is_done() && t.buf.is_empty(),
            Kind::Target(None) => true,
            Kind::Full(b) => b.is_none(),
        }
    }
}

/// Sends a response on its stream: the head, then the body as the client's
/// flow-control windows allow. A body the target cuts short resets the
/// stream, so the client does not take it for whole.
pub(super) async fn send(resp: Response, io: &StreamIo) {
    let Response { block, mut body } = resp;
    let end = body.is_end_stream();
    io.send_headers(block.as_bytes(), end);
    if end {
        return;
    }
    let mut waiting = None;
    poll_fn(|cx| pipe(cx, &mut body, io, &mut waiting)).await;
}

/// Moves the body into the stream: each run read from the target waits
/// (in `waiting`, with whether it ends the body) until it is all sent.
fn pipe(
    cx: &mut Context<'_>,
    body: &mut ResponseBody,
    io: &StreamIo,
    waiting: &mut Option<(Bytes, bool)>,
) -> Poll<()> {
    loop {
        if let Some((data, end)) = waiting {
            // Pending until the client's window (or room to write) allows;
            // the connection polls the stream again then.
            ready!(io.poll_send(data, *end));
            if *end {
                return Poll::Ready(());
            }
            *waiting = None;
        }
        match body.poll_data(cx) {
            Poll::Ready(Some(Ok(data))) => {
                let end = body.is_end_stream();
                if data.is_empty() && !end {
                    continue;
                }
                *waiting = Some((data, end));
            }
            Poll::Ready(None) => *waiting = Some((Bytes::new(), true)),
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "the target's body failed");
                io.reset(Reason::INTERNAL_ERROR);
                return Poll::Ready(());
            }
            Poll::Pending => return Poll::Pending,
        }
    }
}
