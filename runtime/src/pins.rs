//! Output lines behind `embedded_hal::digital::OutputPin`: the GPIO character device (v2) on a
//! board, recording simulated pins everywhere else; plus the photo-eye trigger input.

use crate::clock::Clock;
use crate::setup::{ActiveLevel, GpioConfig, LineRef};
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
                Some(l) => Output::new(cdev::output(&cfg.chip, &l.name)?, l.active),
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
    /// Kernel sequence number; gaps mean the kernel's event buffer overflowed.
    pub seq: u64,
}

/// Source of photo-eye edges.
pub trait TriggerInput: Send {
    /// Wait up to `timeout_ms` for the next edge.
    fn next_edge(&mut self, timeout_ms: u64) -> Result<Option<TriggerEdge>, PinError>;
    /// Whether an edge is already waiting to be read (false: none happened up to now).
    fn pending(&mut self) -> Result<bool, PinError>;
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
                }))
            }
            _ => {
                self.clock.sleep_until(limit);
                Ok(None)
            }
        }
    }
}

/// Open the configured photo-eye line (rising edge = part present; inverted when active low).
pub fn open_trigger(cfg: &GpioConfig) -> Result<Box<dyn TriggerInput>, PinError> {
    let line = cfg.trigger.as_ref().ok_or_else(|| PinError::NotFound {
        chip: cfg.chip.clone(),
        line: "<none>".into(),
    })?;
    cdev::trigger(&cfg.chip, line, cfg.trigger_debounce_us)
}

#[cfg(feature = "gpio-cdev")]
mod cdev {
    use super::{DynPin, PinError, TriggerEdge, TriggerInput};
    use crate::setup::{ActiveLevel, LineRef};
    use embedded_hal::digital::{ErrorType, OutputPin};
    use gpiocdev::line::{EdgeDetection, EdgeKind, Value};
    use gpiocdev::Request;
    use std::path::PathBuf;
    use std::time::Duration;

    fn find(chip_label: &str, name: &str) -> Result<(PathBuf, u32), PinError> {
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

    pub(super) fn output(chip: &str, name: &str) -> Result<DynPin, PinError> {
        let (path, offset) = find(chip, name)?;
        // Requested as raw levels: `Output` applies the configured active level itself.
        let req = Request::builder()
            .on_chip(path)
            .with_consumer("diffad")
            .with_line(offset)
            .as_output(Value::Inactive)
            .request()
            .map_err(|e| PinError::Io(format!("request {name}: {e}")))?;
        Ok(Box::new(CdevPin { req, offset }))
    }

    struct CdevTrigger {
        req: Request,
    }

    impl TriggerInput for CdevTrigger {
        fn pending(&mut self) -> Result<bool, PinError> {
            self.req
                .has_edge_event()
                .map_err(|e| PinError::Io(e.to_string()))
        }

        fn next_edge(&mut self, timeout_ms: u64) -> Result<Option<TriggerEdge>, PinError> {
            let io = |e: gpiocdev::Error| PinError::Io(e.to_string());
            if !self
                .req
                .wait_edge_event(Duration::from_millis(timeout_ms))
                .map_err(io)?
            {
                return Ok(None);
            }
            let ev = self.req.read_edge_event().map_err(io)?;
            // Active-low lines are requested as such, so "rising" always means "part present".
            if ev.kind != EdgeKind::Rising {
                return Ok(None);
            }
            Ok(Some(TriggerEdge {
                t_ns: ev.timestamp_ns,
                seq: ev.line_seqno as u64,
            }))
        }
    }

    pub(super) fn trigger(
        chip: &str,
        line: &LineRef,
        debounce_us: u64,
    ) -> Result<Box<dyn TriggerInput>, PinError> {
        let (path, offset) = find(chip, &line.name)?;
        let mut b = Request::builder();
        b.on_chip(path)
            .with_consumer("diffad-trigger")
            .with_line(offset)
            .as_input();
        if line.active == ActiveLevel::Low {
            b.as_active_low();
        }
        if debounce_us > 0 {
            b.with_debounce_period(Duration::from_micros(debounce_us));
        }
        // Kernel timestamps default to CLOCK_MONOTONIC, the clock `SystemClock` reads.
        let req = b
            .with_edge_detection(EdgeDetection::BothEdges)
            .request()
            .map_err(|e| PinError::Io(e.to_string()))?;
        Ok(Box::new(CdevTrigger { req }))
    }
}

#[cfg(not(feature = "gpio-cdev"))]
mod cdev {
    use super::{DynPin, PinError, TriggerInput};
    use crate::setup::LineRef;

    pub(super) fn output(_chip: &str, _name: &str) -> Result<DynPin, PinError> {
        Err(PinError::Unsupported)
    }

    pub(super) fn trigger(
        _c: &str,
        _l: &LineRef,
        _d: u64,
    ) -> Result<Box<dyn TriggerInput>, PinError> {
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
