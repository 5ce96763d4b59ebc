//! The line on a GenICam camera through the real Aravis library and the real GigE Vision
//! protocol (GVCP control, GVSP stream) on loopback: Debian's `arv-fake-gv-camera-0.8`.

mod common;

use common::root;
use diffad::clock::{Clock, SystemClock, MS};
use diffad::events::{Event, Outcome};
use diffad::line::setup::LineSetup;
use diffad::line::{self, Hardware, Options, Shutdown};
use diffad::sinks::pins::LinePins;
use diffad::sources::camera::{self, SourceError};
use diffad::stages::engine::{Engine, EngineConfig};
use diffad::stages::inspect::{EngineInspector, Inspector};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

/// One fake camera at a time: they all answer on 127.0.0.1's GVCP port.
static CAMERA: Mutex<()> = Mutex::new(());

/// A fake camera process, killed when dropped.
struct Fake(Child);

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's fake camera (`Aravis-Fake-GV01`), `lost` packets per thousand.
fn debian_camera(lost: u32) -> Fake {
    let child = Command::new("arv-fake-gv-camera-0.8")
        .args(["-i", "127.0.0.1", "-r", &lost.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("arv-fake-gv-camera-0.8 (Debian's aravis-tools; scripts/setup --test-deps)");
    wait_for_camera();
    Fake(child)
}

fn wait_for_camera() {
    for _ in 0..50 {
        if diffad::sources::camera::genicam::list()
            .iter()
            .any(|f| f.id == "Aravis-Fake-GV01")
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("the fake camera did not appear on 127.0.0.1");
}

fn setup(genicam: &str, parts: u64) -> LineSetup {
    setup_with(genicam, "", parts)
}

fn setup_with(genicam: &str, more: &str, parts: u64) -> LineSetup {
    let mut s = LineSetup::from_toml(&format!(
        r#"
        [camera]
        source = "genicam"
        stall_ms = 1500
        [camera.genicam]
        camera = "Aravis-Fake-GV01"
        {genicam}
        [gpio]
        sim = true
        pulse_ms = 10
        [line]
        name = "genicam"
        part_rate_hz = 10
        belt_speed_mm_s = 500
        camera_to_ejector_mm = 250
        verdict_margin_ms = 5
        heartbeat_ms = 100
        {more}
        [supervisor]
        listen = ""
        "#
    ))
    .expect("test setup is valid");
    s.line.parts = Some(parts);
    s.validate().expect("valid");
    s
}

fn model() -> Box<dyn Inspector> {
    let model = root().join("models/tiles-brick/model.onnx");
    Box::new(
        EngineInspector::new(
            Engine::load(&EngineConfig::cpu(&model)).unwrap(),
            None,
            None,
        )
        .unwrap(),
    )
}

/// Run the line on the real clock; returns its summary, its events and the pins' logs.
fn run(
    setup: &LineSetup,
    inspector: Box<dyn Inspector>,
    trigger: Option<Box<dyn diffad::sources::trigger::TriggerInput>>,
    clock: Arc<dyn Clock>,
) -> (line::Summary, Vec<Event>, diffad::sinks::pins::SimLogs) {
    let (pins, logs) = LinePins::sim(&setup.gpio, clock.clone());
    let source = camera::open(&setup.camera, setup.line.part_rate_hz, clock.clone()).unwrap();
    let (tap, rx) = crossbeam_channel::unbounded();
    let opts = Options {
        sinks: vec![Box::new(diffad::events::TapSink(tap))],
        live_log: false,
        ..Default::default()
    };
    let hw = Hardware {
        source,
        pins,
        trigger,
    };
    let s = line::run(setup, inspector, clock, hw, Shutdown::new(), opts).expect("line runs");
    println!("{s}");
    let events = rx.try_iter().map(|r| r.event.clone()).collect();
    (s, events, logs)
}

fn parts(events: &[Event]) -> Vec<diffad::events::PartEvent> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Part(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

fn alarms(events: &[Event], code: &str) -> Vec<bool> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Alarm(a) if a.code == code => Some(a.active),
            _ => None,
        })
        .collect()
}

/// Packets lost on the wire: every incomplete frame's part fails safe and none is inspected.
#[test]
fn incomplete_frames_fail_safe_and_are_never_inspected() {
    let _one = CAMERA.lock().unwrap_or_else(|e| e.into_inner());
    let _cam = debian_camera(20);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let s = setup(
        "pixel_format = \"Mono8\"\nwidth = 512\nheight = 512\nframe_rate = 10.0\ntimeout_ms = 500",
        40,
    );
    let (sum, events, _) = run(&s, model(), None, clock);
    let c = &sum.counters;
    assert!(sum.invariant_ok, "{sum}");
    assert!(c.packets_missing > 0, "2 % of packets were dropped: {sum}");
    assert!(c.frames_incomplete > 0, "{sum}");
    assert_eq!(
        sum.inspections + c.frames_incomplete,
        c.triggers,
        "an incomplete frame is never inspected: {sum}"
    );
    assert_eq!(c.fault_rejects, c.frames_incomplete, "{sum}");
    let failed: Vec<_> = parts(&events)
        .into_iter()
        .filter(|p| p.outcome == Outcome::FaultReject)
        .collect();
    assert_eq!(failed.len() as u64, c.frames_incomplete);
    assert!(
        failed.iter().all(|p| p
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("incomplete frame"))),
        "{failed:?}"
    );
    assert!(sum.to_string().contains("frames incomplete"), "{sum}");
}

