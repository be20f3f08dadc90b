//! Exact request accounting: what was sent, what succeeded, what failed how.
//!
//! The numbers end up in `baton demo`'s table and in tests that assert zero
//! loss through a switch, so they must never drift: every attempt lands in
//! exactly one bucket (`ok`, `conn_errors` or `non_2xx`), and the running
//! totals and the current phase are updated together under one lock so any
//! snapshot satisfies `sent == ok + conn_errors + non_2xx`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// How many distinct error descriptions to keep for diagnostics.
const MAX_ERROR_SAMPLES: usize = 5;

/// Counts and latencies over some span of a load run (totals or one phase).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    /// Request attempts, including ones that could not even connect.
    pub sent: u64,
    /// Attempts answered with a 2xx status.
    pub ok: u64,
    /// Attempts that failed at the transport level: connect refused, reset,
    /// EOF mid-response or timeout.
    pub conn_errors: u64,
    /// Attempts answered with a status outside 2xx.
    pub non_2xx: u64,
    /// Non-2xx answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// 2xx answers by the version that served them.
    pub versions: BTreeMap<String, u64>,
    /// Median latency of answered requests (2xx and non-2xx).
    #[serde(rename = "p50_ms", serialize_with = "as_millis")]
    pub p50: Duration,
    /// 99th percentile latency of answered requests.
    #[serde(rename = "p99_ms", serialize_with = "as_millis")]
    pub p99: Duration,
    /// Slowest answered request.
    #[serde(rename = "max_ms", serialize_with = "as_millis")]
    pub max: Duration,
    /// The first few distinct failure descriptions (e.g. "HTTP 503",
    /// "connect 127.0.0.1:8080: Connection refused"), for diagnostics.
    pub first_errors: Vec<String>,
    /// TCP connections opened (the initial ones plus every reconnect).
    pub connects: u64,
}

impl Stats {
    /// Every attempt that did not succeed.
    pub fn failed(&self) -> u64 {
        self.conn_errors + self.non_2xx
    }
}

/// Serializes a duration as fractional milliseconds for readable JSON.
fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent={} ok={} failed={} (conn={} non-2xx={}) p50={} p99={} max={}",
            self.sent,
            self.ok,
            self.failed(),
            self.conn_errors,
            self.non_2xx,
            Millis(self.p50),
            Millis(self.p99),
            Millis(self.max),
        )?;
        write_map(f, "versions", &self.versions)?;
        write_map(f, "statuses", &self.statuses)
    }
}

/// Writes ` name[k=v k=v]`, or nothing for an empty map.
fn write_map<K: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    map: &BTreeMap<K, u64>,
) -> fmt::Result {
    if map.is_empty() {
        return Ok(());
    }
    write!(f, " {name}[")?;
    for (i, (key, count)) in map.iter().enumerate() {
        let sep = if i == 0 { "" } else { " " };
        write!(f, "{sep}{key}={count}")?;
    }
    write!(f, "]")
}

/// Formats a duration as milliseconds with two decimals.
struct Millis(Duration);

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}ms", self.0.as_secs_f64() * 1000.0)
    }
}

/// The outcome of one attempt (or a connect), as recorded.
pub(crate) enum Outcome<'a> {
    /// A 2xx answer served by `version`.
    Ok { version: &'a str, latency: Duration },
    /// A non-2xx answer.
    Status { code: u16, latency: Duration },
    /// A transport failure, described.
    ConnError(String),
    /// A new TCP connection was established (not an attempt).
    Connected,
}

/// Raw accumulation for one span; turned into [`Stats`] on demand.
#[derive(Debug, Clone, Default)]
struct Tally {
    sent: u64,
    ok: u64,
    conn_errors: u64,
    non_2xx: u64,
    connects: u64,
    statuses: BTreeMap<u16, u64>,
    versions: BTreeMap<String, u64>,
    latencies_us: Vec<u32>,
    max: Duration,
    first_errors: Vec<String>,
}

impl Tally {
    /// Adds one outcome.
    fn record(&mut self, outcome: &Outcome<'_>) {
        match outcome {
            Outcome::Ok { version, latency } => {
                self.sent += 1;
                self.ok += 1;
                bump(&mut self.versions, version);
                self.add_latency(*latency);
            }
            Outcome::Status { code, latency } => {
                self.sent += 1;
                self.non_2xx += 1;
                *self.statuses.entry(*code).or_insert(0) += 1;
                self.add_error(|| format!("HTTP {code}"));
                self.add_latency(*latency);
            }
            Outcome::ConnError(msg) => {
                self.sent += 1;
                self.conn_errors += 1;
                self.add_error(|| msg.clone());
            }
            Outcome::Connected => self.connects += 1,
        }
    }

    /// Keeps a latency sample (saturating at ~71 minutes) and the maximum.
    fn add_latency(&mut self, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.latencies_us.push(micros);
        self.max = self.max.max(latency);
    }

    /// Keeps a new, distinct error description while there is room.
    fn add_error(&mut self, describe: impl FnOnce() -> String) {
        if self.first_errors.len() >= MAX_ERROR_SAMPLES {
            return;
        }
        let description = describe();
        if !self.first_errors.contains(&description) {
            self.first_errors.push(description);
        }
    }

