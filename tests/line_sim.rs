//! End-to-end line simulations on a virtual clock: real threads, simulated camera and pins.

mod common;

use common::{run_line, sim_setup};
use diffad::clock::{Clock, MS};
use diffad::events::{Event, Outcome};
use diffad::sim::doubles::TruthInspector;
use std::collections::HashMap;

/// Runs the stand-in inspector on hardware and options a test assembled itself.
fn run_truth(
    setup: &diffad::line::setup::LineSetup,
    clock: std::sync::Arc<dyn Clock>,
    hw: diffad::line::Hardware,
    opts: diffad::line::Options,
) -> Result<diffad::line::Summary, diffad::line::LineError> {
    let inspector = Box::new(TruthInspector::new(clock.clone()));
    diffad::line::run(
        setup,
        inspector,
        clock,
        hw,
        diffad::line::Shutdown::new(),
        opts,
    )
}

#[test]
fn three_hundred_parts_one_verdict_each_and_pulses_on_time() {
    let setup = sim_setup(300);
    let run = run_line(&setup, |c| Box::new(TruthInspector::new(c)), None, None);
    let s = &run.summary;
    println!("{s}");

    // Exactly one outcome event per part, numbered 1..=300.
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for p in run.parts() {
        *seen.entry(p.part).or_default() += 1;
    }
    assert_eq!(seen.len(), 300);
    assert!(
        seen.values().all(|&n| n == 1),
        "a part had more than one outcome"
    );
    assert!((1..=300).all(|i| seen.contains_key(&i)));
    assert_eq!(s.counters.triggers, 300);
    assert!(s.invariant_ok);
    assert_eq!(s.counters.passes + s.counters.rejects, 300, "{s}");
    assert_eq!(s.counters.fault_rejects, 0);

    // The stand-in inspector is exact on ground truth: nothing escapes, nothing good is wasted.
    assert_eq!(s.with_truth, 300);
    assert_eq!((s.escapes, s.false_rejects), (0, 0));
    let defective = run
        .parts()
        .iter()
        .filter(|p| p.frame.defective == Some(true))
        .count() as u64;
    assert!(
        (30..=90).contains(&defective),
        "{defective} defective of 300"
    );
    assert_eq!(s.counters.rejects, defective);

    // Every reject lands within 2 ms of its deadline, on the pin too.
    let rejects = run.rejects();
    assert_eq!(rejects.len() as u64, s.counters.rejects);
    let deadlines: HashMap<u64, u64> = run
        .parts()
        .iter()
        .map(|p| (p.part, p.deadline_ns))
        .collect();
    let pulses = run.pins.reject.high_pulses();
    for r in &rejects {
        assert_eq!(r.scheduled_ns, deadlines[&r.part]);
        assert!(r.actual_ns.abs_diff(r.scheduled_ns) <= 2 * MS, "{r:?}");
        assert!(
            pulses
                .iter()
                .any(|&(a, b)| a <= r.scheduled_ns + 2 * MS && r.scheduled_ns < b),
            "no pulse covers part {} at {}",
            r.part,
            r.scheduled_ns
        );
    }
    for &(a, b) in &pulses {
        assert!(
            rejects.iter().any(|r| r.scheduled_ns.abs_diff(a) <= 2 * MS),
            "pulse at {a} matches no reject"
        );
        assert!(b - a >= 15 * MS);
    }
    assert!(s.max_reject_error_ms <= 2.0);
    assert!(
        run.pins.reject.level() == Some(false),
        "reject line left off"
    );
    let json = serde_json::to_value(s).unwrap();
    assert_eq!(json["counters"]["triggers"], 300);

    // ready went high while running and low at the end; the heartbeat toggled.
    assert!(!run.pins.ready.rising().is_empty());
    assert_eq!(run.pins.ready.level(), Some(false));
    assert!(run.pins.heartbeat.rising().len() > 10);
    let hb = run
        .records
        .iter()
        .filter(|r| matches!(r.event, Event::Heartbeat(_)))
        .count();
    assert!(hb > 10);
    assert_eq!(s.events_dropped, 0);
    // Sequence numbers have no gaps.
    assert!(run.records.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}

#[test]
fn same_seed_same_line() {
    let setup = sim_setup(60);
    let outcomes = |run: &common::Run| {
        run.parts()
            .iter()
            .map(|p| (p.part, p.outcome, p.trigger_ns))
            .collect::<Vec<_>>()
    };
    let a = run_line(&setup, |c| Box::new(TruthInspector::new(c)), None, None);
    let b = run_line(&setup, |c| Box::new(TruthInspector::new(c)), None, None);
    assert_eq!(outcomes(&a), outcomes(&b));
    assert_eq!(a.pins.reject.edges(), b.pins.reject.edges());
}

#[test]
fn slow_engine_fails_safe_and_loses_no_part() {
    let setup = sim_setup(300);
    let run = run_line(
        &setup,
        |c| {
            let mut i = TruthInspector::new(c);
            i.batch = 2;
            // Every 25th frame stalls the engine for 700 ms: longer than the 500 ms belt travel.
            i.slow_every = Some((25, 700 * MS));
            i.fail_every = Some(37);
            Box::new(i)
        },
        None,
        None,
    );
    let s = &run.summary;
    println!("{s}");
    assert_eq!(s.counters.triggers, 300);
    assert!(s.invariant_ok, "{s}");
    assert!(s.counters.fault_rejects > 0);
    assert!(
        s.counters.skipped > 0,
        "parts queued behind a 700 ms stall could not make their deadline and were skipped"
    );
    assert!(s.counters.late_verdicts > 0);
    assert!(s.counters.inspect_errors > 0);
    assert_eq!(
        s.escapes, 0,
        "fail-safe never lets a defective part through"
    );
    let parts = run.parts();
    assert_eq!(parts.len(), 300);
    let mut ids: Vec<u64> = parts.iter().map(|p| p.part).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 300, "exactly one outcome per part");
    let faults = parts
        .iter()
        .filter(|p| p.outcome == Outcome::FaultReject)
        .count() as u64;
    assert_eq!(faults, s.counters.fault_rejects);
    assert!(parts
        .iter()
        .filter(|p| p.outcome == Outcome::FaultReject)
        .all(|p| p.reason.is_some()));
    assert!(!run.alarms("overload").is_empty());
    assert!(parts
        .iter()
        .filter(|p| p
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("skipped")))
        .all(|p| p.score.is_none() && p.outcome == Outcome::FaultReject));
    assert!(!run.alarms("late_verdict").is_empty() || !run.alarms("verdict_missing").is_empty());
    assert!(!run.alarms("inspect_failed").is_empty());
    // Every fault reject still fired on time.
    for r in run.rejects() {
        assert!(r.actual_ns.abs_diff(r.scheduled_ns) <= 2 * MS, "{r:?}");
    }
    assert_eq!(
        run.rejects().len() as u64,
        s.counters.rejects + s.counters.fault_rejects
    );
}