/// Cable pulled and put back: the alarm is raised once and cleared once, `ready` drops and
/// returns, and every part gets exactly one outcome.
#[test]
fn a_camera_that_goes_away_and_comes_back() {
    let _one = CAMERA.lock().unwrap_or_else(|e| e.into_inner());
    let cam = debian_camera(0);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let s = setup(
        "pixel_format = \"Mono8\"\nwidth = 256\nheight = 256\nframe_rate = 10.0\ntimeout_ms = 300",
        50,
    );
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(2500));
        drop(cam);
        std::thread::sleep(std::time::Duration::from_millis(2500));
        debian_camera(0)
    });
    let (sum, events, logs) = run(&s, model(), None, clock);
    let _cam = restarter.join().unwrap();
    assert!(sum.invariant_ok, "{sum}");
    assert_eq!(sum.counters.triggers, 50);
    let mut seen = std::collections::HashMap::new();
    for p in parts(&events) {
        *seen.entry(p.part).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 50);
    assert!(seen.values().all(|&n| n == 1), "one outcome per part");
    assert_eq!(
        alarms(&events, "camera_error"),
        [true, false],
        "raised once, cleared once"
    );
    assert_eq!(alarms(&events, "camera_disconnected"), [true, false]);
    assert!(sum.counters.camera_errors > 0);
    let ready: Vec<bool> = logs.ready.edges().iter().map(|e| e.high).collect();
    let first_up = ready.iter().position(|&h| h).expect("ready came up");
    let down = ready[first_up..]
        .iter()
        .position(|&h| !h)
        .expect("ready dropped")
        + first_up;
    assert!(ready[down..].contains(&true), "ready came back: {ready:?}");
}

/// Software trigger: one `TriggerSoftware` per photo-eye edge, each frame matched to its part.
#[test]
fn a_software_triggered_camera_exposes_one_frame_per_photo_eye_edge() {
    let _one = CAMERA.lock().unwrap_or_else(|e| e.into_inner());
    let _cam = debian_camera(0);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let s = setup_with(
        "pixel_format = \"Mono8\"\nwidth = 256\nheight = 256\ntrigger = \"software\"",
        "trigger = \"gpio\"\n[gpio.trigger]\nname = \"PAA.01\"",
        20,
    );
    // The first edge after the camera had time to connect; then irregular gaps.
    let t0 = clock.now_ns() + 3000 * MS;
    let edges: Vec<u64> = (0..20u64)
        .map(|i| t0 + i * 150 * MS + (i % 3) * 40 * MS)
        .collect();
    let trigger = diffad::sources::trigger::SimTrigger::new(clock.clone(), edges.clone());
    let (sum, events, _) = run(&s, model(), Some(Box::new(trigger)), clock);
    assert!(sum.invariant_ok, "{sum}");
    assert_eq!(sum.counters.triggers, 20);
    assert_eq!(
        sum.counters.fault_rejects, 0,
        "every part got its own frame: {sum}"
    );
    let ps = parts(&events);
    for p in &ps {
        assert_eq!(p.trigger_ns, edges[(p.part - 1) as usize]);
        assert_eq!(p.frame.frame_seq, p.part, "frame n belongs to edge n");
    }
    assert_eq!(
        alarms(&events, "stray_frame"),
        Vec::<bool>::new(),
        "no frame without an edge"
    );
}

/// What the camera refuses is an error naming the board key, the feature and what it allows.
#[test]
fn refused_features_name_the_key_the_feature_and_the_range() {
    let _one = CAMERA.lock().unwrap_or_else(|e| e.into_inner());
    let _cam = debian_camera(0);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let open = |extra: &str| {
        let s = setup(extra, 1);
        let mut src = camera::open(&s.camera, 10.0, clock.clone()).unwrap();
        match src.next_frame() {
            Err(SourceError::Config(e)) => e,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    };
    let e = open("width = 99999");
    assert!(
        e.contains("camera.genicam.width") && e.contains("Width") && e.contains("1..=2048"),
        "{e}"
    );
    let e = open("[camera.genicam.features]\nNoSuchFeature = 3");
    assert!(
        e.contains("camera.genicam.features.NoSuchFeature")
            && e.contains("no feature NoSuchFeature"),
        "{e}"
    );
    let e = open("[camera.genicam.features]\nTriggerMode = \"Sometimes\"");
    assert!(e.contains("TriggerMode") && e.contains("Off, On"), "{e}");
    let e = open("pixel_format = \"Mono12\"");
    assert!(
        e.contains("PixelFormat") && e.contains("Mono8"),
        "the formats it has: {e}"
    );
}
