//! The line's configuration sections: `[camera]`, `[gpio]`, `[line]`, `[drift]`, `[supervisor]`,
//! `[mqtt]`, `[archive]`, `[web]`, `[opcua]`, `[control]`. Each is deserialized strictly and validated before the line starts.

use crate::clock::MS;
use crate::config::Invalid;
use crate::gpio::GpioConfig;
use crate::sinks::archive::ArchiveConfig;
use crate::sinks::mqtt::MqttConfig;
use crate::sinks::opcua::OpcuaConfig;
use crate::sinks::reject::FailSafe;
use crate::sinks::supervisor::SupervisorConfig;
use crate::sinks::web::WebConfig;
use crate::sources::camera::config::CameraConfig;
use crate::stages::drift::DriftConfig;
use serde::Deserialize;

/// Every section the line side reads, flattened into the board config next to `[board]`/`[engine]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineSetup {
    /// Where frames come from.
    #[serde(default)]
    pub camera: CameraConfig,
    /// Output and input lines.
    #[serde(default)]
    pub gpio: GpioConfig,
    /// Belt geometry, timing and policy.
    #[serde(default)]
    pub line: LineConfig,
    /// The watch on the score distribution and the reject rate.
    #[serde(default)]
    pub drift: DriftConfig,
    /// The TCP event stream.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    /// MQTT publisher, off when absent.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    /// Reject archive, off when absent.
    #[serde(default)]
    pub archive: Option<ArchiveConfig>,
    /// The operator's page, off when absent.
    #[serde(default)]
    pub web: Option<WebConfig>,
    /// The OPC UA server (Machine Vision model), off when absent.
    #[serde(default)]
    pub opcua: Option<OpcuaConfig>,
    /// The control socket (`diffad model`), off when absent.
    #[serde(default)]
    pub control: Option<crate::line::control::ControlConfig>,
}

impl LineSetup {
    /// Parse the sections from TOML text (a whole board file minus the engine side, or a test).
    pub fn from_toml(text: &str) -> Result<Self, Invalid> {
        let value: toml::Value = text
            .parse::<toml::Table>()
            .map(toml::Value::Table)
            .map_err(|e| Invalid::new("<file>", e.to_string()))?;
        let setup: Self = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            // toml appends its own "in `key`" context; the dotted key already says it.
            let message = e.inner().to_string();
            let message = message
                .split("\nin `")
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            Invalid::new(
                if key == "." {
                    "<file>".to_string()
                } else {
                    key
                },
                message,
            )
        })?;
        setup.validate()?;
        Ok(setup)
    }

    /// Check every section; the first problem found is returned with its dotted key.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.camera.validate()?;
        self.gpio.validate()?;
        self.line.validate()?;
        self.drift.validate()?;
        self.supervisor.validate()?;
        if let Some(m) = &self.mqtt {
            m.validate()?;
        }
        if let Some(a) = &self.archive {
            a.validate()?;
        }
        if let Some(w) = &self.web {
            w.validate()?;
        }
        if let Some(o) = &self.opcua {
            o.validate()?;
        }
        if let Some(c) = &self.control {
            c.validate()?;
        }
        if self.camera.source == crate::sources::camera::config::SourceKind::Genicam {
            use crate::sources::camera::config::GenicamTrigger;
            let t = self.camera.genicam.trigger;
            if t == GenicamTrigger::Software && self.line.trigger != Trigger::Gpio {
                return Err(Invalid::new(
                    "camera.genicam.trigger",
                    "\"software\" fires the camera at each photo-eye edge: it needs line.trigger = \"gpio\" (use \"free\" or \"hardware\" with line.trigger = \"frame\")",
                ));
            }
            if t != GenicamTrigger::Software && self.line.trigger == Trigger::Gpio {
                return Err(Invalid::new(
                    "camera.genicam.trigger",
                    "with line.trigger = \"gpio\" the camera must be fired per part: trigger = \"software\" (a photo-eye wired to the camera is trigger = \"hardware\" with line.trigger = \"frame\")",
                ));
            }
        }
        if self.line.trigger == Trigger::Gpio && self.gpio.trigger.is_none() {
            return Err(Invalid::new(
                "gpio.trigger",
                "required when line.trigger = \"gpio\"",
            ));
        }
        Ok(())
    }
}

/// What gives birth to a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// Each frame is a part (free-running camera or a camera triggered by the photo-eye).
    #[default]
    Frame,
    /// A photo-eye edge on `gpio.trigger`; frames are matched to edges in order.
    Gpio,
}

