use std::time::Duration;

use super::*;
use crate::canary::Step;

const PHASES: [Phase; 7] = [
    Phase::Starting,
    Phase::Health,
    Phase::Smoke,
    Phase::Canary,
    Phase::Switching,
    Phase::Done,
    Phase::Failed,
];

const POLICIES: [Inconclusive; 3] = [
    Inconclusive::Pause,
    Inconclusive::Fail,
    Inconclusive::Continue,
];

fn events() -> Vec<Event> {
    vec![
        Event::Started,
        Event::StartFailed("spawn: no such file".into()),
        Event::Exited("exited with status 3".into()),
        Event::Healthy,
        Event::Unhealthy("127.0.0.1:4000 not healthy".into()),
        Event::DeadlinePassed,
        Event::SmokePassed,
        Event::SmokeFailed("exit status 1".into()),
        Event::Switched,
        Event::SwitchFailed("haproxy: Permission denied".into()),
        Event::Aborted("baton restarted".into()),
        Event::Interval(Verdict::Pass),
        Event::Interval(Verdict::Fail("error rate 3% > 1%".into())),
        Event::Interval(Verdict::Inconclusive("12 requests < 100".into())),
        Event::PauseOver { step: 0 },
        Event::PauseOver { step: 1 },
        Event::PauseOver { step: 2 },
        Event::Promote { full: false },
        Event::Promote { full: true },
        Event::Pause,
        Event::Resume,
    ]
}

fn pct(percent: f64) -> Weight {
    Weight::from_percent(percent).expect("a weight between 0 and 100")
}

fn secs(n: u64) -> Pause {
    Pause::For(Duration::from_secs(n))
}

/// Three rising steps; the second failed interval rolls back.
fn plan(inconclusive: Inconclusive) -> Plan {
    Plan {
        steps: vec![
            Step {
                weight: pct(5.0),
                pause: secs(60),
            },
            Step {
                weight: pct(25.0),
                pause: secs(60),
            },
            Step {
                weight: pct(50.0),
                pause: secs(300),
            },
        ],
        failure_limit: 2,
        inconclusive,
    }
}

fn at(phase: Phase, kind: DeployKind, smoke: bool) -> Deploy {
    let (mut d, _) = Deploy::begin(kind, "v2", Color::Green, smoke, None);
    d.phase = phase;
    d
}

/// A canary deploy holding step 0, nothing seen yet.
fn canary(inconclusive: Inconclusive) -> Deploy {
    let (mut d, _) = Deploy::begin(
        DeployKind::Deploy,
        "v2",
        Color::Green,
        false,
        Some(plan(inconclusive)),
    );
    d.on(Event::Started);
    d.on(Event::Healthy);
    assert_eq!(d.phase, Phase::Canary);
    d
}

fn rollout(d: &Deploy) -> &Rollout {
    d.rollout().expect("a canary deploy has a rollout")
}

/// What holding step `step` of [`plan`] looks like.
fn holds(step: usize) -> Vec<Action> {
    let Step { weight, pause } = plan(Inconclusive::Pause).steps[step];
    vec![Action::SetWeight(weight), Action::HoldStep { step, pause }]
}

fn pass() -> Event {
    Event::Interval(Verdict::Pass)
}

fn fail() -> Event {
    Event::Interval(Verdict::Fail("error rate 3% > 1%".into()))
}

fn inconclusive() -> Event {
    Event::Interval(Verdict::Inconclusive("12 requests < 100".into()))
}

#[test]
fn happy_path_with_smoke() {
    let (mut d, first) = Deploy::begin(DeployKind::Deploy, "v2", Color::Green, true, None);
    assert_eq!(first, [Action::StartCandidate]);
    assert_eq!(d.on(Event::Started), [Action::AwaitHealthy]);
    assert_eq!(d.on(Event::Healthy), [Action::RunSmoke]);
    assert_eq!(d.on(Event::SmokePassed), [Action::Switch]);
    assert_eq!(d.on(Event::Switched), []);
    assert_eq!(d.phase, Phase::Done);
    assert_eq!(d.error, None);
    assert_eq!(d.rollout(), None);
}

#[test]
fn happy_path_without_smoke_skips_it() {
    let (mut d, _) = Deploy::begin(DeployKind::Deploy, "v2", Color::Green, false, None);
    d.on(Event::Started);
    assert_eq!(d.on(Event::Healthy), [Action::Switch]);
}

