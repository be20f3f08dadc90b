//! One deploy or rollback, carried out step by step.
//!
//! The order of steps is not decided here: `baton_core::Deploy` says what to
//! do next, this module does it against the runtime, the traffic backend and
//! the store, and reports what happened back as an event.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_config::{Strategy, Vars};
use baton_core::{Action, Color, Deploy, DeployKind, Event, Pause, Phase, Weight};
use baton_proxy::{HealthCheck, Pool, Target};
use baton_runtime::Instance;
use baton_store::{now_ms, DeployRecord, Release, Role};
use tokio::sync::mpsc;

use crate::analysis::Analysis;
use crate::checks;
use crate::placement::{self, HostNews};
use crate::retire;
use crate::rollout::{self, Next, Rollout};
use crate::service::{Claim, Live, ServiceState, Slots};
use crate::view::phase_name;
use crate::{DeployError, Progress, ProgressTx, Request, Shared};

/// How often exits of candidate instances are looked for while waiting.
const EXIT_POLL: Duration = Duration::from_millis(100);

/// What one deploy or rollback works with, from request to outcome.
pub(crate) struct Job<'a> {
    pub(crate) shared: &'a Arc<Shared>,
    pub(crate) svc: &'a Arc<ServiceState>,
    pub(crate) claim: Claim<'a>,
    pub(crate) progress: ProgressTx,
}

/// Deploys a new version into the idle color.
pub(crate) async fn deploy(
    job: Job<'_>,
    slots: &mut Slots,
    req: &Request,
) -> Result<DeployRecord, DeployError> {
    let smoke = job.svc.cfg.switch.smoke.is_some();
    let color = slots
        .active
        .as_ref()
        .map(|a| a.color.other())
        .unwrap_or(Color::Blue);
    let canary = req.canary || job.svc.cfg.strategy == Strategy::Canary;
    let plan = match (&slots.active, canary) {
        (Some(_), true) => Some(job.svc.cfg.canary.plan.clone()),
        _ => None,
    };
    placement::preflight(job.shared, &job.svc.cfg, &req.version)
        .await
        .map_err(DeployError::Refused)?;
    if plan.is_some() {
        // Before anything is recorded or started: a query Prometheus
        // rejects would leave every interval inconclusive.
        let analysis = &job.svc.cfg.canary.analysis;
        checks::validate(analysis, &job.svc.cfg.name)
            .await
            .map_err(DeployError::Refused)?;
    }
    let run = Run::begin(
        job,
        DeployKind::Deploy,
        &req.version,
        color,
        &req.requested_by,
    )?;
    let live = slots
        .active
        .as_ref()
        .map(|a| format!("{} ({}) is live", a.version, a.color))
        .unwrap_or_else(|| "nothing live yet".to_string());
    run.say(format!("deploying {} to {color}; {live}", req.version));
    if canary && plan.is_none() {
        run.say("nothing is live: no canary to compare with, switching at once".into());
    }
    if let Some(previous) = slots.previous.take() {
        run.say(format!(
            "retiring {} ({}) first to free its color",
            previous.version, previous.color
        ));
        previous.hurry.cancel();
        let _ = previous.task.await;
    }
    run.execute(
        Deploy::begin(DeployKind::Deploy, &req.version, color, smoke, plan),
        slots,
    )
    .await
}

/// Switches back to the previous release if it still runs and is healthy;
/// deploys it again otherwise.
pub(crate) async fn rollback(
    job: Job<'_>,
    slots: &mut Slots,
    to: Option<&str>,
    requested_by: &str,
) -> Result<DeployRecord, DeployError> {
    let (shared, svc) = (job.shared, job.svc);
    let name = &svc.cfg.name;
    let target = match to {
        Some(v) => v.to_string(),
        None => match slots.previous.as_ref().map(|p| p.version.clone()) {
            Some(v) => v,
            None => last_other_version(shared, name, slots)?.ok_or_else(|| {
                DeployError::NothingToRollBack {
                    service: name.clone(),
                }
            })?,
        },
    };
    if let Some(previous) = slots.previous.take_if(|p| p.version == target) {
        previous.revive.cancel();
        if let Ok(Some(old)) = previous.task.await {
            svc.view().previous = None;
            if old.pool.all_healthy() {
                return instant_rollback(job, slots, old, requested_by).await;
            }
            retire::stop(shared, svc, &old).await;
            shared.store.remove_release(name, old.color)?;
        }
        svc.view().previous = None;
    }
    job.claim.update(|d| d.version = target.clone());
    let req = Request {
        version: target,
        requested_by: requested_by.to_string(),
        canary: false,
    };
    deploy(job, slots, &req).await
}

