//! One analysis interval of a canary: the candidate's and the live
//! release's requests over the same interval, held against the service's
//! thresholds, to a [`Verdict`].
//!
//! Too few requests on the candidate is inconclusive, never a pass: users
//! of other canary tools are burnt by analyses that pass with no data.

use std::time::Duration;

use baton_config::AnalysisConfig;
use baton_core::{Verdict, Weight};
use baton_proxy::stats::Snapshot;
use serde::{Deserialize, Serialize};

/// What one interval measured and concluded, as `status --json` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Analysis {
    /// When the interval ended (unix ms).
    pub at_ms: i64,
    /// The rollout's step (0-based) and weight during the interval.
    pub step: usize,
    pub weight: Weight,
    pub candidate: Measured,
    pub live: Measured,
    pub checks: Vec<Check>,
    #[serde(flatten)]
    pub verdict: Verdict,
}

/// One release's requests in the interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    pub requests: u64,
    pub server_errors: u64,
    pub error_rate: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Measured {
    fn of(s: &Snapshot) -> Self {
        Self {
            requests: s.requests(),
            server_errors: s.server_errors(),
            error_rate: s.error_rate(),
            p99_ms: s.quantile(0.99).map(ms),
        }
    }
}

/// One threshold: the metric, what it measured, its limit, and the outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub metric: String,
    pub value: Option<f64>,
    /// `max` or `min` (from the metric's name: the value must stay at or
    /// below, or at or above, the threshold).
    pub bound: Bound,
    pub threshold: f64,
    /// `pass`, `fail` or `inconclusive`.
    pub result: Outcome,
    /// What an external check's answer said, or why it has no value; when
    /// set, it is what the check is described by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bound {
    Max,
    Min,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

impl Check {
    /// `value` held against `threshold`; no value is inconclusive.
    pub fn new(
        metric: impl Into<String>,
        value: Option<f64>,
        bound: Bound,
        threshold: f64,
    ) -> Self {
        let result = match (value, bound) {
            (None, _) => Outcome::Inconclusive,
            (Some(v), Bound::Max) if v <= threshold => Outcome::Pass,
            (Some(v), Bound::Min) if v >= threshold => Outcome::Pass,
            (Some(_), _) => Outcome::Fail,
        };
        Self {
            metric: metric.into(),
            value,
            bound,
            threshold,
            result,
            note: None,
        }
    }

    /// The same check, described by `note` rather than its numbers.
    pub fn with_note(self, note: impl Into<String>) -> Self {
        Self {
            note: Some(note.into()),
            ..self
        }
    }

    /// `error_rate 0.052 > max 0.01`, or `webhook[0] URL: answered 500 …`
    /// for a check with a note.
    pub fn describe(&self) -> String {
        if let Some(note) = &self.note {
            return format!("{}: {note}", self.metric);
        }
        let value = self
            .value
            .map(|v| format!("{}", round(v)))
            .unwrap_or_else(|| "no data".into());
        let (op, name) = match (self.result, self.bound) {
            (Outcome::Inconclusive, _) => ("vs", "limit"),
            (_, Bound::Max) if self.result == Outcome::Fail => (">", "max"),
            (_, Bound::Min) if self.result == Outcome::Fail => ("<", "min"),
            (_, Bound::Max) => ("<=", "max"),
            (_, Bound::Min) => (">=", "min"),
        };
        format!(
            "{} {value} {op} {name} {}",
            self.metric,
            round(self.threshold)
        )
    }
}

/// The built-in checks of one interval: the candidate's error rate and p99,
/// and its p99 against the live release's.
pub fn builtin_checks(cfg: &AnalysisConfig, candidate: &Measured, live: &Measured) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Some(max) = cfg.max_error_rate {
        checks.push(Check::new(
            "error_rate",
            candidate.error_rate,
            Bound::Max,
            max,
        ));
    }
    if let Some(max) = cfg.max_p99 {
        checks.push(Check::new("p99_ms", candidate.p99_ms, Bound::Max, ms(max)));
    }
    if let Some(max) = cfg.max_p99_ratio {
        let ratio = match (candidate.p99_ms, live.p99_ms) {
            (Some(c), Some(l)) if l > 0.0 => Some(c / l),
            _ => None,
        };
        checks.push(Check::new("p99_ratio", ratio, Bound::Max, max));
    }
    checks
}

