//! The deploy state machine: start the candidate beside the live release,
//! wait until the proxy's own health checks pass, smoke-test it, then switch,
//! either at once or through a canary rollout's rising weights.
//!
//! [`Deploy::on`] takes an [`Event`] observed by the orchestrator and returns
//! the [`Action`]s to carry out next. It never performs them, so the order of
//! steps, and the guarantee that traffic moves only after every gate passed,
//! are decided here alone.
//!
//! A canary step gives way to the next only when its pause is over, an
//! analysis interval passed during it, and nobody paused the rollout; too
//! many failed intervals withdraw the candidate's traffic before stopping it.

use serde::{Deserialize, Serialize};

use crate::canary::{Inconclusive, Pause, Plan, Rollout, Step, Verdict, Weight};
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
    /// Raising the candidate's share of traffic step by step, under analysis.
    Canary,
    /// Swapping the route table to the candidate.
    Switching,
    /// Traffic is on the candidate.
    Done,
    /// The candidate was refused; traffic never moved, or was withdrawn.
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
    /// The health deadline passed first; which targets were not healthy.
    Unhealthy(String),
    /// The canary rollout's deadline passed.
    DeadlinePassed,
    SmokePassed,
    SmokeFailed(String),
    /// The route table now sends the service's traffic to the candidate.
    Switched,
    /// The traffic backend refused the switch; traffic did not move.
    SwitchFailed(String),
    /// Someone gave up on the deploy (for instance, baton restarted mid-way).
    Aborted(String),
    /// What one analysis interval of the canary concluded.
    Interval(Verdict),
    /// The pause of canary step `step` ran out.
    PauseOver {
        step: usize,
    },
    /// `baton promote`: the next step now, or with `full` all the traffic.
    Promote {
        full: bool,
    },
    /// `baton pause`: hold the current step until resumed.
    Pause,
    /// `baton resume`.
    Resume,
}

/// What the orchestrator must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    StartCandidate,
    AwaitHealthy,
    RunSmoke,
    /// Give the candidate this share of the traffic; the live release keeps
    /// the rest.
    SetWeight(Weight),
    /// Start step `step`'s pause timer, which sends `Event::PauseOver { step }`
    /// when it runs out (never, for `Pause::Forever`).
    HoldStep {
        step: usize,
        pause: Pause,
    },
    /// Make the candidate live; the previous release, if any, starts draining.
    Switch,
    /// Take the candidate's weight to zero at once and drain it: a canary
    /// failed. `StopCandidate` follows.
    Withdraw,
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
    /// The canary rollout, when the service has one; absent from deploys
    /// stored before canaries existed.
    #[serde(default)]
    pub rollout: Option<Rollout>,
    smoke: bool,
}

impl Deploy {
    /// A deploy of `version` into `color`, returning the first actions.
    /// With `canary`, traffic moves through its steps instead of at once.
    /// A rollback finds its candidate already running and healthy, so it goes
    /// straight to the switch: it has no canary.
    pub fn begin(
        kind: DeployKind,
        version: &str,
        color: Color,
        smoke: bool,
        canary: Option<Plan>,
    ) -> (Self, Vec<Action>) {
        let (phase, first) = match kind {
            DeployKind::Deploy => (Phase::Starting, Action::StartCandidate),
            DeployKind::Rollback => (Phase::Switching, Action::Switch),
        };
        // A plan without steps has nothing to hold: the switch comes at once.
        let rollout = canary
            .filter(|plan| kind == DeployKind::Deploy && !plan.steps.is_empty())
            .map(Rollout::new);
        let deploy = Self {
            kind,
            version: version.to_string(),
            color,
            phase,
            error: None,
            failed_in: None,
            rollout,
            smoke,
        };
        (deploy, vec![first])
    }

    /// The canary rollout, if this deploy has one.
    pub fn rollout(&self) -> Option<&Rollout> {
        self.rollout.as_ref()
    }

    /// Applies one event and returns what to do next. Events that do not fit
    /// the current phase (a late health result, say) change nothing.
    pub fn on(&mut self, event: Event) -> Vec<Action> {
        use Event as E;
        use Phase as P;
        match (self.phase, event) {
            (P::Starting, E::Started) => self.enter(P::Health, vec![Action::AwaitHealthy]),
            (P::Health, E::Healthy) if self.smoke => self.enter(P::Smoke, vec![Action::RunSmoke]),
            (P::Health, E::Healthy) | (P::Smoke, E::SmokePassed) => self.gates_passed(),
            (P::Switching, E::Switched) => self.switched(),
            (P::Switching, E::SwitchFailed(why)) => self.fail(format!("could not switch: {why}")),
            (P::Starting, E::StartFailed(why)) => self.fail(format!("could not start: {why}")),
            (P::Starting | P::Health | P::Smoke | P::Canary, E::Exited(why)) => self.fail(why),
            (P::Health, E::Unhealthy(who)) => {
                self.fail(format!("not healthy before the health deadline: {who}"))
            }
            (P::Canary, E::DeadlinePassed) => {
                self.fail("the rollout's deadline passed".to_string())
            }
            (P::Smoke, E::SmokeFailed(why)) => self.fail(format!("smoke check failed: {why}")),
            (p, E::Aborted(why)) if !p.is_final() && p != P::Switching => self.fail(why),
            (P::Canary, event) => self.steer(event),
            _ => vec![],
        }
    }