/// The previous release still runs and is healthy: the rollback is a switch.
async fn instant_rollback(
    job: Job<'_>,
    slots: &mut Slots,
    old: Live,
    requested_by: &str,
) -> Result<DeployRecord, DeployError> {
    let (shared, svc) = (job.shared, job.svc);
    let (color, version) = (old.color, old.version.clone());
    let mut run = Run::begin(job, DeployKind::Rollback, &version, color, requested_by)?;
    run.say(format!(
        "rolling back to {version} ({color}), still running"
    ));
    // A fresh pool over the same targets: the old one was retired by the switch away from it.
    let pool = Arc::new(Pool::new(
        color,
        version.clone(),
        old.pool.targets().to_vec(),
    ));
    let health = HealthCheck::start(&shared.prober, &pool, &svc.cfg.health);
    run.instances = old.instances.clone();
    run.live = Some(Live {
        color,
        version: version.clone(),
        instances: old.instances,
        pool,
        _health: health,
    });
    run.execute(
        Deploy::begin(DeployKind::Rollback, &version, color, false, None),
        slots,
    )
    .await
}

/// Takes up a canary rollout that a restart interrupted, at the step and
/// weight it had reached (the step's pause starts over).
pub(crate) async fn resume(
    job: Job<'_>,
    slots: &mut Slots,
    record: &DeployRecord,
    mut machine: Deploy,
    candidate: Live,
    deadline_at: i64,
) -> Result<DeployRecord, DeployError> {
    let run = Run::resumed(job, record, candidate, deadline_at);
    let step = machine.rollout().map(|r| r.step + 1).unwrap_or(1);
    run.say(format!(
        "resuming the canary of {} ({}) at step {step} after a restart",
        record.version, record.color
    ));
    let actions = machine.resume();
    run.execute((machine, actions), slots).await
}

/// The newest version that served successfully and is not live now.
fn last_other_version(
    shared: &Shared,
    service: &str,
    slots: &Slots,
) -> Result<Option<String>, DeployError> {
    let live = slots.active.as_ref().map(|a| a.version.as_str());
    Ok(shared
        .store
        .history(service, 100)?
        .into_iter()
        .find(|d| d.phase == Phase::Done && Some(d.version.as_str()) != live)
        .map(|d| d.version))
}

/// The state of one deploy being carried out.
struct Run<'a> {
    shared: &'a Arc<Shared>,
    svc: &'a Arc<ServiceState>,
    claim: Claim<'a>,
    progress: ProgressTx,
    id: i64,
    color: Color,
    version: String,
    phase: Phase,
    instances: Vec<Instance>,
    live: Option<Live>,
    /// The canary rollout, from its first step on.
    rollout: Option<Rollout>,
    /// When a resumed rollout must be over (unix ms), as first recorded.
    deadline_at: Option<i64>,
}

impl<'a> Run<'a> {
    fn begin(
        job: Job<'a>,
        kind: DeployKind,
        version: &str,
        color: Color,
        requested_by: &str,
    ) -> Result<Self, DeployError> {
        let id =
            job.shared
                .store
                .begin_deploy(&job.svc.cfg.name, kind, version, color, requested_by)?;
        Ok(Self::new(job, id, version, color, Phase::Starting))
    }

    /// A canary deploy taken up again after a restart, its candidate adopted.
    fn resumed(job: Job<'a>, record: &DeployRecord, candidate: Live, deadline_at: i64) -> Self {
        let mut run = Self::new(job, record.id, &record.version, record.color, Phase::Canary);
        run.instances = candidate.instances.clone();
        run.live = Some(candidate);
        run.deadline_at = Some(deadline_at);
        run
    }

