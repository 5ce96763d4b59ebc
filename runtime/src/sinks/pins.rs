//! Output lines behind `embedded_hal::digital::OutputPin`: the GPIO character device (v2) on a
//! board, recording simulated pins everywhere else; plus the photo-eye trigger input.

use crate::clock::Clock;
use crate::line::setup::{ActiveLevel, GpioConfig, LineRef};
use embedded_hal::digital::{ErrorKind, ErrorType, OutputPin};
use std::sync::{Arc, Mutex};

/// A pin write or line request that failed.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The named line is not on the chip, or the chip is absent.
    #[error("gpio line {line:?} not found on chip {chip:?}")]
    NotFound {
        /// Chip label asked for.
        chip: String,
        /// Line name asked for.
        line: String,
    },
    /// The kernel refused a request or a write.
    #[error("gpio: {0}")]
    Io(String),
    /// This build has no GPIO character device support.
    #[error("gpio: built without the `gpio-cdev` feature")]
    Unsupported,
}

impl embedded_hal::digital::Error for PinError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// An output line as the line side uses it.
pub type DynPin = Box<dyn OutputPin<Error = PinError> + Send>;

/// How an output line is asked of the kernel. Lines are requested with raw levels (no kernel
/// active-low flag), because [`Output`] applies the configured level itself; a second
/// inversion in the kernel would undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputRequest {
    /// Electrical level the line takes at the moment of the request.
    pub initial_high: bool,
}

impl OutputRequest {
    /// The request for a line active at `active`: it starts at its inactive level, so an
    /// active-low ejector never sees a low glitch between the request and the first write.
    pub fn inactive(active: ActiveLevel) -> Self {
        Self {
            initial_high: active == ActiveLevel::Low,
        }
    }
}

/// An output line with its active level: callers say on/off, the level is applied here.
pub struct Output {
    pin: DynPin,
    active_high: bool,
    on: bool,
}

impl Output {
    /// Wrap `pin`, switching it off (inactive level) right away.
    pub fn new(mut pin: DynPin, active: ActiveLevel) -> Result<Self, PinError> {
        let active_high = active == ActiveLevel::High;
        if active_high {
            pin.set_low()?;
        } else {
            pin.set_high()?;
        }
        Ok(Self {
            pin,
            active_high,
            on: false,
        })
    }

    /// Request a line through `request` (the character device, or a fake) at its inactive
    /// level, then wrap it.
    pub fn request(
        active: ActiveLevel,
        request: impl FnOnce(OutputRequest) -> Result<DynPin, PinError>,
    ) -> Result<Self, PinError> {
        Self::new(request(OutputRequest::inactive(active))?, active)
    }

    /// Drive the line to its active (`true`) or inactive level; a write that changes nothing
    /// is skipped (the line is requested by us alone, so nothing else moves it).
    pub fn set(&mut self, on: bool) -> Result<(), PinError> {
        if on == self.on {
            return Ok(());
        }
        if on == self.active_high {
            self.pin.set_high()?;
        } else {
            self.pin.set_low()?;
        }
        self.on = on;
        Ok(())
    }

    /// Whether the line was last driven active.
    pub fn is_on(&self) -> bool {
        self.on
    }
}

/// One recorded level change of a [`SimPin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Clock time of the write.
    pub t_ns: u64,
    /// Electrical level after the write.
    pub high: bool,
}

/// Shared view of a simulated pin's history, for tests and the demo.
#[derive(Clone, Default)]
pub struct PinLog(Arc<Mutex<Vec<Edge>>>);

impl PinLog {
    /// Every write so far, including writes that did not change the level.
    pub fn edges(&self) -> Vec<Edge> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last written level (`None` before any write).
    pub fn level(&self) -> Option<bool> {
        self.edges().last().map(|e| e.high)
    }

    /// Times at which the level went from low to high.
    pub fn rising(&self) -> Vec<u64> {
        let mut prev = None;
        let mut out = Vec::new();
        for e in self.edges() {
            if e.high && prev != Some(true) {
                out.push(e.t_ns);
            }
            prev = Some(e.high);
        }
        out
    }

