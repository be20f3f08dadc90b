//! The response body an HTTP/2 client gets: the target's HTTP/1.1 body,
//! decoded from its framing as it arrives, or a short text of baton's own.
//!
//! It carries the request's in-flight hold, so a request counts toward its
//! target's drain until its last byte is sent, and gives the target
//! connection back to the pool once the body has been read to its end.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use crate::http1::{Connections, Remaining};
use crate::target::InFlight;

/// Reads of a target's body are this large.
const READ_SIZE: usize = 16 * 1024;

/// What the proxy sends to an HTTP/2 client.
#[derive(Debug)]
pub struct ResponseBody {
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
        // hyper never polls a body that is empty from the start.
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

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Target(Some(t)) => match ready!(t.poll_data(cx)) {
                Ok(data) => data.map(|d| Ok(Frame::data(d))),
                Err(e) => Some(Err(e)),
            },
            Kind::Target(None) => None,
            Kind::Full(b) => b.take().map(|d| Ok(Frame::data(d))),
        };
        // hyper stops polling once the body says it has ended, so the end is
        // noticed both ways: a final `None`, or a frame after which it is over.
        if polled.is_none() || this.is_end_stream() {
            this.done();
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

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Target(Some(TargetBody {
                remaining: Remaining::Length(n),
                ..
            })) => SizeHint::with_exact(*n),
            Kind::Target(Some(t)) if t.remaining.is_done() => SizeHint::with_exact(0),
            Kind::Target(_) => SizeHint::default(),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
        }
    }
}
