//! Host ports for instances to listen on, shared by every runtime of this
//! baton so that a process and a container are never given the same one.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::RuntimeError;

/// How long a handed-out port is not handed out again.
const QUARANTINE: Duration = Duration::from_secs(60);

/// Ports handed out recently: an app may not have bound its port yet, and
/// the kernel can offer the same free port twice in a row.
static HANDED_OUT: Mutex<VecDeque<(Instant, u16)>> = Mutex::new(VecDeque::new());

/// A loopback port nobody listens on right now and that was not handed out
/// in the last [`QUARANTINE`].
pub(crate) fn free_port() -> Result<u16, RuntimeError> {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    while handed_out
        .front()
        .is_some_and(|(at, _)| at.elapsed() > QUARANTINE)
    {
        handed_out.pop_front();
    }
    // Listeners stay open until a port is chosen, so each try gets a new one.
    let mut tried = Vec::new();
    loop {
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(|source| RuntimeError::Io {
            what: "choosing a port".into(),
            source,
        })?;
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        if port != 0 && !handed_out.iter().any(|(_, p)| *p == port) {
            handed_out.push_back((Instant::now(), port));
            return Ok(port);
        }
        tried.push(listener);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_never_handed_out_twice_in_a_row() {
        let ports: Vec<u16> = (0..200).map(|_| super::free_port().unwrap()).collect();
        let unique: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), ports.len(), "a port was handed out twice");
    }
}