    /// (rise, fall) pairs of high pulses; an unfinished pulse is left out.
    pub fn high_pulses(&self) -> Vec<(u64, u64)> {
        let mut start = None;
        let mut out = Vec::new();
        for e in self.edges() {
            match (e.high, start) {
                (true, None) => start = Some(e.t_ns),
                (false, Some(s)) => {
                    out.push((s, e.t_ns));
                    start = None;
                }
                _ => {}
            }
        }
        out
    }
}

/// A simulated output that records every write with its clock time.
pub struct SimPin {
    clock: Arc<dyn Clock>,
    log: PinLog,
}

impl SimPin {
    /// A simulated pin and the handle to read its history.
    pub fn new(clock: Arc<dyn Clock>) -> (Self, PinLog) {
        let log = PinLog::default();
        (
            Self {
                clock,
                log: log.clone(),
            },
            log,
        )
    }

    fn record(&self, high: bool) {
        let t_ns = self.clock.now_ns();
        let mut log = self.log.0.lock().unwrap_or_else(|e| e.into_inner());
        // A demo may run for days: keep the recent history, not all of it.
        if log.len() >= 1_000_000 {
            log.drain(..500_000);
        }
        log.push(Edge { t_ns, high });
    }
}

impl ErrorType for SimPin {
    type Error = PinError;
}

impl OutputPin for SimPin {
    fn set_low(&mut self) -> Result<(), PinError> {
        self.record(false);
        Ok(())
    }
    fn set_high(&mut self) -> Result<(), PinError> {
        self.record(true);
        Ok(())
    }
}

/// The line's outputs; a role without a configured line gets a simulated pin nobody reads.
pub struct LinePins {
    /// Reject (air jet).
    pub reject: Output,
    /// `ready` handshake.
    pub ready: Output,
    /// Toggling heartbeat.
    pub heartbeat: Output,
    /// `fault`.
    pub fault: Output,
}

/// Logs of simulated [`LinePins`].
#[derive(Clone)]
pub struct SimLogs {
    /// Reject line history.
    pub reject: PinLog,
    /// `ready` history.
    pub ready: PinLog,
    /// Heartbeat history.
    pub heartbeat: PinLog,
    /// `fault` history.
    pub fault: PinLog,
}

fn level(r: &Option<LineRef>) -> ActiveLevel {
    r.as_ref().map_or(ActiveLevel::High, |l| l.active)
}

impl LinePins {
    /// Simulated pins with the configured active levels, and their logs.
    pub fn sim(cfg: &GpioConfig, clock: Arc<dyn Clock>) -> (Self, SimLogs) {
        let mk = |r: &Option<LineRef>| {
            let (p, log) = SimPin::new(clock.clone());
            let out = Output::new(Box::new(p), level(r)).expect("sim pins never fail");
            (out, log)
        };
        let (reject, rl) = mk(&cfg.reject);
        let (ready, yl) = mk(&cfg.ready);
        let (heartbeat, hl) = mk(&cfg.heartbeat);
        let (fault, fl) = mk(&cfg.fault);
        (
            Self {
                reject,
                ready,
                heartbeat,
                fault,
            },
            SimLogs {
                reject: rl,
                ready: yl,
                heartbeat: hl,
                fault: fl,
            },
        )
    }

    /// Pins as the config says: simulated when `gpio.sim`, else requested from the chip.
    pub fn open(
        cfg: &GpioConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<(Self, Option<SimLogs>), PinError> {
        if cfg.sim {
            let (p, l) = Self::sim(cfg, clock);
            return Ok((p, Some(l)));
        }
        let mk = |r: &Option<LineRef>| -> Result<Output, PinError> {
            match r {
                Some(l) => Output::request(l.active, |req| cdev::output(&cfg.chip, &l.name, req)),
                None => Output::new(Box::new(SimPin::new(clock.clone()).0), ActiveLevel::High),
            }
        };
        Ok((
            Self {
                reject: mk(&cfg.reject)?,
                ready: mk(&cfg.ready)?,
                heartbeat: mk(&cfg.heartbeat)?,
                fault: mk(&cfg.fault)?,
            },
            None,
        ))
    }
}

/// A photo-eye edge: a part entered the trigger point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerEdge {
    /// Kernel (or simulated) timestamp on the line's clock.
    pub t_ns: u64,
    /// Kernel sequence number of the edge on its line.
    pub seq: u64,
    /// Part edges the kernel dropped (event buffer full) since the previous one read: parts
    /// that passed the photo-eye and were never armed.
    pub lost: u64,
}