/// Parts at `rate_hz` against an engine that takes 80 ms per frame (12.5 frames/s).
fn overloaded(parts: u64, rate_hz: f64) -> common::Run {
    let mut setup = sim_setup(parts);
    setup.line.part_rate_hz = rate_hz;
    run_line(
        &setup,
        |c| {
            let mut i = TruthInspector::new(c);
            i.batch = 1;
            i.delay_ns = 80 * MS;
            Box::new(i)
        },
        None,
        None,
    )
}

#[test]
fn overload_spends_the_engine_on_parts_that_can_make_their_deadline() {
    // 30 parts/s against 12.5/s of capacity (2.4x), 500 ms from trigger to ejector.
    let run = overloaded(1800, 30.0);
    let s = &run.summary;
    println!("{s}");
    assert!(s.invariant_ok, "{s}");
    let capacity = s.trigger_span_s / 0.080;
    let share = s.inspected_in_time as f64 / capacity;
    // A first-in-first-out engine inspected 5 of these 1800 parts in time.
    assert!(
        share >= 0.9,
        "in time {} of a capacity of {capacity:.0} ({share:.2})",
        s.inspected_in_time
    );
    // The rest were skipped at once, not inspected and then thrown away as late.
    assert!(s.counters.late_verdicts <= 2, "{s}");
    assert_eq!(
        s.counters.skipped + s.inspected_in_time + s.counters.late_verdicts,
        1800,
        "{s}"
    );
    assert_eq!(s.escapes, 0, "skipped parts fail safe: {s}");
    // Latency over every inspected part stays within the belt travel.
    assert!(s.latency_p99_ms.unwrap() < 500.0, "{s}");
    assert!(!run.alarms("overload").is_empty());
}

