//! The GPIO hardware seam: what the kernel is asked for (output and edge requests), what it
//! reports (numbered edge events), the errors, and `[gpio]`. The character device (v2) sits
//! behind it on a board; fakes obey the same requests in tests.

use embedded_hal::digital::{ErrorKind, OutputPin};

mod config;
pub use config::{ActiveLevel, GpioConfig, LineRef};

#[cfg(feature = "gpio-cdev")]
pub(crate) mod cdev;

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

/// The device node and offset of line `name` on the chip labelled (or named) `chip`, as the
/// line side finds it at start, without requesting it.
pub fn find_line(chip: &str, name: &str) -> Result<(std::path::PathBuf, u32), PinError> {
    cdev::find(chip, name)
}

/// The label the driver gives the chip at `path` (a `/dev/gpiochipN`).
pub fn chip_label(path: &std::path::Path) -> Result<String, PinError> {
    cdev::label(path)
}

#[cfg(not(feature = "gpio-cdev"))]
pub(crate) mod cdev {
    #[cfg(not(feature = "gpio-cdev"))]
    mod cdev {
        use super::{DynPin, LineEvent, LineEvents, OutputRequest, PinError, TriggerRequest};

        pub(crate) fn find(
            _chip: &str,
            _name: &str,
        ) -> Result<(std::path::PathBuf, u32), PinError> {
            Err(PinError::Unsupported)
        }

        pub(crate) fn label(_path: &std::path::Path) -> Result<String, PinError> {
            Err(PinError::Unsupported)
        }

        /// Never built: this build cannot request lines.
        pub(crate) enum CdevEvents {}

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

        pub(crate) fn output(
            _chip: &str,
            _name: &str,
            _out: OutputRequest,
        ) -> Result<DynPin, PinError> {
            Err(PinError::Unsupported)
        }

        pub(crate) fn trigger(
            _chip: &str,
            _name: &str,
            _trig: TriggerRequest,
        ) -> Result<CdevEvents, PinError> {
            Err(PinError::Unsupported)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
