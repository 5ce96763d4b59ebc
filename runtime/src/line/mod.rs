//! The line: capture → inspect (batched) → decide + reject, with a health thread and the event
//! fan-out, joined by bounded channels. Capture never waits for a slower stage: a frame that
//! finds the engine queue full fails safe at once (its part still gets exactly one outcome).
//!
//! Wiring, as `diffad run` does it:
//! ```no_run
//! # fn demo(setup: &diffad::line::setup::LineSetup, inspector: Box<dyn diffad::stages::inspect::Inspector>)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! use diffad::clock::{Clock, SystemClock};
//! use diffad::line::{open_hardware, run, Options, Shutdown};
//! use std::sync::Arc;
//! diffad::events::LogBridge::install()?; // instead of env_logger::init()
//! let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
//! let (hw, _sim_pin_logs) = open_hardware(setup, clock.clone())?; // sim pins when gpio.sim
//! let shutdown = Shutdown::new();
//! shutdown.install_signals()?; // SIGINT/SIGTERM drain and stop
//! let opts = Options { notifier: diffad::line::watchdog::Notifier::from_env()?, ..Default::default() };
//! let summary = run(setup, inspector, clock, hw, shutdown, opts)?;
//! println!("{summary}");
//! # Ok(()) }
//! ```
//! Simulations use `SimClock::new(SimMode::Auto, t0)` instead (as fast as possible, same
//! results every run); the inspector's own time then counts as zero unless it waits on the clock.

pub mod board;
pub mod launch;
pub mod setup;
pub mod watchdog;

use crate::clock::{chan, Clock, Held, MS};
use crate::config::Invalid;
use crate::events::{Bus, Counters, Event, Events, HeartbeatEvent, LiveLog, Sink};
use crate::frame::Frame;
use crate::line::setup::LineSetup;
use crate::line::setup::Trigger;
use crate::line::watchdog::Notifier;
use crate::sinks::archive::{Archive, ArchiveStats};
use crate::sinks::mqtt::Publisher;
use crate::sinks::pins::{LinePins, Output};
use crate::sinks::reject::FailSafe;
use crate::sinks::reject::{PartInfo, Policy, RejectStats, Scheduler};
use crate::sinks::supervisor::Supervisor;
use crate::sources::camera::{Source, SourceError};
use crate::sources::trigger::TriggerInput;
use crate::stages::inspect::{Inspection, Inspector};
use crate::stages::triage::{Job, Pushed, ServiceTime, Triage};
use crate::tally::Tally;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the line runs on.
pub struct Hardware {
    /// Frame source.
    pub source: Box<dyn Source>,
    /// Output lines.
    pub pins: LinePins,
    /// Photo-eye input, required when `line.trigger = "gpio"`.
    pub trigger: Option<Box<dyn TriggerInput>>,
}

/// Ask the line to stop (signals, tests); it drains in-flight parts first.
#[derive(Clone, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    /// A fresh, unrequested shutdown flag.
    pub fn new() -> Self {
        Self::default()
    }

    /// Request the stop.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Request the stop on SIGINT and SIGTERM.
    pub fn install_signals(&self) -> std::io::Result<()> {
        signal_hook::flag::register(signal_hook::consts::SIGINT, self.0.clone())?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, self.0.clone())?;
        Ok(())
    }
}

/// Extras for [`run`]: additional sinks, the systemd notifier.
pub struct Options {
    /// More sinks for every event (tests tap the stream here).
    pub sinks: Vec<Box<dyn Sink>>,
    /// systemd notification socket (`Notifier::from_env()`).
    pub notifier: Option<Notifier>,
    /// Print a line per part through the log.
    pub live_log: bool,
    /// Events queued between the stages and the fan-out thread.
    pub bus_capacity: usize,
    /// Told the supervisor stream's bound address once it listens (useful with port 0).
    pub listening: Option<crossbeam_channel::Sender<std::net::SocketAddr>>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            notifier: None,
            live_log: true,
            bus_capacity: 65_536,
            listening: None,
        }
    }
}

