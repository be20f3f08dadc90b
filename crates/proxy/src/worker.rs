//! Data-plane workers: one OS thread per worker, each running its own
//! single-threaded tokio runtime with its own upstream connection pool.
//!
//! A connection lives on the worker that accepted it, and so do the upstream
//! connections it uses: no work stealing, no cross-thread wake-ups, no pool
//! shared between threads. This is the nginx and HAProxy layout, and what
//! `[proxy] workers` sets.

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use crate::forward::{Forwarder, Timeouts};

/// One data-plane thread.
pub(crate) struct Worker {
    pub(crate) handle: Handle,
    pub(crate) forwarder: Arc<Forwarder>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts worker `index`; it runs until `stop` is cancelled.
    pub(crate) fn spawn(
        index: usize,
        timeouts: Timeouts,
        stop: CancellationToken,
    ) -> io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("baton-proxy-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                let _ = tx.send(Ok(runtime.handle().clone()));
                runtime.block_on(stop.cancelled());
            })?;
        let handle: Handle = rx
            .recv()
            .map_err(|_| io::Error::other("proxy worker died while starting"))??;
        let forwarder = Arc::new(Forwarder::new(timeouts)?);
        let sweeps = forwarder.clone();
        handle.spawn(async move { sweeps.spawn_sweeps() });
        Ok(Self {
            handle,
            forwarder,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The runtime stops with the stop token; do not block a drop on it.
        drop(self.thread.take());
    }
}