    fn new(job: Job<'a>, id: i64, version: &str, color: Color, phase: Phase) -> Self {
        let Job {
            shared,
            svc,
            claim,
            progress,
        } = job;
        claim.update(|d| {
            d.id = Some(id);
            d.color = Some(color);
            d.version = version.to_string();
            d.phase = phase;
        });
        Self {
            shared,
            svc,
            claim,
            progress,
            id,
            color,
            version: version.to_string(),
            phase,
            instances: Vec::new(),
            live: None,
            rollout: None,
            deadline_at: None,
        }
    }

    fn say(&self, message: String) {
        self.tell(message, None);
    }

    /// Reports an analysis interval: its line, and the interval as data.
    fn report(&self, analysis: Analysis) {
        self.tell(rollout::describe(&analysis), Some(Box::new(analysis)));
    }

    fn tell(&self, message: String, analysis: Option<Box<Analysis>>) {
        tracing::info!(service = %self.svc.cfg.name, deploy = self.id, "{message}");
        let _ = self.progress.send(Progress {
            analysis,
            ..self.news(message)
        });
    }

    /// Reports what one host is doing, with the bytes sent to it if any.
    fn tell_host(&self, news: HostNews) {
        tracing::info!(service = %self.svc.cfg.name, deploy = self.id, "{}", news.message);
        let _ = self.progress.send(Progress {
            host: Some(news.host),
            sent: news.sent.map(|(sent, _)| sent),
            total: news.sent.map(|(_, total)| total),
            ..self.news(news.message)
        });
    }

    fn news(&self, message: String) -> Progress {
        Progress {
            deploy: self.id,
            phase: self.phase,
            message,
            at_ms: now_ms(),
            analysis: None,
            host: None,
            sent: None,
            total: None,
        }
    }

    /// Runs the state machine to its end. During a canary rollout, when no
    /// action is pending, the rollout's next event (a command, a pause
    /// ending, an analysis) is waited for.
    async fn execute(
        mut self,
        (mut machine, first): (Deploy, Vec<Action>),
        slots: &mut Slots,
    ) -> Result<DeployRecord, DeployError> {
        let mut queue: VecDeque<Action> = first.into();
        loop {
            let event = match queue.pop_front() {
                Some(action) => {
                    self.enter(machine.phase)?;
                    match action {
                        Action::StartCandidate => self.start().await,
                        Action::AwaitHealthy => self.await_healthy().await,
                        Action::RunSmoke => self.smoke().await,
                        Action::Switch => self.switch(slots).await?,
                        Action::SetWeight(weight) => {
                            self.set_weight(weight, slots).await?;
                            continue;
                        }
                        Action::HoldStep { step, pause } => {
                            self.hold(step, pause);
                            continue;
                        }
                        Action::Withdraw => {
                            self.withdraw().await;
                            continue;
                        }
                        Action::StopCandidate => {
                            self.stop_candidate(&machine).await?;
                            continue;
                        }
                    }
                }
                None if machine.phase == Phase::Canary => self.rollout_event().await,
                None => break,
            };
            queue.extend(machine.on(event));
            self.keep_rollout(&machine)?;
        }
        let record = self.shared.store.deploy(self.id)?;
        match machine.phase {
            Phase::Done => Ok(record),
            _ => Err(DeployError::Failed(Box::new(record))),
        }
    }

    /// Records a new phase before its work begins: the store always holds
    /// the intent, so a restart knows what was under way.
    fn enter(&mut self, phase: Phase) -> Result<(), DeployError> {
        if phase == self.phase || phase.is_final() {
            return Ok(());
        }
        self.phase = phase;
        self.shared.store.set_phase(self.id, phase)?;
        self.claim.set_phase(phase);
        self.say(phase_name(phase).to_string());
        Ok(())
    }

