//! A canary rollout's vocabulary: the share of traffic a candidate gets
//! ([`Weight`]), the steps it goes through ([`Step`], [`Plan`]), how users
//! stay on one version ([`Sticky`]), what an analysis interval concluded
//! ([`Verdict`]), and where a rollout stands ([`Rollout`]).
//!
//! The configuration produces these, the deploy state machine decides with
//! them, and the proxy splits traffic by them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A share of a service's traffic, in basis points (1/100 of a percent), so
/// that `0.5%` is exact and comparisons are integer ones.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Weight(u16);

impl Weight {
    pub const ZERO: Self = Self(0);
    pub const FULL: Self = Self(10_000);

    /// `percent` (0 to 100, at most two decimals kept); `None` outside that range.
    pub fn from_percent(percent: f64) -> Option<Self> {
        if !(0.0..=100.0).contains(&percent) {
            return None;
        }
        Some(Self((percent * 100.0).round() as u16))
    }

    /// At most [`Weight::FULL`].
    pub fn from_basis_points(bp: u16) -> Self {
        Self(bp.min(Self::FULL.0))
    }

    pub fn basis_points(self) -> u16 {
        self.0
    }

    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A whole percent prints without decimals: `5%`, `2.5%`.
        write!(f, "{}%", self.percent())
    }
}

/// How long a step holds its weight before the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pause {
    For(Duration),
    /// Until `baton promote`.
    Forever,
}

impl fmt::Display for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::For(d) => write!(f, "{d:?}"),
            Self::Forever => f.write_str("until promoted"),
        }
    }
}

/// One step of a rollout: the candidate's share, and how long it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub weight: Weight,
    pub pause: Pause,
}

/// What an analysis interval without a conclusion does to the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Inconclusive {
    /// Hold the rollout until `baton resume` (or `promote`).
    Pause,
    /// Count it as a failed interval.
    Fail,
    /// Go on as if it had passed (said so in the status, never silently).
    Continue,
}

/// The rollout a canary deploy follows, from the service's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Rising weights; after the last step the candidate takes everything.
    pub steps: Vec<Step>,
    /// Failed intervals before the automatic rollback.
    pub failure_limit: u32,
    pub inconclusive: Inconclusive,
}

/// How a user keeps seeing one version for the whole rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sticky {
    /// Every request is drawn on its own.
    None,
    /// A cookie baton sets on the first response.
    Cookie,
    /// A request header naming the user (stored lower-case), e.g. `x-user-id`.
    Header(String),
    /// The client's IP address.
    Ip,
}

/// What one analysis interval concluded about the candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    /// A metric crossed its threshold: which, its value and the threshold.
    Fail(String),
    /// Not enough to judge by (too few requests, no data).
    Inconclusive(String),
}

/// Where a canary rollout stands. It lives in the deploy and is stored with
/// it, so a restarted baton picks up the step it was on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub plan: Plan,
    /// Index into `plan.steps` of the step being held.
    pub step: usize,
    /// The candidate's share in force now: zero before the first step.
    pub weight: Weight,
    /// Held by `baton pause` or an inconclusive interval until resumed.
    pub paused: bool,
    pub paused_because: Option<String>,
    /// The current step's pause ran out.
    pub pause_over: bool,
    /// An analysis interval passed during the current step.
    pub passed: bool,
    /// Failed intervals over the whole rollout: a pass does not forgive them.
    pub failures: u32,
}

impl Rollout {
    /// A rollout of `plan` that has not begun: no traffic yet.
    pub fn new(plan: Plan) -> Self {
        Self {
            plan,
            step: 0,
            weight: Weight::ZERO,
            paused: false,
            paused_because: None,
            pause_over: false,
            passed: false,
            failures: 0,
        }
    }

    /// The step being held. A step the plan does not have (only a hand-edited
    /// record has one) holds the weight in force until promoted.
    pub fn current(&self) -> Step {
        self.plan.steps.get(self.step).copied().unwrap_or(Step {
            weight: self.weight,
            pause: Pause::Forever,
        })
    }

    /// True when the current step may give way to the next.
    pub fn ready(&self) -> bool {
        self.pause_over && self.passed && !self.paused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_are_basis_points() {
        assert_eq!(Weight::from_percent(5.0), Some(Weight(500)));
        assert_eq!(Weight::from_percent(0.25), Some(Weight(25)));
        assert_eq!(Weight::from_percent(100.0), Some(Weight::FULL));
        assert_eq!(Weight::from_percent(100.5), None);
        assert_eq!(Weight::from_percent(-1.0), None);
        assert_eq!(Weight::from_percent(f64::NAN), None);
        assert_eq!(Weight(500).to_string(), "5%");
        assert_eq!(Weight(250).to_string(), "2.5%");
    }
}
