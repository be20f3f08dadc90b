//! What a connection shares with its streams: the frames waiting to go to
//! the client, flow control in both directions, and each open stream's
//! request body as it arrives.
//!
//! The connection's reader fills it from the client's frames; a stream's
//! future ([`StreamIo`]) takes its body from it and puts its response in.
//! Both run in the connection's task (streams are polled by it), so the
//! lock is never contended: it is a lock only because tasks must be `Send`.
//! Nothing here wakes a task: the reader lists the streams it gave
//! something to, and the connection polls them next.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use bytes::{BufMut, Bytes};
use rustc_hash::FxHashMap;

use super::frame::{self, flag, kind, Reason, DEFAULT_WINDOW, MAX_WINDOW};
use super::out::Out;
use super::WINDOW;

/// Output buffered beyond this holds streams back until it is written.
pub(super) const OUT_HIGH: usize = 256 * 1024;

#[derive(Debug)]
pub(super) struct Shared(Mutex<State>);

impl Shared {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(State::default())))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a stream waits for to send more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Its own window (the client's WINDOW_UPDATE or SETTINGS).
    StreamWindow,
    /// The connection's window.
    ConnectionWindow,
    /// Room in `out`.
    Room,
}

/// A connection error: GOAWAY with this reason, then close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConnError(pub(super) Reason, pub(super) &'static str);

#[derive(Debug)]
pub(super) struct State {
    pub(super) out: Out,
    streams: FxHashMap<u32, Stream>,
    /// What the client lets baton send on the connection.
    send_window: i64,
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE.
    initial_window: i64,
    /// The client's SETTINGS_MAX_FRAME_SIZE.
    max_frame: usize,
    /// What the client may still send on the connection, and what streams
    /// have taken of it that is not granted again yet.
    recv_window: i64,
    recv_unreleased: i64,
    /// Streams waiting for the client's connection window, and for room in
    /// `out`. (A stream waiting for its own window needs no list: its
    /// WINDOW_UPDATE names it.)
    wait_window: Vec<u32>,
    wait_room: Vec<u32>,
    /// The next header block starts with a table size update.
    table_size_update: bool,
    /// Slots to poll next: their stream has something new.
    pub(super) wake: Vec<usize>,
    /// Slots whose stream is gone (reset): their futures are to be dropped.
    pub(super) cancel: Vec<usize>,
    /// Streams this side reset for the client's errors.
    pub(super) stream_errors: usize,
}

impl Default for State {
    fn default() -> Self {
        Self {
            out: Out::default(),
            streams: FxHashMap::default(),
            send_window: DEFAULT_WINDOW,
            initial_window: DEFAULT_WINDOW,
            max_frame: frame::DEFAULT_MAX_FRAME,
            recv_window: WINDOW as i64,
            recv_unreleased: 0,
            wait_window: Vec::new(),
            wait_room: Vec::new(),
            table_size_update: false,
            wake: Vec::new(),
            cancel: Vec::new(),
            stream_errors: 0,
        }
    }
}

/// One open stream.
#[derive(Debug)]
struct Stream {
    slot: usize,
    /// Request body runs not taken by the stream yet.
    body: VecDeque<Bytes>,
    body_ended: bool,
    recv_window: i64,
    recv_unreleased: i64,
    /// Body bytes the content-length still promises.
    expect: Option<u64>,
    send_window: i64,
    /// What it waits for to send more, if anything.
    waiting: Option<Wait>,
    /// The response ended (END_STREAM or RST_STREAM sent).
    sent_end: bool,
}

impl Stream {
    /// Takes a DATA frame of `len` bytes, `payload` of them body, into the
    /// stream's window and its content-length; the error is the stream's.
    fn admit(&mut self, len: usize, payload: u64, end: bool) -> Result<(), Reason> {
        if self.body_ended {
            return Err(Reason::STREAM_CLOSED);
        }
        self.recv_window -= len as i64;
        if self.recv_window < 0 {
            return Err(Reason::FLOW_CONTROL_ERROR);
        }
        if let Some(left) = &mut self.expect {
            if payload > *left || (end && payload != *left) {
                return Err(Reason::PROTOCOL_ERROR);
            }
            *left -= payload;
        }
        Ok(())
    }
}

/// The connection's side.
impl State {
    pub(super) fn open_streams(&self) -> usize {
        self.streams.len()
    }

    pub(super) fn is_open(&self, id: u32) -> bool {
        self.streams.contains_key(&id)
    }

