//! nginx's processes as /proc shows them: the master (from its pid file)
//! and its workers, the retired ones among them retitled "shutting down".
//! nginx has no API for either; a reload is seen through them.

use std::path::Path;

use crate::TrafficError;

/// nginx's master process, from its pid file, if it runs.
pub(super) fn master_pid(file: &Path) -> Result<u32, TrafficError> {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|&pid| alive(pid))
        .ok_or_else(|| {
            super::error(format!(
                "nginx is not running (no live pid in {})",
                file.display()
            ))
        })
}

/// The children of `master` (its workers and cache processes).
pub(super) fn workers(master: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent(pid) == Some(master))
        .collect()
}

/// True while `pid` still runs as one of `master`'s processes (a pid
/// reused since belongs to another parent).
pub(super) fn running(master: u32, pid: u32) -> bool {
    alive(pid) && parent(pid) == Some(master)
}

/// True once `pid` stopped taking new connections: nginx retitles a
/// worker "shutting down" as it closes its listening sockets.
pub(super) fn retiring(master: u32, pid: u32) -> bool {
    !running(master, pid) || shutting_down(pid)
}

/// Ends a worker a reload retired, closing the connections it still holds:
/// what nginx's `worker_shutdown_timeout` does when it expires. A worker
/// nginx has not retitled "shutting down" is left alone.
pub(super) fn end(master: u32, pid: u32) {
    if running(master, pid) && shutting_down(pid) {
        // SAFETY: kill(2) only sends a signal; no memory is involved.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
}

fn shutting_down(pid: u32) -> bool {
    let title = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&title).contains("shutting down")
}

/// `pid`'s parent, from /proc/PID/stat.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces): state, then the parent.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    after.split(' ').nth(1)?.parse().ok()
}

/// True while `pid` runs (a zombie is done).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3));
    matches!(state, Some(s) if s != "Z" && s != "X")
}
