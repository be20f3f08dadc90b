//! Which service a request is for, and which pool serves that service now.
//!
//! Two levels, each swapped atomically and read without a lock: the host
//! table (replaced when the set of services changes) maps a Host header to a
//! [`Service`]; each service holds its routes (the live [`Pool`], a canary's
//! split, the pools a request may ask for by color) in its own `ArcSwap`, so
//! switching one service is a single pointer swap that leaves every other
//! service's traffic untouched, however many there are.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use baton_config::HostPattern;
use baton_core::Color;
use rustc_hash::FxBuildHasher;
use tokio::time::Instant;

use crate::ask::{asked_color, Ask, Asked};
use crate::canary::{Canary, SetCookie};
use crate::target::{InFlight, Pool};

/// Why a request found no target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    #[error("no service for this host")]
    UnknownHost,
    #[error("the service has no live release")]
    NotLive,
    #[error("no healthy target")]
    NoHealthyTarget,
    #[error("route changing, try again")]
    Changing,
    #[error("X-Baton-Color must be \"blue\" or \"green\"")]
    BadColor,
    #[error("no {0} release of this service runs")]
    NoColor(Color),
}

impl NoRoute {
    /// The HTTP status a client gets for it.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Self::UnknownHost => 404,
            Self::BadColor => 400,
            _ => 503,
        }
    }
}

/// Picks from a pool, loading again if it is retired under us (the switch
/// happened between the load and the pick; the next load sees the new pool).
pub(crate) fn pick_from(pool: &Arc<Pool>) -> Result<InFlight, NoRoute> {
    match pool.pick() {
        Ok(Some(hold)) => Ok(hold),
        Ok(None) => Err(NoRoute::NoHealthyTarget),
        Err(_retired) => Err(NoRoute::Changing),
    }
}

/// The target a request goes to, and a cookie its answer must carry.
#[derive(Debug)]
pub(crate) struct Picked {
    pub(crate) hold: InFlight,
    pub(crate) cookie: Option<SetCookie>,
}

impl From<InFlight> for Picked {
    fn from(hold: InFlight) -> Self {
        Self { hold, cookie: None }
    }
}

/// Where one service's requests go: one immutable value, replaced whole.
#[derive(Debug, Clone, Default)]
struct Routes {
    /// What runs in each color (blue, green), for requests that ask for one.
    by_color: [Option<Arc<Pool>>; 2],
    live: Option<Color>,
    /// A candidate taking a share of the traffic, during a rollout.
    canary: Option<Canary>,
}

fn slot(color: Color) -> usize {
    match color {
        Color::Blue => 0,
        Color::Green => 1,
    }
}

impl Routes {
    fn live(&self) -> Option<&Arc<Pool>> {
        self.by_color[slot(self.live?)].as_ref()
    }

    /// Some color other than the live one runs, so asking for one can matter.
    fn has_standby(&self) -> bool {
        self.by_color
            .iter()
            .flatten()
            .any(|p| Some(p.color) != self.live)
    }

    fn pick(&self, ask: &impl Ask) -> Result<Picked, NoRoute> {
        match asked_color(ask, self.has_standby())? {
            Some(Asked::Header(color)) => {
                let picked = self.pick_color(color)?;
                return Ok(Picked {
                    hold: picked,
                    cookie: Some(SetCookie::Color(color)),
                });
            }
            Some(Asked::Cookie(color)) if self.by_color[slot(color)].is_some() => {
                return self.pick_color(color).map(Picked::from);
            }
            _ => {}
        }
        if let Some(canary) = &self.canary {
            let (candidate, cookie) = canary.choose(ask);
            // A candidate with no healthy target leaves its share to the
            // live release rather than failing it.
            let hold = match candidate.then(|| pick_from(canary.pool())) {
                Some(Err(NoRoute::NoHealthyTarget)) | None => {
                    pick_from(self.live().ok_or(NoRoute::NotLive)?)?
                }
                Some(picked) => picked?,
            };
            return Ok(Picked { hold, cookie });
        }
        pick_from(self.live().ok_or(NoRoute::NotLive)?).map(Picked::from)
    }

    /// A request for one color reaches it whether it is live or not.
    fn pick_color(&self, color: Color) -> Result<InFlight, NoRoute> {
        let pool = self.by_color[slot(color)]
            .as_ref()
            .ok_or(NoRoute::NoColor(color))?;
        pool.pick_target(Instant::now())
            .ok_or(NoRoute::NoHealthyTarget)
    }
}

/// One service's routing state. Changes come from the control plane, one
/// at a time; the request path only loads the current [`Routes`].
#[derive(Debug)]
pub struct Service {
    pub name: String,
    routes: ArcSwap<Routes>,
    changing: Mutex<()>,
}