/// Why the line could not run (or stopped on an unrecoverable fault).
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// A configuration value was refused.
    #[error("config: {0}")]
    Config(#[from] Invalid),
    /// The camera cannot be used as configured.
    #[error(transparent)]
    Camera(#[from] SourceError),
    /// A pin could not be written.
    #[error(transparent)]
    Pin(#[from] crate::gpio::PinError),
    /// A socket or file could not be opened.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// A stage thread died.
    #[error("stage {0} panicked")]
    Panic(&'static str),
}

/// Open what the config names: the camera, the pins (simulated when `gpio.sim`, with their
/// logs) and the photo-eye when `line.trigger = "gpio"`.
pub fn open_hardware(
    setup: &LineSetup,
    clock: Arc<dyn Clock>,
) -> Result<(Hardware, Option<crate::sinks::pins::SimLogs>), LineError> {
    setup.validate()?;
    let trigger =
        match setup.line.trigger {
            Trigger::Gpio if setup.gpio.sim => return Err(Invalid::new(
                "line.trigger",
                "\"gpio\" needs real pins (gpio.sim = false); simulations pass a pins::SimTrigger",
            )
            .into()),
            Trigger::Gpio => Some(crate::sources::trigger::open_trigger(&setup.gpio)?),
            Trigger::Frame => None,
        };
    let (pins, logs) = LinePins::open(&setup.gpio, clock.clone())?;
    let source = crate::sources::camera::open(&setup.camera, setup.line.part_rate_hz, clock)?;
    Ok((
        Hardware {
            source,
            pins,
            trigger,
        },
        logs,
    ))
}

/// The line's report at shutdown (`Display` for people, `Serialize` for tools).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Summary {
    /// This run's id, as every event on the stream carries it.
    pub run: String,
    /// Final counters (parts = `counters.triggers`).
    pub counters: Counters,
    /// Whether every part got exactly one outcome.
    pub invariant_ok: bool,
    /// Parts with ground truth.
    pub with_truth: u64,
    /// Defective parts that passed.
    pub escapes: u64,
    /// Good parts rejected by verdict.
    pub false_rejects: u64,
    /// Good parts rejected by fail-safe.
    pub false_fault_rejects: u64,
    /// Outcomes per ground-truth kind (`good` included), when the source knows it.
    pub by_kind: std::collections::BTreeMap<String, crate::sinks::reject::KindTally>,
    /// Parts whose inspection decided their outcome in time (passes + rejects).
    pub inspected_in_time: u64,
    /// Frames the engine inspected (in time or not).
    pub inspections: u64,
    /// Time the engine spent inspecting (s).
    pub engine_busy_s: f64,
    /// Time from the first part's trigger to the last's (s).
    pub trigger_span_s: f64,
    /// Median trigger-to-verdict latency over every inspected part.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile trigger-to-verdict latency over every inspected part.
    pub latency_p99_ms: Option<f64>,
    /// Largest |actual − scheduled| of reject pulses.
    pub max_reject_error_ms: f64,
    /// 99th percentile |actual − scheduled| of reject pulses.
    pub reject_error_p99_ms: f64,
    /// Reject pulses whose timing was measured.
    pub reject_pulses_timed: u64,
    /// Events delivered to the sinks.
    pub events_delivered: u64,
    /// Events dropped (bus full).
    pub events_dropped: u64,
    /// Supervisor clients dropped as too slow.
    pub supervisor_clients_dropped: u64,
    /// Supervisor clients refused (`supervisor.max_clients` connected).
    pub supervisor_refused: u64,
    /// Supervisor clients refused in the TLS handshake (no valid client certificate).
    pub supervisor_tls_rejected: u64,
    /// MQTT messages that did not fit in the outbox.
    pub mqtt_overflow: u64,
    /// MQTT messages the broker had not acknowledged at shutdown (e.g. it was down).
    pub mqtt_undelivered: u64,
    /// Rejected parts not archived (queue full).
    pub archive_dropped: u64,
    /// Archive writer totals.
    pub archive: ArchiveStats,
    /// Pin write failures.
    pub pin_errors: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counters;
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        writeln!(
            f,
            "parts {}  passes {}  rejects {}  fault-rejects {}  fault-passes {}  pending {}  [{}]",
            c.triggers,
            c.passes,
            c.rejects,
            c.fault_rejects,
            c.fault_passes,
            c.pending,
            if self.invariant_ok {
                "every part accounted for"
            } else {
                "ACCOUNTING MISMATCH"
            }
        )?;
        writeln!(
            f,
            "ground truth on {}: escapes {}  false rejects {} (+{} by fail-safe)",
            self.with_truth, self.escapes, self.false_rejects, self.false_fault_rejects
        )?;
        if !self.by_kind.is_empty() {
            let kinds: Vec<String> = self
                .by_kind
                .iter()
                .map(|(k, t)| format!("{k} {}/{} rejected", t.rejects + t.fault_rejects, t.parts))
                .collect();
            writeln!(f, "by kind: {}", kinds.join(", "))?;
        }
        writeln!(
            f,
            "inspected {} (in time {})  skipped {}  latency p50 {}  p99 {} (every inspected part)  late verdicts {}  queue full {}  inspect errors {}",
            self.inspections,
            self.inspected_in_time,
            c.skipped,
            ms(self.latency_p50_ms),
            ms(self.latency_p99_ms),
            c.late_verdicts,
            c.queue_full,
            c.inspect_errors
        )?;
        writeln!(
            f,
            "reject timing error max {:.3} ms  p99 {:.3} ms over {} pulses",
            self.max_reject_error_ms, self.reject_error_p99_ms, self.reject_pulses_timed
        )?;
        write!(
            f,
            "run {}  events delivered {}  dropped {}  frames dropped {}  camera errors {}  photo-eye edges lost {}  supervisor clients dropped {} refused {} tls-rejected {}  mqtt overflow {} undelivered {}  archive dropped {}",
            self.run,
            self.events_delivered,
            self.events_dropped,
            c.frames_dropped,
            c.camera_errors,
            c.trigger_edges_lost,
            self.supervisor_clients_dropped,
            self.supervisor_refused,
            self.supervisor_tls_rejected,
            self.mqtt_overflow,
            self.mqtt_undelivered,
            self.archive_dropped
        )
    }
}

fn percentile_ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e6)
}

/// What a matched frame tells the part armed at its photo-eye edge.
pub(crate) struct MatchedFrame {
    frame_seq: u64,
    defective: Option<bool>,
    kind: Option<String>,
    origin: String,
}

enum SchedMsg {
    Arm(PartInfo),
    Matched {
        part: u64,
        frame: MatchedFrame,
    },
    Inspected {
        part: u64,
        trigger_ns: u64,
        result: Result<Inspection, String>,
        frame: Frame,
    },
    Skipped {
        part: u64,
        reason: String,
        frame: Frame,
    },
    NotQueued {
        part: u64,
        reason: String,
        frame: Option<Frame>,
    },
}

const STAGES: [&str; 4] = ["capture", "inspect", "reject", "trigger"];

/// Marks a stage finished when its thread ends, by return or by panic, so the stages after it
/// drain and stop instead of waiting forever.
struct Done<'a>(&'a Shared, usize, &'a dyn Clock);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.finish(self.1, self.2);
    }
}

