//! Small pieces the load balancer drivers share.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

/// Replaces `file` with `bytes` whole or not at all: written beside it,
/// flushed to disk, then renamed over it, so that a load balancer reading it
/// (at a reload, say) never sees half of it.
pub(crate) fn write_atomically(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = file.with_extension("baton-tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, file)
}

/// A lock held only for plain reads and writes: a panic while holding it
/// cannot leave the data half-changed, so a poisoned lock is used as is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Milliseconds since the epoch, as the store and `status` show times.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
