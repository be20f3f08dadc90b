//! A worker's client connections between requests: the idle timeout, kept
//! by one sweep instead of a timer in every connection, and parking.
//!
//! Why: an idle keep-alive connection should cost next to nothing, and a
//! timer is the largest thing its task would hold. Each connection takes a
//! slot here for its lifetime and marks itself idle while it waits for a
//! request; the sweep shuts down (`shutdown(2)`) the sockets idle for too
//! long, which wakes them with end of file, and they close. A slot is
//! released before its socket is closed, under the same lock the sweep takes,
//! so the sweep never touches a descriptor the kernel has handed out again.
//!
//! On a worker holding many connections, an idle one is parked: it moves
//! into its slot, with no task, and its socket waits in the worker's own
//! epoll set (edge-triggered, keyed by slot) rather than in tokio's I/O
//! driver, which would keep 256 bytes of state for it. One task per worker
//! waits on that set and spawns a task for each connection whose next
//! request arrives: a parked connection costs its slot and its box, 176
//! bytes.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::Conn;

/// One worker's client connections, since when each has been idle, and the
/// parked ones.
pub(crate) struct IdleClients {
    slots: Mutex<Slots>,
    timeout: Duration,
    /// The parked connections' sockets, each registered once (on its first
    /// parking) for as long as it speaks HTTP/1.1.
    epoll: OwnedFd,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Slot>,
    free: Vec<usize>,
}

struct Slot {
    fd: RawFd,
    /// `None` while a request is being served.
    idle_since: Option<Instant>,
    /// The connection itself, while parked. Boxed: slots are many, and
    /// their vector doubles as it grows, copying every one.
    parked: Option<Box<Conn>>,
    /// The socket is in the worker's epoll set.
    watched: bool,
    /// Input arrived while the connection was not parked: it looks before
    /// parking again, as that edge will not come twice.
    woken: bool,
}

/// What parking did with a connection.
pub(crate) enum Parking {
    /// It waits in its slot, with no task.
    Parked,
    /// Its next request is already there: serve it now.
    Ready(Conn),
    /// It cannot be parked: it waits in its task, as below `PARK_ABOVE`.
    Refused(Conn),
}

/// A worker with more client connections than this parks its idle ones:
/// no task each, at the price of a spawn per request. Below it, idle
/// connections keep their task, the fastest way.
const PARK_ABOVE: usize = 256;

/// Readiness events taken from the epoll set per call.
const EVENTS: usize = 256;

/// A connection's slot; released when dropped.
pub(crate) struct IdleSlot {
    clients: Arc<IdleClients>,
    key: usize,
}