    async fn start(&mut self) -> Event {
        let cfg = &self.svc.cfg;
        let news = |n: HostNews| self.tell_host(n);
        let keep = self.running_versions();
        let delivered = placement::deliver(self.shared, cfg, &self.version, &keep, &news).await;
        if let Err(e) = delivered {
            return Event::StartFailed(e);
        }
        let (instances, started) =
            placement::start(self.shared, cfg, &self.version, self.color, &news).await;
        self.instances = instances;
        if let Err(e) = started {
            return Event::StartFailed(e);
        }
        let release = Release {
            service: cfg.name.clone(),
            color: self.color,
            version: self.version.clone(),
            role: Role::Candidate,
            instances: self.instances.clone(),
            retire_at: None,
        };
        if let Err(e) = self.shared.store.put_release(&release) {
            return Event::StartFailed(e.to_string());
        }
        let addrs: Vec<String> = self.instances.iter().map(|i| i.addr.to_string()).collect();
        self.say(format!(
            "started {} instance(s) on {}",
            addrs.len(),
            addrs.join(", ")
        ));
        Event::Started
    }

    /// The versions of the service's releases that run now.
    fn running_versions(&self) -> Vec<String> {
        let releases = self.shared.store.releases(&self.svc.cfg.name);
        releases
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.version)
            .collect()
    }

    async fn await_healthy(&mut self) -> Event {
        let targets = self
            .instances
            .iter()
            .map(|i| Arc::new(Target::new(i.addr)))
            .collect();
        let pool = Arc::new(Pool::new(self.color, self.version.clone(), targets));
        let health = HealthCheck::start(&self.shared.prober, &pool, &self.svc.cfg.health);
        let staged = self.shared.traffic.stage(&self.svc.cfg.name, pool.clone());
        if let Err(e) = staged.await {
            return Event::Aborted(e.to_string());
        }
        self.live = Some(Live {
            color: self.color,
            version: self.version.clone(),
            instances: self.instances.clone(),
            pool: pool.clone(),
            _health: health,
        });
        let started = Instant::now();
        let deadline = tokio::time::sleep(self.svc.cfg.health.deadline);
        tokio::pin!(deadline);
        let mut poll = tokio::time::interval(EXIT_POLL);
        loop {
            tokio::select! {
                _ = pool.wait_healthy() => {
                    self.say(format!("all {} target(s) healthy after {:.1}s", pool.targets().len(), started.elapsed().as_secs_f64()));
                    return Event::Healthy;
                }
                _ = &mut deadline => {
                    let healthy = pool.targets().iter().filter(|t| t.is_healthy()).count();
                    self.say(format!("{healthy} of {} target(s) healthy at the deadline", pool.targets().len()));
                    return Event::Unhealthy(self.unhealthy(&pool));
                }
                _ = poll.tick() => {
                    if let Some(why) = self.exited() {
                        return Event::Exited(why);
                    }
                }
            }
        }
    }

    /// The candidate's targets that are not healthy, each with its host.
    fn unhealthy(&self, pool: &Pool) -> String {
        // The pool's targets are the instances', in the same order.
        let sick: Vec<String> = self
            .instances
            .iter()
            .zip(pool.targets())
            .filter(|(_, t)| !t.is_healthy())
            .map(|(i, _)| located(i))
            .collect();
        format!("{} not healthy", sick.join(", "))
    }

    /// The first candidate instance found to have exited, described.
    fn exited(&self) -> Option<String> {
        first_exit(self.shared, &self.instances)
    }

    async fn smoke(&mut self) -> Event {
        let (Some(command), Some(live)) = (&self.svc.cfg.switch.smoke, &self.live) else {
            return Event::SmokePassed;
        };
        let preview = match self
            .shared
            .traffic
            .preview(&self.svc.cfg.name, &live.pool)
            .await
        {
            Ok(p) => p,
            Err(e) => return Event::SmokeFailed(e.to_string()),
        };
        let vars = Vars {
            port: None,
            version: &self.version,
            color: self.color.as_str(),
            service: &self.svc.cfg.name,
            preview_url: Some(&preview.url),
        };
        let argv: Vec<String> = command.iter().map(|t| t.render(&vars)).collect();
        self.say(format!(
            "smoke: {} (preview {})",
            argv.join(" "),
            preview.url
        ));
        let outcome = run_smoke(
            &argv,
            &self.shared.workdir,
            &preview.url,
            self.svc.cfg.switch.smoke_timeout,
        )
        .await;
        match outcome {
            Ok(()) => Event::SmokePassed,
            Err(why) => Event::SmokeFailed(why),
        }
    }

    /// The switch, then the old release starts retiring.
    async fn switch(&mut self, slots: &mut Slots) -> Result<Event, DeployError> {
        let name = &self.svc.cfg.name;
        let Some(live) = self.live.take() else {
            return Ok(Event::Aborted("no candidate to switch to".into()));
        };
        let keep = self.svc.cfg.switch.keep_previous;
        let started = Instant::now();
        let switched = self.shared.traffic.switch(name, live.pool.clone()).await;
        self.svc.switches.add(started.elapsed());
        if let Err(e) = switched {
            // Traffic did not move: the candidate is stopped like any that failed.
            self.live = Some(live);
            return Ok(Event::SwitchFailed(e.to_string()));
        }
        let retire_at = now_ms() + (self.svc.cfg.switch.drain_timeout + keep).as_millis() as i64;
        self.shared
            .store
            .record_switch(self.id, name, self.color, retire_at)?;
        self.say(format!(
            "switched: {} ({}) is live",
            self.version, self.color
        ));
        if let Some(old) = slots.active.replace(live) {
            self.say(format!("draining {} ({})", old.version, old.color));
            slots.previous = Some(retire::start(self.shared, self.svc, old, keep));
        }
        Ok(Event::Switched)
    }

    /// Gives the candidate `weight` of the traffic; the first time, opens
    /// the rollout (its deadline recorded) and the way for commands to reach it.
    async fn set_weight(&mut self, weight: Weight, slots: &Slots) -> Result<(), DeployError> {
        if self.rollout.is_none() {
            let (Some(candidate), Some(live)) = (&self.live, &slots.active) else {
                return Ok(());
            };
            let deadline_at = match self.deadline_at {
                Some(at) => at,
                None => {
                    let at = now_ms() + self.svc.cfg.canary.deadline.as_millis() as i64;
                    self.shared.store.begin_rollout(self.id, at)?;
                    at
                }
            };
            let left = Duration::from_millis((deadline_at - now_ms()).max(0) as u64);
            let (tx, rx) = mpsc::unbounded_channel();
            self.svc.view().rollout = Some(tx);
            self.rollout = Some(Rollout::new(
                &self.svc.cfg.name,
                self.id,
                &self.svc.cfg.canary,
                (candidate.pool.clone(), live.pool.clone()),
                left,
                rx,
            ));
        }
        if let Some(rollout) = &mut self.rollout {
            rollout.set_weight(self.shared, weight).await;
        }
        Ok(())
    }

    fn hold(&mut self, step: usize, pause: Pause) {
        let Some(rollout) = &mut self.rollout else {
            return;
        };
        rollout.hold(step, pause);
        let (steps, weight) = (rollout.status.steps, rollout.status.weight);
        self.say(format!(
            "step {}/{steps}: {weight} of the traffic to {} ({}), holding {pause}",
            step + 1,
            self.version,
            self.color
        ));
    }

    /// The rollout's next event; an analysis is reported as it comes.
    async fn rollout_event(&mut self) -> Event {
        let Some(rollout) = &mut self.rollout else {
            return Event::Aborted("the rollout was lost".into());
        };
        let (shared, instances) = (self.shared, &self.instances);
        let next = rollout.next(|| first_exit(shared, instances)).await;
        match next {
            Next::Event(event) => {
                if let Some(line) = command_line(&event) {
                    self.say(line);
                }
                event
            }
            Next::Analysed(analysis) => {
                let verdict = analysis.verdict.clone();
                self.report(analysis);
                Event::Interval(verdict)
            }
        }
    }

    /// Takes the candidate's share back and drains it: the rollout failed.
    async fn withdraw(&mut self) {
        let drain = self.svc.cfg.switch.drain_timeout;
        if let Some(rollout) = &mut self.rollout {
            if let Some(took) = rollout.withdraw(self.shared, self.color, drain).await {
                self.svc.drains.add(took);
            }
            self.say(format!(
                "rolled back: no traffic to {} ({}) any more",
                self.version, self.color
            ));
        }
    }

    /// Keeps the rollout's state where a restart finds it, and where
    /// `status` shows it.
    fn keep_rollout(&mut self, machine: &Deploy) -> Result<(), DeployError> {
        let (Some(rollout), Some(state)) = (&mut self.rollout, machine.rollout()) else {
            return Ok(());
        };
        if machine.phase == Phase::Canary {
            self.shared.store.save_rollout(self.id, machine)?;
        }
        rollout.sync(state);
        let status = rollout.status.clone();
        self.claim.update(|d| d.canary = Some(status));
        Ok(())
    }

    /// The deploy failed: stop what it started and record why.
    async fn stop_candidate(&mut self, machine: &Deploy) -> Result<(), DeployError> {
        let error = machine
            .error
            .clone()
            .unwrap_or_else(|| "failed".to_string());
        let tail = self.log_tail().await;
        self.live = None;
        retire::stop_instances(self.shared, self.svc, &self.instances).await;
        let name = &self.svc.cfg.name;
        if let Err(e) = self.shared.traffic.unstage(name, self.color).await {
            tracing::warn!(service = %name, error = %e, "could not forget the candidate's route");
        }
        self.shared.store.remove_release(name, self.color)?;
        self.shared
            .store
            .fail_deploy(self.id, &error, tail.as_deref())?;
        self.phase = Phase::Failed;
        self.claim.set_phase(Phase::Failed);
        let traffic = match self.rollout {
            Some(_) => "its share of the traffic taken back",
            None => "traffic untouched",
        };
        self.say(format!("failed: {error}; candidate stopped, {traffic}"));
        Ok(())
    }

    /// The last log lines of the instance that exited, or else the first one.
    async fn log_tail(&self) -> Option<String> {
        let runtime = &self.shared.runtime;
        let culprit = self
            .instances
            .iter()
            .find(|i| runtime.exited(i).is_some())
            .or(self.instances.first())?;
        let tail = runtime.log_tail(culprit, 20).await;
        (!tail.is_empty()).then_some(tail)
    }
}

