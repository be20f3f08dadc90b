//! HTTP/2 clients (h2c, prior knowledge): the `h2` crate speaks the
//! protocol, and each stream goes to its target as HTTP/1.1 over the same
//! pooled connections the HTTP/1.1 path uses ([`exchange`]).
//!
//! A connection's streams are polled by the connection's own task rather
//! than a task each: a stream is a future in the connection's [`Streams`],
//! woken by its target's socket. That saves a spawn, a scheduling round and
//! the moves of a large future per request, which is most of what a tiny
//! request costs beyond HPACK and the kernel.
//!
//! - `exchange`: one stream, from the client's request to the target and back.
//! - `body`: the response body, and sending it within HTTP/2 flow control.
//! - `streams`: the set of a connection's open streams.

mod body;
mod exchange;
mod streams;

use std::future::poll_fn;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::server::Connection;
use h2::{Ping, PingPong, Reason};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

use crate::forwarded::Peer;
use crate::server::Listener;
use streams::Streams;

/// Flow-control windows: the protocol's 64 KiB default would hold a large
/// upload to one window per round trip.
const WINDOW: u32 = 1024 * 1024;
/// Streams a client may have open at once.
const MAX_STREAMS: u32 = 200;
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Response data queued per stream before its body is read further.
const MAX_SEND_BUFFER: usize = 400 * 1024;
/// Streams this side may reset for errors before it gives up on the client.
const MAX_LOCAL_RESETS: usize = 1024;

/// Serves an HTTP/2 client connection until it closes.
pub(crate) async fn serve<T>(listener: &Listener, io: T, peer: Peer)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .handshake::<_, Bytes>(io)
        .await;
    let mut conn = match handshake {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    let mut keep_alive = KeepAlive::new(listener.forwarder.timeouts.idle, conn.ping_pong());
    let mut streams = Streams::new();
    let mut accepted = 0u64;
    let peer = &peer;
    let ended = poll_fn(|cx| loop {
        // Streams first, so what they answered goes out in this round's write.
        streams.poll(cx);
        keep_alive.poll(cx, &mut conn, !streams.is_empty(), accepted);
        match conn.poll_accept(cx) {
            Poll::Ready(Some(Ok((req, respond)))) => {
                accepted += 1;
                streams.push(
                    listener
                        .forwarder
                        .stream(&listener.routing, peer, req, respond),
                );
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
            Poll::Ready(None) => return Poll::Ready(Ok(())),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await;
    if let Err(e) = ended {
        tracing::debug!(error = %e, "HTTP/2 client connection ended with an error");
    }
}

/// The idle timeout, and a check that a client with open streams is still
/// there. Every half of the idle timeout it looks at the connection: two
/// looks in a row with no stream open or begun close it gracefully
/// (GOAWAY), so an idle connection lasts between one and one and a half
/// idle timeouts. While streams are open it sends a PING; one still
/// unanswered at the next look ends the connection, whose streams would
/// otherwise wait on a client that is gone.
struct KeepAlive {
    tick: Interval,
    pings: Option<PingPong>,
    awaiting_pong: bool,
    quiet_looks: u8,
    accepted_at_last_look: u64,
}

impl KeepAlive {
    fn new(idle: Duration, pings: Option<PingPong>) -> Self {
        let every = idle / 2;
        let mut tick = interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            tick,
            pings,
            awaiting_pong: false,
            quiet_looks: 0,
            accepted_at_last_look: 0,
        }
    }

    /// Looks at the connection when a look is due. Polls the tick until it
    /// is pending, which is what schedules the next wake-up.
    fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection<T, Bytes>,
        open: bool,
        accepted: u64,
    ) where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        while self.tick.poll_tick(cx).is_ready() {
            match self.look(cx, open, accepted) {
                Verdict::Keep => {}
                Verdict::GoAway => conn.graceful_shutdown(),
                Verdict::Close => {
                    tracing::debug!("HTTP/2 client did not answer a PING; closing");
                    conn.abrupt_shutdown(Reason::NO_ERROR);
                }
            }
        }
    }

    fn look(&mut self, cx: &mut Context<'_>, open: bool, accepted: u64) -> Verdict {
        let quiet = !open && accepted == self.accepted_at_last_look;
        self.accepted_at_last_look = accepted;
        self.quiet_looks = if quiet {
            self.quiet_looks.saturating_add(1)
        } else {
            0
        };
        if let Some(pings) = &mut self.pings {
            if self.awaiting_pong {
                match pings.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => self.awaiting_pong = false,
                    Poll::Ready(Err(_)) => return Verdict::Keep, // the connection is ending
                    Poll::Pending => return Verdict::Close,
                }
            }
            if open {
                self.awaiting_pong = pings.send_ping(Ping::opaque()).is_ok();
            }
        }
        if self.quiet_looks == 2 {
            Verdict::GoAway
        } else {
            Verdict::Keep
        }
    }
}

/// What a look at the connection calls for.
enum Verdict {
    Keep,
    /// Idle: ask the client to go, letting open streams finish.
    GoAway,
    /// A PING went unanswered: the client is gone.
    Close,
}
