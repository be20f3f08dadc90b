//! Relays an upgraded connection (WebSocket or any other `Upgrade`) between
//! client and target, and closes it properly when a drain runs out of time.
//!
//! Why outside tokio's scheduler: a relay does little per message, one read
//! and one write, so what drives it weighs as much as the copy. A tunnel's
//! two sockets wait in the worker's own epoll set ([`Tunnels`]), and one
//! task per worker relays, in a batch, for every tunnel with a socket ready:
//! no task woken per message, no readiness kept in tokio's driver, no drain
//! token looked at. The connection's own task sleeps until its tunnel ends
//! or the drain runs out of time.
//!
//! Draining never cuts a tunnel: it lives until either side closes it. Only
//! when the drain timeout passes does the pool's `closing` token fire; then a
//! WebSocket gets a close frame (1001, going away) on both sides, sent between
//! two frames, and other protocols get a clean TCP shutdown.

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::client_socket::ClientSocket;
use crate::epoll::{self, Epoll, EpollOwner};
use crate::ws_frames::{close_frame_to_client, close_frame_to_server, FrameTracker};

/// Longest wait for a frame in progress to end, and for the peers to answer a close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
const BUF: usize = 16 * 1024;
/// Reads per direction before a tunnel lets the worker's other work go
/// first, as tokio's budget did for a task: a bulk transfer that never
/// runs dry would otherwise hold the worker.
const READS_PER_TURN: usize = 16;

/// One end of a tunnel: its connection, and bytes already read from it
/// (they followed the upgrade's head) that the other end has yet to get.
pub(crate) struct Side<'a, S> {
    io: S,
    pending: &'a [u8],
}

impl<'a, S> Side<'a, S> {
    pub(crate) fn new(io: S, pending: &'a [u8]) -> Self {
        Self { io, pending }
    }
}

/// Relays until both sides are done, or until `closing` fires (the pool's
/// drain timed out). The client's socket stays the caller's, to close.
pub(crate) async fn relay(
    tunnels: &Tunnels,
    client: Side<'_, &mut ClientSocket>,
    upstream: Side<'_, TcpStream>,
    closing: &CancellationToken,
    websocket: bool,
) {
    // Both sockets leave tokio's driver: they wait in the tunnels' set.
    let Ok(upstream_io) = upstream.io.into_std() else {
        return;
    };
    let client_io = client.io;
    if !client_io.unregister() {
        return;
    }
    let relay = Relay {
        client: Socket::new(client_io.as_raw_fd()),
        upstream: Socket::new(upstream_io.as_raw_fd()),
        up: Pump::new(client.pending),
        down: Pump::new(upstream.pending),
        ended: None,
        waiter: None,
        again: false,
    };
    // Declared after the sockets, so it leaves the set before they close.
    let open = match tunnels.open(relay) {
        Ok(open) => open,
        Err(e) => {
            tracing::debug!(error = %e, "cannot relay an upgraded connection");
            return;
        }
    };
    let mut closing = pin!(closing.cancelled());
    let end = poll_fn(|cx| match open.poll_end(cx) {
        Poll::Pending => closing.as_mut().poll(cx).map(|()| End::Closing),
        ended => ended,
    })
    .await;
    if end == End::Closing {
        if let Some(relay) = open.leave() {
            relay.close(client_io, upstream_io, websocket).await;
        }
    }
}

/// A worker's tunnels, relayed by one task as their sockets get ready.
pub(crate) struct Tunnels {
    /// Both sockets of each tunnel, keyed by its place in `open` and side.
    epoll: Epoll,
    open: Mutex<Slab>,
}

#[derive(Default)]
struct Slab {
    relays: Vec<Option<Relay>>,
    free: Vec<usize>,
    /// Tunnels that stopped with bytes still to move: no edge will come
    /// for those, so they go again on the next turn.
    again: Vec<usize>,
}

/// An event's key: the tunnel's place, and which of its sockets.
const CLIENT: u64 = 0;
const UPSTREAM: u64 = 1;

fn event_key(key: usize, side: u64) -> u64 {
    (key as u64) << 1 | side
}

