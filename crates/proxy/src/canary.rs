//! The canary split: while a rollout runs, which of a service's two releases
//! a request goes to, and how a user stays on one of them.
//!
//! A user is assigned once per rollout and keeps that assignment whatever
//! the weight becomes later, so that one user sees one version from the
//! first step to promotion or rollback; a raised weight draws new users.
//! With `cookie`, the assignment travels in a cookie (it survives a restart
//! of baton); with `header` and `ip`, it is pinned in a table of the
//! rollout, keyed by a hash of the user's key (users sharing a slot share
//! an assignment, which keeps each of them on one version).

use std::hash::BuildHasher;
use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use baton_core::{Color, Sticky, Weight};
use rustc_hash::FxBuildHasher;

use crate::ask::{Ask, COLOR_COOKIE};
use crate::target::Pool;

/// Slots of the pin table: 256 KiB per rollout.
const PINS: usize = 1 << 18;
const UNSEEN: u8 = 0;
const LIVE: u8 = 1;
const CANDIDATE: u8 = 2;

/// A candidate taking a share of its service's traffic.
#[derive(Debug, Clone)]
pub struct Canary {
    pool: Arc<Pool>,
    weight: Weight,
    sticky: Sticky,
    /// Names this rollout in its cookies, so an older rollout's are redrawn.
    rollout: u64,
    /// `baton-<service>`.
    cookie: Arc<str>,
    pins: Option<Arc<Pins>>,
}

impl Canary {
    /// A rollout of `pool`; `rollout` names it (the deploy's id), so that
    /// users keep their assignment when baton restarts in the middle.
    pub fn new(
        service: &str,
        pool: Arc<Pool>,
        weight: Weight,
        sticky: Sticky,
        rollout: u64,
    ) -> Self {
        let pins = matches!(sticky, Sticky::Header(_) | Sticky::Ip).then(|| Arc::new(Pins::new()));
        Self {
            pool,
            weight,
            sticky,
            rollout,
            cookie: format!("baton-{service}").into(),
            pins,
        }
    }

