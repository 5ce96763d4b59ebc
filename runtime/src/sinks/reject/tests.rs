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