    /// Summarizes into public stats, sorting latencies for percentiles.
    fn into_stats(mut self) -> Stats {
        self.latencies_us.sort_unstable();
        Stats {
            sent: self.sent,
            ok: self.ok,
            conn_errors: self.conn_errors,
            non_2xx: self.non_2xx,
            statuses: self.statuses,
            versions: self.versions,
            p50: percentile(&self.latencies_us, 0.50),
            p99: percentile(&self.latencies_us, 0.99),
            max: self.max,
            first_errors: self.first_errors,
            connects: self.connects,
        }
    }
}

/// Increments `map[key]` without allocating when the key already exists.
fn bump(map: &mut BTreeMap<String, u64>, key: &str) {
    match map.get_mut(key) {
        Some(count) => *count += 1,
        None => {
            map.insert(key.to_owned(), 1);
        }
    }
}

/// Nearest-rank percentile of sorted microsecond samples.
fn percentile(sorted_us: &[u32], p: f64) -> Duration {
    if sorted_us.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted_us.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted_us.len()) - 1;
    Duration::from_micros(u64::from(sorted_us[index]))
}

/// Totals and the current phase, updated together.
#[derive(Default)]
struct Spans {
    total: Tally,
    phase: Tally,
}

/// Thread-safe recorder shared by all load tasks.
///
/// One short lock per request keeps totals and phase consistent with each
/// other; that is cheap enough for a test client with a few hundred tasks.
#[derive(Default)]
pub(crate) struct Recorder {
    spans: Mutex<Spans>,
}

impl Recorder {
    /// Records one outcome into both the totals and the current phase.
    pub(crate) fn record(&self, outcome: Outcome<'_>) {
        let mut spans = self.lock();
        spans.total.record(&outcome);
        spans.phase.record(&outcome);
    }

    /// Totals so far.
    pub(crate) fn snapshot(&self) -> Stats {
        let total = self.lock().total.clone();
        total.into_stats()
    }

    /// The current phase's stats; starts a new phase.
    pub(crate) fn take_phase(&self) -> Stats {
        let phase = std::mem::take(&mut self.lock().phase);
        phase.into_stats()
    }

    /// Locks the spans, shrugging off poisoning (counts stay valid).
    fn lock(&self) -> MutexGuard<'_, Spans> {
        self.spans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.50), Duration::from_micros(50));
        assert_eq!(percentile(&samples, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&[7], 0.99), Duration::from_micros(7));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn every_attempt_lands_in_one_bucket() {
        let rec = Recorder::default();
        rec.record(Outcome::Connected);
        rec.record(Outcome::Ok {
            version: "v1",
            latency: ms(1),
        });
        rec.record(Outcome::Ok {
            version: "v2",
            latency: ms(3),
        });
        rec.record(Outcome::Status {
            code: 503,
            latency: ms(2),
        });
        rec.record(Outcome::ConnError("reset".into()));
        let stats = rec.snapshot();
        assert_eq!(stats.sent, 4);
        assert_eq!((stats.ok, stats.non_2xx, stats.conn_errors), (2, 1, 1));
        assert_eq!(stats.failed(), 2);
        assert_eq!(stats.connects, 1);
        assert_eq!(stats.statuses, BTreeMap::from([(503, 1)]));
        assert_eq!(stats.versions.values().sum::<u64>(), 2);
        assert_eq!(stats.first_errors, ["HTTP 503", "reset"]);
        assert_eq!(stats.max, ms(3));
        assert_eq!(stats.p50, ms(2));
    }

    #[test]
    fn phases_partition_the_totals() {
        let rec = Recorder::default();
        rec.record(Outcome::ConnError("refused".into()));
        let first = rec.take_phase();
        rec.record(Outcome::Ok {
            version: "v1",
            latency: ms(1),
        });
        let second = rec.take_phase();
        let empty = rec.take_phase();
        assert_eq!((first.sent, first.conn_errors), (1, 1));
        assert_eq!((second.sent, second.ok), (1, 1));
        assert!(second.first_errors.is_empty());
        assert_eq!(empty.sent, 0);
        assert_eq!(rec.snapshot().sent, 2);
    }

    #[test]
    fn keeps_only_the_first_distinct_errors() {
        let rec = Recorder::default();
        for i in 0..10 {
            rec.record(Outcome::ConnError("refused".into()));
            rec.record(Outcome::ConnError(format!("e{i}")));
        }
        assert_eq!(
            rec.snapshot().first_errors,
            ["refused", "e0", "e1", "e2", "e3"]
        );
    }

    #[test]
    fn display_is_one_line() {
        let mut stats = Stats {
            sent: 3,
            ok: 2,
            non_2xx: 1,
            p50: ms(1),
            ..Stats::default()
        };
        stats.versions.insert("v1".into(), 2);
        stats.statuses.insert(500, 1);
        let line = stats.to_string();
        assert_eq!(
            line,
            "sent=3 ok=2 failed=1 (conn=0 non-2xx=1) p50=1.00ms p99=0.00ms max=0.00ms \
             versions[v1=2] statuses[500=1]"
        );
    }
}
