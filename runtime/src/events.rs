//! What the line tells the world: part outcomes, fired rejects, alarms, heartbeats and log
//! records, numbered in one sequence and fanned out to sinks (supervisor stream, MQTT, live log).
//!
//! Emitting never blocks: a full bus drops the event and counts it, and the count is reported.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

/// What happened to a part; exactly one per part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Inspected in time and good: the armed reject was cancelled.
    Pass,
    /// Inspected in time and bad.
    Reject,
    /// Rejected because its inspection was late, missing or failed (`fail_safe = "reject"`).
    FaultReject,
    /// Let through although its inspection was late, missing or failed (`fail_safe = "pass"`).
    FaultPass,
}

impl Outcome {
    /// Whether the reject fires for this outcome.
    pub fn rejects(self) -> bool {
        matches!(self, Outcome::Reject | Outcome::FaultReject)
    }
}

/// What a part's frame tells about it: which frame, where it came from, and the ground truth
/// when the source knows it. Carried from the frame to the part's outcome event unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FrameFacts {
    /// Source frame sequence number (0 when no frame was matched).
    pub frame_seq: u64,
    /// Ground truth, when the source knows it.
    pub defective: Option<bool>,
    /// Ground-truth defect kind.
    pub kind: Option<String>,
    /// Where the frame came from.
    pub origin: String,
}

impl FrameFacts {
    /// What `frame` tells.
    pub fn of(frame: &crate::frame::Frame) -> Self {
        let truth = frame.truth.as_ref();
        Self {
            frame_seq: frame.seq,
            defective: truth.map(|t| t.defective),
            kind: truth.and_then(|t| t.kind.clone()),
            origin: frame.origin.clone(),
        }
    }
}

/// One part's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct PartEvent {
    /// Part number (1-based, in trigger order).
    pub part: u64,
    /// Trigger time (clock ns).
    pub trigger_ns: u64,
    /// Time the part reaches the ejector.
    pub deadline_ns: u64,
    /// When the verdict reached the reject stage, if it did before the outcome was fixed.
    pub verdict_ns: Option<u64>,
    /// Anomaly score, when inspected.
    pub score: Option<f32>,
    /// Threshold applied.
    pub threshold: f32,
    /// The outcome.
    pub outcome: Outcome,
    /// Trigger-to-verdict latency.
    pub latency_ms: Option<f64>,
    /// Why a fault outcome happened.
    pub reason: Option<String>,
    /// Its frame and what the frame knows (flattened: the same keys as before on the wire).
    #[serde(flatten)]
    pub frame: FrameFacts,
    /// The model whose verdict decided the part (its id); absent when no model judged it
    /// (skipped, never queued, or the inspection failed before a verdict).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "ser_opt_str"
    )]
    pub model: Option<Arc<str>>,
}

/// A staged candidate model's opinion of a part the live model judged (a shadow run): it
/// decides nothing.
#[derive(Debug, Clone, Serialize)]
pub struct ShadowEvent {
    /// Part number (its `part` event has the live verdict).
    pub part: u64,
    /// The candidate's model id.
    #[serde(serialize_with = "ser_str")]
    pub model: Arc<str>,
    /// The candidate's score.
    pub score: f32,
    /// The candidate's threshold.
    pub threshold: f32,
    /// Whether the candidate would have rejected it.
    pub would_reject: bool,
    /// The live model's score.
    pub live_score: f32,
    /// Whether the live model rejected it (by verdict).
    pub live_rejects: bool,
}

/// A reject pulse that went out.
#[derive(Debug, Clone, Serialize)]
pub struct RejectEvent {
    /// Part rejected.
    pub part: u64,
    /// Deadline it was scheduled for.
    pub scheduled_ns: u64,
    /// When the line was (or already was) active for it.
    pub actual_ns: u64,
    /// `actual - scheduled` in microseconds.
    pub error_us: i64,
    /// True when the pulse extended one still active for an earlier part.
    pub extended: bool,
    /// Started later than the part could still be hit (`line.reject_late_ms`).
    pub late: bool,
    /// Whether the pin was driven for it (a late pulse is held unless `line.fire_late_pulses`).
    pub fired: bool,
}