#[test]
fn rollback_goes_straight_to_the_switch() {
    let (mut d, first) = Deploy::begin(DeployKind::Rollback, "v1", Color::Blue, true, None);
    assert_eq!(first, [Action::Switch]);
    assert_eq!(d.phase, Phase::Switching);
    d.on(Event::Switched);
    assert_eq!(d.phase, Phase::Done);
}

#[test]
fn a_rollback_has_no_canary() {
    let plan = Some(plan(Inconclusive::Pause));
    let (d, first) = Deploy::begin(DeployKind::Rollback, "v1", Color::Blue, false, plan);
    assert_eq!(first, [Action::Switch]);
    assert_eq!(d.rollout(), None);
}

#[test]
fn a_plan_without_steps_switches_at_once() {
    let empty = Plan {
        steps: vec![],
        ..plan(Inconclusive::Pause)
    };
    let (mut d, _) = Deploy::begin(DeployKind::Deploy, "v2", Color::Green, false, Some(empty));
    d.on(Event::Started);
    assert_eq!(d.on(Event::Healthy), [Action::Switch]);
    assert_eq!(d.rollout(), None);
}

/// The phases and rollout states a deploy can be found in: a canary holding
/// any step, with any mix of its flags except "ready" (a ready step has
/// already given way to the next), with fewer failures than the limit.
fn situations(kind: DeployKind, smoke: bool, plan: Option<Plan>) -> Vec<Deploy> {
    let (fresh, _) = Deploy::begin(kind, "v2", Color::Green, smoke, plan);
    let mut all = Vec::new();
    for phase in PHASES {
        let Some(r) = fresh.rollout.clone().filter(|_| phase == Phase::Canary) else {
            if phase != Phase::Canary {
                all.push(Deploy {
                    phase,
                    ..fresh.clone()
                });
            }
            continue;
        };
        for step in 0..r.plan.steps.len() {
            for bits in 0..16u8 {
                let [pause_over, passed, paused, failed] = [0, 1, 2, 3].map(|i| bits & 1 << i != 0);
                let r = Rollout {
                    step,
                    weight: r.plan.steps[step].weight,
                    paused,
                    paused_because: paused.then(|| "paused by request".to_string()),
                    pause_over,
                    passed,
                    failures: u32::from(failed),
                    ..r.clone()
                };
                if !r.ready() {
                    all.push(Deploy {
                        phase,
                        rollout: Some(r),
                        ..fresh.clone()
                    });
                }
            }
        }
    }
    all
}

/// Every (kind, smoke, plan, phase, rollout state, event) combination:
/// traffic moves only from a passed gate, a canary step gives way only when
/// ready or promoted, every failure stops the candidate (withdrawing its
/// traffic first in a canary) and records why, and final phases absorb
/// everything.
#[test]
fn every_transition_keeps_the_invariants() {
    let plans = std::iter::once(None).chain(POLICIES.map(|p| Some(plan(p))));
    for plan in plans {
        for kind in [DeployKind::Deploy, DeployKind::Rollback] {
            for smoke in [false, true] {
                for d in situations(kind, smoke, plan.clone()) {
                    for event in events() {
                        check_transition(d.clone(), event);
                    }
                }
            }
        }
    }
}

