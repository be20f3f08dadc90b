//! Listeners: accept client connections and serve them. HTTP/1.1 (with
//! upgrades) goes through baton's own [`crate::http1`] path; a client that
//! opens with the HTTP/2 preface (h2c, prior knowledge) goes to
//! [`crate::http2`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::forward::{Forwarder, Routing};
use crate::forwarded::Peer;
use crate::http1;

/// Everything a listener needs to serve connections.
#[derive(Clone)]
pub(crate) struct Listener {
    pub(crate) forwarder: Arc<Forwarder>,
    pub(crate) routing: Routing,
}

impl Listener {
    /// Accepts until `stop` fires; connections already open are left to finish.
    pub(crate) async fn run(self, listener: TcpListener, stop: CancellationToken) {
        // One pointer in each connection's task rather than the fields.
        let this = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.cancelled() => return,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let peer = Peer::counted(peer, &this.forwarder.open_clients);
                    http1::start(this.clone(), stream, peer);
                }
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Serves a connection that opened with the HTTP/2 preface; `read` is
    /// what the HTTP/1.1 path read of it.
    pub(crate) async fn serve_http2(
        self: Arc<Self>,
        stream: TcpStream,
        read: BytesMut,
        peer: Peer,
    ) {
        crate::http2::serve(&self, Prefixed { read, stream }, peer).await;
    }
}

/// A connection whose first bytes were already read: they are read again first.
struct Prefixed {
    read: BytesMut,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
