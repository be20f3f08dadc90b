//! One HTTP/2 client connection (RFC 9113): frames in, streams started,
//! frames out, all in the connection's own task.
//!
//! Each round reads what the socket has, handles every whole frame in it
//! (a request's HEADERS start its stream's future, DATA goes to its
//! stream), polls the streams that have something new, and writes what
//! they answered in one go. Errors the RFC scopes to a stream reset that
//! stream; the others end the connection with GOAWAY.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{self, flag, kind, setting, Head, Reason};
use super::hpack::Decoder;
use super::keep_alive::{KeepAlive, Verdict};
use super::request::{self, Builder, Request, Trailers};
use super::shared::{ConnError, Shared, State, StreamIo, OUT_HIGH};
use super::streams::Streams;
use super::{MAX_LOCAL_RESETS, MAX_STREAMS, WINDOW};

/// What a client sends first (§3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Reads from the client are at least this large.
const READ_SIZE: usize = 16 * 1024;
/// A header block split over CONTINUATION frames may grow to this.
const MAX_BLOCK: usize = 4 * request::MAX_HEADER_LIST;
/// Client resets beyond this, and beyond half the streams it opened, are
/// a flood (CVE-2023-44487): each one costs a stream's start for nothing.
const MAX_CLIENT_RESETS: u64 = 1000;

/// How a connection ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// The client closed it, or it went away and its streams are done.
    Closed,
    /// GOAWAY was written with this reason.
    Error(ConnError),
    Io(io::Error),
}

/// A connection: the socket, the reading side, and what streams share.
pub(super) struct Connection<T, F, S> {
    io: T,
    shared: Arc<Shared>,
    reader: Reader<F, S>,
    keep_alive: KeepAlive,
}

/// Frames in: the read buffer, the request decoder, and the streams they start.
struct Reader<F, S> {
    rbuf: BytesMut,
    decoder: Decoder,
    streams: Streams<F>,
    /// Starts a stream's future.
    start: S,
    shared: Arc<Shared>,
    phase: Phase,
    /// A header block that goes on in CONTINUATION frames.
    continued: Option<Continued>,
    /// The highest stream id the client has used, and the highest started.
    last_id: u32,
    accepted_id: u32,
    accepted: u64,
    client_resets: u64,
    /// baton sent GOAWAY.
    goaway_sent: bool,
    /// The client sent GOAWAY.
    client_gone: bool,
    /// The payload of a PING ACK, for the keep-alive.
    pong: Option<[u8; 8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Preface,
    /// The preface's SETTINGS frame comes next.
    Settings,
    Frames,
}

struct Continued {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

impl<T, F, S> Connection<T, F, S>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
    S: FnMut(Request, StreamIo) -> F,
{
    /// A connection whose server preface (SETTINGS, and a larger
    /// connection window) is queued to go out first.
    pub(super) fn new(io: T, idle: Duration, start: S) -> Self {
        let shared = Shared::new();
        {
            let mut state = shared.lock();
            let buf = state.out.buf();
            frame::settings(
                buf,
                &[
                    (setting::MAX_CONCURRENT_STREAMS, MAX_STREAMS as u32),
                    (setting::INITIAL_WINDOW_SIZE, WINDOW),
                    (
                        setting::MAX_HEADER_LIST_SIZE,
                        request::MAX_HEADER_LIST as u32,
                    ),
                ],
            );
            frame::window_update(buf, 0, WINDOW - frame::DEFAULT_WINDOW as u32);
        }
        Self {
            io,
            reader: Reader {
                rbuf: BytesMut::new(),
                decoder: Decoder::new(),
                streams: Streams::new(),
                start,
                shared: shared.clone(),
                phase: Phase::Preface,
                continued: None,
                last_id: 0,
                accepted_id: 0,
                accepted: 0,
                client_resets: 0,
                goaway_sent: false,
                client_gone: false,
                pong: None,
            },
            shared,
            keep_alive: KeepAlive::new(idle),
        }
    }

    /// Serves the connection until it ends; what is left to write then is
    /// written by [`Connection::flush`].
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        loop {
            let mut again = false;
            // A client that does not read its answers is not read either.
            let read_held = self.shared.lock().out.len() >= OUT_HIGH;
            if !read_held {
                match self.reader.poll_read(cx, &mut self.io) {
                    Poll::Ready(Ok(true)) => {
                        again = true;
                        if let Err(e) = self.reader.handle_frames() {
                            self.go_away(e.0);
                            return Poll::Ready(Ended::Error(e));
                        }
                    }
                    Poll::Ready(Ok(false)) => return Poll::Ready(Ended::Closed),
                    Poll::Ready(Err(e)) => return Poll::Ready(Ended::Io(e)),
                    Poll::Pending => {}
                }
            }
            self.reader.streams.poll(cx);
            let open = !self.reader.streams.is_empty();
            if let Some(pong) = self.reader.pong.take() {
                self.keep_alive.pong(pong);
            }
            match self.keep_alive.poll(cx, open, self.reader.accepted) {
                Some(Verdict::Ping(payload)) => {
                    let buf = &mut self.shared.lock().out;
                    frame::write(buf.buf(), kind::PING, 0, 0, &payload);
                }
                Some(Verdict::GoAway) => self.go_away(Reason::NO_ERROR),
                Some(Verdict::Close) => {
                    tracing::debug!("HTTP/2 client did not answer a PING; closing");
                    return Poll::Ready(Ended::Closed);
                }
                None => {}
            }
            let mut state = self.shared.lock();
            if let Poll::Ready(Err(e)) = state.out.poll_write(cx, &mut self.io) {
                return Poll::Ready(Ended::Io(e));
            }
            state.room();
            again |= !state.wake.is_empty();
            // No read is pending to wake the task once there is room again.
            again |= read_held && state.out.len() < OUT_HIGH;
            for slot in state.wake.drain(..) {
                self.reader.streams.queue(slot);
            }
            let done = self.reader.refusing() && state.open_streams() == 0 && state.out.is_empty();
            drop(state);
            if done {
                return Poll::Ready(Ended::Closed);
            }
            if !again {
                return Poll::Pending;
            }
        }
    }