fn check_transition(mut d: Deploy, event: Event) {
    let before = d.clone();
    let actions = d.on(event.clone());
    let (kind, smoke, phase) = (d.kind, d.smoke, before.phase);
    let case = format!(
        "{kind:?} smoke={smoke} {phase:?} {:?} + {event:?}",
        before.rollout
    );
    let stored: Deploy = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(stored, d, "{case}: stores and loads as it is");

    if phase.is_final() {
        assert_eq!(d, before, "{case}: final phases never change");
        assert!(actions.is_empty(), "{case}");
        return;
    }
    if phase == Phase::Canary {
        check_canary(&before, &event, &d, &actions, &case);
    } else if is_canary_event(&event) {
        assert_eq!(d, before, "{case}: canary events do nothing outside one");
        assert!(actions.is_empty(), "{case}");
    }
    if actions.contains(&Action::Switch) {
        let gate_passed = match event {
            Event::Healthy => phase == Phase::Health && !smoke,
            Event::SmokePassed => phase == Phase::Smoke,
            _ => phase == Phase::Canary,
        };
        assert!(gate_passed, "{case}: switched without passing its gate");
        assert!(
            phase == Phase::Canary || d.rollout.is_none(),
            "{case}: a canary deploy switched before its rollout"
        );
        assert_eq!(actions, [Action::Switch], "{case}");
        assert_eq!(d.phase, Phase::Switching, "{case}");
    }
    if d.phase == Phase::Canary && phase != Phase::Canary {
        assert!(
            matches!(
                (phase, &event),
                (Phase::Health, Event::Healthy) | (Phase::Smoke, Event::SmokePassed)
            ),
            "{case}: a canary begins only from a passed gate"
        );
        assert_eq!(actions, holds(0), "{case}");
        assert_eq!(rollout(&d).weight, pct(5.0), "{case}");
    }
    // A candidate had a share during its rollout, and still has it while its
    // promotion's switch is under way.
    let had_share =
        phase == Phase::Canary || (phase == Phase::Switching && before.rollout.is_some());
    if actions.contains(&Action::Withdraw) {
        assert!(had_share, "{case}");
    }
    if d.phase == Phase::Failed {
        assert!(d.error.is_some(), "{case}: a failure says why");
        assert_eq!(d.failed_in, Some(phase), "{case}");
        let expected = match kind {
            DeployKind::Deploy if had_share => {
                vec![Action::Withdraw, Action::StopCandidate]
            }
            DeployKind::Deploy => vec![Action::StopCandidate],
            DeployKind::Rollback => vec![],
        };
        assert_eq!(actions, expected, "{case}");
        if let Some(r) = d.rollout() {
            assert_eq!(
                r.weight,
                Weight::ZERO,
                "{case}: no traffic on a failed candidate"
            );
        }
    }
    if d.phase == Phase::Done {
        assert_eq!(
            (phase, &event),
            (Phase::Switching, &Event::Switched),
            "{case}"
        );
        if let Some(r) = d.rollout() {
            assert_eq!(r.weight, Weight::FULL, "{case}");
        }
    }
    match (&event, phase) {
        (Event::Switched, _) => {}
        // A switch the backend refused moved nothing: the deploy fails, and
        // a canary's share is taken back before its candidate stops.
        (Event::SwitchFailed(_), Phase::Switching) => {
            assert_eq!(d.phase, Phase::Failed, "{case}");
            let stop = match (kind, d.rollout().is_some()) {
                (DeployKind::Rollback, _) => vec![],
                (DeployKind::Deploy, true) => vec![Action::Withdraw, Action::StopCandidate],
                (DeployKind::Deploy, false) => vec![Action::StopCandidate],
            };
            assert_eq!(actions, stop, "{case}");
        }
        (_, Phase::Switching) => assert_eq!(
            d.phase,
            Phase::Switching,
            "{case}: a switch under way is never left half-done"
        ),
        _ => {}
    }
}

fn is_canary_event(event: &Event) -> bool {
    matches!(
        event,
        Event::Interval(_)
            | Event::PauseOver { .. }
            | Event::Promote { .. }
            | Event::Pause
            | Event::Resume
    )
}

