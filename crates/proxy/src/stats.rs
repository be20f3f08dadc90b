//! What each pool's requests came to: answers by status class, a latency
//! histogram, and failed attempts toward its targets.
//!
//! A canary's analysis compares the candidate with the live release over an
//! interval, and `/metrics` exposes the same counts, so they are kept per
//! pool (one release in one color) with atomic counters: the request path
//! records without a lock, readers take a [`Snapshot`] and subtract.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds: 14 per decade from
/// 10 µs to 100 s (about 25% apart, so a p99 is within a quarter of the
/// truth), and including the bounds Prometheus clients use by default, so
/// those are exact when the histogram is exposed.
pub const BOUNDS_US: [u64; 99] = bounds();

const STEPS: [u64; 14] = [
    100, 125, 150, 175, 200, 250, 300, 350, 400, 500, 600, 700, 800, 900,
];

const fn bounds() -> [u64; 99] {
    let mut out = [0; 99];
    let mut decade = 0;
    let mut scale = 1; // STEPS are tenths of a unit of 10 µs × scale
    while decade < 7 {
        let mut i = 0;
        while i < STEPS.len() {
            out[decade * 14 + i] = STEPS[i] * scale / 10;
            i += 1;
        }
        scale *= 10;
        decade += 1;
    }
    out[98] = 100_000_000;
    out
}

/// Index of the status classes: 1xx to 5xx.
const CLASSES: usize = 5;

/// One pool's counters.
#[derive(Debug)]
pub struct Stats {
    by_class: [AtomicU64; CLASSES],
    /// One count per bucket of [`BOUNDS_US`], and one for longer.
    latency: [AtomicU64; BOUNDS_US.len() + 1],
    latency_sum_us: AtomicU64,
    upstream_errors: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            by_class: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_us: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// A request answered with `status` after `took`.
    pub fn record(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, CLASSES) - 1;
        self.by_class[class].fetch_add(1, Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.partition_point(|&b| b < us);
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// `n` answers of status class `class` (1 to 5) counted elsewhere, by a
    /// load balancer in front of the pool's targets; their latency is not
    /// known, so they weigh in error rates but not in latency quantiles.
    pub fn count(&self, class: u16, n: u64) {
        let class = usize::from(class).clamp(1, CLASSES) - 1;
        self.by_class[class].fetch_add(n, Relaxed);
    }

    /// An attempt toward a target failed (unreachable, reset, bad answer).
    pub(crate) fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let load = |a: &AtomicU64| a.load(Relaxed);
        Snapshot {
            by_class: self.by_class.each_ref().map(load),
            latency: self.latency.each_ref().map(load),
            latency_sum_us: load(&self.latency_sum_us),
            upstream_errors: load(&self.upstream_errors),
        }
    }
}

/// The counters at one moment; two of them subtract to an interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Answers with status 1xx, 2xx, 3xx, 4xx and 5xx.
    pub by_class: [u64; CLASSES],
    /// Counts per latency bucket (not cumulative); the last is above 100 s.
    pub latency: [u64; BOUNDS_US.len() + 1],
    pub latency_sum_us: u64,
    pub upstream_errors: u64,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            by_class: [0; CLASSES],
            latency: [0; BOUNDS_US.len() + 1],
            latency_sum_us: 0,
            upstream_errors: 0,
        }
    }
}

impl Snapshot {
    /// What happened between `earlier` and this snapshot.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let sub = |a: u64, b: u64| a.saturating_sub(b);
        Snapshot {
            by_class: std::array::from_fn(|i| sub(self.by_class[i], earlier.by_class[i])),
            latency: std::array::from_fn(|i| sub(self.latency[i], earlier.latency[i])),
            latency_sum_us: sub(self.latency_sum_us, earlier.latency_sum_us),
            upstream_errors: sub(self.upstream_errors, earlier.upstream_errors),
        }
    }

    pub fn requests(&self) -> u64 {
        self.by_class.iter().sum()
    }

    pub fn server_errors(&self) -> u64 {
        self.by_class[4]
    }

    /// The 5xx share; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then(|| self.server_errors() as f64 / n as f64)
    }

    /// The latency below which `q` (0 to 1) of the requests finished,
    /// interpolated within its bucket; `None` without requests.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.requests_timed();
        if n == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * n as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &count) in self.latency.iter().enumerate() {
            if count == 0 || seen + count < rank {
                seen += count;
                continue;
            }
            let low = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
            let high = BOUNDS_US.get(i).copied().unwrap_or(low);
            let within = (rank - seen) as f64 / count as f64;
            let us = low as f64 + (high - low) as f64 * within;
            return Some(Duration::from_micros(us as u64));
        }
        None
    }

    fn requests_timed(&self) -> u64 {
        self.latency.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_rise_and_hold_the_usual_ones() {
        assert!(BOUNDS_US.windows(2).all(|w| w[0] < w[1]), "{BOUNDS_US:?}");
        assert_eq!(BOUNDS_US[0], 10);
        for us in [
            5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
        ] {
            assert!(BOUNDS_US.contains(&us), "{us}");
        }
    }

    #[test]
    fn counts_classes_and_interval_quantiles() {
        let s = Stats::default();
        for _ in 0..98 {
            s.record(200, Duration::from_millis(2));
        }
        s.record(503, Duration::from_millis(300));
        s.record(503, Duration::from_millis(300));
        let first = s.snapshot();
        assert_eq!(first.requests(), 100);
        assert_eq!(first.error_rate(), Some(0.02));
        let p50 = first.quantile(0.5).unwrap();
        assert!(p50 > Duration::from_micros(1750) && p50 <= Duration::from_millis(2));
        let p99 = first.quantile(0.99).unwrap();
        assert!(p99 > Duration::from_millis(250) && p99 <= Duration::from_millis(300));

        s.record(404, Duration::from_secs(500));
        let later = s.snapshot().since(&first);
        assert_eq!(later.requests(), 1);
        assert_eq!(later.by_class[3], 1);
        assert_eq!(later.error_rate(), Some(0.0));
        assert_eq!(Snapshot::default().quantile(0.99), None);
    }
}
