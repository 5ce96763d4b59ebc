use super::*;
use crate::clock::MS;
use crate::events::{Bus, TapSink};
use crate::gpio::ActiveLevel;
use crate::sim::clock::{SimClock, SimMode};
use crate::sinks::pins::{PinLog, SimPin};

fn setup(
    fail_safe: FailSafe,
) -> (
    Scheduler,
    Arc<SimClock>,
    PinLog,
    crossbeam_channel::Receiver<Arc<crate::events::Record>>,
    Bus,
) {
    let clock = Arc::new(SimClock::new(SimMode::Manual, 0));
    let (pin, log) = SimPin::new(clock.clone());
    let out = Output::new(Box::new(pin), ActiveLevel::High).unwrap();
    let (tap, rx) = crossbeam_channel::unbounded();
    let bus = Bus::start("t", "r", 1024, clock.clone(), vec![Box::new(TapSink(tap))]);
    let policy = Policy {
        fail_safe,
        margin_ns: 5 * MS,
        pulse_ns: 20 * MS,
        threshold: 0.5,
        late_ns: 10 * MS,
        fire_late: false,
    };
    let s = Scheduler::new(policy, clock.clone(), out, bus.events(), Default::default());
    (s, clock, log, rx, bus)
}

fn part(n: u64, trigger: u64) -> PartInfo {
    PartInfo {
        part: n,
        trigger_ns: trigger,
        deadline_ns: trigger + 100 * MS,
        frame: FrameFacts {
            frame_seq: n,
            ..FrameFacts::default()
        },
    }
}

fn insp(score: f32) -> Result<Inspection, String> {
    Ok(Inspection {
        score,
        map: vec![],
        map_width: 0,
        map_height: 0,
        map_roi: None,
    })
}

#[test]
fn pass_cancels_reject_fires_and_missing_fails_safe() {
    let (mut s, clock, log, _rx, _bus) = setup(FailSafe::Reject);
    s.arm(part(1, 0));
    s.arm(part(2, 10 * MS));
    s.arm(part(3, 20 * MS));
    clock.advance_to(30 * MS);
    s.inspected(1, 0, insp(0.1), None, None);
    s.inspected(2, 10 * MS, insp(0.9), None, None);
    // Part 3 never gets a verdict: at 115 ms (its deadline minus margin) it fails safe.
    let mut t = clock.now_ns();
    while let Some(next) = s.poll() {
        t = next;
        clock.advance_to(t);
    }
    assert!(t >= 140 * MS);
    let c = s.counters();
    assert_eq!(
        (c.triggers, c.passes, c.rejects, c.fault_rejects, c.pending),
        (3, 1, 1, 1, 0)
    );
    // Parts 2 (110 ms) and 3 (120 ms) overlap: one extended pulse from 110 to 140 ms.
    assert_eq!(log.high_pulses(), vec![(110 * MS, 140 * MS)]);
    assert_eq!(s.stats().max_timing_error_ns, 0);
    assert!(s.idle());
}

#[test]
fn skipped_part_fails_safe_at_once_uninspected() {
    let (mut s, clock, log, _rx, _bus) = setup(FailSafe::Reject);
    s.arm(part(1, 0));
    clock.advance_to(10 * MS);
    s.skipped(1, "engine busy", None);
    let c = s.counters();
    assert_eq!((c.skipped, c.fault_rejects, c.pending), (1, 1, 0));
    assert_eq!(s.stats().latency_ns.len(), 0, "not inspected, no latency");
    while let Some(next) = s.poll() {
        clock.advance_to(next);
    }
    assert_eq!(log.high_pulses(), vec![(100 * MS, 120 * MS)]);
}

#[test]
fn late_verdict_is_a_fault_and_a_second_one_is_counted() {
    let (mut s, clock, log, _rx, _bus) = setup(FailSafe::Pass);
    s.arm(part(1, 0));
    clock.advance_to(97 * MS);
    s.inspected(1, 0, insp(0.1), None, None);
    s.inspected(1, 0, insp(0.1), None, None);
    while let Some(next) = s.poll() {
        clock.advance_to(next);
    }
    let c = s.counters();
    assert_eq!((c.fault_passes, c.late_verdicts, c.pulses), (1, 2, 0));
    // Late verdicts count in the latency figures too: both took 97 ms.
    assert_eq!(s.stats().latency_ns.len(), 2);
    assert!(
        s.stats()
            .latency_ns
            .value_at_quantile(0.5)
            .abs_diff(97 * MS)
            < MS / 10
    );
    assert!(log.rising().is_empty());
    assert!(c.balanced());
}

fn defective(n: u64, trigger: u64, kind: &str) -> PartInfo {
    let mut p = part(n, trigger);
    p.frame.defective = Some(true);
    p.frame.kind = Some(kind.into());
    p
}

