//! What a connection has to write to its client: frames in the order they
//! were made, written in as few system calls as the socket takes.
//!
//! Frame headers and small payloads are copied into one buffer; a large
//! payload is queued as it is and goes out with the rest in one `writev`,
//! so a body read from a target is not copied again on its way out.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncWrite;

/// Payloads up to this size are copied rather than queued.
const COPY_MAX: usize = 4096;
/// Buffers given to one `writev`.
const MAX_SLICES: usize = 32;

#[derive(Debug, Default)]
pub(super) struct Out {
    /// Written before `tail`, in order.
    queued: VecDeque<Bytes>,
    queued_len: usize,
    /// Being filled.
    tail: BytesMut,
}

impl Out {
    /// Bytes waiting to be written.
    pub(super) fn len(&self) -> usize {
        self.queued_len + self.tail.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where frame headers and small frames are written.
    pub(super) fn buf(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Appends a payload after what is buffered.
    pub(super) fn payload(&mut self, data: Bytes) {
        if data.len() <= COPY_MAX {
            self.tail.put_slice(&data);
            return;
        }
        if !self.tail.is_empty() {
            let head = self.tail.split().freeze();
            self.queue(head);
        }
        self.queue(data);
    }

    fn queue(&mut self, data: Bytes) {
        self.queued_len += data.len();
        self.queued.push_back(data);
    }

    /// Writes until everything is written (`Ready(Ok)`) or the socket is full.
    pub(super) fn poll_write<T>(&mut self, cx: &mut Context<'_>, io: &mut T) -> Poll<io::Result<()>>
    where
        T: AsyncWrite + Unpin,
    {
        while !self.is_empty() {
            let written = if self.queued.is_empty() {
                ready!(Pin::new(&mut *io).poll_write(cx, &self.tail))?
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut n = 0;
                for b in self.queued.iter().take(MAX_SLICES - 1) {
                    slices[n] = IoSlice::new(b);
                    n += 1;
                }
                slices[n] = IoSlice::new(&self.tail);
                n += 1;
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.queued.front_mut() else {
                self.tail.advance(n);
                return;
            };
            let step = n.min(front.len());
            front.advance(step);
            self.queued_len -= step;
            n -= step;
            if front.is_empty() {
                self.queued.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `per_write` bytes per call.
    struct Trickle {
        taken: Vec<u8>,
        per_write: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.per_write);
            self.taken.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let mut left = self.per_write;
            let mut n = 0;
            for b in bufs {
                let step = b.len().min(left);
                self.taken.extend_from_slice(&b[..step]);
                left -= step;
                n += step;
            }
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn frames_go_out_in_order_however_the_socket_takes_them() {
        let big = Bytes::from(vec![7u8; 10_000]);
        let mut expected = Vec::new();
        let mut out = Out::default();
        for i in 0..5u8 {
            out.buf().put_slice(&[i; 9]);
            expected.extend_from_slice(&[i; 9]);
            let data = if i % 2 == 0 {
                big.clone()
            } else {
                Bytes::from(vec![i; 100])
            };
            expected.extend_from_slice(&data);
            out.payload(data);
        }
        assert_eq!(out.len(), expected.len());
        let mut socket = Trickle {
            taken: Vec::new(),
            per_write: 3_333,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            out.poll_write(&mut cx, &mut socket),
            Poll::Ready(Ok(()))
        ));
        assert!(out.is_empty());
        assert_eq!(socket.taken, expected);
    }
}