    /// For a deploy restored after a restart: the actions that put back the
    /// candidate's weight and the step's pause timer. The timer starts over,
    /// since the old one was lost with the process. Outside a canary there is
    /// nothing to put back.
    pub fn resume(&mut self) -> Vec<Action> {
        match (self.phase, self.rollout.as_mut()) {
            (Phase::Canary, Some(r)) => {
                r.pause_over = false;
                hold(r)
            }
            _ => vec![],
        }
    }

    /// Every gate before traffic passed: the canary's first step, or the switch.
    fn gates_passed(&mut self) -> Vec<Action> {
        match self.rollout.as_mut() {
            Some(r) => {
                let actions = step_to(r, 0);
                self.enter(Phase::Canary, actions)
            }
            None => self.enter(Phase::Switching, vec![Action::Switch]),
        }
    }

    fn switched(&mut self) -> Vec<Action> {
        if let Some(r) = self.rollout.as_mut() {
            r.weight = Weight::FULL;
        }
        self.enter(Phase::Done, vec![])
    }

    /// A canary event other than a failure.
    fn steer(&mut self, event: Event) -> Vec<Action> {
        let Some(r) = self.rollout.as_mut() else {
            return vec![];
        };
        match event {
            Event::Interval(verdict) => self.judge(verdict),
            Event::PauseOver { step } if step == r.step => {
                r.pause_over = true;
                self.advance_if_ready()
            }
            Event::Promote { full: false } => self.advance(),
            Event::Promote { full: true } => self.enter(Phase::Switching, vec![Action::Switch]),
            Event::Pause => {
                r.paused = true;
                r.paused_because = Some("paused by request".to_string());
                vec![]
            }
            Event::Resume => {
                r.paused = false;
                r.paused_because = None;
                self.advance_if_ready()
            }
            _ => vec![],
        }
    }

    /// One analysis interval's verdict, an inconclusive one read through the
    /// plan's policy.
    fn judge(&mut self, verdict: Verdict) -> Vec<Action> {
        let Some(r) = self.rollout.as_mut() else {
            return vec![];
        };
        match (verdict, r.plan.inconclusive) {
            (Verdict::Pass, _) | (Verdict::Inconclusive(_), Inconclusive::Continue) => {
                r.passed = true;
                self.advance_if_ready()
            }
            (Verdict::Fail(why), _) | (Verdict::Inconclusive(why), Inconclusive::Fail) => {
                r.failures += 1;
                r.passed = false;
                let n = r.failures;
                if n >= r.plan.failure_limit {
                    self.fail(format!("analysis failed {n} time(s): {why}"))
                } else {
                    vec![]
                }
            }
            (Verdict::Inconclusive(why), Inconclusive::Pause) => {
                r.paused = true;
                r.paused_because = Some(format!("inconclusive: {why}"));
                vec![]
            }
        }
    }

    fn advance_if_ready(&mut self) -> Vec<Action> {
        match &self.rollout {
            Some(r) if r.ready() => self.advance(),
            _ => vec![],
        }
    }

    /// The next step, or after the last one the switch. Clears a pause: a
    /// promotion overrides it, and otherwise there was none.
    fn advance(&mut self) -> Vec<Action> {
        let Some(r) = self.rollout.as_mut() else {
            return vec![];
        };
        r.paused = false;
        r.paused_because = None;
        let next = r.step + 1;
        if next < r.plan.steps.len() {
            step_to(r, next)
        } else {
            self.enter(Phase::Switching, vec![Action::Switch])
        }
    }

    fn enter(&mut self, phase: Phase, actions: Vec<Action>) -> Vec<Action> {
        self.phase = phase;
        actions
    }

    /// The only way to `Failed`. A canary had traffic on the candidate, so
    /// that is withdrawn before the candidate stops.
    fn fail(&mut self, why: String) -> Vec<Action> {
        // A canary's candidate has a share until it is withdrawn, also when
        // its promotion's switch fails.
        let had_traffic = self.phase == Phase::Canary
            || (self.phase == Phase::Switching && self.rollout.is_some());
        self.failed_in = Some(self.phase);
        self.error = Some(why);
        self.phase = Phase::Failed;
        if let Some(r) = self.rollout.as_mut() {
            r.weight = Weight::ZERO;
        }
        match self.kind {
            DeployKind::Deploy if had_traffic => vec![Action::Withdraw, Action::StopCandidate],
            DeployKind::Deploy => vec![Action::StopCandidate],
            DeployKind::Rollback => vec![],
        }
    }
}

/// Puts the rollout on `step`, fresh: its pause and analysis start over.
fn step_to(r: &mut Rollout, step: usize) -> Vec<Action> {
    r.step = step;
    r.pause_over = false;
    r.passed = false;
    hold(r)
}

/// The weight of the current step, and its pause timer.
fn hold(r: &mut Rollout) -> Vec<Action> {
    let Step { weight, pause } = r.current();
    r.weight = weight;
    vec![
        Action::SetWeight(weight),
        Action::HoldStep {
            step: r.step,
            pause,
        },
    ]
}

#[cfg(test)]
mod tests;