    /// A stream the client opened, served by the future in `slot`.
    pub(super) fn open(&mut self, id: u32, slot: usize, end_stream: bool, expect: Option<u64>) {
        let stream = Stream {
            slot,
            body: VecDeque::new(),
            body_ended: end_stream,
            recv_window: WINDOW as i64,
            recv_unreleased: 0,
            expect,
            send_window: self.initial_window,
            waiting: None,
            sent_end: false,
        };
        self.streams.insert(id, stream);
    }

    /// A DATA frame: `len` is its whole length (padding counts toward the
    /// windows), `data` its payload.
    pub(super) fn data(
        &mut self,
        id: u32,
        len: usize,
        data: Bytes,
        end: bool,
        idle: bool,
    ) -> Result<(), ConnError> {
        self.recv_window -= len as i64;
        if self.recv_window < 0 {
            return Err(ConnError(
                Reason::FLOW_CONTROL_ERROR,
                "DATA beyond the connection window",
            ));
        }
        let Some(s) = self.streams.get_mut(&id) else {
            if idle {
                return Err(ConnError(Reason::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            // A stream that ended meanwhile: its window is the connection's again.
            self.release_connection(len);
            return Ok(());
        };
        if let Err(reason) = s.admit(len, data.len() as u64, end) {
            self.release_connection(len);
            self.stream_error(id, reason);
            return Ok(());
        }
        let padding = len - data.len();
        if !data.is_empty() {
            s.body.push_back(data);
        }
        s.body_ended |= end;
        self.wake.push(s.slot);
        if padding > 0 {
            self.release(id, padding);
        }
        Ok(())
    }

    /// Trailers (HEADERS after the body): the body ends, unless more of it
    /// was promised.
    pub(super) fn trailers(&mut self, id: u32, end: bool, valid: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !end || !valid || s.body_ended || s.expect.is_some_and(|left| left > 0) {
            self.stream_error(id, Reason::PROTOCOL_ERROR);
            return;
        }
        s.body_ended = true;
        self.wake.push(s.slot);
    }

    /// The client reset a stream; true if it was open.
    pub(super) fn reset_by_client(&mut self, id: u32) -> bool {
        self.close(id).is_some()
    }

    /// Resets a stream for the client's error.
    pub(super) fn stream_error(&mut self, id: u32, reason: Reason) {
        self.stream_errors += 1;
        frame::rst_stream(self.out.buf(), id, reason);
        self.close(id);
    }

    /// Forgets a stream whose future is to be dropped.
    fn close(&mut self, id: u32) -> Option<()> {
        let slot = self.remove(id)?;
        self.cancel.push(slot);
        Some(())
    }

    /// Forgets a stream, handing back the window its unread body holds;
    /// returns its slot.
    fn remove(&mut self, id: u32) -> Option<usize> {
        let s = self.streams.remove(&id)?;
        if let Some(list) = s.waiting.and_then(|w| self.wait_list(w)) {
            list.retain(|&waiting| waiting != id);
        }
        let unread: usize = s.body.iter().map(Bytes::len).sum();
        self.release_connection(unread);
        Some(s.slot)
    }

    pub(super) fn window_update(&mut self, id: u32, increment: u32) -> Result<(), ConnError> {
        if id == 0 {
            self.send_window += increment as i64;
            if self.send_window > MAX_WINDOW {
                return Err(ConnError(
                    Reason::FLOW_CONTROL_ERROR,
                    "connection window overflow",
                ));
            }
            self.wake_all(Wait::ConnectionWindow);
            return Ok(());
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        s.send_window += increment as i64;
        if s.send_window > MAX_WINDOW {
            self.stream_error(id, Reason::FLOW_CONTROL_ERROR);
        } else if s.waiting == Some(Wait::StreamWindow) {
            s.waiting = None;
            self.wake.push(s.slot);
        }
        Ok(())
    }

    /// The client's SETTINGS_INITIAL_WINDOW_SIZE: every stream's window
    /// moves by the change (§6.9.2).
    pub(super) fn initial_window(&mut self, size: u32) -> Result<(), ConnError> {
        let size = size as i64;
        if size > MAX_WINDOW {
            return Err(ConnError(
                Reason::FLOW_CONTROL_ERROR,
                "initial window too large",
            ));
        }
        let delta = size - self.initial_window;
        self.initial_window = size;
        for s in self.streams.values_mut() {
            s.send_window += delta;
            if s.send_window > MAX_WINDOW {
                return Err(ConnError(
                    Reason::FLOW_CONTROL_ERROR,
                    "stream window overflow",
                ));
            }
            if s.waiting == Some(Wait::StreamWindow) && s.send_window > 0 {
                s.waiting = None;
                self.wake.push(s.slot);
            }
        }
        Ok(())
    }

    pub(super) fn max_frame(&mut self, size: usize) {
        self.max_frame = size;
    }

    pub(super) fn table_size_changed(&mut self) {
        self.table_size_update = true;
    }

    /// Room in `out` again: the streams held back for it may go on.
    pub(super) fn room(&mut self) {
        if self.out.len() < OUT_HIGH {
            self.wake_all(Wait::Room);
        }
    }

    /// The list of the streams waiting for `wait`, if it keeps one.
    fn wait_list(&mut self, wait: Wait) -> Option<&mut Vec<u32>> {
        match wait {
            Wait::StreamWindow => None,
            Wait::ConnectionWindow => Some(&mut self.wait_window),
            Wait::Room => Some(&mut self.wait_room),
        }
    }

    /// Wakes every stream on `wait`'s list (each stream is on a list at most
    /// once, and leaves it when it is woken or closed).
    fn wake_all(&mut self, wait: Wait) {
        let Some(list) = self.wait_list(wait) else {
            return;
        };
        for id in std::mem::take(list) {
            if let Some(s) = self.streams.get_mut(&id) {
                s.waiting = None;
                self.wake.push(s.slot);
            }
        }
    }

    /// Gives window the client's body used back once half of it is used:
    /// one WINDOW_UPDATE per half window, not one per frame.
    fn release_connection(&mut self, n: usize) {
        self.recv_unreleased += n as i64;
        if self.recv_unreleased >= WINDOW as i64 / 2 {
            frame::window_update(self.out.buf(), 0, self.recv_unreleased as u32);
            self.recv_window += self.recv_unreleased;
            self.recv_unreleased = 0;
        }
    }
}

/// The streams' side, through [`StreamIo`].
impl State {
    /// The next run of a request body. Its window goes back to the client
    /// as it is taken: a stream takes a run only once it has passed the
    /// last one on, so the target's pace still holds the client back.
    fn take_data(&mut self, id: u32) -> Poll<Option<Bytes>> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Poll::Ready(None);
        };
        match s.body.pop_front() {
            Some(data) => {
                self.release(id, data.len());
                Poll::Ready(Some(data))
            }
            None if s.body_ended => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    fn release(&mut self, id: u32, n: usize) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.recv_unreleased += n as i64;
            if !s.body_ended && s.recv_unreleased >= WINDOW as i64 / 2 {
                frame::window_update(self.out.buf(), id, s.recv_unreleased as u32);
                s.recv_window += s.recv_unreleased;
                s.recv_unreleased = 0;
            }
        }
        self.release_connection(n);
    }

    fn headers(&mut self, id: u32, block: &[u8], end: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.sent_end = end;
        let update: &[u8] = if std::mem::take(&mut self.table_size_update) {
            &[0x20]
        } else {
            &[]
        };
        let total = update.len() + block.len();
        let first = total.min(self.max_frame);
        let mut flags = if end { flag::END_STREAM } else { 0 };
        if first == total {
            flags |= flag::END_HEADERS;
        }
        let buf = self.out.buf();
        frame::Head {
            len: first,
            kind: kind::HEADERS,
            flags,
            stream: id,
        }
        .write(buf);
        buf.put_slice(update);
        let (now, mut rest) = block.split_at(first - update.len());
        buf.put_slice(now);
        while !rest.is_empty() {
            let (part, more) = rest.split_at(rest.len().min(self.max_frame));
            let flags = if more.is_empty() {
                flag::END_HEADERS
            } else {
                0
            };
            frame::write(buf, kind::CONTINUATION, flags, id, part);
            rest = more;
        }
    }

    /// Sends as much of `data` as the windows and `out` allow; `Ready` once
    /// all of it is sent (the stream ended after it if `end`).
    fn send(&mut self, id: u32, data: &mut Bytes, end: bool) -> Poll<()> {
        let State {
            out,
            streams,
            send_window,
            max_frame,
            wait_window,
            wait_room,
            ..
        } = self;
        let Some(s) = streams.get_mut(&id) else {
            return Poll::Ready(());
        };
        loop {
            let wait = if out.len() >= OUT_HIGH {
                Some((Wait::Room, Some(&mut *wait_room)))
            } else if !data.is_empty() && s.send_window <= 0 {
                Some((Wait::StreamWindow, None))
            } else if !data.is_empty() && *send_window <= 0 {
                Some((Wait::ConnectionWindow, Some(&mut *wait_window)))
            } else {
                None
            };
            if let Some((wait, list)) = wait {
                if s.waiting.is_none() {
                    s.waiting = Some(wait);
                    list.into_iter().for_each(|l| l.push(id));
                }
                return Poll::Pending;
            }
            let window = s.send_window.min(*send_window) as usize;
            let n = data.len().min(window).min(*max_frame);
            let last = end && n == data.len();
            frame::Head {
                len: n,
                kind: kind::DATA,
                flags: if last { flag::END_STREAM } else { 0 },
                stream: id,
            }
            .write(out.buf());
            out.payload(data.split_to(n));
            s.send_window -= n as i64;
            *send_window -= n as i64;
            if data.is_empty() {
                s.sent_end |= last;
                return Poll::Ready(());
            }
        }
    }

    /// Resets a stream from its own side; its future ends next. (Not
    /// [`State::close`]: the future is running, and its slot may serve
    /// another stream by the time a cancel would be applied.)
    fn reset(&mut self, id: u32, reason: Reason) {
        if self.remove(id).is_some() {
            frame::rst_stream(self.out.buf(), id, reason);
        }
    }

    /// A stream's future is done: a response cut short is reset, and a
    /// request body still coming is declined (§8.1: RST_STREAM NO_ERROR
    /// after a complete response).
    fn finish(&mut self, id: u32) {
        let Some(s) = self.streams.get(&id) else {
            return;
        };
        let reason = if !s.sent_end {
            Some(Reason::INTERNAL_ERROR)
        } else if !s.body_ended {
            Some(Reason::NO_ERROR)
        } else {
            None
        };
        self.remove(id);
        if let Some(reason) = reason {
            frame::rst_stream(self.out.buf(), id, reason);
        }
    }
}

/// A stream's handle on its connection, held by the stream's future.
#[derive(Debug)]
pub(super) struct StreamIo {
    shared: Arc<Shared>,
    id: u32,
}

impl StreamIo {
    pub(super) fn new(shared: Arc<Shared>, id: u32) -> Self {
        Self { shared, id }
    }

    /// The next run of the request body, `None` at its end. Pending until
    /// the client sends more; the connection polls the stream again then.
    pub(super) fn poll_data(&self) -> Poll<Option<Bytes>> {
        self.shared.lock().take_data(self.id)
    }

    /// The request body's next run.
    pub(super) async fn data(&self) -> Option<Bytes> {
        std::future::poll_fn(|_| self.poll_data()).await
    }

    /// Sends the response's header block; `end` if no body follows.
    pub(super) fn send_headers(&self, block: &[u8], end: bool) {
        self.shared.lock().headers(self.id, block, end);
    }

    /// Sends `data` as flow control allows; `Ready` once all of it is sent.
    pub(super) fn poll_send(&self, data: &mut Bytes, end: bool) -> Poll<()> {
        self.shared.lock().send(self.id, data, end)
    }

    /// Ends the response early: what was sent is not all there is.
    pub(super) fn reset(&self, reason: Reason) {
        self.shared.lock().reset(self.id, reason);
    }
}

impl Drop for StreamIo {
    fn drop(&mut self) {
        self.shared.lock().finish(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_leave_no_trace_on_the_lists() {
        // Blocked on its own window again and again: no list holds it.
        let mut state = State::default();
        state.initial_window(10).unwrap();
        state.open(1, 0, true, None);
        let mut data = Bytes::from(vec![0u8; 100]);
        for _ in 0..9 {
            assert!(state.send(1, &mut data, true).is_pending());
            state.window_update(1, 10).unwrap();
            assert_eq!(state.wake.drain(..).collect::<Vec<_>>(), [0], "woken");
        }
        assert!(state.send(1, &mut data, true).is_ready());
        assert!(state.wait_window.is_empty(), "{:?}", state.wait_window);

        // Blocked on the connection's window, then reset: gone from its list.
        state.initial_window(1 << 20).unwrap();
        state.open(3, 1, true, None);
        let mut data = Bytes::from(vec![0u8; 70_000]);
        assert!(state.send(3, &mut data, true).is_pending());
        assert_eq!(state.wait_window, [3]);
        assert!(state.reset_by_client(3));
        assert!(state.wait_window.is_empty());
    }
}
