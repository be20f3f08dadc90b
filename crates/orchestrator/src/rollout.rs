//! A canary rollout as it runs: the candidate's share of the traffic, the
//! step's pause, an analysis every interval, and the commands people send
//! (`promote`, `pause`, `resume`, `abort`), all turned into events for the
//! deploy state machine, which alone decides what follows.

use std::sync::Arc;
use std::time::Duration;

use baton_config::CanaryConfig;
use baton_core::{Color, Event, Pause, Verdict, Weight};
use baton_proxy::stats::Snapshot;
use baton_proxy::{Canary, Pool};
use baton_store::now_ms;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use crate::analysis::{self, Analysis};
use crate::{checks, Shared};

/// Intervals kept for `status`.
const KEEP_ANALYSES: usize = 50;

/// What a person (or CI) can tell a running rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// To the next step now; `full`: to 100% now.
    Promote {
        full: bool,
    },
    Pause,
    Resume,
    /// Roll back now.
    Abort,
}

impl Command {
    pub(crate) fn event(self) -> Event {
        match self {
            Self::Promote { full } => Event::Promote { full },
            Self::Pause => Event::Pause,
            Self::Resume => Event::Resume,
            Self::Abort => Event::Aborted("aborted by request".into()),
        }
    }
}

/// Where a rollout stands, for `status --json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// 1-based; 0 before the first step.
    pub step: usize,
    pub steps: usize,
    pub weight: Weight,
    pub paused: bool,
    pub paused_because: Option<String>,
    pub failures: u32,
    pub failure_limit: u32,
    /// The latest intervals, oldest first.
    pub analyses: Vec<Analysis>,
}

/// The running side of one rollout.
pub(crate) struct Rollout {
    service: String,
    deploy: i64,
    cfg: CanaryConfig,
    candidate: Arc<Pool>,
    live: Arc<Pool>,
    canary: Option<Canary>,
    /// The current step and when its pause ends (`None`: never).
    hold: Option<(usize, Option<Instant>)>,
    next_interval: Instant,
    baseline: (Snapshot, Snapshot),
    deadline: Instant,
    commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) status: RolloutStatus,
}

impl Rollout {
    /// A rollout of `candidate` beside `live`, to be over within `left`.
    pub(crate) fn new(
        service: &str,
        deploy: i64,
        cfg: &CanaryConfig,
        (candidate, live): (Arc<Pool>, Arc<Pool>),
        left: Duration,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        let now = Instant::now();
        Self {
            service: service.to_string(),
            deploy,
            cfg: cfg.clone(),
            baseline: (candidate.stats.snapshot(), live.stats.snapshot()),
            candidate,
            live,
            canary: None,
            hold: None,
            next_interval: now + cfg.analysis.interval,
            deadline: now + left,
            commands,
            status: RolloutStatus {
                steps: cfg.plan.steps.len(),
                failure_limit: cfg.plan.failure_limit,
                ..RolloutStatus::default()
            },
        }
    }

    /// Sets the candidate's share of the traffic.
    pub(crate) async fn set_weight(&mut self, shared: &Shared, weight: Weight) {
        let canary = match &self.canary {
            Some(c) => c.with_weight(weight),
            None => Canary::new(
                &self.service,
                self.candidate.clone(),
                weight,
                self.cfg.sticky.clone(),
                self.deploy as u64,
            ),
        };
        if let Err(e) = shared.traffic.split(&self.service, canary.clone()).await {
            tracing::error!(service = %self.service, error = %e, "cannot set the canary's weight");
        }
        self.canary = Some(canary);
        self.status.weight = weight;
        // An interval measures one weight: the next starts with this one.
        self.baseline = (self.candidate.stats.snapshot(), self.live.stats.snapshot());
        self.next_interval = Instant::now() + self.cfg.analysis.interval;
    }

    /// Starts a step's pause.
    pub(crate) fn hold(&mut self, step: usize, pause: Pause) {
        let ends = match pause {
            Pause::For(d) => Some(Instant::now() + d),
            Pause::Forever => None,
        };
        self.hold = Some((step, ends));
        self.status.step = step + 1;
    }