/// Every one of `parts` was inspected and decided in time: none skipped, late or failed safe.
fn every_part_decided_by_its_verdict(run: &common::Run, parts: u64) {
    let s = &run.summary;
    println!("{s}");
    assert!(s.invariant_ok, "{s}");
    assert_eq!(
        (
            s.counters.fault_rejects,
            s.counters.skipped,
            s.counters.late_verdicts
        ),
        (0, 0, 0),
        "{s}"
    );
    assert_eq!(s.inspected_in_time, parts);
}

#[test]
fn below_capacity_nothing_is_skipped_or_failed_safe() {
    // 0.9x of capacity: every part is inspected and decided by its verdict.
    let run = overloaded(600, 11.25);
    every_part_decided_by_its_verdict(&run, 600);
}

#[test]
fn a_hiccup_near_capacity_is_caught_up_oldest_first() {
    // 0.9x of capacity, but every 100th frame the engine takes 250 ms longer: a few frames
    // queue up, and the spare 10 % takes seconds to drain them. Served newest first, the
    // oldest of them waited past their deadline and failed safe; served oldest first while
    // every queued part can still make it, none does.
    let mut setup = sim_setup(600);
    setup.line.part_rate_hz = 11.25;
    let run = run_line(
        &setup,
        |c| {
            let mut i = TruthInspector::new(c);
            i.batch = 1;
            i.delay_ns = 80 * MS;
            i.slow_every = Some((100, 250 * MS));
            Box::new(i)
        },
        None,
        None,
    );
    every_part_decided_by_its_verdict(&run, 600);
}

/// A camera that delivers some frames, then nothing for a while, then ends.
struct Stalling {
    inner: Box<dyn diffad::sources::camera::Source>,
    clock: std::sync::Arc<dyn Clock>,
    good: u64,
    n: u64,
    stall_ns: u64,
}

impl diffad::sources::camera::Source for Stalling {
    fn next_frame(
        &mut self,
    ) -> Result<Option<diffad::frame::Frame>, diffad::sources::camera::SourceError> {
        self.n += 1;
        if self.n == self.good + 1 {
            let until = self.clock.now_ns() + self.stall_ns;
            while self.clock.now_ns() < until {
                // Like a v4l2 dequeue timing out every 200 ms.
                self.clock
                    .sleep_until((self.clock.now_ns() + 200 * MS).min(until));
            }
            return Ok(None);
        }
        self.inner.next_frame()
    }
    fn describe(&self) -> String {
        "stalling".into()
    }
}

