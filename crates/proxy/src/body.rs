//! The body types on both legs of a proxied request.
//!
//! Plain enums rather than boxed trait objects, so forwarding allocates
//! nothing for them. The response body carries the request's in-flight hold:
//! a request counts toward its target's drain until its last byte is sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::target::InFlight;
use crate::upstream::Lease;

/// What the proxy sends to a target.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// The client's body, streamed through.
    Client(Incoming),
    /// No body (a retried request never had one).
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Client(b) => Pin::new(b).poll_frame(cx),
            Self::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Client(b) => b.is_end_stream(),
            Self::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Client(b) => b.size_hint(),
            Self::Empty => SizeHint::with_exact(0),
        }
    }
}

/// What the proxy sends to a client.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    /// Released when the body is done or dropped.
    hold: Option<InFlight>,
    /// The upstream connection, pooled again once the body is complete (a
    /// body dropped half-way takes its connection with it).
    lease: Option<Lease>,
}

#[derive(Debug)]
enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub(crate) fn upstream(body: Incoming, hold: InFlight, lease: Lease) -> Self {
        let mut this = Self {
            kind: Kind::Upstream(body),
            hold: Some(hold),
            lease: Some(lease),
        };
        // hyper never polls a body that is empty from the start.
        if this.is_end_stream() {
            this.done();
        }
        this
    }

    fn done(&mut self) {
        self.hold = None;
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }

    pub(crate) fn full(text: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(Some(text.into())),
            hold: None,
            lease: None,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream(b) => Pin::new(b).poll_frame(cx),
            Kind::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        };
        // hyper stops polling once the body says it has ended, so the end is
        // noticed both ways: a final `None`, or a frame after which it is over.
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.is_end_stream(),
            _ => false,
        };
        if ended {
            this.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(b) => b.is_end_stream(),
            Kind::Full(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(b) => b.size_hint(),
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
        }
    }
}
