//! Relays an upgraded connection (WebSocket or any other `Upgrade`) between
//! client and target, and closes it properly when a drain runs out of time.
//!
//! Draining never cuts a tunnel: it lives until either side closes it. Only
//! when the drain timeout passes does the pool's `closing` token fire; then a
//! WebSocket gets a close frame (1001, going away) on both sides, sent between
//! two frames, and other protocols get a clean TCP shutdown.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::target::Upgraded;
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

/// Relays until both sides are done, or until the pool's drain times out.
pub(crate) async fn relay<C, U>(
    client: Side<'_, C>,
    upstream: Side<'_, U>,
    hold: Upgraded,
    websocket: bool,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client, client_pending) = (client.io, client.pending);
    let (mut upstream, upstream_pending) = (upstream.io, upstream.pending);
    let mut up = Direction::default();
    let mut down = Direction::default();
    let passed = up.pass_on(client_pending, &mut upstream).await;
    if passed.is_err() || down.pass_on(upstream_pending, &mut client).await.is_err() {
        return;
    }
    let closing = hold.closing().clone();
    // One waiter for the whole relay, not a new one per read.
    let mut closing = std::pin::pin!(closing.cancelled_owned());
    let mut cbuf = vec![0u8; BUF];
    let mut ubuf = vec![0u8; BUF];

    while !(up.eof && down.eof) {
        tokio::select! {
            r = client.read(&mut cbuf), if !up.eof => {
                if up.forward(r, &cbuf, &mut upstream).await.is_err() { return; }
            }
            r = upstream.read(&mut ubuf), if !down.eof => {
                if down.forward(r, &ubuf, &mut client).await.is_err() { return; }
            }
            _ = &mut closing => {
                if websocket {
                    let _ = tokio::time::timeout(
                        CLOSE_GRACE,
                        close_websocket(&mut client, &mut upstream, &mut up, &mut down),
                    ).await;
                }
                let _ = client.shutdown().await;
                let _ = upstream.shutdown().await;
                return;
            }
        }
    }
    drop(hold);
}

/// One direction of the relay.
#[derive(Default)]
struct Direction {
    frames: FrameTracker,
    eof: bool,
}

impl Direction {
    /// Writes what was read to the other side; on EOF, passes the half-close on.
    async fn forward<W: AsyncWrite + Unpin>(
        &mut self,
        read: std::io::Result<usize>,
        buf: &[u8],
        to: &mut W,
    ) -> std::io::Result<()> {
        let n = read?;
        if n == 0 {
            self.eof = true;
            return to.shutdown().await;
        }
        self.frames.advance(&buf[..n], false);
        to.write_all(&buf[..n]).await
    }

    /// Writes bytes read before the tunnel began to the other side.
    async fn pass_on<W: AsyncWrite + Unpin>(
        &mut self,
        bytes: &[u8],
        to: &mut W,
    ) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.forward(Ok(bytes.len()), bytes, to).await
    }

    /// Relays only up to the end of the frame in progress.
    async fn finish_frame<R, W>(&mut self, from: &mut R, to: &mut W) -> std::io::Result<()>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = vec![0u8; BUF];
        while !self.eof && !self.frames.at_boundary() {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                self.eof = true;
                break;
            }
            let keep = self.frames.advance(&buf[..n], true);
            to.write_all(&buf[..keep]).await?;
        }
        Ok(())
    }
}

/// Finishes the frames in progress, sends each side a close frame, then
/// reads (and drops) what comes back until both sides have closed.
async fn close_websocket<C, U>(
    client: &mut C,
    upstream: &mut U,
    up: &mut Direction,
    down: &mut Direction,
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