    /// The same rollout at another weight: assignments made so far stay.
    pub fn with_weight(&self, weight: Weight) -> Self {
        Self {
            weight,
            ..self.clone()
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    pub fn weight(&self) -> Weight {
        self.weight
    }

    /// Whether this request goes to the candidate, and a cookie to set when
    /// the user was assigned just now.
    pub(crate) fn choose(&self, ask: &impl Ask) -> (bool, Option<SetCookie>) {
        match &self.sticky {
            Sticky::None => (self.draw(), None),
            Sticky::Cookie => self.by_cookie(ask),
            Sticky::Header(name) => (self.pinned(ask.header(name)), None),
            Sticky::Ip => (self.pinned(Some(ask.client_ip().as_bytes())), None),
        }
    }

    fn draw(&self) -> bool {
        fastrand::u16(..Weight::FULL.basis_points()) < self.weight.basis_points()
    }

    fn by_cookie(&self, ask: &impl Ask) -> (bool, Option<SetCookie>) {
        let assigned = ask
            .cookie(&self.cookie)
            .and_then(|v| parse_assignment(v, self.rollout));
        match assigned {
            Some(candidate) => (candidate, None),
            None => {
                let candidate = self.draw();
                let cookie = SetCookie::Assigned {
                    name: self.cookie.clone(),
                    rollout: self.rollout,
                    candidate,
                };
                (candidate, Some(cookie))
            }
        }
    }

    /// A user with no key (the header is missing) is drawn per request.
    fn pinned(&self, key: Option<&[u8]>) -> bool {
        match (key, &self.pins) {
            (Some(key), Some(pins)) => pins.get_or(key, || self.draw()),
            _ => self.draw(),
        }
    }
}

/// `7.c` (candidate) or `7.l` (live) for rollout 7; `None` for another rollout.
fn parse_assignment(value: &[u8], rollout: u64) -> Option<bool> {
    let (id, side) = value.split_at(value.iter().position(|&b| b == b'.')?);
    let id: u64 = std::str::from_utf8(id).ok()?.parse().ok()?;
    match side {
        b".c" if id == rollout => Some(true),
        b".l" if id == rollout => Some(false),
        _ => None,
    }
}

/// Assignments of one rollout, by hash of the user's key; lock-free.
#[derive(Debug)]
struct Pins {
    slots: Box<[AtomicU8]>,
}

impl Pins {
    fn new() -> Self {
        Self {
            slots: (0..PINS).map(|_| AtomicU8::new(UNSEEN)).collect(),
        }
    }

    /// The user's assignment, drawn with `draw` the first time. Two first
    /// requests racing agree on whichever stored first.
    fn get_or(&self, key: &[u8], draw: impl FnOnce() -> bool) -> bool {
        let slot = &self.slots[FxBuildHasher.hash_one(key) as usize & (PINS - 1)];
        let seen = slot.load(Relaxed);
        if seen != UNSEEN {
            return seen == CANDIDATE;
        }
        let mine = if draw() { CANDIDATE } else { LIVE };
        match slot.compare_exchange(UNSEEN, mine, Relaxed, Relaxed) {
            Ok(_) => mine == CANDIDATE,
            Err(theirs) => theirs == CANDIDATE,
        }
    }
}

/// A cookie the answer to a request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SetCookie {
    /// The user's assignment in a rollout.
    Assigned {
        name: Arc<str>,
        rollout: u64,
        candidate: bool,
    },
    /// Keeps asking for the color the request asked for by header.
    Color(Color),
}

impl SetCookie {
    /// The header's value.
    pub(crate) fn write_value(&self, out: &mut Vec<u8>) {
        // Writing to a Vec cannot fail.
        let _ = match self {
            Self::Assigned {
                name,
                rollout,
                candidate,
            } => {
                let side = if *candidate { 'c' } else { 'l' };
                write!(
                    out,
                    "{name}={rollout}.{side}; Path=/; HttpOnly; SameSite=Lax"
                )
            }
            Self::Color(color) => write!(out, "{COLOR_COOKIE}={color}; Path=/; SameSite=Lax"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct User {
        cookies: Option<Vec<u8>>,
        id: Option<&'static str>,
        ip: &'static str,
    }

    impl Ask for User {
        fn host(&self) -> Option<&str> {
            None
        }
        fn color_header(&self) -> Option<&[u8]> {
            None
        }
        fn cookies(&self) -> Option<&[u8]> {
            self.cookies.as_deref()
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            (name == "x-user-id").then_some(self.id?.as_bytes())
        }
        fn client_ip(&self) -> &str {
            self.ip
        }
    }

    fn canary(sticky: Sticky, percent: f64) -> Canary {
        let pool = Arc::new(Pool::new(Color::Green, "v2", vec![]));
        let weight = Weight::from_percent(percent).unwrap();
        Canary::new("web", pool, weight, sticky, 7)
    }

    fn user(ip: &'static str) -> User {
        User {
            cookies: None,
            id: None,
            ip,
        }
    }

    #[test]
    fn unsticky_draws_match_the_weight() {
        let c = canary(Sticky::None, 5.0);
        let hits = (0..100_000)
            .filter(|_| c.choose(&user("1.1.1.1")).0)
            .count();
        assert!((4_000..6_000).contains(&hits), "{hits}");
    }

    #[test]
    fn cookie_users_keep_their_assignment_when_the_weight_rises() {
        let c = canary(Sticky::Cookie, 50.0);
        let (first, cookie) = c.choose(&user("1.1.1.1"));
        let mut value = Vec::new();
        cookie
            .expect("a new user gets a cookie")
            .write_value(&mut value);
        let pair = value.split(|&b| b == b';').next().unwrap().to_vec();
        let back = User {
            cookies: Some([b"other=1; ".as_slice(), &pair].concat()),
            ..user("1.1.1.1")
        };
        for weight in [0.01, 50.0, 100.0] {
            let c = c.with_weight(Weight::from_percent(weight).unwrap());
            assert_eq!(c.choose(&back), (first, None));
        }
        // Another rollout's cookie is redrawn.
        let later = Canary::new("web", c.pool().clone(), Weight::FULL, Sticky::Cookie, 8);
        assert!(matches!(later.choose(&back), (true, Some(_))));
    }

    #[test]
    fn header_and_ip_users_are_pinned() {
        for sticky in [Sticky::Header("x-user-id".into()), Sticky::Ip] {
            let low = canary(sticky, 30.0);
            let high = low.with_weight(Weight::FULL);
            let ips = [
                "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6",
            ];
            let ids = ["a", "b", "c", "d", "e", "f"];
            for (ip, id) in ips.into_iter().zip(ids) {
                let u = User {
                    id: Some(id),
                    ..user(ip)
                };
                let first = low.choose(&u).0;
                assert_eq!(high.choose(&u).0, first);
                assert_eq!(low.choose(&u).0, first);
            }
        }
    }

    #[test]
    fn cookie_values_name_their_rollout() {
        assert_eq!(parse_assignment(b"7.c", 7), Some(true));
        assert_eq!(parse_assignment(b"7.l", 7), Some(false));
        assert_eq!(parse_assignment(b"6.c", 7), None);
        assert_eq!(parse_assignment(b"7.x", 7), None);
        assert_eq!(parse_assignment(b"junk", 7), None);
    }
}
