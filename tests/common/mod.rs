//! Helpers shared by the line's end-to-end tests.
#![allow(dead_code)]

use diffad::clock::Clock;
use diffad::events::{Event, Record, TapSink};
use diffad::line::setup::LineSetup;
use diffad::line::watchdog::Notifier;
use diffad::line::{self, Hardware, Options, Shutdown, Summary};
use diffad::sim::clock::{SimClock, SimMode};
use diffad::sinks::pins::{LinePins, SimLogs};
use diffad::sources::camera::{self, Source};
use diffad::sources::trigger::TriggerInput;
use diffad::stages::engine::{Engine, EngineConfig};
use diffad::stages::inspect::EngineInspector;
use diffad::stages::inspect::Inspector;
use std::sync::Arc;

/// SIGKILLs a process if the test panics while it runs, so a failed assertion never leaves a
/// long line running behind it.
pub struct KillOnPanic(pub u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: plain syscall; a process already gone answers ESRCH.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// Whether this is the test's own process. Called first in a test that counts the process's
/// threads or memory: in the harness's process it reruns `test` alone in a child (with
/// `extra` arguments such as `--ignored`), asserts the child passed and returns false.
pub fn in_own_process(test: &str, extra: &[&str]) -> bool {
    const ALONE: &str = "DIFFAD_TEST_ALONE";
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture"])
        .args(extra)
        .env(ALONE, "1")
        .output()
        .unwrap();
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{t}");
    assert!(out.status.success() && t.contains("1 passed"), "{t}");
    false
}

/// Threads of this process, and its resident memory in KiB.
pub fn threads_and_rss() -> (usize, u64) {
    let threads = std::fs::read_dir("/proc/self/task").unwrap().count();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (threads, rss)
}

/// A port nothing listens on now (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Write a board file at `path` for a simulated line on the `sigmoid-b4` fixture model
/// (simulated conveyor and pins); `rest` adds the sections and keys the test is about.
pub fn sim_board(path: &std::path::Path, rest: &str) {
    let model = root().join("tests/fixtures/sigmoid-b4.onnx");
    std::fs::write(
        path,
        format!(
            "[board]\nname = \"t\"\n[engine]\nmodel = \"{}\"\n[camera]\nsource = \"sim\"\n[gpio]\nsim = true\n{rest}",
            model.display()
        ),
    )
    .unwrap();
}

/// The repository root (models/, board-configs/, tests/fixtures/ live there).
pub fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

/// Virtual start time: far from zero so arithmetic near zero would show.
pub const T0: u64 = 1_000_000_000_000;

/// A virtual clock at `T0` that jumps to the next deadline whenever every stage waits.
pub fn sim_clock() -> Arc<dyn Clock> {
    Arc::new(SimClock::new(SimMode::Auto, T0))
}

/// A simulated line: `parts` parts at 50 Hz, 20 % defective, ejector 500 ms downstream.
pub fn sim_setup(parts: u64) -> LineSetup {
    let mut s = LineSetup::from_toml(
        r#"
        [camera]
        source = "sim"
        stall_ms = 500
        [camera.sim]
        defect_rate = 0.2
        seed = 42
        [gpio]
        sim = true
        pulse_ms = 15
        [gpio.reject]
        name = "PAC.06"
        [line]
        name = "test"
        part_rate_hz = 50
        belt_speed_mm_s = 500
        camera_to_ejector_mm = 250
        verdict_margin_ms = 5
        heartbeat_ms = 100
        queue = 8
        [supervisor]
        listen = ""
        "#,
    )
    .expect("test setup is valid");
    s.line.parts = Some(parts);
    s
}

/// The shipped tiles model (models/tiles-brick) on the CPU, as the line's inspector.
pub fn tiles_model(_clock: Arc<dyn Clock>) -> Box<dyn Inspector> {
    let model = root().join("models/tiles-brick/model.onnx");
    let engine = Engine::load(&EngineConfig::cpu(&model)).expect("the shipped model loads");
    Box::new(EngineInspector::new(engine, None, None).expect("an inspector on it"))
}

/// The `active` flags of the alarms with `code`, in order (raised: true, cleared: false).
pub fn alarm_flags(run: &Run, code: &str) -> Vec<bool> {
    run.alarms(code).iter().map(|a| a.active).collect()
}

/// Builds a replacement camera from the run's clock.
pub type MakeSource = Box<dyn FnOnce(Arc<dyn Clock>) -> Box<dyn Source>>;

/// What a finished run left behind.
pub struct Run {
    pub summary: Summary,
    pub records: Vec<Arc<Record>>,
    pub pins: SimLogs,
}

impl Run {
    pub fn parts(&self) -> Vec<&diffad::events::PartEvent> {
        self.records
            .iter()
            .filter_map(|r| {
                if let Event::Part(p) = &r.event {
                    Some(p)
                } else {
                    None
                }
            })
            .collect()
    }
    pub fn rejects(&self) -> Vec<&diffad::events::RejectEvent> {
        self.records
            .iter()
            .filter_map(|r| {
                if let Event::Reject(p) = &r.event {
                    Some(p)
                } else {
                    None
                }
            })
            .collect()
    }
    pub fn alarms(&self, code: &str) -> Vec<&diffad::events::AlarmEvent> {
        self.records
            .iter()
            .filter_map(|r| {
                if let Event::Alarm(a) = &r.event {
                    Some(a)
                } else {
                    None
                }
            })
            .filter(|a| a.code == code)
            .collect()
    }
}

/// Run the line on a virtual clock (as fast as possible) with simulated pins.
///
/// `inspector` builds the inspector from the clock, so the same test runs the stand-in or the
/// real engine; `source` replaces the configured camera when given.
pub fn run_line(
    setup: &LineSetup,
    inspector: impl FnOnce(Arc<dyn Clock>) -> Box<dyn Inspector>,
    source: Option<MakeSource>,
    notifier: Option<Notifier>,
) -> Run {
    run_line_on(sim_clock(), setup, inspector, source, notifier)
}

/// [`run_line`] on a clock the test chose.
pub fn run_line_on(
    clock: Arc<dyn Clock>,
    setup: &LineSetup,
    inspector: impl FnOnce(Arc<dyn Clock>) -> Box<dyn Inspector>,
    source: Option<MakeSource>,
    notifier: Option<Notifier>,
) -> Run {
    run_line_with(clock, setup, inspector, source, notifier, None)
}

/// [`run_line_on`] with a photo-eye input (edges the test chose).
pub fn run_line_with(
    clock: Arc<dyn Clock>,
    setup: &LineSetup,
    inspector: impl FnOnce(Arc<dyn Clock>) -> Box<dyn Inspector>,
    source: Option<MakeSource>,
    notifier: Option<Notifier>,
    trigger: Option<Box<dyn TriggerInput>>,
) -> Run {
    let (pins, logs) = LinePins::sim(&setup.gpio, clock.clone());
    let source = match source {
        Some(f) => f(clock.clone()),
        None => camera::open(&setup.camera, setup.line.part_rate_hz, clock.clone())
            .expect("camera opens"),
    };
    let (tap, rx) = crossbeam_channel::unbounded();
    let opts = Options {
        sinks: vec![Box::new(TapSink(tap))],
        notifier,
        live_log: false,
        ..Default::default()
    };
    let hw = Hardware {
        source,
        pins,
        trigger,
    };
    let summary = line::run(
        setup,
        inspector(clock.clone()),
        clock,
        hw,
        Shutdown::new(),
        opts,
    )
    .expect("line runs");
    Run {
        summary,
        records: rx.try_iter().collect(),
        pins: logs,
    }
}
