//! The client idle timeout, kept by one sweep per worker instead of a timer
//! in every connection.
//!
//! Why: an idle keep-alive connection should cost next to nothing, and a
//! timer is the largest thing its task would hold. Each connection takes a
//! slot here for its lifetime and marks itself idle while it waits for a
//! request; the sweep shuts down (`shutdown(2)`) the sockets idle for too
//! long, which wakes them with end of file, and they close. A slot is
//! released before its socket is closed, under the same lock the sweep takes,
//! so the sweep never touches a descriptor the kernel has handed out again.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One worker's client connections, and since when each has been idle.
#[derive(Debug)]
pub(crate) struct IdleClients {
    slots: Mutex<Slots>,
    timeout: Duration,
}

#[derive(Debug, Default)]
struct Slots {
    entries: Vec<Slot>,
    free: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    fd: RawFd,
    /// `None` while a request is being served.
    idle_since: Option<Instant>,
}

/// A worker with more client connections than this parks its idle ones
/// (see `http1::Conn::park`): no task each, at the price of a spawn per
/// request. Below it, idle connections keep their task, the fastest way.
const PARK_ABOVE: usize = 256;

/// A connection's slot; released when dropped.
#[derive(Debug)]
pub(crate) struct IdleSlot {
    clients: Arc<IdleClients>,
    key: usize,
}

impl IdleClients {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            slots: Mutex::new(Slots::default()),
            timeout,
        }
    }

    /// Takes a slot for the client connection on `fd`, idle from now.
    pub(crate) fn register(self: &Arc<Self>, fd: RawFd) -> IdleSlot {
        let slot = Slot {
            fd,
            idle_since: Some(Instant::now()),
        };
        let mut slots = self.lock();
        let key = match slots.free.pop() {
            Some(key) => {
                slots.entries[key] = slot;
                key
            }
            None => {
                slots.entries.push(slot);
                slots.entries.len() - 1
            }
        };
        IdleSlot {
            clients: self.clone(),
            key,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Shuts down connections idle longer than the timeout; runs on the
    /// worker's runtime for as long as it lives.
    pub(crate) async fn sweep(self: Arc<Self>) {
        let every = (self.timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let mut slots = self.lock();
            for slot in &mut slots.entries {
                if slot
                    .idle_since
                    .is_some_and(|since| now.duration_since(since) >= self.timeout)
                {
                    // SAFETY: the slot is registered, so `fd` is still the
                    // connection's (its owner releases the slot under this
                    // lock before closing it); shutdown() leaves the
                    // descriptor open for the owner to close.
                    unsafe { libc::shutdown(slot.fd, libc::SHUT_RDWR) };
                    slot.idle_since = None;
                }
            }
        }
    }
}

impl IdleSlot {
    /// The connection waits for its next request. Returns true when the
    /// worker holds so many connections that idle ones should be parked.
    pub(crate) fn idle(&self) -> bool {
        let mut slots = self.clients.lock();
        slots.entries[self.key].idle_since = Some(Instant::now());
        slots.entries.len() - slots.free.len() > PARK_ABOVE
    }

    /// The connection serves a request: the timeout does not apply.
    pub(crate) fn busy(&self) {
        self.clients.lock().entries[self.key].idle_since = None;
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        let mut slots = self.clients.lock();
        slots.entries[self.key].idle_since = None;
        slots.free.push(self.key);
    }
}