/// The interval's measurements and its built-in checks.
pub fn measure(
    cfg: &AnalysisConfig,
    candidate: &Snapshot,
    live: &Snapshot,
) -> (Measured, Measured, Vec<Check>) {
    let (candidate, live) = (Measured::of(candidate), Measured::of(live));
    let checks = builtin_checks(cfg, &candidate, &live);
    (candidate, live, checks)
}

/// The verdict: too few requests is inconclusive whatever the checks say;
/// then any failed check fails the interval, and any check without data
/// leaves it inconclusive.
pub fn verdict(cfg: &AnalysisConfig, candidate: &Measured, checks: &[Check]) -> Verdict {
    if candidate.requests < cfg.min_requests {
        return Verdict::Inconclusive(format!(
            "{} request(s) on the candidate, fewer than min_requests {}",
            candidate.requests, cfg.min_requests
        ));
    }
    let described = |outcome| {
        let all: Vec<String> = checks
            .iter()
            .filter(|c| c.result == outcome)
            .map(Check::describe)
            .collect();
        (!all.is_empty()).then(|| all.join("; "))
    };
    if let Some(failed) = described(Outcome::Fail) {
        return Verdict::Fail(failed);
    }
    if let Some(unknown) = described(Outcome::Inconclusive) {
        return Verdict::Inconclusive(unknown);
    }
    Verdict::Pass
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Four significant digits are plenty for a person reading a threshold.
fn round(v: f64) -> f64 {
    if v == 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(3 - v.abs().log10().floor() as i32);
    (v * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proxy::stats::Stats;

    fn cfg() -> AnalysisConfig {
        AnalysisConfig {
            interval: Duration::from_secs(10),
            min_requests: 100,
            max_error_rate: Some(0.01),
            max_p99: Some(Duration::from_millis(500)),
            max_p99_ratio: Some(1.5),
            prometheus: vec![],
            webhook: vec![],
        }
    }

    fn traffic(ok: u64, errors: u64, latency: Duration) -> Snapshot {
        let s = Stats::default();
        for i in 0..ok + errors {
            s.record(if i < errors { 500 } else { 200 }, latency);
        }
        s.snapshot()
    }

    fn judge(candidate: &Snapshot, live: &Snapshot) -> Verdict {
        let (c, _, checks) = measure(&cfg(), candidate, live);
        verdict(&cfg(), &c, &checks)
    }

    #[test]
    fn a_healthy_candidate_passes() {
        let ms5 = Duration::from_millis(5);
        assert_eq!(
            judge(&traffic(200, 1, ms5), &traffic(2000, 0, ms5)),
            Verdict::Pass
        );
    }

    #[test]
    fn errors_and_slowness_fail_with_the_culprit() {
        let ms5 = Duration::from_millis(5);
        let Verdict::Fail(why) = judge(&traffic(190, 10, ms5), &traffic(2000, 0, ms5)) else {
            panic!("5% errors must fail");
        };
        assert!(why.contains("error_rate 0.05 > max 0.01"), "{why}");
        let slow = judge(
            &traffic(200, 0, Duration::from_millis(20)),
            &traffic(2000, 0, ms5),
        );
        assert!(
            matches!(&slow, Verdict::Fail(w) if w.contains("p99_ratio")),
            "{slow:?}"
        );
        let slower = judge(
            &traffic(200, 0, Duration::from_secs(1)),
            &traffic(200, 0, Duration::from_secs(1)),
        );
        assert!(
            matches!(&slower, Verdict::Fail(w) if w.contains("p99_ms")),
            "{slower:?}"
        );
    }

    #[test]
    fn too_little_traffic_or_no_comparison_is_inconclusive() {
        let ms5 = Duration::from_millis(5);
        let few = judge(&traffic(99, 0, ms5), &traffic(2000, 0, ms5));
        assert!(
            matches!(&few, Verdict::Inconclusive(w) if w.contains("99 request(s)")),
            "{few:?}"
        );
        let no_live = judge(&traffic(200, 0, ms5), &Snapshot::default());
        assert!(
            matches!(&no_live, Verdict::Inconclusive(w) if w.contains("p99_ratio")),
            "{no_live:?}"
        );
        // A failure outweighs what could not be judged.
        let bad = judge(&traffic(100, 100, ms5), &Snapshot::default());
        assert!(matches!(bad, Verdict::Fail(_)), "{bad:?}");
    }
}
