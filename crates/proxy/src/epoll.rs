//! A worker's own epoll sets, for sockets that wait outside tokio's I/O
//! driver.
//!
//! Why: tokio keeps 256 bytes of state for each socket it watches, and
//! every readiness event goes through its scheduler to a task. Parked client
//! connections (`http1::idle`) and tunnels (`tunnel`) wait instead in a set
//! of the worker's own, edge-triggered and keyed by the caller. The set is
//! one descriptor in tokio's driver, and one task per set takes its events
//! in batches ([`serve`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Readiness events taken from a set per call.
const EVENTS: usize = 256;

/// An epoll set.
pub(crate) struct Epoll(OwnedFd);

/// What owns a set that [`serve`] waits on.
pub(crate) trait EpollOwner {
    fn epoll(&self) -> &Epoll;
}

impl<T: EpollOwner> EpollOwner for Arc<T> {
    fn epoll(&self) -> &Epoll {
        (**self).epoll()
    }
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain system call; the descriptor is checked below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds `fd`, edge-triggered, for `interest` (`EPOLLIN` and the like);
    /// its events carry `key`. Adding reports what is ready already, so no
    /// edge is missed in between.
    pub(crate) fn add(&self, fd: RawFd, interest: libc::c_int, key: u64) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: (interest | libc::EPOLLET) as u32,
            u64: key,
        };
        // SAFETY: `event` is valid for the call; a closed `fd` fails it.
        let added =
            unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) };
        if added < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes `fd` out of the set. Callers do so before closing a socket that
    /// may live on elsewhere, or whose number may come back before the set
    /// forgets it; it is a no-op for one not in the set.
    pub(crate) fn remove(&self, fd: RawFd) {
        // SAFETY: no event is passed; a closed `fd` fails the call.
        unsafe {
            libc::epoll_ctl(
                self.0.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
    }

    /// Takes the events ready on the set, without waiting.
    pub(crate) fn ready(&self, events: &mut [libc::epoll_event]) -> usize {
        loop {
            // SAFETY: the set is open; the kernel writes at most `len` events.
            let n = unsafe {
                libc::epoll_wait(
                    self.0.as_raw_fd(),
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
                tracing::error!(error = %e, "waiting on a worker's epoll set");
                return 0;
            }
        }
    }
}

/// `owner` as tokio's driver sees it: the set's descriptor.
struct Watched<O>(O);

impl<O: EpollOwner> AsRawFd for Watched<O> {
    fn as_raw_fd(&self) -> RawFd {
        self.0.epoll().0.as_raw_fd()
    }
}

/// Hands the events of `owner`'s set to `handle`, a batch at a time, as
/// they come; runs on the worker's runtime for as long as it lives, and
/// drops `owner` when it stops (or, if never polled, when it is dropped).
/// `handle` returns true when it has work left over: it is called again
/// (with the events come since) once the worker's other tasks have run.
pub(crate) async fn serve<O: EpollOwner>(
    owner: O,
    mut handle: impl FnMut(&O, &[libc::epoll_event]) -> bool,
) {
    // SAFETY: `owner` keeps the set open for as long as it is registered.
    let registered = unsafe { AsyncFd::register_with_interest(Watched(owner), Interest::READABLE) };
    let set = match registered {
        Ok(set) => set,
        Err(e) => {
            tracing::error!(error = %e, "cannot wait on a worker's epoll set");
            return;
        }
    };
    let owner = &set.get_ref().0;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    loop {
        let Ok(mut ready) = set.readable().await else {
            return;
        };
        // Cleared first and then emptied: the set is edge-triggered in the
        // driver's, so what is left in it would wake nobody, and what comes
        // after the clearing sets it again.
        ready.clear_ready();
        loop {
            let n = owner.epoll().ready(&mut events);
            let more = handle(owner, &events[..n]);
            if more {
                tokio::task::yield_now().await;
            } else if n < EVENTS {
                break;
            }
        }
    }
}