#[test]
fn stalled_camera_raises_alarm_and_drops_ready() {
    let setup = sim_setup(1000);
    let cam = setup.camera.clone();
    let line = setup.line.clone();
    let run = run_line(
        &setup,
        |c| Box::new(TruthInspector::new(c)),
        Some(Box::new(move |clock| {
            let inner =
                diffad::sources::camera::open(&cam, line.part_rate_hz, clock.clone()).unwrap();
            Box::new(Stalling {
                inner,
                clock,
                good: 20,
                n: 0,
                stall_ns: 3000 * MS,
            }) as Box<dyn diffad::sources::camera::Source>
        })),
        None,
    );
    let raised = run.alarms("camera_stalled");
    assert!(
        raised.iter().any(|a| a.active),
        "no camera_stalled alarm: {:?}",
        run.records.len()
    );
    // ready was high while frames came, then fell during the stall (before the end of the run).
    let ready = run.pins.ready.edges();
    let first_high = ready.iter().position(|e| e.high).expect("ready went high");
    assert!(ready[first_high..].iter().any(|e| !e.high));
    let stalled_beats = run
        .records
        .iter()
        .filter_map(|r| {
            if let Event::Heartbeat(h) = &r.event {
                Some(h)
            } else {
                None
            }
        })
        .filter(|h| !h.ready && h.faults.iter().any(|f| f == "camera_stalled"))
        .count();
    assert!(stalled_beats >= 5, "{stalled_beats}");
    assert!(run.summary.invariant_ok);
    assert_eq!(run.summary.counters.triggers, 20);
}

#[test]
fn sd_notify_ready_watchdog_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    // Generous: on a loaded machine the line can take seconds to reach READY.
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // Read while the line runs: the kernel queues only a few datagrams per socket.
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            let last = m == "STOPPING=1";
            got.push(m);
            if last {
                break;
            }
        }
        got
    });
    let notifier = diffad::line::watchdog::Notifier::new(path.to_str().unwrap(), None).unwrap();
    let run = run_line(
        &sim_setup(50),
        |c| Box::new(TruthInspector::new(c)),
        None,
        Some(notifier),
    );
    assert!(run.summary.invariant_ok);
    let got = reader.join().unwrap();
    assert_eq!(got.first().map(String::as_str), Some("READY=1"), "{got:?}");
    assert!(
        got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3,
        "{got:?}"
    );
    assert_eq!(got.last().map(String::as_str), Some("STOPPING=1"));
}

#[test]
fn photo_eye_triggers_arm_parts_and_frames_are_matched() {
    use diffad::line::{Hardware, Options};
    use diffad::sinks::pins::LinePins;
    use diffad::sources::trigger::SimTrigger;
    let mut setup = sim_setup(100);
    setup.line.trigger = diffad::line::setup::Trigger::Gpio;
    setup.gpio.trigger = Some(diffad::gpio::LineRef {
        name: "PAA.01".into(),
        active: Default::default(),
    });
    setup.validate().unwrap();
    let clock = common::sim_clock();
    let (pins, logs) = LinePins::sim(&setup.gpio, clock.clone());
    // The photo-eye sees each part 3 ms before the camera's exposure.
    let edges: Vec<u64> = (0..100)
        .map(|i| common::T0 + i * 20 * MS - 3 * MS)
        .collect();
    let trigger = SimTrigger::new(clock.clone(), edges.clone());
    let source =
        diffad::sources::camera::open(&setup.camera, setup.line.part_rate_hz, clock.clone())
            .unwrap();
    let (tap, rx) = crossbeam_channel::unbounded();
    let opts = Options {
        sinks: vec![Box::new(diffad::events::TapSink(tap))],
        live_log: false,
        ..Default::default()
    };
    let hw = Hardware {
        source,
        pins,
        trigger: Some(Box::new(trigger)),
    };
    let s = run_truth(&setup, clock, hw, opts).unwrap();
    println!("{s}");
    assert_eq!(s.counters.triggers, 100);
    assert!(s.invariant_ok);
    assert_eq!(
        s.counters.fault_rejects, 0,
        "every part got its frame and verdict: {s}"
    );
    let parts: Vec<_> = rx
        .try_iter()
        .filter_map(|r| {
            if let Event::Part(p) = &r.event {
                Some(p.clone())
            } else {
                None
            }
        })
        .collect();
    assert_eq!(parts.len(), 100);
    for p in &parts {
        // Born at the edge, not at the frame; the frame was matched to it.
        assert_eq!(p.trigger_ns, edges[(p.part - 1) as usize]);
        assert_eq!(p.deadline_ns, p.trigger_ns + 500 * MS);
        assert_eq!(p.frame.frame_seq, p.part);
        assert!(p.frame.defective.is_some());
    }
    assert_eq!(s.escapes + s.false_rejects, 0);
    assert_eq!(logs.reject.level(), Some(false));
}