impl Service {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            routes: ArcSwap::default(),
            changing: Mutex::new(()),
        }
    }

    /// The pool that takes this service's traffic now (beside a canary).
    pub fn live(&self) -> Option<Arc<Pool>> {
        self.routes.load().live().cloned()
    }

    /// The rollout under way, if any.
    pub fn canary(&self) -> Option<Canary> {
        self.routes.load().canary.clone()
    }

    /// Replaces the routes with what `change` makes of them, one change at a time.
    fn change(&self, change: impl FnOnce(&mut Routes)) {
        let _one = self.changing.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes = Routes::clone(&self.routes.load());
        change(&mut routes);
        self.routes.store(Arc::new(routes));
    }

    /// The switch: from this instant every new request goes to `pool` (a
    /// canary's end, too). Returns the pool that was live, already retired,
    /// for the caller to drain; it stays reachable by its color.
    pub fn switch(&self, pool: Arc<Pool>) -> Option<Arc<Pool>> {
        let mut previous = None;
        let mut dropped = None;
        self.change(|r| {
            previous = r.live().filter(|p| !Arc::ptr_eq(p, &pool)).cloned();
            dropped = r
                .canary
                .take()
                .map(|c| c.pool().clone())
                .filter(|p| !Arc::ptr_eq(p, &pool));
            r.live = Some(pool.color);
            r.by_color[slot(pool.color)] = Some(pool.clone());
        });
        for p in previous.iter().chain(dropped.iter()) {
            p.retire();
        }
        previous
    }

    /// Makes `pool` reachable by its color only (`X-Baton-Color`): a
    /// candidate before its rollout.
    pub fn stage(&self, pool: Arc<Pool>) {
        let at = slot(pool.color);
        self.change(|r| r.by_color[at] = Some(pool));
    }

    /// Gives a candidate its share of the traffic (again, at a new weight).
    pub fn split(&self, canary: Canary) {
        self.change(|r| {
            r.by_color[slot(canary.pool().color)] = Some(canary.pool().clone());
            r.canary = Some(canary);
        });
    }

    /// Takes a canary's share back at once. Returns its pool, retired, for
    /// the caller to drain.
    pub fn withdraw(&self, color: Color) -> Option<Arc<Pool>> {
        let mut withdrawn = None;
        self.change(|r| {
            if r.canary.as_ref().is_some_and(|c| c.pool().color == color) {
                withdrawn = r.canary.take().map(|c| c.pool().clone());
            }
        });
        if let Some(p) = &withdrawn {
            p.retire();
        }
        withdrawn
    }

    /// Forgets what ran in `color` once it is stopped, unless it is live.
    pub fn unstage(&self, color: Color) {
        self.change(|r| {
            let in_use =
                r.live == Some(color) || r.canary.as_ref().is_some_and(|c| c.pool().color == color);
            if !in_use {
                r.by_color[slot(color)] = None;
            }
        });
    }
}

/// Host header to service, built once per configuration.
#[derive(Debug, Default)]
pub struct HostTable {
    exact: HashMap<String, Arc<Service>, FxBuildHasher>,
    /// `(".example.com", service)`, longest suffix first.
    suffixes: Vec<(String, Arc<Service>)>,
    default: Option<Arc<Service>>,
}

impl HostTable {
    /// Builds a table from each service's patterns.
    pub fn new<'a>(services: impl IntoIterator<Item = (&'a [HostPattern], Arc<Service>)>) -> Self {
        let mut table = Self::default();
        for (patterns, service) in services {
            for pattern in patterns {
                match pattern {
                    HostPattern::Exact(h) => {
                        table.exact.insert(h.clone(), service.clone());
                    }
                    HostPattern::Suffix(s) => table.suffixes.push((s.clone(), service.clone())),
                    HostPattern::Default => table.default = Some(service.clone()),
                }
            }
        }
        table
            .suffixes
            .sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        table
    }

    /// The service for a Host header value (port and case ignored).
    pub fn route(&self, host: Option<&str>) -> Option<&Arc<Service>> {
        let Some(host) = host else {
            return self.default.as_ref();
        };
        let name = strip_port(host);
        let found = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.lookup(&name.to_ascii_lowercase())
        } else {
            self.lookup(name)
        };
        found.or(self.default.as_ref())
    }

    fn lookup(&self, name: &str) -> Option<&Arc<Service>> {
        self.exact.get(name).or_else(|| {
            self.suffixes
                .iter()
                .find(|(suffix, _)| name.ends_with(suffix.as_str()))
                .map(|(_, s)| s)
        })
    }
}

/// A request that says nothing but its Host.
struct HostOnly<'a>(Option<&'a str>);

