//! Listeners: accept client connections and serve them. HTTP/1.1 (with
//! upgrades) goes through baton's own [`crate::http1`] path; a client that
//! opens with the HTTP/2 preface (h2c, prior knowledge) goes to
//! [`crate::http2`].

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::client_socket::{self, ClientSocket};
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
    /// Accepts from `listener` (non-blocking) until `stop` fires;
    /// connections already open are left to finish.
    pub(crate) async fn run(self, listener: TcpListener, stop: CancellationToken) {
        let nodelay_inherited = nodelay_for_accepted(&listener);
        // SAFETY: the AsyncFd owns the listener, so its descriptor stays
        // open, and the same, for as long as it is registered.
        let listener =
            match unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) } {
                Ok(listener) => listener,
                Err(e) => {
                    tracing::error!(error = %e, "a worker cannot use the listener");
                    return;
                }
            };
        // One pointer in each connection's task rather than the fields.
        let this = Arc::new(self);
        loop {
            let accepted = tokio::select! {
                a = accept(&listener) => a,
                _ = stop.cancelled() => return,
            };
            match accepted {
                Ok((client, peer)) => {
                    if !nodelay_inherited {
                        client.set_nodelay();
                    }
                    let peer = Peer::counted(peer, &this.forwarder.open_clients);
                    http1::start(this.clone(), client, peer);
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
        client: ClientSocket,
        read: BytesMut,
        peer: Peer,
    ) {
        match client.into_registered() {
            Ok(stream) => crate::http2::serve(&self, Prefixed { read, stream }, peer).await,
            Err(e) => tracing::debug!(error = %e, "HTTP/2 connection lost"),
        }
    }
}

/// The next connection. Accepted connections are not registered with the
/// I/O driver (see [`ClientSocket`]); the listener is.
async fn accept(listener: &AsyncFd<TcpListener>) -> io::Result<(ClientSocket, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        if let Ok(accepted) = ready.try_io(|listener| client_socket::accept(listener.get_ref())) {
            return accepted;
        }
    }
}

/// Sets TCP_NODELAY on the listening socket. Linux copies it to every
/// connection accepted from it, which spares a system call per connection;
/// elsewhere (false) each connection sets it itself.
fn nodelay_for_accepted(listener: &TcpListener) -> bool {
    cfg!(target_os = "linux") && set_option(listener, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)
}

/// Asks Linux to hand over connections accepted from `listener` only once
/// their first bytes have come (TCP_DEFER_ACCEPT, as nginx's `deferred` and
/// HAProxy's `defer-accept`). A client's connect usually reaches the proxy
/// before its request; accepted at once, the connection's first read finds
/// nothing, so it must be registered with the I/O driver and waited for: a
/// failed read, an `epoll_ctl` or two and a wake-up more per connection, a
/// fifth of the proxy's CPU for a new connection per request. A client that
/// connects and says nothing is handed over after a second (once it answers
/// the kernel's repeated SYN-ACK) and is then timed out as any idle one.
/// Returns false where the system has no such option or refuses it; then
/// connections are accepted at once.
pub fn defer_accept(listener: &TcpListener) -> bool {
    #[cfg(target_os = "linux")]
    return set_option(listener, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 1);
    #[cfg(not(target_os = "linux"))]
    {
        let _ = listener;
        false
    }
}

/// One integer option of a socket; false if refused.
pub(crate) fn set_option(
    socket: &impl AsRawFd,
    level: libc::c_int,
    option: libc::c_int,
    value: libc::c_int,
) -> bool {
    // SAFETY: a valid descriptor (the socket is borrowed for the call)
    // and an option value of the size given.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    set == 0
}

/// Deepens `listener`'s queue of connections waiting to be accepted to what
/// the system allows (`net.core.somaxconn`, 4096 by default). The standard
/// library listens with 128: a burst of a thousand connects overflowed it,
/// and every connection dropped so waited a second or more for its SYN to
/// be sent again (nginx listens with 511, HAProxy with its `maxconn`).
pub(crate) fn deepen_backlog(listener: &TcpListener) -> io::Result<()> {
    // Listening again on a listening socket sets its backlog; the kernel
    // caps it at somaxconn.
    // SAFETY: a valid descriptor, borrowed for the call.
    if unsafe { libc::listen(listener.as_raw_fd(), libc::c_int::MAX) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_connects_waits_in_the_deepened_backlog() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        // More than the standard library's 128, none accepted yet: with its
        // backlog, the later ones have their SYN dropped and wait seconds.
        let burst = somaxconn.min(300);
        if burst <= 129 {
            eprintln!("skipped: the system allows no backlog deeper than std's ({somaxconn})");
            return;
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        deepen_backlog(&listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<_> = (0..burst)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(900))
                    .unwrap_or_else(|e| panic!("connection {i} waited: {e}"))
            })
            .collect();
        listener.set_nonblocking(true).unwrap();
        let accepted = std::iter::from_fn(|| listener.accept().ok()).count();
        assert_eq!(accepted, clients.len());
    }

    #[test]
    fn accepted_connections_do_not_wait_to_fill_segments() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let inherited = nodelay_for_accepted(&listener);
        assert_eq!(inherited, cfg!(target_os = "linux"));
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(accepted.nodelay().unwrap(), inherited);
    }
}