/// Source of photo-eye edges.
pub trait TriggerInput: Send {
    /// Wait up to `timeout_ms` for the next edge.
    fn next_edge(&mut self, timeout_ms: u64) -> Result<Option<TriggerEdge>, PinError>;
    /// Whether an edge is already waiting to be read (false: none happened up to now).
    fn pending(&mut self) -> Result<bool, PinError>;
}

/// Which logical transitions the kernel is asked to report (and so to number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeSel {
    /// Inactive to active.
    Rising,
    /// Active to inactive.
    Falling,
    /// Both; the kernel numbers both, so the numbering no longer counts parts.
    Both,
}

/// How the photo-eye is asked of the kernel: what the character-device request is built from,
/// and what fakes obey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerRequest {
    /// Requested active-low, so that the kernel's logical "rising" is "part present" for
    /// either sensor polarity.
    pub active_low: bool,
    /// Transitions the kernel queues.
    pub edges: EdgeSel,
    /// Kernel debounce period (0: none).
    pub debounce_us: u64,
}

impl TriggerRequest {
    /// The request for `line`: the part-present edge only, so that every event the kernel
    /// numbers is a part and a gap in its numbering is exactly the parts it dropped.
    pub fn for_line(line: &LineRef, debounce_us: u64) -> Self {
        Self {
            active_low: line.active == ActiveLevel::Low,
            edges: EdgeSel::Rising,
            debounce_us,
        }
    }
}

/// One edge event as the GPIO character device (v2) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineEvent {
    /// Kernel timestamp (`CLOCK_MONOTONIC`).
    pub t_ns: u64,
    /// Logical inactive-to-active transition (else active-to-inactive).
    pub rising: bool,
    /// Number of this event among the events queued for its line on this request, from 1.
    pub line_seqno: u32,
    /// Number of this event among the events of every line of the request, from 1.
    pub seqno: u32,
}

/// The kernel side of an edge-detecting line request: a character-device request on a board,
/// a fake in tests. [`EdgeTrigger`] reads either.
pub trait LineEvents: Send {
    /// Wait up to `timeout_ms` for an event to be queued; false when none came.
    fn wait_event(&mut self, timeout_ms: u64) -> Result<bool, PinError>;
    /// Whether an event is queued now.
    fn has_event(&mut self) -> Result<bool, PinError>;
    /// Take the oldest queued event.
    fn read_event(&mut self) -> Result<LineEvent, PinError>;
}

/// Events the kernel dropped between the last `line_seqno` read (`None`: nothing read yet;
/// the kernel numbers from 1) and `line_seqno`. The kernel's counter is 32 bits and wraps;
/// the same number twice (ABI v1 reports 0 throughout) counts as no loss.
pub fn events_lost(last: Option<u32>, line_seqno: u32) -> u64 {
    match line_seqno.wrapping_sub(last.unwrap_or(0)) {
        0 => 0,
        d => u64::from(d - 1),
    }
}

/// The photo-eye as the kernel reports it: one part per rising event, with the events the
/// kernel dropped counted from its own numbering. The same code reads the character device
/// and the fakes.
pub struct EdgeTrigger<E> {
    events: E,
    last_seqno: Option<u32>,
    lost: u64,
}

impl<E: LineEvents> EdgeTrigger<E> {
    /// Read parts from `events`, a request made with [`TriggerRequest::for_line`].
    pub fn new(events: E) -> Self {
        Self {
            events,
            last_seqno: None,
            lost: 0,
        }
    }
}

impl<E: LineEvents> TriggerInput for EdgeTrigger<E> {
    fn pending(&mut self) -> Result<bool, PinError> {
        self.events.has_event()
    }

    fn next_edge(&mut self, timeout_ms: u64) -> Result<Option<TriggerEdge>, PinError> {
        if !self.events.wait_event(timeout_ms)? {
            return Ok(None);
        }
        let ev = self.events.read_event()?;
        // Every event read advances the numbering, parts or not, so only real drops show.
        self.lost += events_lost(self.last_seqno, ev.line_seqno);
        self.last_seqno = Some(ev.line_seqno);
        if !ev.rising {
            return Ok(None);
        }
        Ok(Some(TriggerEdge {
            t_ns: ev.t_ns,
            seq: u64::from(ev.line_seqno),
            lost: std::mem::take(&mut self.lost),
        }))
    }
}

