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
mod capture;
pub mod control;
mod cpu;
mod health;
pub(crate) mod inbox;
mod inspect;
pub mod launch;
pub mod models;
mod reject;
pub mod setup;
mod shared;
mod spin;
mod summary;
mod trigger;
pub mod watchdog;

pub use summary::{percentile_ms, Summary};

use crate::clock::{Clock, Held, MS};
use crate::config::Invalid;
use crate::events::{Bus, Counters, Events, LiveLog, Sink};
use crate::line::setup::{LineSetup, Trigger};
use crate::line::watchdog::Notifier;
use crate::sinks::archive::Archive;
use crate::sinks::mqtt::Publisher;
use crate::sinks::netrt::NetRuntime;
use crate::sinks::opcua::{OpcuaError, OpcuaFacts, OpcuaServer};
use crate::sinks::pins::LinePins;
use crate::sinks::reject::{FailSafe, Policy, RejectStats, Scheduler};
use crate::sinks::supervisor::Supervisor;
use crate::sinks::web::{PageFacts, WebError, WebServer};
use crate::sources::camera::{Source, SourceError};
use crate::sources::trigger::TriggerInput;
use crate::stages::inspect::Inspector;
use crate::stages::triage::Triage;
use capture::Awaiting;
use health::{Health, Pins};
use reject::{lock_memory, set_realtime, SchedMsg};
use shared::{Done, Shared, CAPTURE, INSPECT, REJECT, TRIGGER};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use summary::{LineTimes, SinkStats};

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

/// What the board file says of itself, for the operator's page.
#[derive(Debug, Clone, Default)]
pub struct BoardFacts {
    /// `[board] name`.
    pub name: String,
    /// The board file.
    pub file: String,
    /// `engine.model` (its card, `MODEL.md`, is read from beside it).
    pub model_file: std::path::PathBuf,
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
    /// Told the operator page's bound address once it listens.
    pub web_listening: Option<crossbeam_channel::Sender<std::net::SocketAddr>>,
    /// Told the OPC UA server's bound address once it listens.
    pub opcua_listening: Option<crossbeam_channel::Sender<std::net::SocketAddr>>,
    /// The board file's own facts, shown on the page.
    pub board: BoardFacts,
    /// The whole board file, which the control socket stages candidates against.
    pub board_config: Option<board::BoardConfig>,
    /// An OPC UA server started before the engine loaded (`start_opcua_early`), so that the
    /// plant saw the device as Preoperational meanwhile; the run takes its run id.
    pub early_opcua: Option<EarlyOpcua>,
}

/// The OPC UA server and its runtime, started ahead of the engine.
pub struct EarlyOpcua {
    net: NetRuntime,
    server: OpcuaServer,
    run_id: String,
}

/// Start `[opcua]` (if configured) before the engine loads: its state machine shows
/// Preoperational until the line's first heartbeat.
pub fn start_opcua_early(
    setup: &LineSetup,
    clock: &Arc<dyn Clock>,
) -> Result<Option<EarlyOpcua>, LineError> {
    let Some(o) = &setup.opcua else {
        return Ok(None);
    };
    let net = NetRuntime::start().map_err(|e| LineError::Io("network runtime", e))?;
    let facts = OpcuaFacts {
        line: setup.line.name.clone(),
        model_id: String::new(),
    };
    let server = start_opcua(o, facts, clock, &net)?;
    Ok(Some(EarlyOpcua {
        net,
        server,
        run_id: crate::events::new_run_id(),
    }))
}

fn start_opcua(
    o: &crate::sinks::opcua::OpcuaConfig,
    facts: OpcuaFacts,
    clock: &Arc<dyn Clock>,
    net: &NetRuntime,
) -> Result<OpcuaServer, LineError> {
    OpcuaServer::start(o, facts, clock.clone(), &net.handle()).map_err(|e| match e {
        OpcuaError::Config(i) => LineError::Config(i),
        OpcuaError::Bind { source, .. } => LineError::Io("opcua.listen", source),
        other => LineError::Opcua(other),
    })
}