impl IdleClients {
    pub(crate) fn new(timeout: Duration) -> io::Result<Self> {
        // SAFETY: plain system call; the descriptor is checked below.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            slots: Mutex::new(Slots::default()),
            timeout,
            // SAFETY: a new descriptor that nothing else owns.
            epoll: unsafe { OwnedFd::from_raw_fd(epoll) },
        })
    }

    /// Takes a slot for the client connection on `fd`, idle from now.
    pub(crate) fn register(self: &Arc<Self>, fd: RawFd) -> IdleSlot {
        let slot = Slot {
            fd,
            idle_since: Some(Instant::now()),
            parked: None,
            watched: false,
            woken: false,
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

    /// Parks `conn` in its slot until input arrives on its socket, unless
    /// input is already there or its socket cannot be watched.
    pub(crate) fn park(&self, mut conn: Conn) -> Parking {
        // Whatever tokio keeps for the socket is freed: it waits here now.
        // A socket lost on the way fails its wait in the task.
        if !conn.client.unregister() {
            return Parking::Refused(conn);
        }
        let key = conn.idle.key;
        let mut slots = self.lock();
        let slot = &mut slots.entries[key];
        let unseen = std::mem::take(&mut slot.woken) || !conn.client.drained();
        if unseen && conn.client.has_input() {
            return Parking::Ready(conn);
        }
        if !slot.watched {
            if let Err(e) = self.watch(slot.fd, key) {
                tracing::debug!(error = %e, "cannot park a client connection");
                return Parking::Refused(conn);
            }
            slot.watched = true;
        }
        slot.parked = Some(Box::new(conn));
        Parking::Parked
    }

    /// Adds a socket to the epoll set, for as long as it is open.
    /// Edge-triggered: an edge comes with each arrival; adding reports
    /// input already there, so none is missed in between.
    fn watch(&self, fd: RawFd, key: usize) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: key as u64,
        };
        // SAFETY: both descriptors are open; `event` is valid for the call.
        let added =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if added < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wakes parked connections as their input arrives, each into a task of
    /// its own; runs on the worker's runtime for as long as it lives. The
    /// connections still parked when it stops are closed.
    pub(crate) fn wake_parked(self: Arc<Self>) -> impl Future<Output = ()> {
        // Made before the future, so that dropping the future unparks even
        // if it was never polled (see `Lot`).
        let lot = Lot(self);
        async move {
            // SAFETY: the lot holds the table, which holds the set open.
            let registered = unsafe { AsyncFd::register_with_interest(lot, Interest::READABLE) };
            let epoll = match registered {
                Ok(epoll) => epoll,
                Err(e) => {
                    tracing::error!(error = %e, "cannot wait for parked connections");
                    return;
                }
            };
            let clients = &epoll.get_ref().0;
            let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
            let mut woken = Vec::new();
            loop {
                let Ok(mut ready) = epoll.readable().await else {
                    return;
                };
                // Emptied before waiting again: the set is edge-triggered in
                // the driver's, so what is left in it would wake nobody.
                loop {
                    let n = clients.wait(&mut events);
                    clients.unpark(&events[..n], &mut woken);
                    for conn in woken.drain(..) {
                        conn.resume();
                    }
                    if n < EVENTS {
                        break;
                    }
                }
                ready.clear_ready();
            }
        }
    }

    /// Takes the events ready on the epoll set, without waiting.
    fn wait(&self, events: &mut [libc::epoll_event]) -> usize {
        loop {
            // SAFETY: the set is open; the kernel writes at most `len` events.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as libc::c_int,
                    0,
                )
            };
            if let Ok(n) = usize::try_from(n) {
                return n;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                tracing::error!(error = %e, "waiting for parked connections");
                return 0;
            }
        }
    }

    /// The connections `events` are for, out of their slots; a connection
    /// not parked is told it has input to look at.
    fn unpark(&self, events: &[libc::epoll_event], woken: &mut Vec<Conn>) {
        let mut slots = self.lock();
        for event in events {
            let Some(slot) = usize::try_from(event.u64)
                .ok()
                .and_then(|key| slots.entries.get_mut(key))
            else {
                continue;
            };
            match slot.parked.take() {
                Some(conn) => woken.push(*conn),
                None => slot.woken = true,
            }
        }
    }
}

/// The waking task's hold on the table. Parked connections hold the table
/// too, so it would keep them (and itself) forever: the lot unparks, and so
/// closes, what is still parked when the task goes.
struct Lot(Arc<IdleClients>);

impl AsRawFd for Lot {
    fn as_raw_fd(&self) -> RawFd {
        self.0.epoll.as_raw_fd()
    }
}

impl Drop for Lot {
    fn drop(&mut self) {
        let parked: Vec<Box<Conn>> = self
            .0
            .lock()
            .entries
            .iter_mut()
            .filter_map(|slot| slot.parked.take())
            .collect();
        // Outside the lock, which each connection's slot takes as it goes.
        drop(parked);
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

    /// The table this slot is in.
    pub(crate) fn clients(&self) -> &Arc<IdleClients> {
        &self.clients
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        let mut slots = self.clients.lock();
        let slot = &mut slots.entries[self.key];
        if slot.watched {
            // The socket may live on (as HTTP/2): its events are not ours.
            // SAFETY: the socket is still open (it closes after its slot).
            unsafe {
                libc::epoll_ctl(
                    self.clients.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    slot.fd,
                    std::ptr::null_mut(),
                )
            };
        }
        slot.idle_since = None;
        slot.watched = false;
        slot.woken = false;
        slots.free.push(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_connection_costs_its_slot_and_its_box() {
        // All a parked connection holds (no task, no registration with the
        // runtime): its slot, in a vector of them, and the connection.
        let slot = std::mem::size_of::<Slot>();
        assert!(slot <= 32, "a slot of {slot} bytes");
        let conn = std::mem::size_of::<Conn>();
        assert!(conn <= 144, "a connection of {conn} bytes");
    }
}