/// Simulated photo-eye: replays a list of edge times on the clock.
pub struct SimTrigger {
    clock: Arc<dyn Clock>,
    times: std::collections::VecDeque<u64>,
    seq: u64,
}

impl SimTrigger {
    /// Edges at the given clock times (ascending).
    pub fn new(clock: Arc<dyn Clock>, times: impl IntoIterator<Item = u64>) -> Self {
        Self {
            clock,
            times: times.into_iter().collect(),
            seq: 0,
        }
    }
}

impl TriggerInput for SimTrigger {
    fn pending(&mut self) -> Result<bool, PinError> {
        Ok(self
            .times
            .front()
            .is_some_and(|&t| t <= self.clock.now_ns()))
    }

    fn next_edge(&mut self, timeout_ms: u64) -> Result<Option<TriggerEdge>, PinError> {
        let limit = self.clock.now_ns() + timeout_ms * crate::clock::MS;
        match self.times.front().copied() {
            Some(t) if t <= limit => {
                self.clock.sleep_until(t);
                self.times.pop_front();
                self.seq += 1;
                Ok(Some(TriggerEdge {
                    t_ns: t,
                    seq: self.seq,
                    lost: 0,
                }))
            }
            _ => {
                self.clock.sleep_until(limit);
                Ok(None)
            }
        }
    }
}

/// The device node and offset of line `name` on the chip labelled (or named) `chip`, as the
/// line side finds it at start, without requesting it.
pub fn find_line(chip: &str, name: &str) -> Result<(std::path::PathBuf, u32), PinError> {
    cdev::find(chip, name)
}

/// The label the driver gives the chip at `path` (a `/dev/gpiochipN`).
pub fn chip_label(path: &std::path::Path) -> Result<String, PinError> {
    cdev::label(path)
}

/// Open the configured photo-eye line from the GPIO character device.
pub fn open_trigger(cfg: &GpioConfig) -> Result<Box<dyn TriggerInput>, PinError> {
    request_trigger(cfg, |line, req| cdev::trigger(&cfg.chip, &line.name, req))
}

/// The configured photo-eye, requested through `request` (the character device, or a fake)
/// with [`TriggerRequest::for_line`] and read by [`EdgeTrigger`].
pub fn request_trigger<E: LineEvents + 'static>(
    cfg: &GpioConfig,
    request: impl FnOnce(&LineRef, TriggerRequest) -> Result<E, PinError>,
) -> Result<Box<dyn TriggerInput>, PinError> {
    let line = cfg.trigger.as_ref().ok_or_else(|| PinError::NotFound {
        chip: cfg.chip.clone(),
        line: "<none>".into(),
    })?;
    let events = request(
        line,
        TriggerRequest::for_line(line, cfg.trigger_debounce_us),
    )?;
    Ok(Box::new(EdgeTrigger::new(events)))
}

#[cfg(feature = "gpio-cdev")]
mod cdev {
    use super::{DynPin, EdgeSel, LineEvent, LineEvents, OutputRequest, PinError, TriggerRequest};
    use embedded_hal::digital::{ErrorType, OutputPin};
    use gpiocdev::line::{EdgeDetection, EdgeKind, Value};
    use gpiocdev::request::Builder;
    use gpiocdev::Request;
    use std::path::PathBuf;
    use std::time::Duration;

    pub(super) fn find(chip_label: &str, name: &str) -> Result<(PathBuf, u32), PinError> {
        let not_found = || PinError::NotFound {
            chip: chip_label.into(),
            line: name.into(),
        };
        for path in gpiocdev::chip::chips().map_err(|e| PinError::Io(e.to_string()))? {
            let Ok(chip) = gpiocdev::chip::Chip::from_path(&path) else {
                continue;
            };
            let Ok(info) = chip.info() else { continue };
            if info.label != chip_label && info.name != chip_label {
                continue;
            }
            if let Some(l) = chip.find_line_info(name) {
                return Ok((path, l.offset));
            }
        }
        Err(not_found())
    }