impl Ask for HostOnly<'_> {
    fn host(&self) -> Option<&str> {
        self.0
    }
    fn color_header(&self) -> Option<&[u8]> {
        None
    }
    fn cookies(&self) -> Option<&[u8]> {
        None
    }
    fn header(&self, _: &str) -> Option<&[u8]> {
        None
    }
    fn client_ip(&self) -> &str {
        ""
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map(|h| &h[1..]).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

/// The live host table, swapped whole when services are added or removed.
#[derive(Debug, Default)]
pub struct Router {
    table: ArcSwap<HostTable>,
}

impl Router {
    pub fn set(&self, table: HostTable) {
        self.table.store(Arc::new(table));
    }

    /// The request path's lookup: host to service to pool to target, counted
    /// in flight. Lock-free: two `arc-swap` loads and atomic counters.
    pub(crate) fn pick(&self, ask: &impl Ask) -> Result<Picked, NoRoute> {
        // A pool retired between our load and our pick is replaced by then.
        for _ in 0..8 {
            let table = self.table.load();
            let service = table.route(ask.host()).ok_or(NoRoute::UnknownHost)?;
            match service.routes.load().pick(ask) {
                Err(NoRoute::Changing) => continue,
                picked => return picked,
            }
        }
        Err(NoRoute::Changing)
    }

    /// The target a request for `host` would go to now: the request path's
    /// lookup without the request, for benchmarks and diagnostics.
    pub fn probe(&self, host: Option<&str>) -> Result<SocketAddr, NoRoute> {
        let ask = HostOnly(host);
        self.pick(&ask).map(|p| p.hold.target().addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> HostTable {
        let svc = |n: &str| Arc::new(Service::new(n));
        HostTable::new([
            (
                &[HostPattern::Exact("api.example.com".into())][..],
                svc("api"),
            ),
            (
                &[HostPattern::Suffix(".example.com".into())][..],
                svc("wild"),
            ),
            (
                &[HostPattern::Suffix(".a.example.com".into())][..],
                svc("deeper"),
            ),
            (&[HostPattern::Default][..], svc("default")),
        ])
    }

    fn name(t: &HostTable, host: Option<&str>) -> String {
        t.route(host).map(|s| s.name.clone()).unwrap_or_default()
    }

    #[test]
    fn routes_exact_then_longest_suffix_then_default() {
        let t = table();
        assert_eq!(name(&t, Some("api.example.com")), "api");
        assert_eq!(name(&t, Some("API.Example.com:8080")), "api");
        assert_eq!(name(&t, Some("www.example.com")), "wild");
        assert_eq!(name(&t, Some("x.a.example.com")), "deeper");
        assert_eq!(name(&t, Some("example.org")), "default");
        assert_eq!(name(&t, Some("[::1]:8080")), "default");
        assert_eq!(name(&t, None), "default");
    }

    #[test]
    fn pick_says_why_there_is_no_target() {
        use baton_core::Color;
        let web = Arc::new(Service::new("web"));
        let router = Router::default();
        router.set(HostTable::new([(
            &[HostPattern::Exact("web".into())][..],
            web.clone(),
        )]));
        assert_eq!(router.probe(Some("other")), Err(NoRoute::UnknownHost));
        assert_eq!(router.probe(Some("web")), Err(NoRoute::NotLive));
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let target = Arc::new(crate::Target::new(addr));
        web.switch(Arc::new(Pool::new(Color::Blue, "v1", vec![target.clone()])));
        assert_eq!(router.probe(Some("web")), Err(NoRoute::NoHealthyTarget));
        target.set_healthy(true);
        assert_eq!(router.probe(Some("web:8080")), Ok(addr));
        assert_eq!(target.in_flight(), 0, "a probe releases what it counted");
    }

    #[test]
    fn a_canary_without_a_healthy_target_leaves_its_share_to_the_live_release() {
        use baton_core::{Sticky, Weight};
        let web = Arc::new(Service::new("web"));
        let router = Router::default();
        router.set(HostTable::new([(&[HostPattern::Default][..], web.clone())]));
        let target = |port| {
            Arc::new(crate::Target::with_health(
                SocketAddr::from(([127, 0, 0, 1], port)),
                true,
            ))
        };
        web.switch(Arc::new(Pool::new(Color::Blue, "v1", vec![target(1)])));
        let sick = target(2);
        let candidate = Arc::new(Pool::new(Color::Green, "v2", vec![sick.clone()]));
        web.split(Canary::new("web", candidate, Weight::FULL, Sticky::None, 1));
        assert_eq!(router.probe(None).map(|a| a.port()), Ok(2));
        sick.set_healthy(false);
        assert_eq!(router.probe(None).map(|a| a.port()), Ok(1));
    }

    #[test]
    fn no_default_means_no_route() {
        let t = HostTable::new([(
            &[HostPattern::Exact("a".into())][..],
            Arc::new(Service::new("a")),
        )]);
        assert!(t.route(Some("b")).is_none());
    }
}
