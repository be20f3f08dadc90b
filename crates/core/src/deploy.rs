//! The deploy state machine: start the candidate beside the live release,
//! wait until the proxy's own health checks pass, smoke-test it, then switch.
//!
//! [`Deploy::on`] takes an [`Event`] observed by the orchestrator and returns
//! the [`Action`]s to carry out next. It never performs them, so the order of
//! steps, and the guarantee that traffic moves only after every gate passed,
//! are decided here alone.

use serde::{Deserialize, Serialize};

use crate::Color;

/// What a deploy is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployKind {
    /// A new version started beside the live one.
    Deploy,
    /// Back to the previous release while it still runs: only the switch.
    Rollback,
}

/// Where a deploy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Launching the candidate's instances.
    Starting,
    /// Waiting for every candidate target to pass the proxy's health check.
    Health,
    /// Running the smoke command against the preview route.
    Smoke,
    /// Swapping the route table to the candidate.
    Switching,
    /// Traffic is on the candidate.
    Done,
    /// The candidate was refused; traffic never moved.
    Failed,
}

impl Phase {
    /// True once the deploy can change nothing more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed)
    }
}

/// Something the orchestrator observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Every candidate instance was launched.
    Started,
    /// The runtime could not launch an instance.
    StartFailed(String),
    /// A candidate instance exited before the switch.
    Exited(String),
    /// Every candidate target passed its health check in the proxy's view.
    Healthy,
    /// The health deadline passed first.
    DeadlinePassed,
    SmokePassed,
    SmokeFailed(String),
    /// The route table now sends the service's traffic to the candidate.
    Switched,
    /// Someone gave up on the deploy (for instance, baton restarted mid-way).
    Aborted(String),
}

/// What the orchestrator must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    StartCandidate,
    AwaitHealthy,
    RunSmoke,
    /// Make the candidate live; the previous release, if any, starts draining.
    Switch,
    /// Stop every candidate instance: the deploy failed.
    StopCandidate,
}

/// One deploy of one service, from request to outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deploy {
    pub kind: DeployKind,
    pub version: String,
    /// The color the candidate runs in.
    pub color: Color,
    pub phase: Phase,
    /// Why it failed, once `phase` is `Failed`.
    pub error: Option<String>,
    /// The phase it failed in.
    pub failed_in: Option<Phase>,
    smoke: bool,
}

impl Deploy {
    /// A deploy of `version` into `color`, returning the first actions.
    /// A rollback finds its candidate already running and healthy, so it goes
    /// straight to the switch.
    pub fn begin(
        kind: DeployKind,
        version: &str,
        color: Color,
        smoke: bool,
    ) -> (Self, Vec<Action>) {
        let (phase, first) = match kind {
            DeployKind::Deploy => (Phase::Starting, Action::StartCandidate),
            DeployKind::Rollback => (Phase::Switching, Action::Switch),
        };
        let deploy = Self {
            kind,
            version: version.to_string(),
            color,
            phase,
            error: None,
            failed_in: None,
            smoke,
        };
        (deploy, vec![first])
    }

    /// Applies one event and returns what to do next. Events that do not fit
    /// the current phase (a late health result, say) change nothing.
    pub fn on(&mut self, event: Event) -> Vec<Action> {
        use Event as E;
        use Phase as P;
        match (self.phase, event) {
            (P::Starting, E::Started) => self.enter(P::Health, vec![Action::AwaitHealthy]),
            (P::Health, E::Healthy) if self.smoke => self.enter(P::Smoke, vec![Action::RunSmoke]),
            (P::Health, E::Healthy) | (P::Smoke, E::SmokePassed) => {
                self.enter(P::Switching, vec![Action::Switch])
            }
            (P::Switching, E::Switched) => self.enter(P::Done, vec![]),
            (P::Starting, E::StartFailed(why)) => self.fail(format!("could not start: {why}")),
            (P::Starting | P::Health | P::Smoke, E::Exited(why)) => self.fail(why),
            (P::Health, E::DeadlinePassed) => {
                self.fail("not healthy before the health deadline".to_string())
            }
            (P::Smoke, E::SmokeFailed(why)) => self.fail(format!("smoke check failed: {why}")),
            (p, E::Aborted(why)) if !p.is_final() && p != P::Switching => self.fail(why),
            _ => vec![],
        }
    }

    fn enter(&mut self, phase: Phase, actions: Vec<Action>) -> Vec<Action> {
        self.phase = phase;
        actions
    }

    fn fail(&mut self, why: String) -> Vec<Action> {
        self.failed_in = Some(self.phase);
        self.error = Some(why);
        self.phase = Phase::Failed;
        match self.kind {
            DeployKind::Deploy => vec![Action::StopCandidate],
            DeployKind::Rollback => vec![],
        }
    }
}

#[cfg(test)]
mod tests;
