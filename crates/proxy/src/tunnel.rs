//! Relays an upgraded connection (WebSocket or any other `Upgrade`) between
//! client and target, and closes it properly when a drain runs out of time.
//!
//! Draining never cuts a tunnel: it lives until either side closes it. Only
//! when the drain timeout passes does the pool's `closing` token fire; then a
//! WebSocket gets a close frame (1001, going away) on both sides, sent between
//! two frames, and other protocols get a clean TCP shutdown.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::ws_frames::{close_frame_to_client, close_frame_to_server, FrameTracker};

/// Longest wait for a frame in progress to end, and for the peers to answer a close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
const BUF: usize = 16 * 1024;

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
/// drain timed out).
pub(crate) async fn relay<C, U>(
    client: Side<'_, C>,
    upstream: Side<'_, U>,
    closing: &CancellationToken,
    websocket: bool,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Pump::new(client.pending);
    let mut down = Pump::new(upstream.pending);
    let (mut client, mut upstream) = (client.io, upstream.io);
    // One waiter for the whole relay, not a new one per read.
    let mut closing = pin!(closing.cancelled());
    // Both directions are polled each time the task wakes, so one that
    // cannot write (its reader is slow) never stops the other.
    let ended = poll_fn(|cx| {
        if closing.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Closing);
        }
        let up_done = match up.poll(cx, &mut client, &mut upstream) {
            Poll::Ready(Err(_)) => return Poll::Ready(End::Failed),
            p => p.is_ready(),
        };
        let down_done = match down.poll(cx, &mut upstream, &mut client) {
            Poll::Ready(Err(_)) => return Poll::Ready(End::Failed),
            p => p.is_ready(),
        };
        if up_done && down_done {
            Poll::Ready(End::Done)
        } else {
            Poll::Pending
        }
    })
    .await;
    if let End::Closing = ended {
        if websocket {
            let _ = tokio::time::timeout(
                CLOSE_GRACE,
                close_websocket(&mut client, &mut upstream, &mut up, &mut down),
            )
            .await;
        }
        let _ = client.shutdown().await;
        let _ = upstream.shutdown().await;
    }
}

/// How a relay ended.
enum End {
    /// Both sides closed their half.
    Done,
    /// A read or write failed; dropping the connections closes them.
    Failed,
    /// The drain ran out of time.
    Closing,
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

    /// Moves bytes until neither side can go on; ready once the reading
    /// side's EOF has been passed on as a half-close.
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, from: &mut R, to: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.written < self.read {
                let chunk = &self.buf[self.written..self.read];
                let n = ready!(Pin::new(&mut *to).poll_write(cx, chunk))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.written += n;
            } else if self.eof {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
            } else {
                let mut read = ReadBuf::new(&mut self.buf);
                ready!(Pin::new(&mut *from).poll_read(cx, &mut read))?;
                let n = read.filled().len();
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
    use tokio::net::{TcpListener, TcpStream};

    /// Both ends of a loopback TCP connection.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap());
        let (far, near) = tokio::join!(far, listener.accept());
        (far.unwrap(), near.unwrap().0)
    }

    #[tokio::test]
    async fn a_direction_that_cannot_write_does_not_stop_the_other() {
        // More than loopback's socket buffers hold on the way, both ways.
        const SIZE: usize = 64 << 20;
        let (client, client_side) = connected().await;
        let (target_side, target) = connected().await;
        let closing = CancellationToken::new();
        let relay = relay(
            Side::new(client_side, b""),
            Side::new(target_side, b""),
            &closing,
            false,
        );
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
        let ((), target_got, client_got) =
            tokio::time::timeout(Duration::from_secs(60), everything)
                .await
                .expect("the relay stalled");
        assert_eq!(target_got.unwrap(), SIZE);
        assert_eq!(client_got.unwrap(), SIZE);
    }
}