/// Spin window before each pulse by default: above the wake-up delays of a kernel without
/// PREEMPT_RT (up to a few ms, measured in `scripts/bench`), at most 2 ms of CPU per pulse.
pub const DEFAULT_REJECT_SPIN_US: u64 = 2_000;
/// Longest spin window accepted.
pub const MAX_REJECT_SPIN_US: u64 = 20_000;

/// `[line]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LineConfig {
    /// Line name, used in MQTT topics and events.
    pub name: String,
    /// Parts per second for simulated and replayed sources.
    pub part_rate_hz: f64,
    /// Frame or photo-eye.
    pub trigger: Trigger,
    /// Belt speed.
    pub belt_speed_mm_s: f64,
    /// Distance from the camera (trigger point) to the ejector.
    pub camera_to_ejector_mm: f64,
    /// Encoder ticks from trigger to ejector; with `ticks_per_mm` replaces the distance.
    pub ejector_ticks: Option<u64>,
    /// Encoder resolution.
    pub ticks_per_mm: Option<f64>,
    /// `"reject"` (default) or `"pass"`.
    pub fail_safe: FailSafe,
    /// A verdict must arrive this long before the reject deadline to count.
    pub verdict_margin_ms: f64,
    /// Replaces the model's calibrated threshold.
    pub threshold: Option<f32>,
    /// Stop after this many parts (demos, tests).
    pub parts: Option<u64>,
    /// Heartbeat period (event, heartbeat pin toggle, health checks).
    pub heartbeat_ms: u64,
    /// Frames waiting for the engine; when full, the oldest is skipped (fail-safe) for a new one.
    /// Triage skips frames that cannot make their deadline, so the bound only caps memory: it
    /// should hold what the engine can inspect within the belt delay.
    pub queue: usize,
    /// SCHED_FIFO priority for the reject thread (1..=99; 0 = normal scheduling). Needs
    /// `LimitRTPRIO` (systemd) or CAP_SYS_NICE; refused priorities are logged, not fatal.
    pub realtime_priority: u8,
    /// The reject thread stays awake (busy-waits) this long before each pulse instead of
    /// sleeping to it, so that a late wake-up does not delay the edge; 0 = sleep only. Costs up
    /// to this much CPU per pulse, and never more than half of one core.
    pub reject_spin_us: u64,
    /// The spin window follows the wake-up lateness the reject thread measures: twice the
    /// third largest in its last 256 to 512 sleeps (about their 99th percentile) plus 50 us, at
    /// most `reject_spin_us` (the window until it has measured). A lone stall beyond it makes
    /// one pulse late by the difference. False: always `reject_spin_us`, at the CPU that costs.
    pub reject_spin_adaptive: bool,
    /// A reject pulse starting later than this after the part reached the ejector misses the
    /// part (a late ejection: alarm, `ready` down, a possible escape). Default: half the pulse
    /// width, so the jet is on for at least half its time while the part is at the nozzle.
    pub reject_late_ms: Option<f64>,
    /// Fire a pulse even when it is known to be too late (it is still counted as late); the
    /// default holds it, so that a stalled line does not blow air at the wrong part.
    pub fire_late_pulses: bool,
    /// This many inspections failing in a row put the line in a fault state (0 = never).
    pub max_failed_inspections: u32,
    /// Keep running (fault state held, every part fail-safe) instead of draining and exiting
    /// non-zero after `max_failed_inspections`.
    pub run_on_failures: bool,
}

impl Default for LineConfig {
    fn default() -> Self {
        Self {
            name: "line1".into(),
            part_rate_hz: 10.0,
            trigger: Trigger::Frame,
            belt_speed_mm_s: 500.0,
            camera_to_ejector_mm: 250.0,
            ejector_ticks: None,
            ticks_per_mm: None,
            fail_safe: FailSafe::Reject,
            verdict_margin_ms: 5.0,
            threshold: None,
            parts: None,
            heartbeat_ms: 500,
            queue: 32,
            realtime_priority: 0,
            reject_spin_us: DEFAULT_REJECT_SPIN_US,
            reject_spin_adaptive: true,
            reject_late_ms: None,
            fire_late_pulses: false,
            max_failed_inspections: 20,
            run_on_failures: false,
        }
    }
}

