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
use h2::server::SendResponse;
use h2::{Reason, SendStream};
use http::Response;
use tokio::net::TcpStream;

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
pub(crate) async fn send(resp: Response<ResponseBody>, mut respond: SendResponse<Bytes>) {
    let (parts, body) = resp.into_parts();
    let end = body.is_end_stream();
    let tx = match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(tx) => tx,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 response not sent");
            return;
        }
    };
    if end {
        return;
    }
    let mut pipe = Pipe {
        body,
        tx,
        waiting: None,
    };
    if let Err(e) = poll_fn(|cx| pipe.poll(cx)).await {
        tracing::debug!(error = %e, "HTTP/2 response body not sent whole");
    }
}

/// A body on its way into a stream.
struct Pipe {
    body: ResponseBody,
    tx: SendStream<Bytes>,
    /// A run read from the body that waits for window, and whether it ends it.
    waiting: Option<(Bytes, bool)>,
}

impl Pipe {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        loop {
            if let Some((data, end)) = self.waiting.take() {
                // Sent once some window is there: h2 holds the rest until
                // the client grants more, and asks for it meanwhile.
                while self.tx.capacity() == 0 {
                    match self.tx.poll_capacity(cx) {
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                        Poll::Ready(None) => return Poll::Ready(Err(Reason::CANCEL.into())),
                        Poll::Pending => {
                            self.waiting = Some((data, end));
                            return self.pending_unless_reset(cx);
                        }
                    }
                }
                self.tx.send_data(data, end)?;
                if end {
                    return Poll::Ready(Ok(()));
                }
            }
            match self.body.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    let end = self.body.is_end_stream();
                    if data.is_empty() && !end {
                        continue;
                    }
                    // A claim of one byte, not the run's length: claiming
                    // what the window cannot yet hold would make every
                    // waiting stream hold back window the others could use.
                    self.tx.reserve_capacity(1);
                    self.waiting = Some((data, end));
                }
                Poll::Ready(None) => {
                    self.tx.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Some(Err(e))) => {
                    self.tx.send_reset(Reason::INTERNAL_ERROR);
                    tracing::debug!(error = %e, "the target's body failed");
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending => return self.pending_unless_reset(cx),
            }
        }
    }

    /// Waiting on the target or on window, unless the client reset the stream.
    fn pending_unless_reset(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        match self.tx.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => Poll::Ready(Err(reason.into())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}