/// An output that works `ok_writes` times and then fails.
struct FlakyPin {
    ok_writes: u32,
}

impl embedded_hal::digital::ErrorType for FlakyPin {
    type Error = diffad::gpio::PinError;
}

impl embedded_hal::digital::OutputPin for FlakyPin {
    fn set_low(&mut self) -> Result<(), Self::Error> {
        self.set_high()
    }
    fn set_high(&mut self) -> Result<(), Self::Error> {
        if self.ok_writes == 0 {
            return Err(diffad::gpio::PinError::Io("line request revoked".into()));
        }
        self.ok_writes -= 1;
        Ok(())
    }
}

#[test]
fn failing_reject_pin_alarms_and_drops_ready() {
    use diffad::line::{open_hardware, Options};
    use diffad::sinks::pins::{LinePins, Output};
    let setup = sim_setup(100);
    let clock = common::sim_clock();
    let (mut hw, logs) = open_hardware(&setup, clock.clone()).unwrap();
    let logs = logs.expect("gpio.sim gives pin logs");
    let flaky = Output::new(Box::new(FlakyPin { ok_writes: 4 }), Default::default()).unwrap();
    let LinePins {
        ready,
        heartbeat,
        fault,
        ..
    } = hw.pins;
    hw.pins = LinePins {
        reject: flaky,
        ready,
        heartbeat,
        fault,
    };
    let (tap, rx) = crossbeam_channel::unbounded();
    let opts = Options {
        sinks: vec![Box::new(diffad::events::TapSink(tap))],
        live_log: false,
        ..Default::default()
    };
    let s = run_truth(&setup, clock, hw, opts).unwrap();
    assert!(s.invariant_ok);
    assert!(s.pin_errors > 0);
    let recs: Vec<_> = rx.try_iter().collect();
    assert!(recs
        .iter()
        .any(|r| matches!(&r.event, Event::Alarm(a) if a.code == "pin_error")));
    assert!(recs.iter().any(|r| matches!(&r.event, Event::Heartbeat(h) if !h.ready && h.faults.iter().any(|f| f == "pin_error"))));
    assert!(
        logs.fault.rising().len() == 1,
        "fault went high once and stayed until the stop"
    );
}

/// A camera that panics after a few frames.
struct Exploding {
    inner: Box<dyn diffad::sources::camera::Source>,
    n: u64,
}

impl diffad::sources::camera::Source for Exploding {
    fn next_frame(
        &mut self,
    ) -> Result<Option<diffad::frame::Frame>, diffad::sources::camera::SourceError> {
        self.n += 1;
        assert!(self.n <= 10, "camera driver bug");
        self.inner.next_frame()
    }
    fn describe(&self) -> String {
        "exploding".into()
    }
}

struct PanickyInspector(TruthInspector);

impl diffad::stages::inspect::Inspector for PanickyInspector {
    fn batch_size(&self) -> usize {
        1
    }
    fn threshold(&self) -> f32 {
        0.5
    }
    fn inspect(
        &mut self,
        frames: &[&diffad::frame::Frame],
    ) -> Vec<Result<diffad::stages::inspect::Inspection, diffad::stages::inspect::InspectError>>
    {
        assert!(frames[0].seq % 10 != 0, "engine bug");
        self.0.inspect(frames)
    }
}

