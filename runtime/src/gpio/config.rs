//! `[gpio]`: the chip, the reject, ready and photo-eye lines, pulse timing.

use crate::clock::MS;
use crate::config::Invalid;
use serde::Deserialize;

/// Which electrical level means "on".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActiveLevel {
    /// On = high.
    #[default]
    High,
    /// On = low.
    Low,
}

/// One output or input line, found by name on the configured chip.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineRef {
    /// Line name as the chip reports it (Jetson pin maps: e.g. `"PAC.06"`).
    pub name: String,
    /// Level that means "on".
    #[serde(default)]
    pub active: ActiveLevel,
}

/// `[gpio]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpioConfig {
    /// Simulated pins (record edges) instead of the GPIO character device.
    pub sim: bool,
    /// Chip label, e.g. `"tegra234-gpio"`.
    pub chip: String,
    /// Reject (air jet) line.
    pub reject: Option<LineRef>,
    /// `ready` handshake line.
    pub ready: Option<LineRef>,
    /// Toggling heartbeat for an external watchdog relay.
    pub heartbeat: Option<LineRef>,
    /// `fault` line.
    pub fault: Option<LineRef>,
    /// Photo-eye input (used when `line.trigger = "gpio"`).
    pub trigger: Option<LineRef>,
    /// Reject pulse width.
    pub pulse_ms: f64,
    /// Debounce for the photo-eye input.
    pub trigger_debounce_us: u64,
}

impl Default for GpioConfig {
    fn default() -> Self {
        Self {
            sim: true,
            chip: "tegra234-gpio".into(),
            reject: None,
            ready: None,
            heartbeat: None,
            fault: None,
            trigger: None,
            pulse_ms: 20.0,
            trigger_debounce_us: 0,
        }
    }
}

impl GpioConfig {
    /// Check widths and that real pins are named.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(self.pulse_ms > 0.0 && self.pulse_ms <= 1000.0) {
            return Err(Invalid::new("gpio.pulse_ms", "must be within (0, 1000] ms"));
        }
        if !self.sim {
            if self.chip.is_empty() {
                return Err(Invalid::new(
                    "gpio.chip",
                    "a chip label is required when gpio.sim = false",
                ));
            }
            if self.reject.is_none() {
                return Err(Invalid::new(
                    "gpio.reject",
                    "a reject line is required when gpio.sim = false",
                ));
            }
        }
        for (key, l) in [
            ("gpio.reject.name", &self.reject),
            ("gpio.ready.name", &self.ready),
            ("gpio.heartbeat.name", &self.heartbeat),
            ("gpio.fault.name", &self.fault),
            ("gpio.trigger.name", &self.trigger),
        ] {
            if l.as_ref().is_some_and(|l| l.name.trim().is_empty()) {
                return Err(Invalid::new(key, "must not be empty"));
            }
        }
        // One chip: two signals on one line would fight (two outputs) or read the line's own
        // output as the photo-eye (output and trigger), and the kernel grants a line once.
        let named = self.lines();
        for (i, (key, line)) in named.iter().enumerate() {
            if let Some((first, _)) = named[..i]
                .iter()
                .find(|(_, other)| other.name.trim() == line.name.trim())
            {
                return Err(Invalid::new(
                    format!("{key}.name"),
                    format!(
                        "\"{}\" is already {first}'s line: each signal needs its own GPIO line; give {key} another one",
                        line.name.trim()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The configured lines with their keys (`gpio.reject`, ...), outputs first, then the trigger.
    pub fn lines(&self) -> Vec<(&'static str, &LineRef)> {
        [
            ("gpio.reject", &self.reject),
            ("gpio.ready", &self.ready),
            ("gpio.heartbeat", &self.heartbeat),
            ("gpio.fault", &self.fault),
            ("gpio.trigger", &self.trigger),
        ]
        .into_iter()
        .filter_map(|(k, l)| l.as_ref().map(|l| (k, l)))
        .collect()
    }

    /// Pulse width in nanoseconds.
    pub fn pulse_ns(&self) -> u64 {
        (self.pulse_ms * MS as f64) as u64
    }
}