    /// Waits for what happens next: a command, the step's pause ending, an
    /// analysis interval, the deadline, or the candidate dying (`exited`,
    /// polled).
    pub(crate) async fn next(&mut self, exited: impl Fn() -> Option<String>) -> Next {
        let pause_ends = self.hold.and_then(|(_, ends)| ends);
        let mut poll = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                command = self.commands.recv() => {
                    if let Some(c) = command {
                        return Next::Event(c.event());
                    }
                }
                _ = sleep_until(pause_ends.unwrap_or(self.deadline)), if pause_ends.is_some() => {
                    let step = self.hold.map(|(s, _)| s).unwrap_or(0);
                    self.hold = Some((step, None));
                    return Next::Event(Event::PauseOver { step });
                }
                _ = sleep_until(self.next_interval) => break,
                _ = sleep_until(self.deadline) => return Next::Event(Event::DeadlinePassed),
                _ = poll.tick() => {
                    if let Some(why) = exited() {
                        return Next::Event(Event::Aborted(format!("candidate {why}")));
                    }
                }
            }
        }
        // The interval is over: analysed outside the select, so that the
        // external checks' requests are not cut short by another arm.
        Next::Analysed(self.analyse().await)
    }

    /// Ends an interval: measures both releases since the last one, then
    /// asks Prometheus and the webhooks, if any, before the verdict.
    async fn analyse(&mut self) -> Analysis {
        let now = (self.candidate.stats.snapshot(), self.live.stats.snapshot());
        let cfg = &self.cfg.analysis;
        let (candidate, live, mut checks) = analysis::measure(
            cfg,
            &now.0.since(&self.baseline.0),
            &now.1.since(&self.baseline.1),
        );
        self.baseline = now;
        let (at_ms, step, weight) = (
            now_ms(),
            self.status.step.saturating_sub(1),
            self.status.weight,
        );
        if !cfg.prometheus.is_empty() || !cfg.webhook.is_empty() {
            let payload = serde_json::json!({
                "service": self.service,
                "deploy": self.deploy,
                "version": self.candidate.version,
                "color": self.candidate.color,
                "live_version": self.live.version,
                "at_ms": at_ms,
                "step": step,
                "weight": weight,
                "candidate": candidate,
                "live": live,
                "checks": checks,
            });
            checks.extend(checks::external(cfg, &payload).await);
        }
        // From now: slow external checks do not shorten the next interval.
        self.next_interval = Instant::now() + cfg.interval;
        let verdict = analysis::verdict(cfg, &candidate, &checks);
        let analysis = Analysis {
            at_ms,
            step,
            weight,
            candidate,
            live,
            checks,
            verdict,
        };
        self.status.analyses.push(analysis.clone());
        if self.status.analyses.len() > KEEP_ANALYSES {
            self.status.analyses.remove(0);
        }
        analysis
    }

    /// Takes the candidate's share back at once and waits (up to the drain
    /// timeout) for what it still serves; how long that took.
    pub(crate) async fn withdraw(
        &mut self,
        shared: &Shared,
        color: Color,
        drain: Duration,
    ) -> Option<Duration> {
        self.status.weight = Weight::ZERO;
        self.canary = None;
        let pool = match shared.traffic.withdraw(&self.service, color).await {
            Ok(pool) => pool?,
            Err(e) => {
                tracing::error!(service = %self.service, error = %e, "cannot take the canary's share back");
                return None;
            }
        };
        let report = shared.traffic.drain(&self.service, &pool, drain).await;
        Some(report.elapsed)
    }

    /// Mirrors the state machine's view of the rollout into the status.
    pub(crate) fn sync(&mut self, machine: &baton_core::Rollout) {
        self.status.paused = machine.paused;
        self.status.paused_because = machine.paused_because.clone();
        self.status.failures = machine.failures;
    }
}

/// What a rollout's wait produced.
pub(crate) enum Next {
    Event(Event),
    Analysed(Analysis),
}

/// One line for the deploy's progress: what an interval measured and concluded.
pub fn describe(a: &Analysis) -> String {
    let pct = |r: Option<f64>| {
        r.map(|r| format!("{:.1}%", r * 100.0))
            .unwrap_or_else(|| "-".into())
    };
    let ms = |v: Option<f64>| {
        v.map(|v| format!("{v:.1} ms"))
            .unwrap_or_else(|| "-".into())
    };
    let verdict = match &a.verdict {
        Verdict::Pass => "pass".to_string(),
        Verdict::Fail(why) => format!("FAIL: {why}"),
        Verdict::Inconclusive(why) => format!("inconclusive: {why}"),
    };
    format!(
        "analysis at {}: candidate {} requests, {} errors, p99 {} (live {} requests, {} errors, p99 {}): {verdict}",
        a.weight,
        a.candidate.requests,
        pct(a.candidate.error_rate),
        ms(a.candidate.p99_ms),
        a.live.requests,
        pct(a.live.error_rate),
        ms(a.live.p99_ms),
    )
}
