//! Which service a request is for, and which pool serves that service now.
//!
//! Two levels, each swapped atomically and read without a lock: the host
//! table (replaced when the set of services changes) maps a Host header to a
//! [`Service`]; each service holds its live [`Pool`] in its own `ArcSwap`, so
//! switching one service is a single pointer swap that leaves every other
//! service's traffic untouched, however many there are.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use baton_config::HostPattern;
use rustc_hash::FxBuildHasher;

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
}

impl NoRoute {
    /// The HTTP status a client gets for it.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Self::UnknownHost => 404,
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

/// One service's routing state.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    live: ArcSwapOption<Pool>,
}

impl Service {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            live: ArcSwapOption::empty(),
        }
    }

    /// The pool that takes this service's traffic now.
    pub fn live(&self) -> Option<Arc<Pool>> {
        self.live.load_full()
    }

    /// The switch: from this instant new requests go to `pool`. Returns the
    /// pool that was live, already retired, for the caller to drain.
    pub fn switch(&self, pool: Arc<Pool>) -> Option<Arc<Pool>> {
        let previous = self.live.swap(Some(pool));
        if let Some(p) = &previous {
            p.retire();
        }
        previous
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

    /// The request path's lookup: host to service to live pool to target,
    /// counted in flight. Lock-free: two `arc-swap` loads and atomic counters.
    pub(crate) fn pick(&self, host: Option<&str>) -> Result<InFlight, NoRoute> {
        // A pool retired between our load and our pick is replaced by then.
        for _ in 0..8 {
            let table = self.table.load();
            let service = table.route(host).ok_or(NoRoute::UnknownHost)?;
            let live = service.live.load();
            let pool = live.as_ref().ok_or(NoRoute::NotLive)?;
            match pick_from(pool) {
                Err(NoRoute::Changing) => continue,
                picked => return picked,
            }
        }
        Err(NoRoute::Changing)
    }

    /// The target a request for `host` would go to now: the request path's
    /// lookup without the request, for benchmarks and diagnostics.
    pub fn probe(&self, host: Option<&str>) -> Result<SocketAddr, NoRoute> {
        self.pick(host).map(|hold| hold.target().addr())
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
    fn no_default_means_no_route() {
        let t = HostTable::new([(
            &[HostPattern::Exact("a".into())][..],
            Arc::new(Service::new("a")),
        )]);
        assert!(t.route(Some("b")).is_none());
    }
}