/// State the stage threads share with the health thread.
struct Shared {
    counters: Arc<Tally>,
    /// Time the engine spent inspecting, and the frames it inspected (its capacity).
    engine_busy_ns: AtomicU64,
    inspections: AtomicU64,
    /// First and last part trigger times (the span the line ran parts).
    first_trigger_ns: AtomicU64,
    last_trigger_ns: AtomicU64,
    last_frame_ns: AtomicU64,
    alive: [AtomicU64; 4],
    done: [AtomicBool; 4],
    frames_dropped: AtomicU64,
    camera_errors: AtomicU64,
    pin_errors: AtomicU64,
    trigger_progress: AtomicU64,
    trigger_edges_lost: AtomicU64,
    /// The trigger thread waits for an edge with none queued.
    trigger_idle: AtomicBool,
    fatal: Mutex<Option<LineError>>,
}

impl Shared {
    fn stamp(&self, stage: usize, clock: &dyn Clock) {
        self.alive[stage].store(clock.now_ns(), Ordering::Relaxed);
    }
    fn finish(&self, stage: usize, clock: &dyn Clock) {
        self.done[stage].store(true, Ordering::SeqCst);
        clock.notify();
    }
    fn is_done(&self, stage: usize) -> bool {
        self.done[stage].load(Ordering::SeqCst)
    }
    /// The reject stage's counters completed with what the other stages count themselves.
    fn complete(&self, mut c: Counters, events_dropped: u64) -> Counters {
        c.frames_dropped = self.frames_dropped.load(Ordering::Relaxed);
        c.camera_errors = self.camera_errors.load(Ordering::Relaxed);
        c.trigger_edges_lost = self.trigger_edges_lost.load(Ordering::Relaxed);
        c.events_dropped = events_dropped;
        c
    }
}