impl Tunnels {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            open: Mutex::default(),
        })
    }

    /// Relays for every tunnel whose sockets are ready; runs on the worker's
    /// runtime for as long as it lives.
    pub(crate) fn relay_ready(self: Arc<Self>) -> impl Future<Output = ()> {
        epoll::serve(self, |tunnels, events| tunnels.on_events(events))
    }

    fn lock(&self) -> MutexGuard<'_, Slab> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts a relay's sockets in the set. Adding them reports what is ready
    /// already, so the first relaying (of the bytes pending) follows at once.
    fn open(&self, relay: Relay) -> io::Result<Open<'_>> {
        let (client, upstream) = (relay.client.fd, relay.upstream.fd);
        let open = Open {
            tunnels: self,
            key: self.lock().insert(relay),
        };
        // On failure, dropping `open` takes the relay out again.
        let interest = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP;
        self.epoll
            .add(client, interest, event_key(open.key, CLIENT))?;
        self.epoll
            .add(upstream, interest, event_key(open.key, UPSTREAM))?;
        Ok(open)
    }

    /// Relays for the tunnels `events` are for and those left over from
    /// the last turn; true when some have bytes left to move.
    fn on_events(&self, events: &[libc::epoll_event]) -> bool {
        let mut slab = self.lock();
        let Slab { relays, again, .. } = &mut *slab;
        let left_over = std::mem::take(again);
        let woken = events.iter().map(|event| {
            let key = usize::try_from(event.u64 >> 1).unwrap_or(usize::MAX);
            (key, Some((event.u64 & 1, event.events)))
        });
        for (key, event) in left_over.into_iter().map(|key| (key, None)).chain(woken) {
            let Some(Some(relay)) = relays.get_mut(key) else {
                continue;
            };
            match event {
                Some((side, events)) => relay.socket(side).note(events),
                None => relay.again = false,
            }
            if relay.relay() == Turn::Yielded && !relay.again {
                relay.again = true;
                again.push(key);
            }
        }
        !again.is_empty()
    }

    /// Takes the relay at `key` out, and its sockets out of the set.
    fn take(&self, key: usize) -> Option<Relay> {
        let mut slab = self.lock();
        let relay = slab.relays.get_mut(key)?.take()?;
        slab.free.push(key);
        self.epoll.remove(relay.client.fd);
        self.epoll.remove(relay.upstream.fd);
        Some(relay)
    }
}

impl EpollOwner for Tunnels {
    fn epoll(&self) -> &Epoll {
        &self.epoll
    }
}

impl Slab {
    fn insert(&mut self, relay: Relay) -> usize {
        match self.free.pop() {
            Some(key) => {
                self.relays[key] = Some(relay);
                key
            }
            None => {
                self.relays.push(Some(relay));
                self.relays.len() - 1
            }
        }
    }
}

/// A relay in the set, for as long as its connection's task holds this.
struct Open<'a> {
    tunnels: &'a Tunnels,
    key: usize,
}

impl Open<'_> {
    /// How the relay ended, once it has; until then the task is woken
    /// when it does.
    fn poll_end(&self, cx: &mut Context<'_>) -> Poll<End> {
        let mut slab = self.tunnels.lock();
        let Some(Some(relay)) = slab.relays.get_mut(self.key) else {
            return Poll::Ready(End::Failed);
        };
        if let Some(end) = relay.ended {
            return Poll::Ready(end);
        }
        if !relay
            .waiter
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            relay.waiter = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Takes the relay out of the set, to finish it in the task.
    fn leave(self) -> Option<Relay> {
        self.tunnels.take(self.key)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        drop(self.tunnels.take(self.key));
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Both sides closed their half.
    Done,
    /// A read or write failed; closing the connections is all that is left.
    Failed,
    /// The drain ran out of time.
    Closing,
}

/// A tunnel's state between its sockets' events.
struct Relay {
    client: Socket,
    upstream: Socket,
    /// Client to target, and target to client.
    up: Pump,
    down: Pump,
    /// Set once relaying is over.
    ended: Option<End>,
    /// The connection's task, woken when relaying is over.
    waiter: Option<Waker>,
    /// It is in the slab's `again`.
    again: bool,
}

/// Where a turn of relaying left a direction (or a tunnel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// It waits for an edge: nothing to read, or no room to write.
    Blocked,
    /// It spent its turn with bytes still to move.
    Yielded,
    /// The end of its stream has been passed on.
    Done,
}

