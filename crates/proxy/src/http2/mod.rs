//! HTTP/2 clients (h2c, prior knowledge), served by baton's own protocol
//! code; each stream goes to its target as HTTP/1.1 over the same pooled
//! connections the HTTP/1.1 path uses ([`exchange`]).
//!
//! Why not a general HTTP/2 crate: a proxy needs only the server side, and
//! only to turn each stream into an HTTP/1.1 exchange. So a request's
//! fields go from HPACK straight into the target's head with no header
//! map, a response's from the target's head straight into HPACK, and a
//! connection's streams are futures polled by the connection's own task,
//! with the frames they answer written in one go per round. That is most
//! of what a small request costs beyond the kernel.
//!
//! - `conn`: a client connection, frames in and out.
//! - `frame`, `hpack`: the wire format.
//! - `request`: a request's head, checked as RFC 9113 asks.
//! - `shared`: what a connection and its streams share (windows, queued frames).
//! - `out`: frames waiting to be written.
//! - `streams`: the set of a connection's open streams.
//! - `exchange`: one stream, from the client's request to the target and back.
//! - `body`: the response body, sent within HTTP/2 flow control.
//! - `keep_alive`: the idle timeout, and PINGs while streams are open.

mod body;
mod conn;
mod exchange;
mod frame;
mod hpack;
mod keep_alive;
mod out;
mod request;
mod shared;
mod streams;
#[cfg(test)]
mod tests;

use std::future::poll_fn;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::forwarded::Peer;
use crate::server::Listener;
use conn::{Connection, Ended};

/// Flow-control windows baton grants: the protocol's 64 KiB default would
/// hold a large upload to one window per round trip.
const WINDOW: u32 = 1024 * 1024;
/// Streams a client may have open at once.
const MAX_STREAMS: usize = 200;
/// Streams this side may reset for errors before it gives up on the client.
const MAX_LOCAL_RESETS: usize = 1024;
/// How long a closing connection's last frames (GOAWAY) may take to go out.
const LAST_WRITE: Duration = Duration::from_secs(1);

/// Serves an HTTP/2 client connection until it closes.
pub(crate) async fn serve<T>(listener: &Listener, io: T, peer: Peer)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let peer = &peer;
    let start = move |req, stream| {
        listener
            .forwarder
            .stream(&listener.routing, peer, req, stream)
    };
    let mut conn = Connection::new(io, listener.forwarder.timeouts.idle, start);
    match poll_fn(|cx| conn.poll(cx)).await {
        Ended::Closed => {}
        Ended::Error(e) => tracing::debug!(reason = e.0 .0, error = e.1, "HTTP/2 connection error"),
        Ended::Io(e) => tracing::debug!(error = %e, "HTTP/2 client connection failed"),
    }
    let _ = tokio::time::timeout(LAST_WRITE, conn.flush()).await;
}