    pub(super) fn label(path: &std::path::Path) -> Result<String, PinError> {
        let chip =
            gpiocdev::chip::Chip::from_path(path).map_err(|e| PinError::Io(e.to_string()))?;
        Ok(chip.info().map_err(|e| PinError::Io(e.to_string()))?.label)
    }

    /// One output line, requested once and held for the process's life.
    struct CdevPin {
        req: Request,
        offset: u32,
    }

    impl ErrorType for CdevPin {
        type Error = PinError;
    }

    impl OutputPin for CdevPin {
        fn set_low(&mut self) -> Result<(), PinError> {
            self.req
                .set_value(self.offset, Value::Inactive)
                .map_err(|e| PinError::Io(e.to_string()))
        }
        fn set_high(&mut self) -> Result<(), PinError> {
            self.req
                .set_value(self.offset, Value::Active)
                .map_err(|e| PinError::Io(e.to_string()))
        }
    }

    /// The kernel request for an output line. No `as_active_low`: on a line requested active
    /// high, `Value::Active` is the raw high level, which is what `CdevPin` writes for
    /// `set_high`, and `Output` does the one inversion an active-low line needs.
    pub(super) fn output_builder(path: PathBuf, offset: u32, out: OutputRequest) -> Builder {
        let mut b = Request::builder();
        b.on_chip(path)
            .with_consumer("diffad")
            .with_line(offset)
            .as_output(if out.initial_high {
                Value::Active
            } else {
                Value::Inactive
            });
        b
    }

    pub(super) fn output(chip: &str, name: &str, out: OutputRequest) -> Result<DynPin, PinError> {
        let (path, offset) = find(chip, name)?;
        let req = output_builder(path, offset, out)
            .request()
            .map_err(|e| PinError::Io(format!("request {name}: {e}")))?;
        Ok(Box::new(CdevPin { req, offset }))
    }

    /// The photo-eye's kernel request.
    pub(super) struct CdevEvents {
        req: Request,
    }

    impl LineEvents for CdevEvents {
        fn wait_event(&mut self, timeout_ms: u64) -> Result<bool, PinError> {
            self.req
                .wait_edge_event(Duration::from_millis(timeout_ms))
                .map_err(|e| PinError::Io(format!("photo-eye wait: {e}")))
        }

        fn has_event(&mut self) -> Result<bool, PinError> {
            self.req
                .has_edge_event()
                .map_err(|e| PinError::Io(format!("photo-eye poll: {e}")))
        }

        fn read_event(&mut self) -> Result<LineEvent, PinError> {
            let ev = self
                .req
                .read_edge_event()
                .map_err(|e| PinError::Io(format!("photo-eye read: {e}")))?;
            Ok(LineEvent {
                t_ns: ev.timestamp_ns,
                rising: ev.kind == EdgeKind::Rising,
                line_seqno: ev.line_seqno,
                seqno: ev.seqno,
            })
        }
    }

    /// The kernel request for the photo-eye. gpiocdev's (and the kernel's) edges are logical:
    /// on a line requested active-low, `RisingEdge` is the electrical falling edge.
    pub(super) fn trigger_builder(path: PathBuf, offset: u32, trig: TriggerRequest) -> Builder {
        let mut b = Request::builder();
        b.on_chip(path)
            .with_consumer("diffad-trigger")
            .with_line(offset)
            .as_input();
        if trig.active_low {
            b.as_active_low();
        }
        if trig.debounce_us > 0 {
            b.with_debounce_period(Duration::from_micros(trig.debounce_us));
        }
        // Kernel timestamps default to CLOCK_MONOTONIC, the clock `SystemClock` reads.
        b.with_edge_detection(match trig.edges {
            EdgeSel::Rising => EdgeDetection::RisingEdge,
            EdgeSel::Falling => EdgeDetection::FallingEdge,
            EdgeSel::Both => EdgeDetection::BothEdges,
        });
        b
    }