/// Run the line until the source ends, `line.parts` is reached or `shutdown` is requested;
/// then drain in-flight parts, fire due rejects, flush events, drop `ready` and report.
pub fn run(
    setup: &LineSetup,
    inspector: Box<dyn Inspector>,
    clock: Arc<dyn Clock>,
    hw: Hardware,
    shutdown: Shutdown,
    opts: Options,
) -> Result<Summary, LineError> {
    setup.validate()?;
    let line = &setup.line;
    if line.trigger == Trigger::Gpio && hw.trigger.is_none() {
        return Err(Invalid::new(
            "gpio.trigger",
            "line.trigger = \"gpio\" but no trigger input was opened",
        )
        .into());
    }
    let threshold = crate::stages::decide::threshold(inspector.threshold(), line.threshold);
    if let Some(wd) = opts.notifier.as_ref().and_then(|n| n.watchdog_interval()) {
        if Duration::from_millis(2 * line.heartbeat_ms) > wd {
            log::warn!(
                "line.heartbeat_ms = {} pings the systemd watchdog ({wd:?}) too rarely: lower it",
                line.heartbeat_ms
            );
        }
    }
    if line.fail_safe == FailSafe::Pass {
        log::warn!("line.fail_safe = \"pass\": parts whose inspection is late, missing or failed will NOT be rejected");
    }

    // Sinks first, so the first event already reaches everyone.
    let run_id = crate::events::new_run_id();
    let mut supervisor = match setup.supervisor.listen.as_str() {
        "" => None,
        _ => Some(
            Supervisor::start(&setup.supervisor, &line.name, &run_id)
                .map_err(|e| LineError::Io("supervisor listen", e))?,
        ),
    };
    let mqtt = match &setup.mqtt {
        Some(m) => Some(Arc::new(Publisher::start(m, &line.name, &run_id)?)),
        None => None,
    };
    let archive = match &setup.archive {
        Some(a) => Some(
            Archive::start(a, &run_id, &inspector.model_id())
                .map_err(|e| LineError::Io("archive dir", e))?,
        ),
        None => None,
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(s) = &supervisor {
        sinks.push(s.sink());
        if let Some(tx) = &opts.listening {
            let _ = tx.send(s.local_addr());
        }
    }
    if let Some(m) = &mqtt {
        sinks.push(m.sink());
    }
    if opts.live_log {
        sinks.push(Box::new(LiveLog));
    }
    sinks.extend(opts.sinks);
    let bus = Bus::start(&line.name, &run_id, opts.bus_capacity, clock.clone(), sinks);
    let events = bus.events();
    crate::events::attach_log(events.clone(), setup.supervisor.level()?);

    let shared = Arc::new(Shared {
        counters: Arc::new(Tally::default()),
        engine_busy_ns: AtomicU64::new(0),
        inspections: AtomicU64::new(0),
        first_trigger_ns: AtomicU64::new(u64::MAX),
        last_trigger_ns: AtomicU64::new(0),
        last_frame_ns: AtomicU64::new(clock.now_ns()),
        alive: Default::default(),
        done: Default::default(),
        frames_dropped: AtomicU64::new(0),
        camera_errors: AtomicU64::new(0),
        pin_errors: AtomicU64::new(0),
        trigger_progress: AtomicU64::new(0),
        trigger_edges_lost: AtomicU64::new(0),
        trigger_idle: AtomicBool::new(false),
        fatal: Mutex::new(None),
    });
    for s in 0..STAGES.len() {
        shared.stamp(s, &*clock);
    }
    if hw.trigger.is_none() {
        shared.done[3].store(true, Ordering::SeqCst);
    }
    let triage = Triage::new(line.queue);
    // Unbounded on purpose: arming must never fail, and the reject stage drains it every wake.
    let (sched_tx, sched_rx) = chan::channel::<SchedMsg>(&clock, None);
    let (recycle_tx, recycle_rx) = crossbeam_channel::bounded::<Vec<u8>>(64);
    let tick = (line.heartbeat_ms * MS / 2).clamp(5 * MS, 250 * MS);
    let policy = Policy {
        fail_safe: line.fail_safe,
        margin_ns: line.margin_ns(),
        pulse_ns: setup.gpio.pulse_ns(),
        threshold,
    };
    let LinePins {
        reject,
        ready,
        heartbeat,
        fault,
    } = hw.pins;
    let mut scheduler = Scheduler::new(
        policy,
        clock.clone(),
        reject,
        events.clone(),
        shared.counters.clone(),
    )
    .with_recycle(recycle_tx);
    if let Some(a) = &archive {
        scheduler = scheduler.with_archive(a.sender());
    }
    log::info!(
        "line {}: threshold {threshold}, ejector {:.1} ms after trigger, verdict margin {:.1} ms, fail_safe {:?}",
        line.name,
        line.delay_ns() as f64 / 1e6,
        line.verdict_margin_ms,
        line.fail_safe
    );

    // Every stage counts as running on the clock before any starts (see `clock::Held`).
    let stage_threads = 4 + usize::from(hw.trigger.is_some());
    let held: Vec<Held> = (0..stage_threads)
        .map(|_| Held::new(clock.clone()))
        .collect();
    let mut held = held.into_iter();
    let awaiting: Arc<Mutex<VecDeque<(u64, u64)>>> = Arc::default();
    let next_part = Arc::new(AtomicU64::new(0));

    if line.realtime_priority > 0 {
        lock_memory();
    }
    let result = std::thread::scope(|scope| {
        let capture = {
            let (clock, shared, events, sched_tx, shutdown, awaiting, next_part) = (
                clock.clone(),
                shared.clone(),
                events.clone(),
                sched_tx.clone(),
                shutdown.clone(),
                awaiting.clone(),
                next_part.clone(),
            );
            let h = held.next().expect("guard");
            let source = hw.source;
            let triage = &triage;
            std::thread::Builder::new()
                .name("capture".into())
                .spawn_scoped(scope, move || {
                    let _h = h;
                    let _done = Done(&shared, 0, &*clock);
                    capture_loop(
                        setup, source, &*clock, &shared, &events, &sched_tx, triage, recycle_rx,
                        &shutdown, &awaiting, &next_part,
                    );
                })
                .expect("spawn capture")
        };
        let inspect = {
            let (clock, shared, sched_tx) = (clock.clone(), shared.clone(), sched_tx.clone());
            let h = held.next().expect("guard");
            let triage = &triage;
            std::thread::Builder::new()
                .name("inspect".into())
                .spawn_scoped(scope, move || {
                    let _h = h;
                    let _done = Done(&shared, 1, &*clock);
                    inspect_loop(inspector, &*clock, &shared, triage, &sched_tx, tick);
                })
                .expect("spawn inspect")
        };
        let trigger = hw.trigger.map(|mut input| {
            let (clock, shared, events, sched_tx, shutdown, awaiting, next_part) = (
                clock.clone(),
                shared.clone(),
                events.clone(),
                sched_tx.clone(),
                shutdown.clone(),
                awaiting.clone(),
                next_part.clone(),
            );
            let h = held.next().expect("guard");
            std::thread::Builder::new()
                .name("trigger".into())
                .spawn_scoped(scope, move || {
                    let _h = h;
                    let _done = Done(&shared, 3, &*clock);
                    trigger_loop(
                        setup,
                        &mut *input,
                        &*clock,
                        &shared,
                        &events,
                        &sched_tx,
                        &shutdown,
                        &awaiting,
                        &next_part,
                        tick,
                    );
                })
                .expect("spawn trigger")
        });
        drop(sched_tx);
        let reject = {
            let (clock, shared) = (clock.clone(), shared.clone());
            let h = held.next().expect("guard");
            std::thread::Builder::new()
                .name("reject".into())
                .spawn_scoped(scope, move || {
                    let _h = h;
                    let _done = Done(&shared, 2, &*clock);
                    set_realtime(setup.line.realtime_priority);
                    let stats = reject_loop(&mut scheduler, &*clock, &shared, &sched_rx, tick);
                    (scheduler.counters(), stats)
                })
                .expect("spawn reject")
        };
        let health = {
            let (clock, shared, events, awaiting) = (
                clock.clone(),
                shared.clone(),
                events.clone(),
                awaiting.clone(),
            );
            let h = held.next().expect("guard");
            let notifier = opts.notifier;
            std::thread::Builder::new()
                .name("health".into())
                .spawn_scoped(scope, move || {
                    let _h = h;
                    health_loop(
                        setup,
                        &*clock,
                        &shared,
                        &events,
                        Pins {
                            ready,
                            heartbeat,
                            fault,
                        },
                        notifier.as_ref(),
                        &awaiting,
                    );
                })
                .expect("spawn health")
        };
        let mut panicked = None;
        for (name, h) in [("capture", capture), ("inspect", inspect)] {
            if h.join().is_err() {
                panicked = Some(name);
            }
        }
        if let Some(t) = trigger {
            if t.join().is_err() {
                panicked = Some("trigger");
            }
        }
        let out = reject.join();
        if health.join().is_err() {
            panicked = Some("health");
        }
        match (out, panicked) {
            (Ok(v), None) => Ok(v),
            (Err(_), _) => Err(LineError::Panic("reject")),
            (_, Some(p)) => Err(LineError::Panic(p)),
        }
    });

    crate::events::detach_log();
    let bus_stats = bus.close();
    if let Some(s) = supervisor.as_mut() {
        s.stop(Duration::from_millis(500));
    }
    let (mqtt_overflow, mqtt_undelivered) = match mqtt {
        Some(m) => match Arc::try_unwrap(m) {
            Ok(mut p) => {
                p.stop(Duration::from_secs(2));
                (
                    p.stats().overflow.load(Ordering::Relaxed),
                    p.stats().undelivered.load(Ordering::Relaxed),
                )
            }
            // Unreachable once the bus has closed; count everything held as undelivered.
            Err(m) => (
                m.stats().overflow.load(Ordering::Relaxed),
                m.queued() as u64,
            ),
        },
        None => (0, 0),
    };
    let archive_stats = archive.map(|a| a.finish()).unwrap_or_default();
    let (counters, stats): (Counters, RejectStats) = result?;
    if let Some(e) = shared
        .fatal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        return Err(e);
    }
    let counters = shared.complete(counters, bus_stats.dropped);
    let first = shared.first_trigger_ns.load(Ordering::Relaxed);
    let last = shared.last_trigger_ns.load(Ordering::Relaxed);
    let summary = Summary {
        run: run_id,
        invariant_ok: counters.balanced() && counters.pending == 0,
        inspected_in_time: counters.passes + counters.rejects,
        inspections: shared.inspections.load(Ordering::Relaxed),
        engine_busy_s: shared.engine_busy_ns.load(Ordering::Relaxed) as f64 / 1e9,
        trigger_span_s: last.saturating_sub(first) as f64 / 1e9,
        reject_error_p99_ms: percentile_ms(&stats.timing_error_ns, 0.99).unwrap_or(0.0),
        reject_pulses_timed: stats.timing_error_ns.len(),
        counters,
        with_truth: stats.with_truth,
        escapes: stats.escapes,
        false_rejects: stats.false_rejects,
        false_fault_rejects: stats.false_fault_rejects,
        by_kind: stats.by_kind.clone(),
        latency_p50_ms: percentile_ms(&stats.latency_ns, 0.5),
        latency_p99_ms: percentile_ms(&stats.latency_ns, 0.99),
        max_reject_error_ms: stats.max_timing_error_ns as f64 / 1e6,
        events_delivered: bus_stats.delivered,
        events_dropped: bus_stats.dropped,
        supervisor_clients_dropped: supervisor
            .as_ref()
            .map_or(0, |s| s.stats().clients_dropped.load(Ordering::Relaxed)),
        supervisor_refused: supervisor
            .as_ref()
            .map_or(0, |s| s.stats().refused.load(Ordering::Relaxed)),
        supervisor_tls_rejected: supervisor
            .as_ref()
            .map_or(0, |s| s.stats().tls_rejected.load(Ordering::Relaxed)),
        mqtt_overflow,
        mqtt_undelivered,
        archive_dropped: stats.archive_dropped,
        archive: archive_stats,
        pin_errors: stats.pin_errors + shared.pin_errors.load(Ordering::Relaxed),
    };
    log::info!(
        "line {} stopped: {} parts, every part accounted for: {}",
        line.name,
        summary.counters.triggers,
        summary.invariant_ok
    );
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn capture_loop(
    setup: &LineSetup,
    mut source: Box<dyn Source>,
    clock: &dyn Clock,
    shared: &Shared,
    events: &Events,
    sched: &chan::Tx<SchedMsg>,
    triage: &Triage,
    recycle: crossbeam_channel::Receiver<Vec<u8>>,
    shutdown: &Shutdown,
    awaiting: &Mutex<VecDeque<(u64, u64)>>,
    next_part: &AtomicU64,
) {
    let line = &setup.line;
    let delay = line.delay_ns();
    let margin = line.margin_ns();
    let by_frame = line.trigger == Trigger::Frame;
    let mut camera_failing = false;
    log::info!("capture from {}", source.describe());
    loop {
        shared.stamp(0, clock);
        if shutdown.is_requested() {
            log::info!("stop requested: capture ends, draining in-flight parts");
            break;
        }
        if by_frame
            && line
                .parts
                .is_some_and(|n| next_part.load(Ordering::SeqCst) >= n)
        {
            break;
        }
        // Photo-eye mode: once the trigger thread has stopped and every edge got its frame (or
        // was given up on), there is nothing left to match.
        if !by_frame
            && shared.is_done(3)
            && awaiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            break;
        }
        while let Ok(buf) = recycle.try_recv() {
            source.recycle(buf);
        }
        let frame = match source.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(SourceError::Timeout(ms)) => {
                log::debug!("camera: no frame within {ms} ms");
                continue;
            }
            Err(SourceError::Config(e)) => {
                events.emit(Event::alarm("camera_config", e.clone(), None, true));
                log::error!("camera: {e}");
                *shared.fatal.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(SourceError::Config(e).into());
                break;
            }
            Err(e) => {
                shared.camera_errors.fetch_add(1, Ordering::Relaxed);
                if !camera_failing {
                    events.emit(Event::alarm("camera_error", e.to_string(), None, true));
                    camera_failing = true;
                }
                continue;
            }
        };
        if camera_failing {
            events.emit(Event::alarm("camera_error", "frames again", None, false));
            camera_failing = false;
        }
        shared
            .last_frame_ns
            .store(clock.now_ns(), Ordering::Relaxed);
        shared
            .frames_dropped
            .store(source.dropped(), Ordering::Relaxed);
        let (part, trigger_ns) = if by_frame {
            let part = next_part.fetch_add(1, Ordering::SeqCst) + 1;
            note_trigger(shared, frame.timestamp_ns);
            let truth = frame.truth.as_ref();
            let info = PartInfo {
                part,
                frame_seq: frame.seq,
                trigger_ns: frame.timestamp_ns,
                deadline_ns: frame.timestamp_ns + delay,
                defective: truth.map(|t| t.defective),
                kind: truth.and_then(|t| t.kind.clone()),
                origin: frame.origin.clone(),
            };
            let _ = sched.try_send(SchedMsg::Arm(info));
            (part, frame.timestamp_ns)
        } else {
            // Let the trigger thread catch up to this frame's time first (it may run behind).
            let ts = frame.timestamp_ns;
            clock.wait_until(Some(ts + MATCH_WINDOW_NS), &|| {
                shared.trigger_progress.load(Ordering::SeqCst) >= ts
                    || shared.trigger_idle.load(Ordering::SeqCst)
                    || shared.is_done(3)
            });
            match match_trigger(awaiting, ts) {
                Some((part, trigger_ns)) => {
                    let truth = frame.truth.as_ref();
                    let m = MatchedFrame {
                        frame_seq: frame.seq,
                        defective: truth.map(|t| t.defective),
                        kind: truth.and_then(|t| t.kind.clone()),
                        origin: frame.origin.clone(),
                    };
                    let _ = sched.try_send(SchedMsg::Matched { part, frame: m });
                    (part, trigger_ns)
                }
                None => {
                    events.emit(Event::alarm(
                        "stray_frame",
                        format!("frame {} matches no photo-eye trigger", frame.seq),
                        None,
                        true,
                    ));
                    source.recycle(frame.data);
                    continue;
                }
            }
        };
        let job = Job {
            part,
            trigger_ns,
            due_ns: (trigger_ns + delay).saturating_sub(margin),
            frame,
        };
        match triage.push(job, clock) {
            Pushed::Queued => {}
            Pushed::Evicted(old) => {
                let _ = sched.try_send(SchedMsg::Skipped {
                    part: old.part,
                    reason: format!(
                        "engine queue full ({} frames): the oldest frame made room for a new one",
                        line.queue
                    ),
                    frame: old.frame,
                });
            }
            Pushed::Closed(job) => {
                let _ = sched.try_send(SchedMsg::NotQueued {
                    part: job.part,
                    reason: "engine stopped".to_string(),
                    frame: Some(job.frame),
                });
            }
        }
    }
}