#[test]
fn a_pulse_too_late_to_hit_its_part_is_held_and_its_part_a_possible_escape() {
    let (mut s, clock, log, rx, bus) = setup(FailSafe::Reject);
    s.arm(defective(1, 0, "scratch"));
    s.arm(part(2, 2 * MS));
    s.arm(part(3, 200 * MS));
    clock.advance_to(30 * MS);
    for (p, t) in [(1, 0), (2, 2 * MS), (3, 200 * MS)] {
        s.inspected(p, t, insp(0.9), None, None);
    }
    // The line was stopped from 30 to 150 ms: parts 1 and 2 were due at 100 and 102 ms, 50 ms
    // past; part 3 (due at 300 ms) is untouched by the stall.
    clock.advance_to(150 * MS);
    while let Some(next) = s.poll() {
        clock.advance_to(next);
    }
    assert_eq!(
        log.high_pulses(),
        vec![(300 * MS, 320 * MS)],
        "late pulses held"
    );
    let (c, st) = (s.counters(), s.stats().clone());
    assert_eq!((c.rejects, c.late_ejections, c.pulses), (3, 2, 3));
    assert_eq!(
        (st.late_ejections, st.late_held, st.late_escapes),
        (2, 2, 1)
    );
    assert_eq!(
        st.escapes, 1,
        "the defective part the jet missed counts as an escape"
    );
    assert_eq!(st.by_kind["scratch"].late_ejections, 1);
    assert_eq!(st.timing_error_ns.len(), 1, "only fired pulses are timed");
    drop(s);
    bus.close();
    let rejects: Vec<(u64, bool, bool)> = rx
        .try_iter()
        .filter_map(|r| match &r.event {
            Event::Reject(e) => Some((e.part, e.late, e.fired)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rejects,
        vec![(1, true, false), (2, true, false), (3, false, true)]
    );
}

#[test]
fn a_pulse_within_the_late_limit_fires_and_fire_late_fires_past_it_but_counts_it() {
    let (mut s, clock, log, _rx, _bus) = setup(FailSafe::Reject);
    s.arm(part(1, 0));
    s.arm(part(2, 100 * MS));
    s.inspected(1, 0, insp(0.9), None, None);
    s.inspected(2, 100 * MS, insp(0.9), None, None);
    // 9 ms late (limit 10): it still hits the part.
    clock.advance_to(109 * MS);
    while let Some(next) = s.poll().filter(|&n| n < 150 * MS) {
        clock.advance_to(next);
    }
    assert_eq!(s.counters().late_ejections, 0);
    s.policy.fire_late = true;
    clock.advance_to(260 * MS);
    while let Some(next) = s.poll() {
        clock.advance_to(next);
    }
    assert_eq!(
        log.high_pulses(),
        vec![(109 * MS, 120 * MS), (260 * MS, 280 * MS)]
    );
    assert_eq!((s.stats().late_ejections, s.stats().late_held), (1, 0));
    assert_eq!(
        s.stats().escapes,
        0,
        "no ground truth: a possible escape, not a known one"
    );
}

#[test]
fn a_pulse_whose_end_passed_in_a_stall_is_ended_before_the_next_begins() {
    let (mut s, clock, log, _rx, _bus) = setup(FailSafe::Reject);
    s.policy.fire_late = true;
    s.arm(part(1, 0));
    s.arm(part(2, 100 * MS));
    s.inspected(1, 0, insp(0.9), None, None);
    s.inspected(2, 100 * MS, insp(0.9), None, None);
    clock.advance_to(100 * MS);
    s.poll();
    // Stopped from 100 to 260 ms: part 1's pulse should have ended at 120.
    clock.advance_to(260 * MS);
    while let Some(next) = s.poll() {
        clock.advance_to(next);
    }
    assert_eq!(
        log.high_pulses(),
        vec![(100 * MS, 260 * MS), (260 * MS, 280 * MS)]
    );
}

#[test]
fn failed_inspections_in_a_row_are_counted_and_reset_by_a_good_one() {
    let (mut s, clock, _log, _rx, _bus) = setup(FailSafe::Reject);
    for p in 1..=3 {
        s.arm(part(p, p * MS));
    }
    clock.advance_to(10 * MS);
    s.inspected(1, MS, insp(f32::NAN), None, None);
    s.inspected(2, 2 * MS, Err("engine: boom".into()), None, None);
    assert_eq!(s.failures_in_row(), 2);
    s.inspected(3, 3 * MS, insp(0.1), None, None);
    assert_eq!(s.failures_in_row(), 0);
    assert_eq!(s.counters().inspect_errors, 2);
}