    pub(super) fn trigger(
        chip: &str,
        name: &str,
        trig: TriggerRequest,
    ) -> Result<CdevEvents, PinError> {
        let (path, offset) = find(chip, name)?;
        let req = trigger_builder(path, offset, trig)
            .request()
            .map_err(|e| PinError::Io(format!("request {name}: {e}")))?;
        Ok(CdevEvents { req })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::line::setup::{ActiveLevel, LineRef};

        #[test]
        fn outputs_are_requested_raw_at_their_inactive_level() {
            for active in [ActiveLevel::High, ActiveLevel::Low] {
                let b = output_builder("/dev/gpiochip0".into(), 7, OutputRequest::inactive(active));
                let cfg = b.config();
                let line = cfg.line_config(7).expect("line 7 requested");
                // One inversion only, in `Output`: the kernel must not invert as well.
                assert!(!line.active_low, "{active:?}");
                let raw_high = (line.value == Some(Value::Active)) != line.active_low;
                assert_eq!(
                    raw_high,
                    active == ActiveLevel::Low,
                    "{active:?}: starts inactive"
                );
            }
        }

        #[test]
        fn photo_eye_is_requested_on_the_part_edge_only() {
            for active in [ActiveLevel::High, ActiveLevel::Low] {
                let line = LineRef {
                    name: "PAA.01".into(),
                    active,
                };
                let b = trigger_builder(
                    "/dev/gpiochip0".into(),
                    3,
                    TriggerRequest::for_line(&line, 250),
                );
                let cfg = b.config();
                let l = cfg.line_config(3).expect("line 3 requested");
                // Logical edges: with active-low requested, "rising" is the part arriving.
                assert_eq!(
                    l.edge_detection,
                    Some(EdgeDetection::RisingEdge),
                    "{active:?}"
                );
                assert_eq!(l.active_low, active == ActiveLevel::Low, "{active:?}");
                assert_eq!(l.debounce_period, Some(Duration::from_micros(250)));
            }
        }
    }
}

#[cfg(not(feature = "gpio-cdev"))]
mod cdev {
    use super::{DynPin, LineEvent, LineEvents, OutputRequest, PinError, TriggerRequest};

    pub(super) fn find(_chip: &str, _name: &str) -> Result<(std::path::PathBuf, u32), PinError> {
        Err(PinError::Unsupported)
    }

    pub(super) fn label(_path: &std::path::Path) -> Result<String, PinError> {
        Err(PinError::Unsupported)
    }

    /// Never built: this build cannot request lines.
    pub(super) enum CdevEvents {}

    impl LineEvents for CdevEvents {
        fn wait_event(&mut self, _timeout_ms: u64) -> Result<bool, PinError> {
            match *self {}
        }
        fn has_event(&mut self) -> Result<bool, PinError> {
            match *self {}
        }
        fn read_event(&mut self) -> Result<LineEvent, PinError> {
            match *self {}
        }
    }

    pub(super) fn output(
        _chip: &str,
        _name: &str,
        _out: OutputRequest,
    ) -> Result<DynPin, PinError> {
        Err(PinError::Unsupported)
    }