#[test]
fn panics_fail_safe_and_never_hang_the_line() {
    // An inspector panic is contained: that part fails safe, the line goes on.
    let run = run_line(
        &sim_setup(50),
        |c| Box::new(PanickyInspector(TruthInspector::new(c))),
        None,
        None,
    );
    let s = &run.summary;
    assert!(s.invariant_ok);
    assert_eq!(s.counters.triggers, 50);
    assert_eq!(s.counters.inspect_errors, 5);
    assert_eq!(s.counters.fault_rejects, 5);

    // A capture thread that dies ends the run with an error instead of hanging it.
    let setup = sim_setup(50);
    let clock = common::sim_clock();
    let (mut hw, logs) = diffad::line::open_hardware(&setup, clock.clone()).unwrap();
    hw.source = Box::new(Exploding {
        inner: hw.source,
        n: 0,
    });
    let opts = diffad::line::Options {
        live_log: false,
        ..Default::default()
    };
    let r = run_truth(&setup, clock, hw, opts);
    assert!(
        matches!(r, Err(diffad::line::LineError::Panic("capture"))),
        "{:?}",
        r.err()
    );
    let logs = logs.unwrap();
    assert_eq!(logs.ready.level(), Some(false));
    assert_eq!(logs.reject.level(), Some(false));
}

#[test]
fn replayed_mvtec_folder_keeps_ground_truth_through_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // 6 good and 4 scratched 64×64 tiles with masks, MVTec layout.
    for (kind, n) in [("good", 6u32), ("scratch", 4)] {
        std::fs::create_dir_all(root.join("test").join(kind)).unwrap();
        std::fs::create_dir_all(root.join("ground_truth").join(kind)).unwrap();
        for i in 0..n {
            let mut img = image::GrayImage::from_fn(64, 64, |x, y| {
                image::Luma([(100 + (x * 7 + y * 3 + i) % 40) as u8])
            });
            let mut mask = image::GrayImage::new(64, 64);
            if kind != "good" {
                for x in 10..50 {
                    img.put_pixel(x, 30, image::Luma([250]));
                    mask.put_pixel(x, 30, image::Luma([255]));
                }
                mask.save(root.join(format!("ground_truth/{kind}/{i:03}_mask.png")))
                    .unwrap();
            }
            img.save(root.join(format!("test/{kind}/{i:03}.png")))
                .unwrap();
        }
    }
    let mut setup = sim_setup(1000);
    setup.camera.source = diffad::sources::camera::config::SourceKind::Replay;
    setup.camera.replay.dir = root.to_path_buf();
    setup.validate().unwrap();
    let run = run_line(&setup, |c| Box::new(TruthInspector::new(c)), None, None);
    let s = &run.summary;
    assert_eq!(s.counters.triggers, 10, "the replay ends after one pass");
    assert_eq!(
        (s.with_truth, s.counters.rejects, s.escapes, s.false_rejects),
        (10, 4, 0, 0),
        "{s}"
    );
    let kinds: Vec<Option<String>> = run.parts().iter().map(|p| p.frame.kind.clone()).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| k.as_deref() == Some("scratch"))
            .count(),
        4
    );
    assert!(run.parts().iter().all(|p| p.frame.origin.ends_with(".png")));
}

