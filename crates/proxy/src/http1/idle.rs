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
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Conn;
use crate::epoll::{self, Epoll, EpollOwner};

/// One worker's client connections, since when each has been idle, and the
/// parked ones.
pub(crate) struct IdleClients {
    slots: Mutex<Slots>,
    timeout: Duration,
    /// The parked connections' sockets, each registered once (on its first
    /// parking) for as long as it speaks HTTP/1.1.
    epoll: Epoll,
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

/// A connection's slot; released when dropped.
pub(crate) struct IdleSlot {
    clients: Arc<IdleClients>,
    key: usize,
}

impl IdleClients {
    pub(crate) fn new(timeout: Duration) -> io::Result<Self> {
        Ok(Self {
            slots: Mutex::new(Slots::default()),
            timeout,
            epoll: Epoll::new()?,
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
            // Watched for as long as it is open: an edge comes with each arrival.
            let interest = libc::EPOLLIN | libc::EPOLLRDHUP;
            if let Err(e) = self.epoll.add(slot.fd, interest, key as u64) {
                tracing::debug!(error = %e, "cannot park a client connection");
                return Parking::Refused(conn);
            }
            slot.watched = true;
        }
        slot.parked = Some(Box::new(conn));
        Parking::Parked
    }

    /// Wakes parked connections as their input arrives, each into a task of
    /// its own; runs on the worker's runtime for as long as it lives. The
    /// connections still parked when it stops are closed.
    pub(crate) fn wake_parked(self: Arc<Self>) -> impl Future<Output = ()> {
        let mut woken = Vec::new();
        // The lot goes into the future at once, so that dropping the future
        // unparks even if it was never polled (see `Lot`).
        epoll::serve(Lot(self), move |lot, events| {
            lot.0.unpark(events, &mut woken);
            for conn in woken.drain(..) {
                conn.resume();
            }
            false
        })
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

impl EpollOwner for Lot {
    fn epoll(&self) -> &Epoll {
        &self.0.epoll
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

    /// The connection has become a tunnel: if it was ever parked, its
    /// socket leaves the parking set, as its events are the tunnel's now.
    pub(crate) fn unwatch(&self) {
        let mut slots = self.clients.lock();
        let slot = &mut slots.entries[self.key];
        if std::mem::take(&mut slot.watched) {
            self.clients.epoll.remove(slot.fd);
        }
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
            // It is still open: it closes after its slot.
            self.clients.epoll.remove(slot.fd);
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

    #[test]
    fn a_connection_that_becomes_a_tunnel_leaves_the_parking_set() {
        use std::io::Write;
        use std::os::fd::AsRawFd;

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let clients = Arc::new(IdleClients::new(Duration::from_secs(60)).unwrap());
        let slot = clients.register(accepted.as_raw_fd());
        // Watched as a first parking leaves it.
        clients
            .epoll
            .add(accepted.as_raw_fd(), libc::EPOLLIN, slot.key as u64)
            .unwrap();
        clients.lock().entries[slot.key].watched = true;
        slot.unwatch();
        client.write_all(b"a tunnel's message").unwrap();
        // The bytes are there to read, and the parking set heard nothing.
        let mut byte = [0u8];
        assert_eq!(accepted.peek(&mut byte).unwrap(), 1);
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
        assert_eq!(clients.epoll.ready(&mut events), 0);
        assert!(!clients.lock().entries[slot.key].watched);
    }
}