/// A condition someone should look at; `active: false` says it cleared.
#[derive(Debug, Clone, Serialize)]
pub struct AlarmEvent {
    /// Stable machine-readable code, e.g. `late_verdict`, `queue_full`, `camera_stalled`.
    pub code: String,
    /// Human-readable detail.
    pub message: String,
    /// Part concerned, if any.
    pub part: Option<u64>,
    /// Raised (true) or cleared (false).
    pub active: bool,
}

/// Counters every heartbeat carries; `triggers = passes + rejects + fault_rejects + fault_passes + pending`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Parts born.
    pub triggers: u64,
    /// Parts passed.
    pub passes: u64,
    /// Parts rejected by verdict.
    pub rejects: u64,
    /// Parts rejected because inspection was late, missing or failed.
    pub fault_rejects: u64,
    /// Parts let through although inspection was late, missing or failed.
    pub fault_passes: u64,
    /// Parts armed without an outcome yet.
    pub pending: u64,
    /// Frames that could not be queued for the engine (it had stopped).
    pub queue_full: u64,
    /// Parts not inspected because their verdict could no longer come in time (fail-safe).
    pub skipped: u64,
    /// Verdicts that came after the outcome was fixed.
    pub late_verdicts: u64,
    /// Inspections that failed.
    pub inspect_errors: u64,
    /// Reject pulses requested.
    pub pulses: u64,
    /// Frames lost at the source.
    pub frames_dropped: u64,
    /// Camera errors (disconnects, decode failures).
    pub camera_errors: u64,
    /// Events dropped because the bus was full.
    pub events_dropped: u64,
    /// Pin writes (or photo-eye reads) that failed.
    pub pin_errors: u64,
    /// Photo-eye edges the kernel dropped (its event buffer was full): parts never armed.
    pub trigger_edges_lost: u64,
    /// Reject pulses that started too late to hit their part (`line.reject_late_ms`), fired
    /// or held: each of their parts is a possible escape.
    pub late_ejections: u64,
    /// Inspections failed in a row, now (0 after any inspection that succeeded).
    pub inspect_failures_in_row: u64,
    /// Rejected parts whose frame and map did not reach the archive (queue full, write
    /// failed, disk full): evidence lost, counted.
    pub archive_lost: u64,
    /// Frames that arrived incomplete: each one's part failed safe, uninspected.
    pub frames_incomplete: u64,
    /// Stream packets that never arrived (GigE Vision).
    pub packets_missing: u64,
    /// Stream packets the camera resent on request (GigE Vision).
    pub packets_resent: u64,
    /// Frames the camera sent while the stream had no free buffer.
    pub stream_underruns: u64,
}

impl Counters {
    /// The part-accounting invariant.
    pub fn balanced(&self) -> bool {
        self.triggers
            == self.passes + self.rejects + self.fault_rejects + self.fault_passes + self.pending
    }
}

/// Periodic health report.
#[derive(Debug, Clone, Serialize)]
pub struct HeartbeatEvent {
    /// Whether `ready` is high.
    pub ready: bool,
    /// Whether the part-accounting invariant holds.
    pub invariant_ok: bool,
    /// Conditions currently keeping `ready` low.
    pub faults: Vec<String>,
    /// Counters.
    pub counters: Counters,
    /// The drift watch's window (`[drift]`), once it is full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<Box<DriftFigures>>,
    /// What the camera's source measures of itself, for sources that do (GenICam).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub camera: Option<CameraFigures>,
}

/// What a camera source measures of itself: conversion cost, buffer reuse, camera time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CameraFigures {
    /// Frames converted into the line's frame buffers.
    pub frames_converted: u64,
    /// Time to copy a frame out of the camera's buffer and convert its pixels (median), µs.
    pub convert_p50_us: f64,
    /// The same, 99th percentile, µs.
    pub convert_p99_us: f64,
    /// The same, longest, µs.
    pub convert_max_us: f64,
    /// Frame buffers allocated or grown (no free one of the size was pooled); a steady line
    /// stops at its pool size.
    pub buffers_allocated: u64,
    /// Frames placed in line time by the camera's own timestamp (the rest by arrival).
    pub camera_stamped: u64,
    /// Drift of the camera's clock against the line clock, ppm, once measured.
    pub clock_drift_ppm: Option<f64>,
}