fn note_trigger(shared: &Shared, t_ns: u64) {
    shared.first_trigger_ns.fetch_min(t_ns, Ordering::Relaxed);
    shared.last_trigger_ns.fetch_max(t_ns, Ordering::Relaxed);
}

/// How far a frame may precede or follow its photo-eye edge.
const MATCH_WINDOW_NS: u64 = 200 * MS;

/// Pair a frame with the oldest waiting trigger in its window: (part, trigger time). Older
/// triggers are given up on (they fail safe at their deadline).
fn match_trigger(awaiting: &Mutex<VecDeque<(u64, u64)>>, frame_ns: u64) -> Option<(u64, u64)> {
    let mut given_up = Vec::new();
    let found = {
        let mut q = awaiting.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match q.front() {
                Some(&(part, t)) if t + MATCH_WINDOW_NS < frame_ns => {
                    q.pop_front();
                    given_up.push(part);
                }
                Some(&(part, t)) if t <= frame_ns + MATCH_WINDOW_NS => {
                    q.pop_front();
                    break Some((part, t));
                }
                _ => break None,
            }
        }
    };
    // Logged after the lock is released: log output may block on I/O.
    for part in given_up {
        log::warn!(
            "part {part}: no frame within {} ms of its trigger",
            MATCH_WINDOW_NS / MS
        );
    }
    found
}