/// One canary transition: it fails exactly on a failure, and moves on
/// exactly when promoted or when the event made the step ready.
fn check_canary(before: &Deploy, event: &Event, d: &Deploy, actions: &[Action], case: &str) {
    let b = rollout(before);
    let r = rollout(d);
    let policy = b.plan.inconclusive;
    let passes = match event {
        Event::Interval(Verdict::Pass) => true,
        Event::Interval(Verdict::Inconclusive(_)) => policy == Inconclusive::Continue,
        _ => false,
    };
    let fails = match event {
        Event::Interval(Verdict::Fail(_)) => true,
        Event::Interval(Verdict::Inconclusive(_)) => policy == Inconclusive::Fail,
        _ => false,
    };
    let pauses = match event {
        Event::Pause => true,
        Event::Interval(Verdict::Inconclusive(_)) => policy == Inconclusive::Pause,
        _ => false,
    };
    let aborts = matches!(
        event,
        Event::Exited(_) | Event::DeadlinePassed | Event::Aborted(_)
    );

    let fails_now = aborts || (fails && b.failures + 1 >= b.plan.failure_limit);
    assert_eq!(d.phase == Phase::Failed, fails_now, "{case}");
    assert_eq!(
        r.failures,
        b.failures + u32::from(fails),
        "{case}: every failed interval counts, and only those"
    );
    if d.phase == Phase::Failed {
        return;
    }

    let ready = (b.pause_over || *event == Event::PauseOver { step: b.step })
        && (b.passed || passes)
        && !fails
        && (!b.paused || *event == Event::Resume)
        && !pauses;
    let moves = matches!(event, Event::Promote { .. }) || ready;
    let last = b.step + 1 == b.plan.steps.len();
    match (moves, last, event) {
        (false, ..) => {
            assert_eq!(d.phase, Phase::Canary, "{case}");
            assert!(actions.is_empty(), "{case}");
            assert_eq!((r.step, r.weight), (b.step, b.weight), "{case}");
            assert!(!r.ready(), "{case}: a ready step gives way at once");
            let over = b.pause_over || *event == Event::PauseOver { step: b.step };
            assert_eq!(r.pause_over, over, "{case}");
            assert_eq!(r.passed, (b.passed || passes) && !fails, "{case}");
            let paused = (b.paused || pauses) && *event != Event::Resume;
            assert_eq!(r.paused, paused, "{case}");
            assert_eq!(r.paused_because.is_some(), r.paused, "{case}");
        }
        (true, true, _) | (true, _, Event::Promote { full: true }) => {
            assert_eq!(d.phase, Phase::Switching, "{case}");
            assert_eq!(actions, [Action::Switch], "{case}");
        }
        (true, false, _) => {
            assert_eq!(d.phase, Phase::Canary, "{case}");
            assert_eq!(actions, holds(b.step + 1), "{case}");
            let fresh = (r.step, r.pause_over, r.passed, r.paused);
            assert_eq!(fresh, (b.step + 1, false, false, false), "{case}");
            assert_eq!(r.paused_because, None, "{case}");
            assert_eq!(r.weight, b.plan.steps[b.step + 1].weight, "{case}");
        }
    }
}

#[test]
fn failures_name_their_cause() {
    let mut d = at(Phase::Health, DeployKind::Deploy, true);
    d.on(Event::Unhealthy("app2 10.77.0.3:20000 not healthy".into()));
    assert_eq!(
        d.error.as_deref(),
        Some("not healthy before the health deadline: app2 10.77.0.3:20000 not healthy")
    );
    let mut d = at(Phase::Smoke, DeployKind::Deploy, true);
    d.on(Event::SmokeFailed("exit status 1".into()));
    assert_eq!(
        d.error.as_deref(),
        Some("smoke check failed: exit status 1")
    );
    assert_eq!(d.failed_in, Some(Phase::Smoke));
}

#[test]
fn canary_happy_path_goes_through_every_step() {
    let plan = plan(Inconclusive::Pause);
    let (mut d, _) = Deploy::begin(
        DeployKind::Deploy,
        "v2",
        Color::Green,
        true,
        Some(plan.clone()),
    );
    assert_eq!(rollout(&d).weight, Weight::ZERO);
    d.on(Event::Started);
    assert_eq!(d.on(Event::Healthy), [Action::RunSmoke]);
    assert_eq!(d.on(Event::SmokePassed), holds(0));
    assert_eq!(d.phase, Phase::Canary);
    for step in 0..plan.steps.len() {
        assert_eq!(rollout(&d).current(), plan.steps[step]);
        assert_eq!(rollout(&d).weight, plan.steps[step].weight);
        assert_eq!(d.on(pass()), []);
        let next = d.on(Event::PauseOver { step });
        if step + 1 < plan.steps.len() {
            assert_eq!(next, holds(step + 1));
        } else {
            assert_eq!(next, [Action::Switch]);
        }
    }
    assert_eq!(d.phase, Phase::Switching);
    assert_eq!(d.on(Event::Switched), []);
    assert_eq!(d.phase, Phase::Done);
    assert_eq!(rollout(&d).weight, Weight::FULL);
    assert_eq!(d.error, None);
}