/// Where the drift watch's window stands (`stages::drift`): carried by every heartbeat once the
/// window is full, and by the run's summary.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DriftFigures {
    /// Parts in the window.
    pub window: usize,
    /// Median score of the window.
    pub median: f64,
    /// The median's distance from the calibration's good median, in its standard deviations
    /// (positive: above); absent without a calibration to compare with.
    pub shift_std: Option<f64>,
    /// Share of the window at or above the threshold.
    pub reject_rate: f64,
}

impl std::fmt::Display for DriftFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "last {} parts: median score {:.4}",
            self.window, self.median
        )?;
        if let Some(s) = self.shift_std {
            write!(f, " ({s:+.2} std from the calibration's good median)")?;
        }
        write!(
            f,
            ", {:.1} % at or above the threshold",
            100.0 * self.reject_rate
        )
    }
}

/// A shadow run's figures: how a staged candidate would have judged the parts the live model
/// judged, on the same frames.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct ShadowReport {
    /// The candidate's model id.
    pub model: String,
    /// The candidate's file.
    pub file: String,
    /// The live model's id.
    pub live_model: String,
    /// Parts both models scored.
    pub compared: u64,
    /// Inspected parts the candidate did not score (no engine headroom then).
    pub not_compared: u64,
    /// Compared parts on which both verdicts agree.
    pub agree: u64,
    /// Parts the candidate would have rejected that the live model passed (the first 200).
    pub would_reject: Vec<u64>,
    /// Parts the candidate would have passed that the live model rejected (the first 200).
    pub would_pass: Vec<u64>,
    /// How many parts the candidate would have rejected that the live model passed.
    pub would_reject_count: u64,
    /// How many parts the candidate would have passed that the live model rejected.
    pub would_pass_count: u64,
    /// The candidate's median score over the compared parts.
    pub median: Option<f64>,
    /// That median's distance from the candidate's calibrated good median, in its std.
    pub shift_std: Option<f64>,
    /// The live model's median score over the same parts.
    pub live_median: Option<f64>,
    /// That median's distance from the live model's calibrated good median, in its std.
    pub live_shift_std: Option<f64>,
    /// Whether the run is over (`--parts` compared, or the candidate promoted or replaced).
    pub done: bool,
}

/// A log record forwarded to the stream.
#[derive(Debug, Clone, Serialize)]
pub struct LogEvent {
    /// `ERROR`, `WARN`, ...
    pub level: String,
    /// Module path.
    pub target: String,
    /// Text.
    pub message: String,
}

/// Everything that goes on the stream.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A part's outcome.
    Part(PartEvent),
    /// A reject pulse.
    Reject(RejectEvent),
    /// An alarm raised or cleared.
    Alarm(AlarmEvent),
    /// Health and counters.
    Heartbeat(HeartbeatEvent),
    /// A log record.
    Log(LogEvent),
    /// A candidate model's score of a part beside the live verdict (`diffad model shadow`).
    Shadow(ShadowEvent),
    /// Where a shadow run stands: parts compared, agreement, verdicts that would change.
    ShadowReport(Box<ShadowReport>),
}

impl Event {
    /// Short name of the kind (`part`, `reject`, `alarm`, `heartbeat`, `log`).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Part(_) => "part",
            Event::Reject(_) => "reject",
            Event::Alarm(_) => "alarm",
            Event::Heartbeat(_) => "heartbeat",
            Event::Log(_) => "log",
            Event::Shadow(_) => "shadow",
            Event::ShadowReport(_) => "shadow_report",
        }
    }

    /// An alarm event.
    pub fn alarm(code: &str, message: impl Into<String>, part: Option<u64>, active: bool) -> Self {
        Event::Alarm(AlarmEvent {
            code: code.into(),
            message: message.into(),
            part,
            active,
        })
    }
}

/// An event with its place in the sequence, serialized once for every sink.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// Sequence number, from 1, without gaps among delivered events.
    pub seq: u64,
    /// Clock time of emission.
    pub t_ns: u64,
    /// Line name.
    #[serde(serialize_with = "ser_str")]
    pub line: Arc<str>,
    /// This run of the line (sequence numbers restart with every run).
    #[serde(serialize_with = "ser_str")]
    pub run: Arc<str>,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
    /// The NDJSON line (without newline).
    #[serde(skip)]
    pub json: String,
}

fn ser_str<S: serde::Serializer>(v: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

fn ser_opt_str<S: serde::Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(v),
        None => s.serialize_none(),
    }
}

