//! Which service a request is for, and which pool serves that service now.
//!
//! Two levels, each swapped atomically and read without a lock: the host
//! table (replaced when the set of services changes) maps a Host header to a
//! [`Service`]; each service holds its live [`Pool`] in its own `ArcSwap`, so
//! switching one service is a single pointer swap that leaves every other
//! service's traffic untouched, however many there are.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use baton_config::HostPattern;

use crate::target::Pool;

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

    pub(crate) fn live_ref(&self) -> arc_swap::Guard<Option<Arc<Pool>>> {
        self.live.load()
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
    exact: HashMap<String, Arc<Service>>,
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

    pub(crate) fn table(&self) -> arc_swap::Guard<Arc<HostTable>> {
        self.table.load()
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
    fn no_default_means_no_route() {
        let t = HostTable::new([(
            &[HostPattern::Exact("a".into())][..],
            Arc::new(Service::new("a")),
        )]);
        assert!(t.route(Some("b")).is_none());
    }
}