#[test]
fn a_step_needs_its_pause_over_and_a_passed_interval_in_either_order() {
    let mut d = canary(Inconclusive::Pause);
    assert_eq!(d.on(Event::PauseOver { step: 0 }), []);
    assert!(rollout(&d).pause_over);
    assert_eq!(d.on(pass()), holds(1));

    assert_eq!(d.on(pass()), []);
    assert!(rollout(&d).passed);
    assert_eq!(d.on(Event::PauseOver { step: 1 }), holds(2));
}

#[test]
fn a_pass_from_an_earlier_step_does_not_carry_over() {
    let mut d = canary(Inconclusive::Pause);
    d.on(pass());
    d.on(pass());
    assert_eq!(d.on(Event::PauseOver { step: 0 }), holds(1));
    assert_eq!(d.on(Event::PauseOver { step: 1 }), []);
    assert_eq!(d.on(pass()), holds(2));
}

#[test]
fn failed_intervals_up_to_the_limit_roll_back() {
    let mut d = canary(Inconclusive::Pause);
    d.on(pass());
    assert_eq!(d.on(fail()), []);
    assert_eq!(rollout(&d).failures, 1);
    assert!(!rollout(&d).passed, "a failure takes back the step's pass");
    assert_eq!(d.on(fail()), [Action::Withdraw, Action::StopCandidate]);
    assert_eq!(d.phase, Phase::Failed);
    assert_eq!(d.failed_in, Some(Phase::Canary));
    assert_eq!(rollout(&d).weight, Weight::ZERO);
    assert_eq!(
        d.error.as_deref(),
        Some("analysis failed 2 time(s): error rate 3% > 1%")
    );
}

#[test]
fn a_pass_does_not_forgive_earlier_failures() {
    let mut d = canary(Inconclusive::Pause);
    d.on(fail());
    d.on(Event::PauseOver { step: 0 });
    assert_eq!(d.on(pass()), holds(1), "one failure is below the limit");
    assert_eq!(d.on(fail()), [Action::Withdraw, Action::StopCandidate]);
    assert_eq!(rollout(&d).failures, 2);
}

#[test]
fn inconclusive_pauses_under_pause() {
    let mut d = canary(Inconclusive::Pause);
    d.on(Event::PauseOver { step: 0 });
    assert_eq!(d.on(inconclusive()), []);
    let r = rollout(&d);
    assert!(r.paused);
    assert_eq!(
        r.paused_because.as_deref(),
        Some("inconclusive: 12 requests < 100")
    );
    assert_eq!(r.failures, 0);
    assert_eq!(d.on(pass()), [], "paused: no advance");
    assert_eq!(d.on(Event::Resume), holds(1));
}

#[test]
fn inconclusive_fails_under_fail() {
    let mut d = canary(Inconclusive::Fail);
    assert_eq!(d.on(inconclusive()), []);
    assert_eq!(rollout(&d).failures, 1);
    assert_eq!(
        d.on(inconclusive()),
        [Action::Withdraw, Action::StopCandidate]
    );
    assert_eq!(
        d.error.as_deref(),
        Some("analysis failed 2 time(s): 12 requests < 100")
    );
}

#[test]
fn inconclusive_passes_under_continue() {
    let mut d = canary(Inconclusive::Continue);
    d.on(Event::PauseOver { step: 0 });
    assert_eq!(d.on(inconclusive()), holds(1));
    assert_eq!(rollout(&d).failures, 0);
}

#[test]
fn promote_moves_one_step_or_all_the_way() {
    let mut d = canary(Inconclusive::Pause);
    d.on(Event::Pause);
    assert_eq!(d.on(Event::Promote { full: false }), holds(1));
    let r = rollout(&d);
    assert!(!r.paused, "a promotion overrides a pause");
    assert_eq!(r.paused_because, None);
    assert_eq!(d.on(Event::Promote { full: false }), holds(2));
    assert_eq!(d.on(Event::Promote { full: false }), [Action::Switch]);
    assert_eq!(d.phase, Phase::Switching);

    let mut d = canary(Inconclusive::Pause);
    assert_eq!(d.on(Event::Promote { full: true }), [Action::Switch]);
    assert_eq!(d.phase, Phase::Switching);
    d.on(Event::Switched);
    assert_eq!(d.phase, Phase::Done);
}