    pub(super) fn trigger(
        _chip: &str,
        _name: &str,
        _trig: TriggerRequest,
    ) -> Result<CdevEvents, PinError> {
        Err(PinError::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{SimClock, SimMode};

    #[test]
    fn active_low_output_inverts_and_logs_times() {
        let clock = Arc::new(SimClock::new(SimMode::Manual, 100));
        let (pin, log) = SimPin::new(clock.clone());
        let mut out = Output::new(Box::new(pin), ActiveLevel::Low).unwrap();
        clock.advance_to(200);
        out.set(true).unwrap();
        clock.advance_to(300);
        out.set(false).unwrap();
        assert_eq!(
            log.edges(),
            vec![
                Edge {
                    t_ns: 100,
                    high: true
                },
                Edge {
                    t_ns: 200,
                    high: false
                },
                Edge {
                    t_ns: 300,
                    high: true
                }
            ]
        );
        assert!(!out.is_on());
    }

    /// Request every output of the line through the fake kernel and return the raw levels it
    /// saw from the request on.
    fn requested(active: ActiveLevel) -> (Output, PinLog) {
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(SimMode::Manual, 100));
        let mut log = None;
        let out = Output::request(active, |req| {
            let (pin, l) = crate::testkit::fake_output(clock.clone(), req);
            log = Some(l);
            Ok(Box::new(pin))
        })
        .unwrap();
        (out, log.unwrap())
    }

    #[test]
    fn outputs_never_show_their_active_level_from_the_request_on() {
        for active in [ActiveLevel::High, ActiveLevel::Low] {
            let inactive_high = active == ActiveLevel::Low;
            let (mut out, log) = requested(active);
            let levels: Vec<bool> = log.edges().iter().map(|e| e.high).collect();
            assert!(!levels.is_empty(), "{active:?}: the request sets a level");
            assert!(
                levels.iter().all(|&h| h == inactive_high),
                "{active:?} output showed its active level before being switched on: {levels:?}"
            );
            out.set(true).unwrap();
            assert_eq!(
                log.level(),
                Some(!inactive_high),
                "{active:?}: on is active"
            );
            out.set(false).unwrap();
            assert_eq!(
                log.level(),
                Some(inactive_high),
                "{active:?}: off is inactive"
            );
        }
    }

    fn photo_eye(active: ActiveLevel) -> GpioConfig {
        GpioConfig {
            trigger: Some(LineRef {
                name: "PAA.01".into(),
                active,
            }),
            ..Default::default()
        }
    }

    /// The configured photo-eye, requested from a fake kernel (idle at its inactive level).
    fn fake_photo_eye(
        clock: &Arc<dyn Clock>,
        active: ActiveLevel,
    ) -> (Box<dyn TriggerInput>, crate::testkit::FakeEdgeRequest) {
        let mut kernel = None;
        let input = request_trigger(&photo_eye(active), |line, req| {
            let idle_high = line.active == ActiveLevel::Low;
            let k = crate::testkit::FakeEdgeRequest::new(clock.clone(), req, 1, idle_high);
            kernel = Some(k.clone());
            Ok(k)
        })
        .unwrap();
        (input, kernel.unwrap())
    }

    /// A part in front of the photo-eye from `t` for 5 ms, electrically as the sensor drives it.
    fn part(kernel: &crate::testkit::FakeEdgeRequest, active: ActiveLevel, t: u64) {
        let present_high = active == ActiveLevel::High;
        kernel.drive(0, t, present_high);
        kernel.drive(0, t + 5 * crate::clock::MS, !present_high);
    }

    fn read_all(input: &mut dyn TriggerInput) -> Vec<TriggerEdge> {
        let mut out = Vec::new();
        while let Some(e) = input.next_edge(1000).unwrap() {
            out.push(e);
        }
        out
    }

    #[test]
    fn one_part_per_rising_edge_and_no_false_losses() {
        use crate::clock::MS;
        for active in [ActiveLevel::High, ActiveLevel::Low] {
            let clock: Arc<dyn Clock> = Arc::new(SimClock::new(SimMode::Auto, 1_000 * MS));
            let (mut input, kernel) = fake_photo_eye(&clock, active);
            let times: Vec<u64> = (1..=50).map(|i| 1_000 * MS + i * 20 * MS).collect();
            for &t in &times {
                part(&kernel, active, t);
            }
            let edges = read_all(&mut *input);
            // Parts are born when they arrive, whatever the sensor's polarity.
            assert_eq!(
                edges.iter().map(|e| e.t_ns).collect::<Vec<_>>(),
                times,
                "{active:?}"
            );
            // Every event the kernel numbered is a part: the departures were never queued.
            assert_eq!(
                edges.iter().map(|e| e.seq).collect::<Vec<_>>(),
                (1..=50).collect::<Vec<_>>(),
                "{active:?}"
            );
            assert!(edges.iter().all(|e| e.lost == 0), "{active:?}: {edges:?}");
            assert_eq!(kernel.dropped(), 0);
        }
    }

    #[test]
    fn edges_dropped_by_a_full_kernel_buffer_are_counted_exactly() {
        use crate::clock::MS;
        let t0 = 1_000 * MS;
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(SimMode::Auto, t0));
        let (mut input, kernel) = fake_photo_eye(&clock, ActiveLevel::Low);
        for i in 1..=60 {
            part(&kernel, ActiveLevel::Low, t0 + i * 10 * MS);
        }
        // The reader starts late: parts 1..=20 came, the buffer holds the last 16.
        clock.sleep_until(t0 + 205 * MS);
        let first = input.next_edge(0).unwrap().unwrap();
        assert_eq!((first.seq, first.lost), (5, 4));
        let mut edges = vec![first];
        for _ in 0..15 {
            edges.push(input.next_edge(0).unwrap().unwrap());
        }
        assert_eq!(edges.last().unwrap().seq, 20);
        // Keeps up for a while, then stalls through parts 31..=55: 25 for 16 places.
        while clock.now_ns() < t0 + 300 * MS {
            edges.push(input.next_edge(1000).unwrap().unwrap());
        }
        clock.sleep_until(t0 + 555 * MS);
        edges.extend(read_all(&mut *input));
        let lost: Vec<(u64, u64)> = edges
            .iter()
            .filter(|e| e.lost > 0)
            .map(|e| (e.seq, e.lost))
            .collect();
        assert_eq!(lost, vec![(5, 4), (40, 9)]);
        let total: u64 = edges.iter().map(|e| e.lost).sum();
        assert_eq!(total, kernel.dropped());
        assert_eq!(edges.len() as u64 + total, 60, "every part read or counted");
    }

