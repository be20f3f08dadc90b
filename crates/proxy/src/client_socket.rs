//! A client's socket, registered with the worker's I/O driver only once it
//! has to wait.
//!
//! Why: most clients send their request as they connect. Read at once, that
//! request is answered and, with a connection per request, the connection
//! closed without epoll ever hearing of it (HAProxy does the same): two
//! `epoll_ctl` calls and a turn of the event loop fewer per connection. A
//! connection that must wait (for its request, for room to write) registers
//! then, and from there on is an ordinary tokio socket.

use std::io::{self, IoSlice, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client connection's socket.
#[derive(Debug)]
pub(crate) struct ClientSocket {
    state: State,
    /// The last read emptied the socket: nothing that arrived before it is
    /// left unread. Parking (`http1::IdleClients`) trusts this rather than
    /// ask the kernel again; anything that reads past this type clears it.
    drained: bool,
}

#[derive(Debug)]
enum State {
    /// Unknown to the I/O driver: used directly until that would block.
    Direct(std::net::TcpStream),
    Registered(TcpStream),
    /// Registering failed, which closed the socket. Every use then fails,
    /// so the connection ends in the same poll: its idle slot (which holds
    /// the descriptor's number) is busy, or idle only since that poll, and
    /// the sweep acts only on slots idle for a whole timeout.
    Lost,
}

impl State {
    fn into_registered(self) -> io::Result<TcpStream> {
        match self {
            Self::Direct(socket) => TcpStream::from_std(socket),
            Self::Registered(socket) => Ok(socket),
            Self::Lost => Err(lost()),
        }
    }
}

fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the client socket is gone")
}

/// Accepts a connection from `listener`, non-blocking from the start
/// (`accept4` sets that in the same call).
pub(crate) fn accept(listener: &std::net::TcpListener) -> io::Result<(ClientSocket, SocketAddr)> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the address buffer and its length are valid for the call.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: accept4 returned a new descriptor that nothing else owns.
    let socket = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let peer = socket_addr(&addr)
        .ok_or_else(|| io::Error::other("accepted a connection that is not IPv4 or IPv6"))?;
    let client = ClientSocket {
        state: State::Direct(socket),
        drained: false,
    };
    Ok((client, peer))
}

/// The address accept(2) wrote, if it is an internet one.
fn socket_addr(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let v4 =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = u32::from_be(v4.sin_addr.s_addr).into();
            Some(SocketAddrV4::new(ip, u16::from_be(v4.sin_port)).into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let v6 =
                unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = v6.sin6_addr.s6_addr.into();
            let port = u16::from_be(v6.sin6_port);
            Some(SocketAddrV6::new(ip, port, v6.sin6_flowinfo, v6.sin6_scope_id).into())
        }
        _ => None,
    }
}

impl ClientSocket {
    /// The tokio socket, registered if it was not yet: whatever waits on it
    /// needs the driver, and what relays it for long (a request body, a
    /// tunnel) uses it directly rather than through this type.
    pub(crate) fn registered(&mut self) -> io::Result<&mut TcpStream> {
        // Whoever reads it from here on, this type does not see.
        self.drained = false;
        // Tested first: this runs on every poll of a registered socket, and
        // moving the socket out and back in costs more than the poll.
        if !matches!(self.state, State::Registered(_)) {
            let state = std::mem::replace(&mut self.state, State::Lost);
            self.state = State::Registered(state.into_registered()?);
        }
        match &mut self.state {
            State::Registered(socket) => Ok(socket),
            _ => Err(lost()),
        }
    }

    /// Sends small writes at once, on a system where the listener does not
    /// pass that on.
    pub(crate) fn set_nodelay(&self) {
        if let State::Direct(socket) = &self.state {
            let _ = socket.set_nodelay(true);
        }
    }

    /// The tokio socket, for a protocol that takes it over (HTTP/2).
    pub(crate) fn into_registered(self) -> io::Result<TcpStream> {
        self.state.into_registered()
    }