impl LineConfig {
    /// Check geometry, rates and names.
    pub fn validate(&self) -> Result<(), Invalid> {
        let topic_safe = |s: &str| !s.is_empty() && !s.contains(['/', '+', '#', ' ']);
        if !topic_safe(&self.name) {
            return Err(Invalid::new(
                "line.name",
                "must be non-empty without '/', '+', '#' or spaces",
            ));
        }
        if !(self.part_rate_hz > 0.0 && self.part_rate_hz <= 1000.0) {
            return Err(Invalid::new(
                "line.part_rate_hz",
                "must be within (0, 1000]",
            ));
        }
        if !(self.belt_speed_mm_s > 0.0 && self.belt_speed_mm_s.is_finite()) {
            return Err(Invalid::new("line.belt_speed_mm_s", "must be > 0"));
        }
        if !(self.camera_to_ejector_mm > 0.0 && self.camera_to_ejector_mm.is_finite()) {
            return Err(Invalid::new("line.camera_to_ejector_mm", "must be > 0"));
        }
        match (self.ejector_ticks, self.ticks_per_mm) {
            (Some(0), _) => return Err(Invalid::new("line.ejector_ticks", "must be > 0")),
            (Some(_), None) => {
                return Err(Invalid::new(
                    "line.ticks_per_mm",
                    "required with line.ejector_ticks",
                ))
            }
            (_, Some(t)) if !(t > 0.0 && t.is_finite()) => {
                return Err(Invalid::new("line.ticks_per_mm", "must be > 0"))
            }
            _ => {}
        }
        if !(self.verdict_margin_ms >= 0.0 && self.verdict_margin_ms.is_finite()) {
            return Err(Invalid::new("line.verdict_margin_ms", "must be >= 0"));
        }
        if self.verdict_margin_ms * (MS as f64) >= self.delay_ns() as f64 {
            return Err(Invalid::new(
                "line.verdict_margin_ms",
                "must be shorter than the camera-to-ejector travel time",
            ));
        }
        if let Some(t) = self.threshold {
            if !t.is_finite() {
                return Err(Invalid::new("line.threshold", "must be a finite number"));
            }
        }
        if self.heartbeat_ms == 0 {
            return Err(Invalid::new("line.heartbeat_ms", "must be > 0"));
        }
        if self.realtime_priority > 99 {
            return Err(Invalid::new(
                "line.realtime_priority",
                "must be within 0..=99",
            ));
        }
        if self.reject_spin_us > MAX_REJECT_SPIN_US {
            return Err(Invalid::new(
                "line.reject_spin_us",
                format!("must be within 0..={MAX_REJECT_SPIN_US} (a few ms cover a late wake-up)"),
            ));
        }
        if let Some(l) = self.reject_late_ms {
            if !(l > 0.0 && l <= 10_000.0) {
                return Err(Invalid::new(
                    "line.reject_late_ms",
                    "must be within (0, 10000] ms (how late a pulse may start and still hit the part)",
                ));
            }
        }
        if !(1..=4096).contains(&self.queue) {
            return Err(Invalid::new("line.queue", "must be within 1..=4096"));
        }
        Ok(())
    }

    /// Distance from trigger to ejector in mm (from encoder ticks when configured).
    pub fn travel_mm(&self) -> f64 {
        match (self.ejector_ticks, self.ticks_per_mm) {
            (Some(ticks), Some(per_mm)) => ticks as f64 / per_mm,
            _ => self.camera_to_ejector_mm,
        }
    }

    /// Trigger-to-ejector delay in nanoseconds.
    pub fn delay_ns(&self) -> u64 {
        (self.travel_mm() / self.belt_speed_mm_s * 1e9) as u64
    }

    /// How late a pulse may start and still hit its part, for a pulse of `pulse_ns`.
    pub fn late_limit_ns(&self, pulse_ns: u64) -> u64 {
        self.reject_late_ms
            .map_or(pulse_ns / 2, |l| (l * MS as f64) as u64)
            .max(1)
    }

    /// Verdict margin in nanoseconds.
    pub fn margin_ns(&self) -> u64 {
        (self.verdict_margin_ms * MS as f64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        LineSetup::default().validate().unwrap();
        LineSetup::from_toml("").unwrap();
    }

    #[test]
    fn delay_from_distance_and_ticks() {
        let mut l = LineConfig {
            belt_speed_mm_s: 500.0,
            camera_to_ejector_mm: 250.0,
            ..Default::default()
        };
        assert_eq!(l.delay_ns(), 500 * MS);
        l.ejector_ticks = Some(1000);
        l.ticks_per_mm = Some(8.0);
        assert_eq!(l.delay_ns(), 250 * MS);
    }
}