impl Default for Options {
    fn default() -> Self {
        Self {
            sinks: Vec::new(),
            notifier: None,
            live_log: true,
            bus_capacity: 65_536,
            listening: None,
            web_listening: None,
            opcua_listening: None,
            board: BoardFacts::default(),
            board_config: None,
            early_opcua: None,
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
    /// The OPC UA server could not start (users file, certificate, its own configuration).
    #[error(transparent)]
    Opcua(OpcuaError),
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

/// What every stage thread borrows from [`run`].
struct Ctx<'a> {
    setup: &'a LineSetup,
    clock: &'a dyn Clock,
    shared: &'a Shared,
    events: &'a Events,
    shutdown: &'a Shutdown,
    awaiting: &'a Awaiting,
    next_part: &'a AtomicU64,
    /// The longest a stage sleeps between checks of its stop conditions.
    tick: u64,
    /// Trigger to ejector (`line.delay_ns()`), worked out once rather than per part.
    delay_ns: u64,
    /// How long before the ejector a verdict must arrive (`line.margin_ns()`).
    margin_ns: u64,
}

/// Run the line until the source ends, `line.parts` is reached or `shutdown` is requested;
/// then drain in-flight parts, fire due rejects, flush events, drop `ready` and report.
pub fn run(
    setup: &LineSetup,
    inspector: Box<dyn Inspector>,
    clock: Arc<dyn Clock>,
    hw: Hardware,
    shutdown: Shutdown,
    mut opts: Options,
) -> Result<Summary, LineError> {
    check_start(setup, &hw, &opts)?;
    let line = &setup.line;
    // The inspector was built with `line.threshold` applied (`stages::inspect::threshold_of`),
    // the one place the override is resolved.
    let threshold = inspector.threshold();
    // Sinks first, so the first event already reaches everyone.
    let run_id = match &opts.early_opcua {
        Some(e) => e.run_id.clone(),
        None => crate::events::new_run_id(),
    };
    let facts = page_facts(setup, &run_id, &*inspector, &hw, &opts.board);
    let archive_lost = Arc::new(AtomicU64::new(0));
    let sinks = LineSinks::start(setup, &run_id, facts, &clock, &mut opts, &archive_lost)?;
    let events = sinks.bus.events();
    crate::events::attach_log(events.clone(), setup.supervisor.level()?);

    let mut shared = Shared::new(&*clock, hw.trigger.is_some());
    shared.archive_errors = archive_lost;
    let policy = policy(setup, threshold);
    if line.realtime_priority > 0 {
        lock_memory();
    }
    let ctx = Ctx {
        setup,
        clock: &*clock,
        shared: &shared,
        events: &events,
        shutdown: &shutdown,
        awaiting: &Awaiting::default(),
        next_part: &AtomicU64::new(0),
        tick: (line.heartbeat_ms * MS / 2).clamp(5 * MS, 250 * MS),
        delay_ns: line.delay_ns(),
        margin_ns: line.margin_ns(),
    };
    let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(8);
    let mut model_methods = false;
    if let (Some(server), Some(o)) = (&sinks.opcua, &setup.opcua) {
        if o.model_methods {
            let stager = opts
                .board_config
                .clone()
                .map(crate::line::control::Stager::new);
            server
                .answer_model_methods(crate::line::control::commands(stager, cmd_tx.clone()))
                .map_err(LineError::Opcua)?;
            model_methods = true;
        }
    }
    let mut control = match (&setup.control, &sinks.net) {
        (Some(c), Some(net)) => Some(
            crate::line::control::ControlServer::start(
                c,
                opts.board_config
                    .take()
                    .map(crate::line::control::Stager::new),
                cmd_tx,
                &net.handle(),
            )
            .map_err(LineError::Config)?,
        ),
        _ => None,
    };
    let models = models::Models::new(
        models::Slot::new(inspector, opts.board.model_file.display().to_string()),
        (1e9 / line.part_rate_hz) as u64,
        setup.control.as_ref().map_or(0, |c| c.shadow_every),
    );
    let threads = Threads {
        ctx: &ctx,
        clock: &clock,
        models,
        cmds: (control.is_some() || model_methods).then_some(cmd_rx),
        hw,
        policy,
        archive: sinks.archive.as_ref().map(Archive::sender),
        notifier: opts.notifier.take(),
    };
    let result = threads.run();
    if let Some(c) = control.as_mut() {
        c.stop();
    }

    crate::events::detach_log();
    let sink_stats = sinks.close();
    let (counters, stats): (Counters, RejectStats) = result?;
    if let Some(e) = shared.take_fatal() {
        return Err(e);
    }
    let counters = shared.complete(counters, sink_stats.events_dropped);
    let times = LineTimes {
        inspections: shared.inspections.load(Ordering::Relaxed),
        engine_busy_ns: shared.engine_busy_ns.load(Ordering::Relaxed),
        first_trigger_ns: shared.first_trigger_ns.load(Ordering::Relaxed),
        last_trigger_ns: shared.last_trigger_ns.load(Ordering::Relaxed),
        pin_errors: shared.pin_errors.load(Ordering::Relaxed),
        drift: shared.drift(),
        fault: shared.stop_fault(),
        camera: shared.camera(),
        threads_cpu: std::mem::take(
            &mut *shared.threads_cpu.lock().unwrap_or_else(|e| e.into_inner()),
        ),
    };
    let summary = Summary::collect(run_id, counters, &stats, times, sink_stats);
    log::info!(
        "line {} stopped: {} parts, every part accounted for: {}",
        line.name,
        summary.counters.triggers,
        summary.invariant_ok
    );
    Ok(summary)
}

/// What the operator's page says of this run that does not change during it.
fn page_facts(
    setup: &LineSetup,
    run_id: &str,
    inspector: &dyn Inspector,
    hw: &Hardware,
    board: &BoardFacts,
) -> PageFacts {
    let good = inspector.good_scores().ok();
    PageFacts {
        run: run_id.to_string(),
        line: setup.line.name.clone(),
        board: board.name.clone(),
        board_file: board.file.clone(),
        camera: hw.source.describe(),
        model_id: inspector.model_id(),
        model_file: board.model_file.display().to_string(),
        card: crate::sinks::web::card_figures(&board.model_file),
        threshold: inspector.threshold(),
        good_median: good.map(|g| g.median),
        good_std: good.map(|g| g.std),
        max_shift_std: setup.drift.max_shift_std,
        heartbeat_ms: setup.line.heartbeat_ms,
        archive: setup.archive.is_some(),
        ..Default::default()
    }
}

/// How the reject stage decides and fires, said once in the log.
fn policy(setup: &LineSetup, threshold: f32) -> Policy {
    let line = &setup.line;
    log::info!(
        "line {}: threshold {threshold}, ejector {:.1} ms after trigger, verdict margin {:.1} ms, fail_safe {:?}",
        line.name,
        line.delay_ns() as f64 / 1e6,
        line.verdict_margin_ms,
        line.fail_safe
    );
    Policy {
        fail_safe: line.fail_safe,
        margin_ns: line.margin_ns(),
        pulse_ns: setup.gpio.pulse_ns(),
        threshold,
        late_ns: line.late_limit_ns(setup.gpio.pulse_ns()),
        fire_late: line.fire_late_pulses,
    }
}

/// Refuse what cannot work, and warn about what works badly, before anything starts.
fn check_start(setup: &LineSetup, hw: &Hardware, opts: &Options) -> Result<(), LineError> {
    setup.validate()?;
    let line = &setup.line;
    if line.trigger == Trigger::Gpio && hw.trigger.is_none() {
        return Err(Invalid::new(
            "gpio.trigger",
            "line.trigger = \"gpio\" but no trigger input was opened",
        )
        .into());
    }
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
    Ok(())
}

/// The event fan-out and the sinks behind it, started before the first part.
struct LineSinks {
    bus: Bus,
    supervisor: Option<Supervisor>,
    mqtt: Option<Arc<Publisher>>,
    archive: Option<Archive>,
    /// The operator's page.
    web: Option<WebServer>,
    /// The OPC UA server.
    opcua: Option<OpcuaServer>,
    /// The async runtime of the page, the OPC UA server and the control socket.
    net: Option<NetRuntime>,
}

impl LineSinks {
    fn start(
        setup: &LineSetup,
        run_id: &str,
        facts: PageFacts,
        clock: &Arc<dyn Clock>,
        opts: &mut Options,
        archive_lost: &Arc<AtomicU64>,
    ) -> Result<Self, LineError> {
        let model_id = facts.model_id.clone();
        let opcua_facts = OpcuaFacts {
            line: setup.line.name.clone(),
            model_id: model_id.clone(),
        };
        let line = &setup.line;
        let supervisor = match setup.supervisor.listen.as_str() {
            "" => None,
            _ => Some(
                Supervisor::start(&setup.supervisor, &line.name, run_id)
                    .map_err(|e| LineError::Io("supervisor listen", e))?,
            ),
        };
        let mqtt = match &setup.mqtt {
            Some(m) => Some(Arc::new(Publisher::start(m, &line.name, run_id)?)),
            None => None,
        };
        let archive = match &setup.archive {
            Some(a) => Some(
                Archive::start(a, run_id, &model_id, archive_lost.clone())
                    .map_err(|e| LineError::Io("archive.dir", e))?,
            ),
            None => None,
        };
        let (net, early) = match opts.early_opcua.take() {
            Some(e) => {
                e.server.loaded(&model_id);
                (Some(e.net), Some(e.server))
            }
            None if setup.web.is_some() || setup.control.is_some() || setup.opcua.is_some() => (
                Some(NetRuntime::start().map_err(|e| LineError::Io("network runtime", e))?),
                None,
            ),
            None => (None, None),
        };
        let web = match (&setup.web, &net) {
            (Some(w), Some(net)) => {
                let archive_dir = setup.archive.as_ref().map(|a| a.dir.clone());
                let server = WebServer::start(w, facts, archive_dir, &net.handle()).map_err(
                    |e| match e {
                        WebError::Config(i) => LineError::Config(i),
                        WebError::Bind { source, .. } => LineError::Io("web.listen", source),
                    },
                )?;
                Some(server)
            }
            _ => None,
        };
        let opcua = match (early, &setup.opcua, &net) {
            (Some(server), _, _) => Some(server),
            (None, Some(o), Some(net)) => Some(start_opcua(o, opcua_facts, clock, net)?),
            _ => None,
        };
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if let Some(o) = &opcua {
            sinks.push(o.sink());
            if let Some(tx) = &opts.opcua_listening {
                let _ = tx.send(o.local_addr());
            }
        }
        if let Some(s) = &supervisor {
            sinks.push(s.sink());
            if let Some(tx) = &opts.listening {
                let _ = tx.send(s.local_addr());
            }
        }
        if let Some(m) = &mqtt {
            sinks.push(m.sink());
        }
        if let Some(w) = &web {
            sinks.push(w.sink());
            if let Some(tx) = &opts.web_listening {
                let _ = tx.send(w.local_addr());
            }
        }
        if opts.live_log {
            sinks.push(Box::new(LiveLog));
        }
        sinks.append(&mut opts.sinks);
        let bus = Bus::start(&line.name, run_id, opts.bus_capacity, clock.clone(), sinks);
        Ok(Self {
            bus,
            supervisor,
            mqtt,
            archive,
            web,
            opcua,
            net,
        })
    }

    /// Flush the bus, stop the stream and the publisher, finish the archive; their figures.
    fn close(self) -> SinkStats {
        let bus_stats = self.bus.close();
        // The page's viewers got `end` when the bus closed; give it a moment to reach them.
        let web = self.web.map(|mut server| {
            server.stop(Duration::from_millis(500));
            server.figures()
        });
        let opcua = self.opcua.map(|mut server| {
            server.stop(Duration::from_secs(2));
            server.figures()
        });
        if let Some(mut net) = self.net {
            net.stop(Duration::from_millis(500));
        }
        let mut supervisor = self.supervisor;
        if let Some(s) = supervisor.as_mut() {
            s.stop(Duration::from_millis(500));
        }
        let (mqtt_overflow, mqtt_undelivered) = match self.mqtt {
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
        let count = |f: fn(&Supervisor) -> u64| supervisor.as_ref().map_or(0, f);
        SinkStats {
            events_delivered: bus_stats.delivered,
            events_dropped: bus_stats.dropped,
            supervisor_clients_dropped: count(|s| {
                s.stats().clients_dropped.load(Ordering::Relaxed)
            }),
            supervisor_refused: count(|s| s.stats().refused.load(Ordering::Relaxed)),
            supervisor_tls_rejected: count(|s| s.stats().tls_rejected.load(Ordering::Relaxed)),
            mqtt_overflow,
            mqtt_undelivered,
            archive: self.archive.map(|a| a.finish()).unwrap_or_default(),
            web,
            opcua,
        }
    }
}

/// The stage threads of one run, and what each takes with it.
struct Threads<'a> {
    ctx: &'a Ctx<'a>,
    clock: &'a Arc<dyn Clock>,
    models: models::Models,
    cmds: Option<crossbeam_channel::Receiver<models::ModelCmd>>,
    hw: Hardware,
    policy: Policy,
    archive: Option<crossbeam_channel::Sender<crate::sinks::archive::ArchiveJob>>,
    notifier: Option<Notifier>,
}

/// The reject stage's inbox and its senders: one ring per sending stage, in causal order
/// (trigger with a photo-eye, capture, inspect).
struct StageRings {
    trigger: Option<inbox::Sender<SchedMsg>>,
    capture: inbox::Sender<SchedMsg>,
    inspect: inbox::Sender<SchedMsg>,
    inbox: inbox::Inbox<SchedMsg>,
}

impl StageRings {
    fn new(clock: &Arc<dyn Clock>, with_trigger: bool) -> Self {
        let stages = 2 + usize::from(with_trigger);
        let (senders, inbox) = inbox::inbox(clock, stages, inbox::RING_CAPACITY);
        let mut senders = senders.into_iter();
        let mut next = || senders.next().expect("a ring per stage");
        Self {
            trigger: with_trigger.then(&mut next),
            capture: next(),
            inspect: next(),
            inbox,
        }
    }
}

impl Threads<'_> {
    /// Start capture, inspect, trigger (with a photo-eye), reject and health; wait for all of
    /// them; the reject stage's counters and figures, or the first thread that panicked.
    fn run(self) -> Result<(Counters, RejectStats), LineError> {
        let ctx = self.ctx;
        let clock = self.clock;
        let triage = Triage::new(ctx.setup.line.queue);
        let StageRings {
            trigger: trigger_tx,
            mut capture,
            mut inspect,
            mut inbox,
        } = StageRings::new(clock, self.hw.trigger.is_some());
        let (recycle_tx, mut recycle_rx) = rtrb::RingBuffer::<Vec<u8>>::new(64);
        let (maps_tx, mut maps_rx) = rtrb::RingBuffer::<Vec<f32>>::new(64);
        let LinePins {
            reject,
            ready,
            heartbeat,
            fault,
        } = self.hw.pins;
        let mut scheduler = Scheduler::new(
            self.policy,
            clock.clone(),
            reject,
            ctx.events.clone(),
            ctx.shared.counters.clone(),
        )
        .with_recycle(recycle_tx)
        .with_map_recycle(maps_tx);
        if let Some(tx) = self.archive {
            scheduler = scheduler.with_archive(tx);
        }
        // Every stage counts as running on the clock before any starts (see `clock::Held`).
        let stage_threads = 4 + usize::from(self.hw.trigger.is_some());
        // Collected now, not lazily: each guard must count before the first thread starts.
        let held: Vec<Held> = (0..stage_threads)
            .map(|_| Held::new(clock.clone()))
            .collect();
        let mut held = held.into_iter();
        let (source, trigger, models, cmds) =
            (self.hw.source, self.hw.trigger, self.models, self.cmds);
        let notifier = self.notifier;
        let soft_trigger = source.soft_trigger();
        std::thread::scope(|scope| {
            let mut held = || held.next().expect("one guard per stage thread");
            let done = |stage| Some((ctx.shared, stage, ctx.clock));
            let triage_ref = &triage;
            let capture = spawn_stage(scope, "capture", held(), done(CAPTURE), move || {
                capture::capture_loop(ctx, source, &mut capture, triage_ref, &mut recycle_rx)
            });
            let inspect = spawn_stage(scope, "inspect", held(), done(INSPECT), move || {
                inspect::inspect_loop(models, cmds, ctx, triage_ref, &mut inspect, &mut maps_rx)
            });
            let trigger = trigger.zip(trigger_tx).map(|(mut input, mut tx)| {
                spawn_stage(scope, "trigger", held(), done(TRIGGER), move || {
                    trigger::trigger_loop(ctx, &mut *input, &mut tx, soft_trigger)
                })
            });
            let (stats_tx, stats_rx) = std::sync::mpsc::channel();
            let reject = spawn_stage(scope, "reject", held(), done(REJECT), move || {
                set_realtime(ctx.setup.line.realtime_priority);
                let stats = reject::reject_loop(&mut scheduler, ctx, &mut inbox);
                let _ = stats_tx.send((scheduler.counters(), stats));
            });
            let pins = Pins {
                ready,
                heartbeat,
                fault,
            };
            let health = spawn_stage(scope, "health", held(), None, move || {
                Health::new(
                    ctx.setup,
                    ctx.clock,
                    ctx.shared,
                    ctx.events,
                    ctx.awaiting,
                    notifier.as_ref(),
                    pins,
                )
                .run()
            });
            join_all([capture, inspect], trigger, reject, health, &stats_rx)
        })
    }
}

/// Wait for every stage thread; the reject stage's counters and figures, or the name of a
/// thread that panicked.
fn join_all(
    [capture, inspect]: [std::thread::ScopedJoinHandle<'_, ()>; 2],
    trigger: Option<std::thread::ScopedJoinHandle<'_, ()>>,
    reject: std::thread::ScopedJoinHandle<'_, ()>,
    health: std::thread::ScopedJoinHandle<'_, ()>,
    stats: &std::sync::mpsc::Receiver<(Counters, RejectStats)>,
) -> Result<(Counters, RejectStats), LineError> {
    let mut panicked = None;
    for (name, h) in [("capture", capture), ("inspect", inspect)] {
        if h.join().is_err() {
            panicked = Some(name);
        }
    }
    if trigger.is_some_and(|t| t.join().is_err()) {
        panicked = Some("trigger");
    }
    let reject_ok = reject.join().is_ok();
    if health.join().is_err() {
        panicked = Some("health");
    }
    match (stats.try_recv(), reject_ok, panicked) {
        (_, false, _) | (Err(_), _, _) => Err(LineError::Panic("reject")),
        (_, _, Some(p)) => Err(LineError::Panic(p)),
        (Ok(v), true, None) => Ok(v),
    }
}

/// Start one stage thread that holds virtual time while it runs (see `clock::Held`) and, when
/// `done` names its stage, marks that stage finished however it ends.
fn spawn_stage<'scope, F>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    name: &str,
    held: Held,
    done: Option<(&'scope Shared, usize, &'scope dyn Clock)>,
    f: F,
) -> std::thread::ScopedJoinHandle<'scope, ()>
where
    F: FnOnce() + Send + 'scope,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn_scoped(scope, move || {
            let _h = held;
            let _done = done.map(|(shared, stage, clock)| Done(shared, stage, clock));
            f();
        })
        .expect("spawn a stage thread")
}