impl Relay {
    /// The socket on `side` (of an event's key).
    fn socket(&mut self, side: u64) -> &mut Socket {
        if side == CLIENT {
            &mut self.client
        } else {
            &mut self.upstream
        }
    }

    /// Relays what can go now; the connection's task is woken if that
    /// ended the tunnel.
    fn relay(&mut self) -> Turn {
        if self.ended.is_some() {
            return Turn::Blocked;
        }
        // Both directions each time, so one that cannot write (its reader
        // is slow) never stops the other.
        let up = self.up.relay(&mut self.client, &mut self.upstream);
        let down = self.down.relay(&mut self.upstream, &mut self.client);
        self.ended = match (up, down) {
            (Err(_), _) | (_, Err(_)) => Some(End::Failed),
            (Ok(Turn::Done), Ok(Turn::Done)) => Some(End::Done),
            (Ok(Turn::Yielded), _) | (_, Ok(Turn::Yielded)) => return Turn::Yielded,
            _ => return Turn::Blocked,
        };
        if let Some(waiter) = self.waiter.take() {
            waiter.wake();
        }
        Turn::Done
    }

    /// Back in the task's hands after `closing` fired: closes a WebSocket
    /// with close frames, then shuts both sockets down.
    async fn close(
        mut self,
        client: &mut ClientSocket,
        upstream: std::net::TcpStream,
        websocket: bool,
    ) {
        let (Ok(client), Ok(mut upstream)) = (client.registered(), TcpStream::from_std(upstream))
        else {
            return;
        };
        if websocket {
            let _ = tokio::time::timeout(
                CLOSE_GRACE,
                close_websocket(client, &mut upstream, &mut self.up, &mut self.down),
            )
            .await;
        }
        let _ = client.shutdown().await;
        let _ = upstream.shutdown().await;
    }
}

/// One of a tunnel's sockets, and what its last events and calls said of it.
/// Both start false: adding to the set reports what is ready.
struct Socket {
    fd: RawFd,
    readable: bool,
    writable: bool,
    /// The peer closed its half (or the connection broke): reads go on to
    /// the end, as no further edge will say it is there.
    hung_up: bool,
}

impl Socket {
    fn new(fd: RawFd) -> Self {
        Self {
            fd,
            readable: false,
            writable: false,
            hung_up: false,
        }
    }