#[test]
fn full_event_bus_drops_are_counted_and_the_line_is_unaffected() {
    use diffad::line::{open_hardware, Options};
    let setup = sim_setup(200);
    let clock = common::sim_clock();
    let (hw, logs) = open_hardware(&setup, clock.clone()).unwrap();
    /// A sink slower than the line.
    struct Slow;
    impl diffad::events::Sink for Slow {
        fn deliver(&mut self, _rec: &std::sync::Arc<diffad::events::Record>) {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    let opts = Options {
        sinks: vec![Box::new(Slow)],
        bus_capacity: 4,
        live_log: false,
        ..Default::default()
    };
    let s = run_truth(&setup, clock, hw, opts).unwrap();
    assert!(s.events_dropped > 0, "{s}");
    assert_eq!(s.counters.events_dropped, s.events_dropped);
    assert!(s.invariant_ok);
    assert_eq!(s.counters.triggers, 200);
    assert_eq!(
        s.counters.fault_rejects, 0,
        "a slow event consumer never delays a verdict"
    );
    assert!(s.max_reject_error_ms <= 2.0);
    assert_eq!(
        logs.unwrap().reject.rising().len() as u64 > 0,
        s.counters.rejects > 0
    );
}

/// A camera that ends after `left` frames.
struct Frames {
    inner: Box<dyn diffad::sources::camera::Source>,
    left: u64,
}

impl diffad::sources::camera::Source for Frames {
    fn next_frame(
        &mut self,
    ) -> Result<Option<diffad::frame::Frame>, diffad::sources::camera::SourceError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.inner.next_frame()
    }
    fn recycle(&mut self, buf: Vec<u8>) {
        self.inner.recycle(buf);
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A photo-eye line whose sensor is wired `active`, requested from a fake kernel that sees
/// each of 100 parts arrive 3 ms before its exposure and leave 5 ms later, the reading thread
/// off the CPU over `stall` if given.
fn run_fake_photo_eye(
    active: diffad::gpio::ActiveLevel,
    stall: Option<(u64, u64)>,
) -> (
    diffad::line::Summary,
    Vec<diffad::events::AlarmEvent>,
    diffad::sim::doubles::FakeEdgeRequest,
) {
    use diffad::gpio::ActiveLevel;
    use diffad::line::{Hardware, Options};
    use diffad::sim::doubles::FakeEdgeRequest;
    use diffad::sinks::pins::LinePins;
    use diffad::sources::trigger::request_trigger;
    let mut setup = sim_setup(100);
    setup.line.trigger = diffad::line::setup::Trigger::Gpio;
    setup.gpio.trigger = Some(diffad::gpio::LineRef {
        name: "PAA.01".into(),
        active,
    });
    setup.validate().unwrap();
    let clock = common::sim_clock();
    let (pins, _logs) = LinePins::sim(&setup.gpio, clock.clone());
    let mut kernel = None;
    let trigger = request_trigger(&setup.gpio, |line, req| {
        let k = FakeEdgeRequest::new(clock.clone(), req, 1, line.active == ActiveLevel::Low);
        kernel = Some(k.clone());
        Ok(k)
    })
    .unwrap();
    let kernel = kernel.unwrap();
    let present_high = active == ActiveLevel::High;
    for i in 0..100 {
        let t = common::T0 + i * 20 * MS - 3 * MS;
        kernel.drive(0, t, present_high);
        kernel.drive(0, t + 5 * MS, !present_high);
    }
    if let Some((from, until)) = stall {
        kernel.stall_reads(from, until);
    }
    let camera =
        diffad::sources::camera::open(&setup.camera, setup.line.part_rate_hz, clock.clone())
            .unwrap();
    // The line stops when the camera does: lost parts never count towards `line.parts`.
    let source = Box::new(Frames {
        inner: camera,
        left: 100,
    });
    let (tap, rx) = crossbeam_channel::unbounded();
    let opts = Options {
        sinks: vec![Box::new(diffad::events::TapSink(tap))],
        live_log: false,
        ..Default::default()
    };
    let hw = Hardware {
        source,
        pins,
        trigger: Some(trigger),
    };
    let s = run_truth(&setup, clock, hw, opts).unwrap();
    let alarms = rx
        .try_iter()
        .filter_map(|r| match &r.event {
            Event::Alarm(a) if a.code == "trigger_edges_lost" => Some(a.clone()),
            _ => None,
        })
        .collect();
    (s, alarms, kernel)
}

#[test]
fn photo_eye_pulses_make_one_part_each_and_no_false_losses() {
    for active in [
        diffad::gpio::ActiveLevel::High,
        diffad::gpio::ActiveLevel::Low,
    ] {
        let (s, alarms, kernel) = run_fake_photo_eye(active, None);
        println!("{s}");
        assert_eq!(s.counters.triggers, 100, "{active:?}: {s}");
        assert_eq!(s.counters.trigger_edges_lost, 0, "{active:?}: {s}");
        assert!(alarms.is_empty(), "{active:?}: {alarms:?}");
        assert_eq!(kernel.dropped(), 0);
        assert!(s.invariant_ok);
        assert_eq!(s.counters.fault_rejects, 0, "{active:?}: {s}");
    }
}

#[test]
fn photo_eye_edges_dropped_by_the_kernel_are_counted_and_alarmed() {
    // Parts 17..=41 arrive while the trigger thread is off the CPU: 25 events, 16 places.
    let stall = (common::T0 + 300 * MS, common::T0 + 800 * MS);
    let (s, alarms, kernel) = run_fake_photo_eye(diffad::gpio::ActiveLevel::Low, Some(stall));
    println!("{s}");
    assert_eq!(kernel.dropped(), 9);
    assert_eq!(s.counters.trigger_edges_lost, 9, "{s}");
    assert_eq!(
        s.counters.triggers, 91,
        "the lost parts were never born: {s}"
    );
    assert!(s.invariant_ok);
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert!(alarms[0].active);
    assert!(
        alarms[0].message.contains("9 part edges"),
        "{}",
        alarms[0].message
    );
}

/// The system clock of a machine whose sleeping threads wake `late_ns` after their deadline (a
/// kernel without PREEMPT_RT, a VM), on virtual time; a thread that spins is on time.
struct LateWaker {
    inner: std::sync::Arc<dyn Clock>,
    late_ns: u64,
}

impl Clock for LateWaker {
    fn now_ns(&self) -> u64 {
        self.inner.now_ns()
    }
    fn wait_until(&self, deadline_ns: Option<u64>, ready: &diffad::clock::Ready<'_>) -> bool {
        self.inner
            .wait_until(deadline_ns.map(|d| d + self.late_ns), ready)
    }
    fn notify(&self) {
        self.inner.notify()
    }
    fn hold(&self) {
        self.inner.hold()
    }
    fn release(&self) {
        self.inner.release()
    }
    fn spin_until(&self, t_ns: u64) {
        self.inner.sleep_until(t_ns)
    }
}

#[test]
fn a_late_wake_up_does_not_delay_a_pulse_the_reject_thread_spins_for() {
    let late_ns = 3 * MS;
    let run_with = |spin_us: u64| {
        let mut setup = sim_setup(100);
        setup.line.reject_spin_us = spin_us;
        let clock: std::sync::Arc<dyn Clock> = std::sync::Arc::new(LateWaker {
            inner: common::sim_clock(),
            late_ns,
        });
        let run = common::run_line_on(
            clock,
            &setup,
            |c| Box::new(TruthInspector::new(c)),
            None,
            None,
        );
        assert!(run.summary.invariant_ok, "{}", run.summary);
        assert!(run.summary.counters.rejects > 5, "{}", run.summary);
        run
    };
    // Sleeping to each pulse, every edge is as late as the wake-up.
    let slept = run_with(0);
    assert!(
        slept.summary.max_reject_error_ms >= 2.9,
        "{}",
        slept.summary
    );
    // Awake for the last 4 ms, the thread is there when the pulse is due.
    let spun = run_with(4_000);
    assert_eq!(spun.summary.reject_spin_refused, 0);
    for r in spun.rejects() {
        assert_eq!(r.actual_ns, r.scheduled_ns, "{r:?}");
    }
    let scheduled: std::collections::HashSet<u64> =
        spun.rejects().iter().map(|r| r.scheduled_ns).collect();
    let pulses = spun.pins.reject.high_pulses();
    assert_eq!(pulses.len() as u64, spun.summary.counters.rejects);
    assert!(pulses.iter().all(|(start, _)| scheduled.contains(start)));
}