#[allow(clippy::too_many_arguments)]
fn trigger_loop(
    setup: &LineSetup,
    input: &mut dyn TriggerInput,
    clock: &dyn Clock,
    shared: &Shared,
    events: &Events,
    sched: &chan::Tx<SchedMsg>,
    shutdown: &Shutdown,
    awaiting: &Mutex<VecDeque<(u64, u64)>>,
    next_part: &AtomicU64,
    tick: u64,
) {
    let delay = setup.line.delay_ns();
    loop {
        shared.stamp(3, clock);
        if shutdown.is_requested()
            || shared.is_done(0)
            || setup
                .line
                .parts
                .is_some_and(|n| next_part.load(Ordering::SeqCst) >= n)
        {
            break;
        }
        // Blocked with no edge queued: every part up to now is armed, frames may be matched.
        if let Ok(false) = input.pending() {
            shared.trigger_idle.store(true, Ordering::SeqCst);
            clock.notify();
        }
        let got = input.next_edge(tick / MS);
        shared.trigger_idle.store(false, Ordering::SeqCst);
        let progress = clock.now_ns();
        match got {
            Ok(Some(edge)) => {
                let part = next_part.fetch_add(1, Ordering::SeqCst) + 1;
                note_trigger(shared, edge.t_ns);
                if edge.lost > 0 {
                    // Those parts pass the ejector unarmed: no fail-safe covers them.
                    let total = shared
                        .trigger_edges_lost
                        .fetch_add(edge.lost, Ordering::Relaxed)
                        + edge.lost;
                    events.emit(Event::alarm(
                        "trigger_edges_lost",
                        format!(
                            "photo-eye: {} part edges dropped by the kernel before part {part} ({total} in all): those parts were not inspected",
                            edge.lost
                        ),
                        Some(part),
                        true,
                    ));
                }
                let info = PartInfo {
                    part,
                    frame_seq: 0,
                    trigger_ns: edge.t_ns,
                    deadline_ns: edge.t_ns + delay,
                    defective: None,
                    kind: None,
                    origin: "photo-eye".into(),
                };
                let _ = sched.try_send(SchedMsg::Arm(info));
                awaiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back((part, edge.t_ns));
                shared
                    .trigger_progress
                    .store(progress.max(edge.t_ns), Ordering::SeqCst);
                clock.notify();
            }
            Ok(None) => {
                shared
                    .trigger_progress
                    .fetch_max(progress, Ordering::SeqCst);
                clock.notify();
            }
            Err(e) => {
                shared.pin_errors.fetch_add(1, Ordering::Relaxed);
                log::error!("photo-eye: {e}");
                clock.sleep_until(clock.now_ns() + tick);
            }
        }
    }
}

