use super::*;

const PHASES: [Phase; 6] = [
    Phase::Starting,
    Phase::Health,
    Phase::Smoke,
    Phase::Switching,
    Phase::Done,
    Phase::Failed,
];

fn events() -> Vec<Event> {
    vec![
        Event::Started,
        Event::StartFailed("spawn: no such file".into()),
        Event::Exited("exited with status 3".into()),
        Event::Healthy,
        Event::DeadlinePassed,
        Event::SmokePassed,
        Event::SmokeFailed("exit status 1".into()),
        Event::Switched,
        Event::Aborted("baton restarted".into()),
    ]
}

fn at(phase: Phase, kind: DeployKind, smoke: bool) -> Deploy {
    let (mut d, _) = Deploy::begin(kind, "v2", Color::Green, smoke);
    d.phase = phase;
    d
}

#[test]
fn happy_path_with_smoke() {
    let (mut d, first) = Deploy::begin(DeployKind::Deploy, "v2", Color::Green, true);
    assert_eq!(first, [Action::StartCandidate]);
    assert_eq!(d.on(Event::Started), [Action::AwaitHealthy]);
    assert_eq!(d.on(Event::Healthy), [Action::RunSmoke]);
    assert_eq!(d.on(Event::SmokePassed), [Action::Switch]);
    assert_eq!(d.on(Event::Switched), []);
    assert_eq!(d.phase, Phase::Done);
    assert_eq!(d.error, None);
}

#[test]
fn happy_path_without_smoke_skips_it() {
    let (mut d, _) = Deploy::begin(DeployKind::Deploy, "v2", Color::Green, false);
    d.on(Event::Started);
    assert_eq!(d.on(Event::Healthy), [Action::Switch]);
}

#[test]
fn rollback_goes_straight_to_the_switch() {
    let (mut d, first) = Deploy::begin(DeployKind::Rollback, "v1", Color::Blue, true);
    assert_eq!(first, [Action::Switch]);
    assert_eq!(d.phase, Phase::Switching);
    d.on(Event::Switched);
    assert_eq!(d.phase, Phase::Done);
}

/// Every (kind, smoke, phase, event) combination: traffic moves only from a
/// passed gate, every failure stops the candidate and records why, and final
/// phases absorb everything.
#[test]
fn every_transition_keeps_the_invariants() {
    for kind in [DeployKind::Deploy, DeployKind::Rollback] {
        for smoke in [false, true] {
            for phase in PHASES {
                for event in events() {
                    check_transition(kind, smoke, phase, event);
                }
            }
        }
    }
}

fn check_transition(kind: DeployKind, smoke: bool, phase: Phase, event: Event) {
    let mut d = at(phase, kind, smoke);
    let actions = d.on(event.clone());
    let case = format!("{kind:?} smoke={smoke} {phase:?} + {event:?}");

    if phase.is_final() {
        assert_eq!(d.phase, phase, "{case}: final phases never change");
        assert!(actions.is_empty(), "{case}");
        return;
    }
    if actions.contains(&Action::Switch) {
        let gate_passed = match event {
            Event::Healthy => phase == Phase::Health && !smoke,
            Event::SmokePassed => phase == Phase::Smoke,
            _ => false,
        };
        assert!(gate_passed, "{case}: switched without passing its gate");
        assert_eq!(d.phase, Phase::Switching, "{case}");
    }
    if d.phase == Phase::Failed {
        assert!(d.error.is_some(), "{case}: a failure says why");
        assert_eq!(d.failed_in, Some(phase), "{case}");
        let stops = actions == [Action::StopCandidate];
        assert_eq!(stops, kind == DeployKind::Deploy, "{case}");
    }
    if d.phase == Phase::Done {
        assert_eq!(
            (phase, &event),
            (Phase::Switching, &Event::Switched),
            "{case}"
        );
    }
    if phase == Phase::Switching && event != Event::Switched {
        assert_eq!(
            d.phase,
            Phase::Switching,
            "{case}: a switch under way is never left half-done"
        );
    }
}

#[test]
fn failures_name_their_cause() {
    let mut d = at(Phase::Health, DeployKind::Deploy, true);
    d.on(Event::DeadlinePassed);
    assert_eq!(
        d.error.as_deref(),
        Some("not healthy before the health deadline")
    );
    let mut d = at(Phase::Smoke, DeployKind::Deploy, true);
    d.on(Event::SmokeFailed("exit status 1".into()));
    assert_eq!(
        d.error.as_deref(),
        Some("smoke check failed: exit status 1")
    );
    assert_eq!(d.failed_in, Some(Phase::Smoke));
}