    #[test]
    fn lost_events_follow_the_kernels_numbering() {
        assert_eq!(events_lost(None, 1), 0);
        assert_eq!(events_lost(None, 4), 3, "lost before the first read");
        assert_eq!(events_lost(Some(7), 8), 0);
        assert_eq!(events_lost(Some(7), 10), 2);
        assert_eq!(
            events_lost(Some(u32::MAX), 0),
            0,
            "the 32-bit counter wraps"
        );
        assert_eq!(events_lost(Some(u32::MAX - 1), 1), 2);
        assert_eq!(events_lost(Some(0), 0), 0, "ABI v1 numbers nothing");
    }

    #[test]
    fn fake_kernel_numbers_every_requested_edge_per_line_and_per_request() {
        use crate::testkit::FakeEdgeRequest;
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(SimMode::Auto, 0));
        let both = TriggerRequest {
            active_low: false,
            edges: EdgeSel::Both,
            debounce_us: 0,
        };
        let mut k = FakeEdgeRequest::new(clock.clone(), both, 2, false);
        k.drive(0, 10, true);
        k.drive(1, 20, true);
        k.drive(0, 30, false);
        k.drive(0, 35, false); // no change, no event
        k.drive(1, 40, false);
        let mut got = Vec::new();
        while k.wait_event(1).unwrap() {
            let e = k.read_event().unwrap();
            got.push((e.t_ns, e.rising, e.line_seqno, e.seqno));
        }
        assert_eq!(
            got,
            vec![
                (10, true, 1, 1),
                (20, true, 1, 2),
                (30, false, 2, 3),
                (40, false, 2, 4)
            ]
        );
        // Both edges requested: a reader that took gaps between part edges for losses would
        // report one lost per part; the reader counts every event, so it reports none.
        let (mut input, kernel) = {
            let k = FakeEdgeRequest::new(
                clock.clone(),
                TriggerRequest {
                    edges: EdgeSel::Both,
                    ..both
                },
                1,
                false,
            );
            (EdgeTrigger::new(k.clone()), k)
        };
        for i in 0..3 {
            kernel.drive(0, 100 + i * 10, true);
            kernel.drive(0, 105 + i * 10, false);
        }
        // A departure reads as "no part yet", so read by events, not until the first gap.
        let parts: Vec<TriggerEdge> = (0..6)
            .filter_map(|_| input.next_edge(1000).unwrap())
            .collect();
        assert_eq!(
            parts.iter().map(|e| (e.seq, e.lost)).collect::<Vec<_>>(),
            vec![(1, 0), (3, 0), (5, 0)]
        );
    }

    #[test]
    fn high_pulses_pairs_edges() {
        let clock = Arc::new(SimClock::new(SimMode::Manual, 0));
        let (mut pin, log) = SimPin::new(clock.clone());
        pin.set_low().unwrap();
        clock.advance_to(10);
        pin.set_high().unwrap();
        clock.advance_to(20);
        pin.set_low().unwrap();
        assert_eq!(log.high_pulses(), vec![(10, 20)]);
        assert_eq!(log.rising(), vec![10]);
    }
}
