//! The line's output pins behind `embedded_hal::digital::OutputPin`: requested from the GPIO
//! character device on a board, recording simulated pins everywhere else.

use crate::clock::Clock;
use crate::gpio::{cdev, ActiveLevel, DynPin, GpioConfig, LineRef, OutputRequest, PinError};
use embedded_hal::digital::{ErrorType, OutputPin};
use std::sync::{Arc, Mutex};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::clock::{SimClock, SimMode};

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
            let (pin, l) = crate::sim::doubles::fake_output(clock.clone(), req);
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