fn inspect_loop(
    mut inspector: Box<dyn Inspector>,
    clock: &dyn Clock,
    shared: &Shared,
    triage: &Triage,
    sched: &chan::Tx<SchedMsg>,
    tick: u64,
) {
    let batch = inspector.batch_size().max(1);
    let mut service = ServiceTime::default();
    loop {
        shared.stamp(1, clock);
        if triage.is_empty() {
            clock.wait_until(Some(clock.now_ns() + tick), &|| !triage.is_empty());
            if triage.is_empty() {
                if shared.is_done(0) {
                    break;
                }
                continue;
            }
        }
        let now = clock.now_ns();
        let taken = triage.take(now, batch, |n| service.estimate(n));
        for job in taken.skipped {
            let reason = format!(
                "verdict due in {:.1} ms, the engine needs {:.1} ms",
                job.due_ns.saturating_sub(now) as f64 / 1e6,
                service.estimate(1) as f64 / 1e6
            );
            let _ = sched.try_send(SchedMsg::Skipped {
                part: job.part,
                reason,
                frame: job.frame,
            });
        }
        let jobs = taken.batch;
        if jobs.is_empty() {
            continue;
        }
        let refs: Vec<&Frame> = jobs.iter().map(|j| &j.frame).collect();
        let t0 = clock.now_ns();
        let results =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inspector.inspect(&refs)));
        let took = clock.now_ns().saturating_sub(t0);
        shared.engine_busy_ns.fetch_add(took, Ordering::Relaxed);
        shared
            .inspections
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        let results: Vec<Result<Inspection, String>> = match results {
            Ok(r) if r.len() == jobs.len() => {
                service.record(jobs.len(), took);
                r.into_iter().map(|r| r.map_err(|e| e.0)).collect()
            }
            Ok(r) => vec![
                Err(format!(
                    "inspector returned {} results for {} frames",
                    r.len(),
                    jobs.len()
                ));
                jobs.len()
            ],
            Err(_) => vec![Err("inspector panicked".to_string()); jobs.len()],
        };
        for (job, result) in jobs.into_iter().zip(results) {
            let _ = sched.try_send(SchedMsg::Inspected {
                part: job.part,
                trigger_ns: job.trigger_ns,
                result,
                frame: job.frame,
            });
        }
    }
    for job in triage.close() {
        let _ = sched.try_send(SchedMsg::NotQueued {
            part: job.part,
            reason: "engine stopped".to_string(),
            frame: Some(job.frame),
        });
    }
}

/// Lock the pages mapped now (the binary, ONNX Runtime, the model, the heap) into memory.
///
/// A real-time thread that touches a page the kernel dropped under memory pressure waits for
/// the disk (this 2-core VM was reclaiming page cache under the trainings' load). Only current
/// pages are locked: locking future mappings too would turn a memlock limit into allocation
/// failures.
fn lock_memory() {
    // SAFETY: plain syscall without pointers.
    if unsafe { libc::mlockall(libc::MCL_CURRENT) } != 0 {
        log::warn!(
            "mlockall refused ({}): pages of the reject path may be paged out under memory pressure; \
             give the service CAP_IPC_LOCK or LimitMEMLOCK=infinity",
            std::io::Error::last_os_error()
        );
    }
}

/// Put the calling thread on SCHED_FIFO at `prio` (0: leave it alone).
fn set_realtime(prio: u8) {
    if prio == 0 {
        return;
    }
    let param = libc::sched_param {
        sched_priority: i32::from(prio),
    };
    // SAFETY: plain syscall on the current thread with a valid parameter struct.
    let rc = unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if rc != 0 {
        log::warn!(
            "reject thread: SCHED_FIFO {prio} refused ({}); pulses run at normal priority",
            std::io::Error::from_raw_os_error(rc)
        );
    }
}

fn reject_loop(
    s: &mut Scheduler,
    clock: &dyn Clock,
    shared: &Shared,
    rx: &chan::Rx<SchedMsg>,
    tick: u64,
) -> RejectStats {
    loop {
        shared.stamp(2, clock);
        while let Some(msg) = rx.try_recv() {
            match msg {
                SchedMsg::Arm(info) => s.arm(info),
                SchedMsg::Matched { part, frame } => s.matched(
                    part,
                    frame.frame_seq,
                    frame.defective,
                    frame.kind,
                    frame.origin,
                ),
                SchedMsg::Inspected {
                    part,
                    trigger_ns,
                    result,
                    frame,
                } => s.inspected(part, trigger_ns, result, Some(frame)),
                SchedMsg::Skipped {
                    part,
                    reason,
                    frame,
                } => s.skipped(part, &reason, Some(frame)),
                SchedMsg::NotQueued {
                    part,
                    reason,
                    frame,
                } => s.not_queued(part, &reason, frame),
            }
        }
        let next = s.poll();
        let upstream_done = shared.is_done(0) && shared.is_done(1) && shared.is_done(3);
        if upstream_done && rx.is_empty() && s.idle() {
            break;
        }
        let now = clock.now_ns();
        let wake = next.map_or(now + tick, |n| n.min(now + tick));
        clock.wait_until(Some(wake), &|| !rx.is_empty());
    }
    s.release_pin();
    s.stats().clone()
}

struct Pins {
    ready: Output,
    heartbeat: Output,
    fault: Output,
}