    /// Takes the socket back from the I/O driver, which frees what the
    /// driver keeps for it: a parked connection waits elsewhere. False when
    /// that failed, which closed the socket.
    pub(crate) fn unregister(&mut self) -> bool {
        self.state = match std::mem::replace(&mut self.state, State::Lost) {
            State::Registered(socket) => socket.into_std().map_or(State::Lost, State::Direct),
            other => other,
        };
        !matches!(self.state, State::Lost)
    }

    /// Nothing is left unread of what arrived before the last read.
    pub(crate) fn drained(&self) -> bool {
        self.drained
    }

    /// Something waits to be read: bytes, the end of the stream, or an
    /// error. Asks the kernel, without reading.
    pub(crate) fn has_input(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: recv writes at most one byte into `byte`.
        let n = unsafe {
            libc::recv(
                self.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
    }

    pub(crate) fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.registered() {
            Ok(socket) => socket.poll_read_ready(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Reads what has arrived on a socket not registered yet, without
    /// waiting (`WouldBlock` if nothing has); `None` once it is registered.
    /// A registered socket is read with `poll_read` instead: tokio's
    /// `try_read` leaves it marked readable after a read, so the wait for
    /// the next request would end at once and the connection would then wait
    /// inside a request's state rather than idle (or parked).
    pub(crate) fn read_unregistered(&mut self, buf: &mut BytesMut) -> Option<io::Result<usize>> {
        let State::Direct(socket) = &self.state else {
            return None;
        };
        let mut read = ReadBuf::uninit(buf.spare_capacity_mut());
        let done = recv(socket, &mut read);
        self.drained = read_drained(&done, &read);
        if let Err(e) = done {
            return Some(Err(e));
        }
        let n = read.filled().len();
        // SAFETY: recv initialised the first `n` spare bytes.
        unsafe { buf.set_len(buf.len() + n) };
        Some(Ok(n))
    }

    /// `op` on the unregistered socket; `None` when the socket is
    /// registered or `op` would block (then the caller registers and waits).
    fn direct<T>(
        &self,
        op: impl FnOnce(&std::net::TcpStream) -> io::Result<T>,
    ) -> Option<io::Result<T>> {
        let State::Direct(socket) = &self.state else {
            return None;
        };
        match op(socket) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            done => Some(done),
        }
    }

    fn with_registered<T>(
        &mut self,
        op: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match self.registered() {
            Ok(socket) => op(Pin::new(socket)),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// A read that ended short of its buffer, or would have blocked, left
/// nothing behind in the socket.
fn read_drained(done: &io::Result<()>, buf: &ReadBuf<'_>) -> bool {
    match done {
        Ok(()) => buf.remaining() > 0,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// One recv(2) into the unfilled part of `buf`.
fn recv(socket: &std::net::TcpStream, buf: &mut ReadBuf<'_>) -> io::Result<()> {
    loop {
        // SAFETY: recv writes at most `unfilled.len()` bytes into it and
        // says how many; only those are marked initialised.
        let n = unsafe {
            let unfilled = buf.unfilled_mut();
            libc::recv(
                socket.as_raw_fd(),
                unfilled.as_mut_ptr().cast(),
                unfilled.len(),
                0,
            )
        };
        match usize::try_from(n) {
            Ok(n) => {
                // SAFETY: see above.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                return Ok(());
            }
            Err(_) => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

impl AsRawFd for ClientSocket {
    fn as_raw_fd(&self) -> RawFd {
        match &self.state {
            State::Direct(socket) => socket.as_raw_fd(),
            State::Registered(socket) => socket.as_raw_fd(),
            State::Lost => -1,
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = match this.direct(|socket| recv(socket, buf)) {
            Some(done) => Poll::Ready(done),
            None => this.with_registered(|socket| socket.poll_read(cx, buf)),
        };
        this.drained = match &read {
            Poll::Ready(done) => read_drained(done, buf),
            // It would have blocked.
            Poll::Pending => true,
        };
        read
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(done) = this.direct(|mut socket| socket.write(buf)) {
            return Poll::Ready(done);
        }
        this.with_registered(|socket| socket.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(done) = this.direct(|mut socket| socket.write_vectored(bufs)) {
            return Poll::Ready(done);
        }
        this.with_registered(|socket| socket.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(done) = this.direct(|socket| socket.shutdown(Shutdown::Write)) {
            return Poll::Ready(done);
        }
        this.with_registered(|socket| socket.poll_shutdown(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn accepted() -> (ClientSocket, SocketAddr, tokio::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, addr) = accept(&listener).unwrap();
        (socket, addr, peer)
    }

    #[tokio::test]
    async fn a_request_already_sent_is_answered_without_registering() {
        let (mut socket, addr, mut peer) = accepted().await;
        assert_eq!(addr, peer.local_addr().unwrap());
        peer.write_all(b"ping").await.unwrap();
        let mut buf = BytesMut::with_capacity(64);
        // Until it arrives, nothing to read, and still not registered.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let read = loop {
            match socket.read_unregistered(&mut buf).expect("not registered") {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the request never came"
                    );
                    tokio::task::yield_now().await;
                }
                read => break read.unwrap(),
            }
        };
        assert_eq!(&buf[..read], b"ping");
        socket.write_all(b"pong").await.unwrap();
        socket.shutdown().await.unwrap();
        assert!(matches!(socket.state, State::Direct(_)));
        let mut answer = Vec::new();
        peer.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"pong");
    }

    #[tokio::test]
    async fn a_read_that_must_wait_registers_and_is_woken() {
        let (mut socket, _, mut peer) = accepted().await;
        let reader = tokio::spawn(async move {
            let mut buf = [0; 4];
            socket.read_exact(&mut buf).await.map(|_| (buf, socket))
        });
        tokio::task::yield_now().await;
        peer.write_all(b"late").await.unwrap();
        let (buf, socket) = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("the read was never woken")
            .unwrap()
            .unwrap();
        assert_eq!(&buf, b"late");
        assert!(matches!(socket.state, State::Registered(_)));
    }

    #[tokio::test]
    async fn a_write_that_must_wait_registers_and_finishes() {
        let (mut socket, _, mut peer) = accepted().await;
        // Far more than the socket buffers hold: the writer has to wait for the reader.
        let sent = vec![7u8; 32 << 20];
        let writer = tokio::spawn(async move { socket.write_all(&sent).await.map(|()| socket) });
        let mut got = vec![0; 32 << 20];
        peer.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 7));
        let socket = writer.await.unwrap().unwrap();
        assert!(matches!(socket.state, State::Registered(_)));
    }

    /// Waits until `socket` has input, or fails saying `what` never came.
    async fn input(socket: &ClientSocket, what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !socket.has_input() {
            assert!(std::time::Instant::now() < deadline, "{what} never came");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_read_that_fills_its_buffer_may_leave_input_behind() {
        let (mut socket, _, mut peer) = accepted().await;
        peer.write_all(b"0123456789").await.unwrap();
        input(&socket, "the bytes").await;
        let mut four = [0; 4];
        let n = socket.read(&mut four).await.unwrap();
        assert_eq!(n, 4);
        assert!(!socket.drained());
        assert!(socket.has_input());
        let mut rest = [0; 64];
        let n = socket.read(&mut rest).await.unwrap();
        assert_eq!(&rest[..n], b"456789");
        assert!(socket.drained());
        assert!(!socket.has_input());
        // The end of the stream is input too: it wakes a parked connection.
        drop(peer);
        input(&socket, "the close").await;
    }

    #[test]
    fn ipv6_peers_keep_their_address() {
        let listener = std::net::TcpListener::bind("[::1]:0");
        let Ok(listener) = listener else {
            return; // no IPv6 loopback on this machine
        };
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_, addr) = accept(&listener).unwrap();
        assert_eq!(addr, peer.local_addr().unwrap());
    }
}
