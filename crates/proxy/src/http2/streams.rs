//! A connection's open streams: futures polled by the connection's task,
//! each only when something woke it.
//!
//! Why not `FuturesUnordered`: it allocates a task for every future pushed
//! and moves the future into it, and a stream's future is about 2 KiB. Here
//! a stream takes a slot whose box outlives it: the next stream's future is
//! written into the same box, once, with no allocation. The slots go when
//! the connection has no stream open, so an idle connection holds none.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The streams of one connection.
pub(super) struct Streams<F> {
    slots: Vec<Slot<F>>,
    /// Slots with no stream, for the next ones.
    free: Vec<usize>,
    woken: Arc<Woken>,
    /// The slots being polled this round; kept to reuse its allocation.
    batch: Vec<usize>,
}

struct Slot<F> {
    future: Pin<Box<Option<F>>>,
    wake: Arc<SlotWake>,
    waker: Waker,
}

/// Slots woken since the connection last polled, and the connection's task.
#[derive(Default)]
struct Woken {
    slots: Mutex<Vec<usize>>,
    task: AtomicWaker,
}

/// A slot's waker: queues the slot once, however often it is woken.
struct SlotWake {
    slot: usize,
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queue() {
            self.woken.task.wake();
        }
    }
}

impl SlotWake {
    /// Queues the slot for the next poll; false if it already was.
    fn queue(&self) -> bool {
        let first = !self.queued.swap(true, Ordering::AcqRel);
        if first {
            lock(&self.woken.slots).push(self.slot);
        }
        first
    }
}

impl<F: Future<Output = ()>> Streams<F> {
    pub(super) fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            woken: Arc::default(),
            batch: Vec::new(),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }

    /// Adds a stream; it is polled on the next [`Streams::poll`]. Returns
    /// its slot, which is the stream's until its future is done or cancelled.
    pub(super) fn push(&mut self, future: F) -> usize {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(self.new_slot());
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        slot.future.set(Some(future));
        // Not a wake: the connection's task is running, and polls next.
        slot.wake.queue();
        index
    }

    /// Has the stream in `slot` polled on the next [`Streams::poll`]; the
    /// connection's task, which calls this, is running.
    pub(super) fn queue(&mut self, slot: usize) {
        if let Some(slot) = self.slots.get(slot) {
            slot.wake.queue();
        }
    }

    /// Drops the stream in `slot`, done or not.
    pub(super) fn cancel(&mut self, index: usize) {
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        if slot.future.is_some() {
            slot.future.set(None);
            self.free.push(index);
        }
    }

    fn new_slot(&self) -> Slot<F> {
        let wake = Arc::new(SlotWake {
            slot: self.slots.len(),
            queued: AtomicBool::new(false),
            woken: self.woken.clone(),
        });
        Slot {
            future: Box::pin(None),
            waker: Waker::from(wake.clone()),
            wake,
        }
    }

    /// Polls every stream woken since the last call, once each; those woken
    /// meanwhile wake the connection's task for another call.
    pub(super) fn poll(&mut self, cx: &mut Context<'_>) {
        self.woken.task.register(cx.waker());
        std::mem::swap(&mut *lock(&self.woken.slots), &mut self.batch);
        for &index in &self.batch {
            // A waker may outlive its slot when the slots were let go.
            let Some(slot) = self.slots.get_mut(index) else {
                continue;
            };
            slot.wake.queued.store(false, Ordering::Release);
            let Some(future) = slot.future.as_mut().as_pin_mut() else {
                continue;
            };
            if future
                .poll(&mut Context::from_waker(&slot.waker))
                .is_ready()
            {
                slot.future.set(None);
                self.free.push(index);
            }
        }
        self.batch.clear();
        if self.is_empty() {
            self.slots.clear();
            self.free.clear();
        }
    }
}

fn lock(slots: &Mutex<Vec<usize>>) -> std::sync::MutexGuard<'_, Vec<usize>> {
    slots.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::task::Poll;

    /// A future that counts its polls, is done after `done_after` of them,
    /// and keeps the waker it was last polled with (it never wakes itself).
    struct Counted {
        polls: Rc<Cell<u32>>,
        done_after: u32,
        waker: Rc<Cell<Option<Waker>>>,
    }

    impl Future for Counted {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.set(self.polls.get() + 1);
            if self.polls.get() >= self.done_after {
                return Poll::Ready(());
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    }

    /// The future, its poll count, and the waker it was last polled with.
    type Probe = (Counted, Rc<Cell<u32>>, Rc<Cell<Option<Waker>>>);

    fn counted(done_after: u32) -> Probe {
        let polls = Rc::new(Cell::new(0));
        let waker = Rc::new(Cell::new(None));
        let future = Counted {
            polls: polls.clone(),
            done_after,
            waker: waker.clone(),
        };
        (future, polls, waker)
    }

    fn poll(streams: &mut Streams<Counted>) {
        streams.poll(&mut Context::from_waker(Waker::noop()));
    }

    #[test]
    fn a_stream_is_polled_only_when_woken() {
        let mut streams = Streams::new();
        let (future, polls, waker) = counted(3);
        streams.push(future);
        poll(&mut streams);
        poll(&mut streams);
        assert_eq!(polls.get(), 1, "not woken, not polled again");
        waker.take().expect("a waker kept").wake();
        poll(&mut streams);
        assert_eq!(polls.get(), 2);
        let w = waker.take().expect("a waker kept");
        w.wake_by_ref();
        w.wake();
        poll(&mut streams);
        assert_eq!(polls.get(), 3, "two wakes, one poll");
        assert!(streams.is_empty());
    }

    #[test]
    fn a_finished_streams_slot_serves_the_next() {
        let mut streams = Streams::new();
        let (first, _, first_waker) = counted(2);
        let (second, _, _) = counted(2);
        streams.push(first);
        streams.push(second);
        poll(&mut streams);
        assert_eq!(streams.slots.len(), 2);
        first_waker.take().expect("a waker kept").wake();
        poll(&mut streams);
        assert!(!streams.is_empty());
        let (third, third_polls, _) = counted(2);
        streams.push(third);
        poll(&mut streams);
        assert_eq!(third_polls.get(), 1, "a new stream is polled at once");
        assert_eq!(streams.slots.len(), 2, "the first stream's slot reused");
    }

    #[test]
    fn the_slots_go_when_no_stream_is_open() {
        let mut streams = Streams::new();
        let (future, _, waker) = counted(2);
        streams.push(future);
        poll(&mut streams);
        let stale = waker.take().expect("a waker kept");
        stale.wake_by_ref();
        poll(&mut streams);
        assert!(streams.is_empty());
        assert!(streams.slots.is_empty(), "an idle connection holds no slot");
        // A waker that outlived its slot is harmless.
        stale.wake();
        let (next, next_polls, _) = counted(1);
        streams.push(next);
        poll(&mut streams);
        assert_eq!(next_polls.get(), 1);
        assert!(streams.is_empty());
    }

    #[test]
    fn the_connection_is_woken_for_its_streams() {
        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let task = Waker::from(flag.clone());
        let mut streams = Streams::new();
        let (future, _, waker) = counted(3);
        streams.push(future);
        streams.poll(&mut Context::from_waker(&task));
        assert!(!flag.0.load(Ordering::SeqCst));
        waker.take().expect("a waker kept").wake();
        assert!(flag.0.load(Ordering::SeqCst), "the connection's task woken");
    }
}