fn health_loop(
    setup: &LineSetup,
    clock: &dyn Clock,
    shared: &Shared,
    events: &Events,
    mut pins: Pins,
    notifier: Option<&Notifier>,
    awaiting: &Mutex<VecDeque<(u64, u64)>>,
) {
    let by_frame = setup.line.trigger == Trigger::Frame;
    let period = setup.line.heartbeat_ms * MS;
    let stall = setup.camera.stall_ms * MS;
    let tick = (period / 2).clamp(5 * MS, 250 * MS);
    // A stage that has not looped for this long is wedged (the source may block up to `stall`).
    let liveness = (2 * stall).max(10 * tick).max(3 * period);
    let mut active: Vec<String> = Vec::new();
    let mut hb = false;
    let mut next = clock.now_ns();
    let mut told_ready = false;
    let pin_err = |e: crate::gpio::PinError| {
        shared.pin_errors.fetch_add(1, Ordering::Relaxed);
        events.emit(Event::alarm("pin_error", e.to_string(), None, true));
    };
    let mut told_stopping = false;
    let mut dropped_seen = 0;
    let (mut skipped_seen, mut overloaded) = (0, false);
    loop {
        clock.wait_until(Some(next), &|| shared.is_done(2));
        if shared.is_done(0) && !told_stopping {
            // Capture has ended: from here on the line only drains.
            if let Some(n) = notifier {
                let _ = n.stopping();
            }
            told_stopping = true;
        }
        if shared.is_done(2) {
            break;
        }
        next += period;
        let now = clock.now_ns();
        let counters = shared.complete(shared.counters.read(), events.dropped());
        if counters.events_dropped > dropped_seen {
            // Said loudly; the count also rides on every heartbeat, which outlives a full bus.
            events.emit(Event::alarm(
                "events_dropped",
                format!(
                    "{} events dropped: the event bus was full",
                    counters.events_dropped
                ),
                None,
                true,
            ));
            dropped_seen = counters.events_dropped;
        }
        // Overload is not a fault of the line (ready stays up), but every skipped part is
        // rejected unseen: say so once when it starts and once when it ends.
        let skipping = counters.skipped > skipped_seen;
        if skipping != overloaded {
            let message = if skipping {
                format!(
                    "overload: {} parts skipped uninspected since the last heartbeat (fail-safe)",
                    counters.skipped - skipped_seen
                )
            } else {
                format!("overload over: {} parts skipped in all", counters.skipped)
            };
            events.emit(Event::alarm("overload", message, None, skipping));
            overloaded = skipping;
        }
        skipped_seen = counters.skipped;
        let mut faults: Vec<String> = Vec::new();
        // Free-running: frames must keep coming. Photo-eye: a camera triggered by the parts is
        // quiet while the belt is empty; it has stalled when a triggered part waits for its frame.
        let waiting_since = if by_frame {
            Some(shared.last_frame_ns.load(Ordering::Relaxed))
        } else {
            awaiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .front()
                .map(|&(_, t)| t.max(shared.last_frame_ns.load(Ordering::Relaxed)))
        };
        if !shared.is_done(0) && waiting_since.is_some_and(|t| now.saturating_sub(t) > stall) {
            faults.push("camera_stalled".into());
        }
        let mut all_alive = true;
        for (i, name) in STAGES.iter().enumerate() {
            if !shared.is_done(i)
                && now.saturating_sub(shared.alive[i].load(Ordering::Relaxed)) > liveness
            {
                faults.push(format!("stage_stalled:{name}"));
                all_alive = false;
            }
        }
        if !counters.balanced() {
            faults.push("invariant".into());
        }
        // A pin that failed once is not trusted again until a restart.
        if shared.pin_errors.load(Ordering::Relaxed) + counters.pin_errors > 0 {
            faults.push("pin_error".into());
        }
        for f in faults.iter().filter(|f| !active.contains(f)) {
            events.emit(Event::alarm(
                f.split(':').next().unwrap_or(f),
                format!("{f}: ready dropped"),
                None,
                true,
            ));
        }
        for f in active.iter().filter(|f| !faults.contains(f)) {
            events.emit(Event::alarm(
                f.split(':').next().unwrap_or(f),
                format!("{f}: cleared"),
                None,
                false,
            ));
        }
        active = faults.clone();
        let ready = faults.is_empty();
        if let Err(e) = pins.ready.set(ready) {
            pin_err(e);
        }
        if let Err(e) = pins.fault.set(!ready) {
            pin_err(e);
        }
        if all_alive && !told_stopping {
            hb = !hb;
            if let Err(e) = pins.heartbeat.set(hb) {
                pin_err(e);
            }
            if let Some(n) = notifier {
                if !told_ready {
                    let _ = n.ready();
                    told_ready = true;
                }
                let _ = n.ping();
            }
        }
        events.emit(Event::Heartbeat(HeartbeatEvent {
            ready,
            invariant_ok: counters.balanced(),
            faults,
            counters,
        }));
    }
    if let (Some(n), false) = (notifier, told_stopping) {
        let _ = n.stopping();
    }
    let _ = pins.ready.set(false);
    let _ = pins.heartbeat.set(false);
    let _ = pins.fault.set(false);
    let c = shared.complete(shared.counters.read(), events.dropped());
    events.emit(Event::Heartbeat(HeartbeatEvent {
        ready: false,
        invariant_ok: c.balanced(),
        faults: vec!["stopped".into()],
        counters: c,
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_match_in_order_within_window() {
        let q = Mutex::new(VecDeque::from(vec![(1, 0), (2, 100 * MS), (3, 700 * MS)]));
        assert_eq!(
            match_trigger(&q, 400 * MS),
            None,
            "1 and 2 too old, 3 too far ahead"
        );
        assert_eq!(q.lock().unwrap().len(), 1);
        assert_eq!(match_trigger(&q, 650 * MS), Some((3, 700 * MS)));
        assert_eq!(match_trigger(&q, 650 * MS), None);
    }

    #[test]
    fn percentiles() {
        let mut h = crate::sinks::reject::ns_histogram();
        assert_eq!(percentile_ms(&h, 0.5), None);
        for i in 1..=100 {
            h.record(i * MS).unwrap();
        }
        let near = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 0.1;
        assert!(near(percentile_ms(&h, 0.5), 50.0));
        assert!(near(percentile_ms(&h, 0.99), 99.0));
    }
}