/// Something that receives every record; must not block (queue or drop and count).
pub trait Sink: Send {
    /// Take one record.
    fn deliver(&mut self, rec: &Arc<Record>);
    /// The bus is closing: flush what can be flushed quickly.
    fn close(&mut self) {}
}

/// A test or embedding program's tap on the record stream (bounded; drops when full).
pub struct TapSink(pub Sender<Arc<Record>>);

impl Sink for TapSink {
    fn deliver(&mut self, rec: &Arc<Record>) {
        let _ = self.0.try_send(rec.clone());
    }
}

/// Prints one line per part (and per alarm) through the log, target `diffad::live`.
pub struct LiveLog;

/// Log target of the live per-part lines (never forwarded back onto the bus).
pub const LIVE_TARGET: &str = "diffad::live";

impl Sink for LiveLog {
    fn deliver(&mut self, rec: &Arc<Record>) {
        match &rec.event {
            Event::Part(p) => log::info!(
                target: LIVE_TARGET,
                "part {:>6} {:<12} score {} latency {} {}{}{}",
                p.part,
                format!("{:?}", p.outcome),
                p.score.map_or("-".into(), |s| format!("{s:.4}")),
                p.latency_ms.map_or("-".into(), |l| format!("{l:.1} ms")),
                p.frame.origin,
                p.frame.kind.as_deref().map_or(String::new(), |k| format!(" [{k}]")),
                p.reason.as_deref().map_or(String::new(), |r| format!(" {r}"))
            ),
            Event::Alarm(a) => log::warn!(
                target: LIVE_TARGET,
                "alarm {} {}: {}",
                a.code,
                if a.active { "raised" } else { "cleared" },
                a.message
            ),
            _ => {}
        }
    }
}

// Not boxed: an event moves once into the bus's preallocated channel, and a box would cost an
// allocation per event on the stage threads.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(u64, Event),
    Close,
}