/// The first of `instances` found to have exited, described.
fn first_exit(shared: &Shared, instances: &[Instance]) -> Option<String> {
    instances.iter().enumerate().find_map(|(i, inst)| {
        shared
            .runtime
            .exited(inst)
            .map(|why| format!("instance {i} ({}) {why}", located(inst)))
    })
}

/// An instance's address, after its host's name if it runs on one:
/// `app2 10.77.0.3:24187`.
fn located(instance: &Instance) -> String {
    match &instance.host {
        Some(host) => format!("{host} {}", instance.addr),
        None => instance.addr.to_string(),
    }
}

/// What a person's command to the rollout is said as.
fn command_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::Promote { full: true } => "promoted to 100% by request".into(),
        Event::Promote { full: false } => "promoted to the next step by request".into(),
        Event::Pause => "paused by request".into(),
        Event::Resume => "resumed by request".into(),
        Event::Aborted(why) => why.clone(),
        Event::DeadlinePassed => "the rollout's deadline passed".into(),
        _ => return None,
    })
}

/// Runs the smoke command; `Err` says why it failed.
async fn run_smoke(
    argv: &[String],
    dir: &std::path::Path,
    url: &str,
    limit: Duration,
) -> Result<(), String> {
    let shown = argv.join(" ");
    let child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .env("BATON_PREVIEW_URL", url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run `{shown}`: {e}"))?;
    let output = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Err(_) => return Err(format!("`{shown}` still running after {limit:?}")),
        Ok(Err(e)) => return Err(format!("`{shown}`: {e}")),
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        return Ok(());
    }
    let status = match (output.status.code(), output.status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "failed".to_string(),
    };
    let text = [output.stderr, output.stdout].concat();
    let text = String::from_utf8_lossy(&text);
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(format!("`{shown}` {status}: {}", last.trim())
        .trim_end_matches(": ")
        .to_string())
}
