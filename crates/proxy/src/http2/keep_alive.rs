//! The idle timeout of an HTTP/2 client connection, and a check that a
//! client with open streams is still there.
//!
//! Every half of the idle timeout it looks at the connection: two looks in
//! a row with no stream open or begun close it gracefully (GOAWAY), so an
//! idle connection lasts between one and one and a half idle timeouts.
//! While streams are open it sends a PING; one still unanswered at the
//! next look ends the connection, whose streams would otherwise wait on a
//! client that is gone.

use std::task::Context;
use std::time::Duration;

use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

/// The payload of baton's PINGs, to know their answers.
const PING: [u8; 8] = *b"baton-ka";

/// What a look at the connection calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Send this PING.
    Ping([u8; 8]),
    /// Idle: ask the client to go, letting open streams finish.
    GoAway,
    /// A PING went unanswered: the client is gone.
    Close,
}

pub(super) struct KeepAlive {
    tick: Interval,
    awaiting_pong: bool,
    quiet_looks: u8,
    accepted_at_last_look: u64,
}

impl KeepAlive {
    pub(super) fn new(idle: Duration) -> Self {
        let every = idle / 2;
        let mut tick = interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            tick,
            awaiting_pong: false,
            quiet_looks: 0,
            accepted_at_last_look: 0,
        }
    }

    /// A PING ACK came.
    pub(super) fn pong(&mut self, payload: [u8; 8]) {
        if payload == PING {
            self.awaiting_pong = false;
        }
    }

    /// Looks at the connection when a look is due. Polls the tick until it
    /// is pending, which is what schedules the next wake-up.
    pub(super) fn poll(
        &mut self,
        cx: &mut Context<'_>,
        open: bool,
        accepted: u64,
    ) -> Option<Verdict> {
        let mut verdict = None;
        while self.tick.poll_tick(cx).is_ready() {
            if let Some(v) = self.look(open, accepted) {
                verdict = Some(v);
            }
        }
        verdict
    }

    fn look(&mut self, open: bool, accepted: u64) -> Option<Verdict> {
        let quiet = !open && accepted == self.accepted_at_last_look;
        self.accepted_at_last_look = accepted;
        self.quiet_looks = if quiet {
            self.quiet_looks.saturating_add(1)
        } else {
            0
        };
        if self.awaiting_pong {
            return Some(Verdict::Close);
        }
        if open {
            self.awaiting_pong = true;
            return Some(Verdict::Ping(PING));
        }
        (self.quiet_looks == 2).then_some(Verdict::GoAway)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_quiet_looks_go_away_and_busy_ones_ping() {
        let mut k = KeepAlive::new(Duration::from_secs(10));
        assert_eq!(k.look(false, 0), None);
        assert_eq!(k.look(false, 0), Some(Verdict::GoAway));
        let mut k = KeepAlive::new(Duration::from_secs(10));
        assert_eq!(k.look(false, 0), None);
        assert_eq!(k.look(false, 1), None, "a stream begun and done meanwhile");
        assert_eq!(k.look(true, 1), Some(Verdict::Ping(PING)));
        k.pong(PING);
        assert_eq!(k.look(true, 1), Some(Verdict::Ping(PING)));
        assert_eq!(k.look(true, 1), Some(Verdict::Close), "unanswered");
    }

    #[tokio::test]
    async fn only_its_own_ping_is_an_answer() {
        let mut k = KeepAlive::new(Duration::from_secs(10));
        assert_eq!(k.look(true, 1), Some(Verdict::Ping(PING)));
        k.pong(*b"otherone");
        assert_eq!(k.look(true, 1), Some(Verdict::Close));
    }
}