    fn note(&mut self, events: u32) {
        let events = events as libc::c_int;
        if events & (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
            self.hung_up = true;
        }
        if events & libc::EPOLLIN != 0 || self.hung_up {
            self.readable = true;
        }
        if events & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
            self.writable = true;
        }
    }

    /// Reads into `buf`; `None` when nothing is there.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let n =
            nonblocking(|| unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) })?;
        // Empty, or emptied by a short read: the next arrival brings an edge.
        if n.is_none_or(|n| n > 0 && n < buf.len() && !self.hung_up) {
            self.readable = false;
        }
        Ok(n)
    }

    /// Writes from `data`; `None` when there is no room.
    fn send(&mut self, data: &[u8]) -> io::Result<Option<usize>> {
        // SAFETY: send reads at most `data.len()` bytes of `data`.
        let n = nonblocking(|| unsafe {
            libc::send(
                self.fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL,
            )
        })?;
        if n == Some(0) {
            return Err(io::ErrorKind::WriteZero.into());
        }
        // Full, or filled by a short write: room brings an edge.
        if n.is_none_or(|n| n < data.len()) {
            self.writable = false;
        }
        Ok(n)
    }

    /// Passes the end of the other direction on: a half-close.
    fn shut_write(&self) -> io::Result<()> {
        // SAFETY: plain system call on an open socket.
        if unsafe { libc::shutdown(self.fd, libc::SHUT_WR) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A non-blocking call's byte count, `None` when it would block; retried
/// when a signal interrupts it.
fn nonblocking(mut call: impl FnMut() -> isize) -> io::Result<Option<usize>> {
    loop {
        if let Ok(n) = usize::try_from(call()) {
            return Ok(Some(n));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// One direction of the relay: reads from one side into its buffer and
/// writes that to the other side, then reads again.
struct Pump {
    buf: Box<[u8]>,
    /// What `buf[written..read]` holds is read and not written yet.
    written: usize,
    read: usize,
    frames: FrameTracker,
    /// The reading side has closed its half.
    eof: bool,
    /// ... and the writing side has been told.
    done: bool,
}

impl Pump {
    /// A pump whose first bytes to write are `pending`.
    fn new(pending: &[u8]) -> Self {
        let mut buf = vec![0u8; BUF.max(pending.len())].into_boxed_slice();
        buf[..pending.len()].copy_from_slice(pending);
        let mut frames = FrameTracker::default();
        frames.advance(pending, false);
        Self {
            buf,
            written: 0,
            read: pending.len(),
            frames,
            eof: false,
            done: false,
        }
    }

    /// Moves bytes until neither side can go on, or for a turn's reads.
    fn relay(&mut self, from: &mut Socket, to: &mut Socket) -> io::Result<Turn> {
        let mut reads = 0;
        loop {
            if self.done {
                return Ok(Turn::Done);
            }
            if self.written < self.read {
                if !to.writable {
                    return Ok(Turn::Blocked);
                }
                match to.send(&self.buf[self.written..self.read])? {
                    Some(n) => self.written += n,
                    None => return Ok(Turn::Blocked),
                }
            } else if self.eof {
                to.shut_write()?;
                self.done = true;
            } else {
                if !from.readable {
                    return Ok(Turn::Blocked);
                }
                if reads == READS_PER_TURN {
                    return Ok(Turn::Yielded);
                }
                reads += 1;
                let Some(n) = from.recv(&mut self.buf)? else {
                    return Ok(Turn::Blocked);
                };
                self.frames.advance(&self.buf[..n], false);
                (self.written, self.read, self.eof) = (0, n, n == 0);
            }
        }
    }

    /// Writes what is buffered, then relays only up to the end of the frame
    /// in progress.
    async fn finish_frame<R, W>(&mut self, from: &mut R, to: &mut W) -> io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        to.write_all(&self.buf[self.written..self.read]).await?;
        self.written = self.read;
        while !self.eof && !self.frames.at_boundary() {
            let n = from.read(&mut self.buf).await?;
            if n == 0 {
                self.eof = true;
                break;
            }
            let keep = self.frames.advance(&self.buf[..n], true);
            to.write_all(&self.buf[..keep]).await?;
        }
        Ok(())
    }
}

/// Finishes the frames in progress, sends each side a close frame, then
/// reads (and drops) what comes back until both sides have closed.
async fn close_websocket<C, U>(
    client: &mut C,
    upstream: &mut U,
    up: &mut Pump,
    down: &mut Pump,
) -> std::io::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    down.finish_frame(upstream, client).await?;
    up.finish_frame(client, upstream).await?;
    if !down.eof {
        client.write_all(&close_frame_to_client()).await?;
        client.flush().await?;
    }
    if !up.eof {
        upstream.write_all(&close_frame_to_server(mask())).await?;
        upstream.flush().await?;
    }
    let (mut from_client, mut from_upstream) = ([0u8; 1024], [0u8; 1024]);
    while !(up.eof && down.eof) {
        tokio::select! {
            r = client.read(&mut from_client), if !up.eof => up.eof = !matches!(r, Ok(n) if n > 0),
            r = upstream.read(&mut from_upstream), if !down.eof => down.eof = !matches!(r, Ok(n) if n > 0),
        }
    }
    Ok(())
}

/// A masking key; RFC 6455 wants it unpredictable, not secret.
fn mask() -> [u8; 4] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0x5eed_1234);
    (nanos ^ std::process::id().rotate_left(16)).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// Both ends of a loopback TCP connection.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap());
        let (far, near) = tokio::join!(far, listener.accept());
        (far.unwrap(), near.unwrap().0)
    }

    /// A client and the proxy's side of its connection, as a listener
    /// accepts it.
    async fn client_connection() -> (TcpStream, ClientSocket) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = crate::client_socket::accept(&listener).unwrap();
        (client, accepted)
    }

    /// A worker's tunnels, relayed on this runtime.
    fn tunnels() -> Arc<Tunnels> {
        let tunnels = Arc::new(Tunnels::new().unwrap());
        tokio::spawn(tunnels.clone().relay_ready());
        tunnels
    }

    fn relays_open(tunnels: &Tunnels) -> usize {
        tunnels.lock().relays.iter().flatten().count()
    }

    /// Runs a tunnel between the two in a task of its own, counting how
    /// often that task is polled.
    fn spawn_relay(
        tunnels: &Arc<Tunnels>,
        mut client: ClientSocket,
        pending: &'static [u8],
        target: TcpStream,
        closing: CancellationToken,
    ) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let (tunnels, counted) = (tunnels.clone(), polls.clone());
        let task = tokio::spawn(async move {
            let sides = (Side::new(&mut client, pending), Side::new(target, b""));
            let mut relay = pin!(relay(&tunnels, sides.0, sides.1, &closing, false));
            poll_fn(|cx| {
                counted.fetch_add(1, Ordering::Relaxed);
                relay.as_mut().poll(cx)
            })
            .await
        });
        (task, polls)
    }

    #[tokio::test]
    async fn a_tunnel_relays_without_waking_its_task() {
        const ROUND_TRIPS: usize = 1000;
        let tunnels = tunnels();
        let (mut client, client_side) = client_connection().await;
        let (target_side, mut target) = connected().await;
        let closing = CancellationToken::new();
        let (relay, polls) = spawn_relay(&tunnels, client_side, b"hi", target_side, closing);
        // The target echoes until the client is done, then is done too.
        let echo = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                let n = target.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                target.write_all(&buf[..n]).await?;
            }
            target.shutdown().await?;
            io::Result::Ok(got)
        });
        let mut back = [0u8; 2];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hi", "the bytes read with the upgrade go first");
        for i in 0..ROUND_TRIPS {
            client.write_all(&[i as u8]).await.unwrap();
            let mut byte = [0u8];
            client.read_exact(&mut byte).await.unwrap();
            assert_eq!(byte[0], i as u8);
        }
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the target's half-close came through");
        let got = echo.await.unwrap().unwrap();
        assert_eq!(got.len(), 2 + ROUND_TRIPS);
        tokio::time::timeout(Duration::from_secs(10), relay)
            .await
            .expect("the tunnel did not end when both sides had")
            .unwrap();
        // Polled as it opened and as it ended: not once per message.
        let polls = polls.load(Ordering::Relaxed);
        assert!(polls <= 4, "the tunnel's task was polled {polls} times");
        assert_eq!(relays_open(&tunnels), 0, "the relay left the set");
    }

    #[tokio::test]
    async fn a_tunnel_is_shut_down_when_its_drain_runs_out_of_time() {
        let tunnels = tunnels();
        let (mut client, client_side) = client_connection().await;
        let (target_side, mut target) = connected().await;
        let closing = CancellationToken::new();
        let (relay, _) = spawn_relay(&tunnels, client_side, b"", target_side, closing.clone());
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        target.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        closing.cancel();
        let ends = async {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let (from_client, from_target) =
                tokio::join!(client.read_to_end(&mut a), target.read_to_end(&mut b));
            (from_client.map(|_| a), from_target.map(|_| b))
        };
        let (client_got, target_got) = tokio::time::timeout(Duration::from_secs(10), ends)
            .await
            .expect("the tunnel was not shut down");
        assert!(client_got.unwrap().is_empty());
        assert!(target_got.unwrap().is_empty());
        relay.await.unwrap();
        assert_eq!(relays_open(&tunnels), 0, "the relay left the set");
    }

    fn set_buffer(socket: &impl AsRawFd, option: libc::c_int, bytes: libc::c_int) {
        let set = crate::server::set_option(socket, libc::SOL_SOCKET, option, bytes);
        assert!(set, "{}", io::Error::last_os_error());
    }

    fn unread(socket: &impl AsRawFd) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int.
        let asked = unsafe { libc::ioctl(socket.as_raw_fd(), libc::FIONREAD, &mut n) };
        assert_eq!(asked, 0, "{}", io::Error::last_os_error());
        usize::try_from(n).unwrap()
    }

    /// Waits until `socket` holds `bytes` unread.
    async fn all_arrived(socket: &impl AsRawFd, bytes: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while unread(socket) < bytes {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bytes did not arrive"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_tunnel_that_gave_way_goes_on_without_a_new_edge() {
        const SENT: usize = 1 << 20;
        let tunnels = tunnels();
        let (mut client, client_side) = client_connection().await;
        let (target_side, mut target) = connected().await;
        // All of it waits before the tunnel opens, and the target's side
        // never fills: no edge comes after the first ones.
        set_buffer(&client_side, libc::SO_RCVBUF, 4 << 20);
        set_buffer(&target_side, libc::SO_SNDBUF, 4 << 20);
        client.write_all(&vec![7; SENT]).await.unwrap();
        client.shutdown().await.unwrap();
        all_arrived(&client_side, SENT).await;
        let closing = CancellationToken::new();
        let (_relay, _) = spawn_relay(&tunnels, client_side, b"", target_side, closing);
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), target.read_to_end(&mut got))
            .await
            .expect("the tunnel stopped after its turn")
            .unwrap();
        assert_eq!(got.len(), SENT);
    }

    #[tokio::test]
    async fn a_bulk_transfer_gives_the_worker_back_after_its_turn() {
        const SENT: usize = 1 << 20;
        let (mut feeder, source) = connected().await;
        let (dest, _sink) = connected().await;
        // Room for all of it on the way in, and for a turn's reads on the way out.
        set_buffer(&source, libc::SO_RCVBUF, 4 << 20);
        set_buffer(&dest, libc::SO_SNDBUF, 4 << 20);
        feeder.write_all(&vec![7; SENT]).await.unwrap();
        all_arrived(&source, SENT).await;
        let mut from = Socket::new(source.as_raw_fd());
        let mut to = Socket::new(dest.as_raw_fd());
        (from.readable, to.writable) = (true, true);
        let mut pump = Pump::new(b"");
        assert_eq!(pump.relay(&mut from, &mut to).unwrap(), Turn::Yielded);
        assert_eq!(unread(&source), SENT - READS_PER_TURN * BUF);
        assert!(from.readable, "it stopped with bytes still there");
    }

    #[tokio::test]
    async fn a_direction_that_cannot_write_does_not_stop_the_other() {
        // More than loopback's socket buffers hold on the way, both ways.
        const SIZE: usize = 64 << 20;
        let tunnels = tunnels();
        let (client, client_side) = client_connection().await;
        let (target_side, target) = connected().await;
        let closing = CancellationToken::new();
        let (relay, _) = spawn_relay(&tunnels, client_side, b"", target_side, closing);
        // The target sends all it has before it reads anything: a relay that
        // waits for one direction's write before reading the other stalls.
        let target = async move {
            let (mut from_client, mut to_client) = target.into_split();
            to_client.write_all(&vec![1; SIZE]).await?;
            to_client.shutdown().await?;
            let mut got = Vec::new();
            from_client.read_to_end(&mut got).await?;
            io::Result::Ok(got.len())
        };
        let client = async move {
            let (mut from_target, mut to_target) = client.into_split();
            let send = async {
                to_target.write_all(&vec![2; SIZE]).await?;
                to_target.shutdown().await
            };
            let mut got = Vec::new();
            let (sent, received) = tokio::join!(send, from_target.read_to_end(&mut got));
            sent?;
            received
        };
        let everything = async { tokio::join!(relay, target, client) };
        let (relayed, target_got, client_got) =
            tokio::time::timeout(Duration::from_secs(60), everything)
                .await
                .expect("the relay stalled");
        relayed.unwrap();
        assert_eq!(target_got.unwrap(), SIZE);
        assert_eq!(client_got.unwrap(), SIZE);
    }
}
