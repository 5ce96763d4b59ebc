//! The GPIO character device (v2) through `gpiocdev`: output lines and numbered edge events.

use super::{DynPin, EdgeSel, LineEvent, LineEvents, OutputRequest, PinError, TriggerRequest};
use embedded_hal::digital::{ErrorType, OutputPin};
use gpiocdev::line::{EdgeDetection, EdgeKind, Value};
use gpiocdev::request::Builder;
use gpiocdev::Request;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) fn find(chip_label: &str, name: &str) -> Result<(PathBuf, u32), PinError> {
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

pub(crate) fn label(path: &std::path::Path) -> Result<String, PinError> {
    let chip = gpiocdev::chip::Chip::from_path(path).map_err(|e| PinError::Io(e.to_string()))?;
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
pub(crate) fn output_builder(path: PathBuf, offset: u32, out: OutputRequest) -> Builder {
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

pub(crate) fn output(chip: &str, name: &str, out: OutputRequest) -> Result<DynPin, PinError> {
    let (path, offset) = find(chip, name)?;
    let req = output_builder(path, offset, out)
        .request()
        .map_err(|e| PinError::Io(format!("request {name}: {e}")))?;
    Ok(Box::new(CdevPin { req, offset }))
}

/// The photo-eye's kernel request.
pub(crate) struct CdevEvents {
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
pub(crate) fn trigger_builder(path: PathBuf, offset: u32, trig: TriggerRequest) -> Builder {
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

pub(crate) fn trigger(
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
    use crate::gpio::ActiveLevel;
    use crate::gpio::LineRef;

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