/// This run's id: UTC start time to the second and the process id, e.g. `20250314-093015-4242`.
/// Stream readers tell runs apart by it (`seq` restarts at 1), and archive file names carry it
/// (they sort by run start).
pub fn run_id(start: std::time::SystemTime, pid: u32) -> String {
    let secs = start
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's `civil_from_days`).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}{:02}{:02}-{pid}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The id of a run starting now in this process.
pub fn new_run_id() -> String {
    run_id(std::time::SystemTime::now(), std::process::id())
}

/// Cheap, cloneable handle for emitting events; never blocks.
#[derive(Clone)]
pub struct Events {
    tx: Sender<Msg>,
    dropped: Arc<AtomicU64>,
    clock: Arc<dyn crate::clock::Clock>,
}

impl Events {
    /// Queue `event`; when the bus is full it is dropped and counted.
    pub fn emit(&self, event: Event) {
        let t = self.clock.now_ns();
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Msg::Event(t, event))
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Events dropped so far because the bus was full or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Totals of a finished bus.
#[derive(Debug, Clone, Default)]
pub struct BusStats {
    /// Records delivered to the sinks.
    pub delivered: u64,
    /// Events dropped at emission.
    pub dropped: u64,
}

/// The fan-out thread and its input.
pub struct Bus {
    events: Events,
    handle: Option<JoinHandle<u64>>,
}

impl Bus {
    /// Start the fan-out thread for run `run` of line `line`, with room for `capacity` queued events.
    pub fn start(
        line: &str,
        run: &str,
        capacity: usize,
        clock: Arc<dyn crate::clock::Clock>,
        sinks: Vec<Box<dyn Sink>>,
    ) -> Self {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let (line, run): (Arc<str>, Arc<str>) = (Arc::from(line), Arc::from(run));
        let handle = std::thread::Builder::new()
            .name("events".into())
            .spawn(move || fan_out(rx, line, run, sinks))
            .expect("spawn events thread");
        Self {
            events: Events {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
                clock,
            },
            handle: Some(handle),
        }
    }

    /// A handle for emitting.
    pub fn events(&self) -> Events {
        self.events.clone()
    }

    /// Deliver what is queued, close the sinks and stop the thread.
    pub fn close(mut self) -> BusStats {
        self.shutdown()
    }

    fn shutdown(&mut self) -> BusStats {
        let Some(h) = self.handle.take() else {
            return BusStats::default();
        };
        // Blocking is fine here: the line has stopped and the fan-out thread only drains.
        let _ = self.events.tx.send(Msg::Close);
        let delivered = h.join().unwrap_or(0);
        BusStats {
            delivered,
            dropped: self.events.dropped(),
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn fan_out(rx: Receiver<Msg>, line: Arc<str>, run: Arc<str>, mut sinks: Vec<Box<dyn Sink>>) -> u64 {
    let mut seq = 0u64;
    while let Some(Msg::Event(t_ns, event)) = crate::clock::poll_recv(&rx) {
        seq += 1;
        let mut rec = Record {
            seq,
            t_ns,
            line: line.clone(),
            run: run.clone(),
            event,
            json: String::new(),
        };
        rec.json = serde_json::to_string(&rec).unwrap_or_else(|e| {
            format!("{{\"seq\":{seq},\"type\":\"error\",\"message\":\"{e}\"}}")
        });
        let rec = Arc::new(rec);
        for s in sinks.iter_mut() {
            s.deliver(&rec);
        }
    }
    for s in sinks.iter_mut() {
        s.close();
    }
    seq
}

static LOG_BUS: RwLock<Option<(Events, log::LevelFilter)>> = RwLock::new(None);

/// Forward log records at or above `level` to `events` (until [`detach_log`]).
pub fn attach_log(events: Events, level: log::LevelFilter) {
    *LOG_BUS.write().unwrap_or_else(|e| e.into_inner()) = Some((events, level));
}

/// Stop forwarding log records to the bus.
pub fn detach_log() {
    *LOG_BUS.write().unwrap_or_else(|e| e.into_inner()) = None;
}

/// A `log::Log` that writes through env_logger and forwards records to the event bus.
pub struct LogBridge {
    inner: env_logger::Logger,
}

impl LogBridge {
    /// Install as the global logger (env_logger reads `RUST_LOG`, default `info`); once per process.
    pub fn install() -> Result<(), log::SetLoggerError> {
        let inner =
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .build();
        // Debug records must reach `log` so the stream can have them even when the console filters them.
        log::set_max_level(log::LevelFilter::Trace.min(log::STATIC_MAX_LEVEL));
        log::set_boxed_logger(Box::new(LogBridge { inner }))
    }
}

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.inner.enabled(metadata)
            || LOG_BUS
                .read()
                .map(|b| b.as_ref().is_some_and(|(_, l)| metadata.level() <= *l))
                .unwrap_or(false)
    }

    fn log(&self, record: &log::Record) {
        if self.inner.matches(record) {
            self.inner.log(record);
        }
        if record.target() == LIVE_TARGET {
            return;
        }
        if let Ok(guard) = LOG_BUS.read() {
            if let Some((events, level)) = guard.as_ref() {
                if record.level() <= *level {
                    events.emit(Event::Log(LogEvent {
                        level: record.level().to_string(),
                        target: record.target().to_string(),
                        message: record.args().to_string(),
                    }));
                }
            }
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::SystemClock;

    #[test]
    fn records_are_numbered_serialized_and_drops_counted() {
        let (tap, rx) = crossbeam_channel::unbounded();
        let bus = Bus::start(
            "l1",
            "r1",
            4,
            Arc::new(SystemClock::new()),
            vec![Box::new(TapSink(tap))],
        );
        let ev = bus.events();
        for i in 0..3 {
            ev.emit(Event::alarm("test", format!("n{i}"), Some(i), true));
        }
        let stats = bus.close();
        let recs: Vec<Arc<Record>> = rx.try_iter().collect();
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        let v: serde_json::Value = serde_json::from_str(&recs[0].json).unwrap();
        assert_eq!(v["type"], "alarm");
        assert_eq!(v["code"], "test");
        assert_eq!(v["line"], "l1");
        assert_eq!(v["run"], "r1");
        assert_eq!(v["seq"], 1);
        assert_eq!(stats.delivered + stats.dropped, 3);
        ev.emit(Event::alarm("late", "", None, true));
        assert_eq!(ev.dropped(), stats.dropped + 1);
    }

    #[test]
    fn run_id_is_utc_start_time_and_pid() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_709_251_199);
        assert_eq!(run_id(t, 42), "20240229-235959-42");
        assert_eq!(run_id(std::time::UNIX_EPOCH, 7), "19700101-000000-7");
    }
}