    /// Writes what is left to write (a GOAWAY, most often).
    pub(super) async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.shared.lock().out.poll_write(cx, &mut self.io)).await
    }

    /// GOAWAY: streams begun so far are served, later ones are not.
    fn go_away(&mut self, reason: Reason) {
        if self.reader.goaway_sent && reason == Reason::NO_ERROR {
            return;
        }
        self.reader.goaway_sent = true;
        let last = self.reader.accepted_id;
        frame::goaway(self.shared.lock().out.buf(), last, reason);
    }
}

impl<F, S> Reader<F, S>
where
    F: Future<Output = ()>,
    S: FnMut(Request, StreamIo) -> F,
{
    /// GOAWAY went one way or the other: no new streams start.
    fn refusing(&self) -> bool {
        self.goaway_sent || self.client_gone
    }

    /// Reads what the client sent; `false` when it closed the connection.
    fn poll_read<T>(&mut self, cx: &mut Context<'_>, io: &mut T) -> Poll<io::Result<bool>>
    where
        T: AsyncRead + Unpin,
    {
        self.rbuf.reserve(READ_SIZE);
        let n = std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(io),
            cx,
            &mut self.rbuf
        ))?;
        Poll::Ready(Ok(n > 0))
    }

    /// Handles every whole frame in the read buffer.
    fn handle_frames(&mut self) -> Result<(), ConnError> {
        let shared = self.shared.clone();
        let mut state = shared.lock();
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let handled = self.frames(&mut state, &mut rbuf);
        self.rbuf = rbuf;
        for slot in state.wake.drain(..) {
            self.streams.queue(slot);
        }
        let cancel = std::mem::take(&mut state.cancel);
        let errors = state.stream_errors;
        drop(state);
        // Not under the lock: a future's drop takes it (its stream's goodbye).
        for slot in cancel {
            self.streams.cancel(slot);
        }
        handled?;
        if errors > MAX_LOCAL_RESETS {
            return Err(ConnError(
                Reason::ENHANCE_YOUR_CALM,
                "too many stream errors",
            ));
        }
        Ok(())
    }

    fn frames(&mut self, state: &mut State, rbuf: &mut BytesMut) -> Result<(), ConnError> {
        loop {
            if self.phase == Phase::Preface {
                if rbuf.len() < PREFACE.len() {
                    return if PREFACE.starts_with(rbuf) {
                        Ok(())
                    } else {
                        Err(ConnError(Reason::PROTOCOL_ERROR, "not the HTTP/2 preface"))
                    };
                }
                if &rbuf[..PREFACE.len()] != PREFACE {
                    return Err(ConnError(Reason::PROTOCOL_ERROR, "not the HTTP/2 preface"));
                }
                rbuf.advance(PREFACE.len());
                self.phase = Phase::Settings;
            }
            if rbuf.len() < frame::HEADER_LEN {
                return Ok(());
            }
            let head = Head::parse(rbuf);
            if head.len > frame::DEFAULT_MAX_FRAME {
                return Err(ConnError(
                    Reason::FRAME_SIZE_ERROR,
                    "a frame larger than allowed",
                ));
            }
            let whole = frame::HEADER_LEN + head.len;
            if rbuf.len() < whole {
                rbuf.reserve(whole - rbuf.len());
                return Ok(());
            }
            if self.phase == Phase::Settings {
                if head.kind != kind::SETTINGS || head.has(flag::ACK) {
                    return Err(ConnError(
                        Reason::PROTOCOL_ERROR,
                        "the preface lacks SETTINGS",
                    ));
                }
                self.phase = Phase::Frames;
            }
            if let Some(c) = &self.continued {
                if head.kind != kind::CONTINUATION || head.stream != c.stream {
                    return Err(ConnError(
                        Reason::PROTOCOL_ERROR,
                        "a header block interrupted",
                    ));
                }
            }
            if head.kind == kind::DATA {
                rbuf.advance(frame::HEADER_LEN);
                let payload = rbuf.split_to(head.len).freeze();
                self.data(state, head, payload)?;
            } else {
                let handled = self.frame(state, head, &rbuf[frame::HEADER_LEN..whole]);
                rbuf.advance(whole);
                handled?;
            }
        }
    }

    fn data(
        &mut self,
        state: &mut State,
        head: Head,
        payload: bytes::Bytes,
    ) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let range = frame::unpadded(&head, &payload).ok_or(ConnError(
            Reason::PROTOCOL_ERROR,
            "padding longer than its frame",
        ))?;
        let idle = head.stream > self.last_id;
        state.data(
            head.stream,
            head.len,
            payload.slice(range),
            head.has(flag::END_STREAM),
            idle,
        )
    }

    fn frame(&mut self, state: &mut State, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let on_connection = head.stream == 0;
        let must = |ok: bool, reason: Reason, why: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(ConnError(reason, why))
            }
        };
        match head.kind {
            kind::HEADERS => self.headers(state, head, payload),
            kind::CONTINUATION => self.continuation(state, head, payload),
            kind::PRIORITY => {
                must(
                    !on_connection,
                    Reason::PROTOCOL_ERROR,
                    "PRIORITY on stream 0",
                )?;
                if payload.len() != 5 {
                    state.stream_error(head.stream, Reason::FRAME_SIZE_ERROR);
                }
                Ok(())
            }
            kind::RST_STREAM => {
                must(
                    !on_connection,
                    Reason::PROTOCOL_ERROR,
                    "RST_STREAM on stream 0",
                )?;
                must(
                    payload.len() == 4,
                    Reason::FRAME_SIZE_ERROR,
                    "RST_STREAM size",
                )?;
                must(
                    head.stream <= self.last_id,
                    Reason::PROTOCOL_ERROR,
                    "RST_STREAM on an idle stream",
                )?;
                if state.reset_by_client(head.stream) {
                    self.client_resets += 1;
                    if self.client_resets > MAX_CLIENT_RESETS
                        && self.client_resets * 2 > self.accepted
                    {
                        return Err(ConnError(Reason::ENHANCE_YOUR_CALM, "too many resets"));
                    }
                }
                Ok(())
            }
            kind::SETTINGS => {
                must(
                    on_connection,
                    Reason::PROTOCOL_ERROR,
                    "SETTINGS on a stream",
                )?;
                if head.has(flag::ACK) {
                    return must(
                        payload.is_empty(),
                        Reason::FRAME_SIZE_ERROR,
                        "SETTINGS ACK size",
                    );
                }
                must(
                    payload.len().is_multiple_of(6),
                    Reason::FRAME_SIZE_ERROR,
                    "SETTINGS size",
                )?;
                for s in payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([s[0], s[1]]);
                    let value = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
                    settings(state, id, value)?;
                }
                frame::write(state.out.buf(), kind::SETTINGS, flag::ACK, 0, &[]);
                Ok(())
            }
            kind::PING => {
                must(on_connection, Reason::PROTOCOL_ERROR, "PING on a stream")?;
                must(payload.len() == 8, Reason::FRAME_SIZE_ERROR, "PING size")?;
                if head.has(flag::ACK) {
                    let mut pong = [0; 8];
                    pong.copy_from_slice(payload);
                    self.pong = Some(pong);
                } else {
                    frame::write(state.out.buf(), kind::PING, flag::ACK, 0, payload);
                }
                Ok(())
            }
            kind::GOAWAY => {
                must(on_connection, Reason::PROTOCOL_ERROR, "GOAWAY on a stream")?;
                must(payload.len() >= 8, Reason::FRAME_SIZE_ERROR, "GOAWAY size")?;
                self.client_gone = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => {
                must(
                    payload.len() == 4,
                    Reason::FRAME_SIZE_ERROR,
                    "WINDOW_UPDATE size",
                )?;
                let increment =
                    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
                        & 0x7fff_ffff;
                if !on_connection {
                    must(
                        head.stream <= self.last_id,
                        Reason::PROTOCOL_ERROR,
                        "WINDOW_UPDATE on an idle stream",
                    )?;
                }
                if increment == 0 {
                    must(
                        !on_connection,
                        Reason::PROTOCOL_ERROR,
                        "a zero window increment",
                    )?;
                    state.stream_error(head.stream, Reason::PROTOCOL_ERROR);
                    return Ok(());
                }
                state.window_update(head.stream, increment)
            }
            kind::PUSH_PROMISE => Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "PUSH_PROMISE from a client",
            )),
            // Unknown frame types are ignored (§4.1).
            _ => Ok(()),
        }
    }

    fn headers(&mut self, state: &mut State, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream.is_multiple_of(2) {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "HEADERS on a server's stream id",
            ));
        }
        let range = frame::unpadded(&head, payload).ok_or(ConnError(
            Reason::PROTOCOL_ERROR,
            "padding longer than its frame",
        ))?;
        let mut block = &payload[range];
        let mut depends_on_itself = false;
        if head.has(flag::PRIORITY) {
            if block.len() < 5 {
                return Err(ConnError(
                    Reason::FRAME_SIZE_ERROR,
                    "HEADERS priority cut short",
                ));
            }
            let dependency = u32::from_be_bytes([block[0], block[1], block[2], block[3]]);
            depends_on_itself = dependency & 0x7fff_ffff == head.stream;
            block = &block[5..];
        }
        let end_stream = head.has(flag::END_STREAM);
        if !head.has(flag::END_HEADERS) {
            self.continued = Some(Continued {
                stream: head.stream,
                end_stream,
                block: block.to_vec(),
            });
            return Ok(());
        }
        self.header_block(state, head.stream, end_stream, block)?;
        if depends_on_itself {
            state.stream_error(head.stream, Reason::PROTOCOL_ERROR);
        }
        Ok(())
    }

    fn continuation(
        &mut self,
        state: &mut State,
        head: Head,
        payload: &[u8],
    ) -> Result<(), ConnError> {
        let Some(c) = &mut self.continued else {
            return Err(ConnError(
                Reason::PROTOCOL_ERROR,
                "CONTINUATION without HEADERS",
            ));
        };
        if c.block.len() + payload.len() > MAX_BLOCK {
            return Err(ConnError(
                Reason::ENHANCE_YOUR_CALM,
                "header block too large",
            ));
        }
        c.block.extend_from_slice(payload);
        if !head.has(flag::END_HEADERS) {
            return Ok(());
        }
        let Some(c) = self.continued.take() else {
            return Ok(());
        };
        self.header_block(state, c.stream, c.end_stream, &c.block)
    }

    /// A whole header block: a new stream's request, or trailers.
    fn header_block(
        &mut self,
        state: &mut State,
        id: u32,
        end_stream: bool,
        block: &[u8],
    ) -> Result<(), ConnError> {
        let compression = |_| ConnError(Reason::COMPRESSION_ERROR, "undecodable header block");
        if id <= self.last_id {
            let mut trailers = Trailers::default();
            self.decoder
                .decode(block, |n, v| trailers.field(n, v))
                .map_err(compression)?;
            if state.is_open(id) {
                state.trailers(id, end_stream, !trailers.pseudo);
            }
            return Ok(());
        }
        self.last_id = id;
        let mut builder = Builder::default();
        self.decoder
            .decode(block, |n, v| builder.field(n, v))
            .map_err(compression)?;
        if self.refusing() {
            // Not started: the GOAWAY's last stream id tells the client so.
            return Ok(());
        }
        if state.open_streams() >= MAX_STREAMS {
            frame::rst_stream(state.out.buf(), id, Reason::REFUSED_STREAM);
            return Ok(());
        }
        let req = match builder.finish(end_stream) {
            Ok(req) => req,
            Err(e) => {
                tracing::debug!(stream = id, error = %e, "HTTP/2 request refused");
                state.stream_error(id, Reason::PROTOCOL_ERROR);
                return Ok(());
            }
        };
        let expect = req.content_length;
        let future = (self.start)(req, StreamIo::new(self.shared.clone(), id));
        let slot = self.streams.push(future);
        state.open(id, slot, end_stream, expect);
        self.accepted += 1;
        self.accepted_id = id;
        Ok(())
    }
}

/// One of the client's settings (§6.5.2).
fn settings(state: &mut State, id: u16, value: u32) -> Result<(), ConnError> {
    match id {
        setting::HEADER_TABLE_SIZE => state.table_size_changed(),
        setting::ENABLE_PUSH if value > 1 => {
            return Err(ConnError(Reason::PROTOCOL_ERROR, "ENABLE_PUSH above 1"))
        }
        setting::INITIAL_WINDOW_SIZE => state.initial_window(value)?,
        setting::MAX_FRAME_SIZE => {
            if !(frame::DEFAULT_MAX_FRAME as u32..=(1 << 24) - 1).contains(&value) {
                return Err(ConnError(
                    Reason::PROTOCOL_ERROR,
                    "MAX_FRAME_SIZE out of range",
                ));
            }
            state.max_frame(value as usize);
        }
        _ => {}
    }
    Ok(())
}
