//! The WebSocket echo session that runs on an upgraded connection.
//!
//! It answers each text message `M` with `"{version}:{M}"` (so a test can see
//! which colour is serving a long-lived connection), echoes binary messages,
//! answers pings, and completes the closing handshake. When the server
//! drains it says goodbye with close code 1001 instead of being cut off.

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app::App;
use crate::ws::{self, close_code, Event, Frame, Opcode, WsError};

/// The upgraded connection as a tokio stream.
type Io = TokioIo<Upgraded>;

/// What to do after handling a batch of frames.
enum Flow {
    /// Keep reading.
    Continue,
    /// The session is over (close handshake done or protocol error answered).
    Done,
}

/// Runs the echo session until the peer closes, errs, or the server drains.
pub(crate) async fn run(upgraded: Upgraded, app: Arc<App>) {
    let mut io = TokioIo::new(upgraded);
    if let Err(e) = echo_loop(&mut io, &app).await {
        // Peers vanishing mid-session is normal for a test service.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("sample-app: websocket session ended: {e}");
        }
    }
    let _ = io.shutdown().await;
}

/// Reads frames and reacts to them; returns on close, EOF or drain.
async fn echo_loop(io: &mut Io, app: &App) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut assembler = ws::Assembler::new(ws::MAX_PAYLOAD);
    let draining = app.draining();
    tokio::pin!(draining);
    loop {
        if let Flow::Done = process_buffered(io, app, &mut buf, &mut assembler).await? {
            return Ok(());
        }
        tokio::select! {
            read = io.read_buf(&mut buf) => {
                if read? == 0 {
                    return Ok(());
                }
            }
            () = &mut draining => {
                let bye = Frame::close(close_code::GOING_AWAY, "server shutting down");
                return send(io, &bye).await;
            }
        }
    }
}

/// Handles every complete frame currently in `buf`.
async fn process_buffered(
    io: &mut Io,
    app: &App,
    buf: &mut BytesMut,
    assembler: &mut ws::Assembler,
) -> std::io::Result<Flow> {
    loop {
        let frame = match ws::decode(buf, ws::MAX_PAYLOAD, true) {
            Ok(Some((frame, used))) => {
                buf.advance(used);
                frame
            }
            Ok(None) => return Ok(Flow::Continue),
            Err(e) => return reject(io, &e).await,
        };
        let event = match assembler.push(frame) {
            Ok(Some(event)) => event,
            Ok(None) => continue,
            Err(e) => return reject(io, &e).await,
        };
        if let Flow::Done = respond(io, app, event).await? {
            return Ok(Flow::Done);
        }
    }
}

/// Sends the answer for one complete event.
async fn respond(io: &mut Io, app: &App, event: Event) -> std::io::Result<Flow> {
    let reply = match event {
        Event::Text(text) => Frame::new(Opcode::Text, format!("{}:{text}", app.version())),
        Event::Binary(data) => Frame::new(Opcode::Binary, data),
        Event::Ping(data) => Frame::new(Opcode::Pong, data),
        Event::Pong => return Ok(Flow::Continue),
        Event::Close(payload) => {
            send(io, &Frame::new(Opcode::Close, close_echo(payload))).await?;
            return Ok(Flow::Done);
        }
    };
    send(io, &reply).await?;
    Ok(Flow::Continue)
}

/// The payload to echo for a close: the peer's status code, or 1000.
fn close_echo(payload: Vec<u8>) -> Vec<u8> {
    match payload.get(..2) {
        Some(code) => code.to_vec(),
        None => close_code::NORMAL.to_be_bytes().to_vec(),
    }
}

/// Tells the peer why the session ends, then ends it.
async fn reject(io: &mut Io, err: &WsError) -> std::io::Result<Flow> {
    send(io, &Frame::close(err.close_code(), &err.to_string())).await?;
    Ok(Flow::Done)
}

/// Writes one unmasked server frame.
async fn send(io: &mut Io, frame: &Frame) -> std::io::Result<()> {
    io.write_all(&ws::encode(frame, None)).await?;
    io.flush().await
}