#[test]
fn a_step_held_forever_waits_for_a_promotion() {
    let mut plan = plan(Inconclusive::Pause);
    plan.steps[0].pause = Pause::Forever;
    let (mut d, _) = Deploy::begin(DeployKind::Deploy, "v2", Color::Green, false, Some(plan));
    d.on(Event::Started);
    let first = d.on(Event::Healthy);
    assert_eq!(
        first[1],
        Action::HoldStep {
            step: 0,
            pause: Pause::Forever
        }
    );
    assert_eq!(d.on(pass()), []);
    assert_eq!(d.on(Event::Promote { full: false }), holds(1));
}

#[test]
fn a_pause_holds_the_step_until_resumed() {
    let mut d = canary(Inconclusive::Pause);
    assert_eq!(d.on(Event::Pause), []);
    assert_eq!(
        rollout(&d).paused_because.as_deref(),
        Some("paused by request")
    );
    assert_eq!(d.on(pass()), []);
    assert_eq!(d.on(Event::PauseOver { step: 0 }), []);
    assert_eq!(rollout(&d).step, 0);
    assert_eq!(d.on(Event::Resume), holds(1));
    assert_eq!(rollout(&d).paused_because, None);

    // Resumed before the step is ready: it waits as usual.
    d.on(Event::Pause);
    assert_eq!(d.on(Event::Resume), []);
    assert!(!rollout(&d).paused);
    d.on(pass());
    assert_eq!(d.on(Event::PauseOver { step: 1 }), holds(2));
}

#[test]
fn a_stale_pause_over_is_ignored() {
    let mut d = canary(Inconclusive::Pause);
    d.on(Event::Promote { full: false });
    let before = d.clone();
    assert_eq!(d.on(Event::PauseOver { step: 0 }), []);
    assert_eq!(d, before);
    d.on(pass());
    assert_eq!(d.on(Event::PauseOver { step: 0 }), []);
    assert_eq!(rollout(&d).step, 1);
}

#[test]
fn deadline_abort_and_exit_in_a_canary_roll_back() {
    for (event, error) in [
        (Event::DeadlinePassed, "the rollout's deadline passed"),
        (Event::Aborted("baton restarted".into()), "baton restarted"),
        (
            Event::Exited("exited with status 3".into()),
            "exited with status 3",
        ),
    ] {
        let mut d = canary(Inconclusive::Pause);
        d.on(Event::Promote { full: false });
        assert_eq!(d.on(event), [Action::Withdraw, Action::StopCandidate]);
        assert_eq!(d.phase, Phase::Failed);
        assert_eq!(d.failed_in, Some(Phase::Canary));
        assert_eq!(d.error.as_deref(), Some(error));
        assert_eq!(rollout(&d).weight, Weight::ZERO);
    }
}

#[test]
fn resume_after_a_restart_puts_the_step_back() {
    let mut d = canary(Inconclusive::Pause);
    d.on(pass());
    d.on(Event::PauseOver { step: 0 });
    d.on(Event::PauseOver { step: 1 });
    d.on(Event::Pause);
    let mut restored: Deploy = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(restored.resume(), holds(1));
    let r = rollout(&restored);
    assert!(!r.pause_over, "the step's timer starts over");
    assert!(r.paused, "a pause survives the restart");
    assert_eq!(r.step, 1);

    for phase in PHASES.into_iter().filter(|&p| p != Phase::Canary) {
        let mut d = canary(Inconclusive::Pause);
        d.phase = phase;
        assert_eq!(d.resume(), [], "{phase:?}");
    }
}

#[test]
fn a_deploy_round_trips_through_json() {
    let mut d = canary(Inconclusive::Continue);
    d.on(fail());
    d.on(Event::Pause);
    let json = serde_json::to_string(&d).unwrap();
    assert!(json.contains(r#""phase":"canary""#), "{json}");
    let back: Deploy = serde_json::from_str(&json).unwrap();
    assert_eq!(back, d);
}

#[test]
fn a_deploy_stored_before_canaries_still_loads() {
    let d = at(Phase::Health, DeployKind::Deploy, true);
    let mut json = serde_json::to_value(&d).unwrap();
    json.as_object_mut().unwrap().remove("rollout");
    let back: Deploy = serde_json::from_value(json).unwrap();
    assert_eq!(back, d);
    assert_eq!(back.rollout, None);
}
