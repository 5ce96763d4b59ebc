//! The line's configuration sections: `[camera]`, `[gpio]`, `[line]`, `[supervisor]`, `[mqtt]`,
//! `[archive]`. Each is deserialized strictly and validated before the line starts.

use crate::clock::MS;
use crate::config::Invalid;
use serde::Deserialize;
use std::path::PathBuf;

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
    /// The TCP event stream.
    #[serde(default)]
    pub supervisor: SupervisorConfig,
    /// MQTT publisher, off when absent.
    #[serde(default)]
    pub mqtt: Option<MqttConfig>,
    /// Reject archive, off when absent.
    #[serde(default)]
    pub archive: Option<ArchiveConfig>,
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
        self.supervisor.validate()?;
        if let Some(m) = &self.mqtt {
            m.validate()?;
        }
        if let Some(a) = &self.archive {
            a.validate()?;
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

/// Which source produces frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// Simulated conveyor cutting tiles from a texture photo.
    #[default]
    Sim,
    /// A folder of images or an MVTec-style dataset.
    Replay,
    /// A Video4Linux2 camera.
    V4l2,
}

/// `[camera]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    /// `"sim"`, `"replay"` or `"v4l2"`.
    pub source: SourceKind,
    /// Alarm and drop `ready` when no frame came for this long.
    pub stall_ms: u64,
    /// Simulated conveyor.
    pub sim: SimCameraConfig,
    /// Replayed images.
    pub replay: ReplayConfig,
    /// Real camera.
    pub v4l2: V4l2Config,
    /// Region of the frame that is inspected (`{ x, y, width, height }`); the whole frame when
    /// absent. Resized to the model size, or cut into tiles with `camera.tiling`.
    pub roi: Option<crate::stages::preprocess::Roi>,
    /// Cut the region of interest into model-sized tiles at native resolution.
    pub tiling: crate::stages::tiling::TilingConfig,
    /// Resize a region smaller than the model's input up to it (with a warning) instead of
    /// refusing it: upscaling invents the detail the model judges.
    pub allow_upscale: bool,
}

impl Default for CameraConfig {
    fn default() -> Self {
        Self {
            source: SourceKind::Sim,
            stall_ms: 2000,
            sim: SimCameraConfig::default(),
            replay: ReplayConfig::default(),
            v4l2: V4l2Config::default(),
            roi: None,
            tiling: crate::stages::tiling::TilingConfig::default(),
            allow_upscale: false,
        }
    }
}

impl CameraConfig {
    /// Check the keys of the selected source.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.stall_ms == 0 {
            return Err(Invalid::new("camera.stall_ms", "must be > 0"));
        }
        if let Some(r) = &self.roi {
            if r.width == 0 {
                return Err(Invalid::new("camera.roi.width", "must be > 0"));
            }
            if r.height == 0 {
                return Err(Invalid::new("camera.roi.height", "must be > 0"));
            }
            let v = &self.v4l2;
            if self.source == SourceKind::V4l2
                && (u64::from(r.x) + u64::from(r.width) > u64::from(v.width)
                    || u64::from(r.y) + u64::from(r.height) > u64::from(v.height))
            {
                return Err(Invalid::new(
                    "camera.roi",
                    format!(
                        "{}×{} at ({}, {}) does not fit in the {}×{} frames of camera.v4l2",
                        r.width, r.height, r.x, r.y, v.width, v.height
                    ),
                ));
            }
        }
        match self.source {
            SourceKind::Sim => self.sim.validate(),
            SourceKind::Replay => self.replay.validate(),
            SourceKind::V4l2 => self.v4l2.validate(),
        }
    }

    /// Check the region against the model's input size where it is known before the first
    /// frame: tiles must fit (`camera.tiling`), and a resized region must not be smaller than
    /// the model unless `camera.allow_upscale`.
    pub fn check_model(&self, spec: &crate::model::manifest::InputSpec) -> Result<(), Invalid> {
        if self.tiling.enabled {
            return crate::stages::tiling::check(self, spec);
        }
        if self.allow_upscale {
            return Ok(());
        }
        let (mw, mh) = (spec.width as u32, spec.height as u32);
        let small = |key: &str, what: &str, w: u32, h: u32| {
            Invalid::new(
                key,
                format!(
                    "{what} {w}×{h} is smaller than the model's {mw}×{mh} input and would be upscaled, \
                     which invents the detail the model judges; enlarge it, or set camera.allow_upscale = true"
                ),
            )
        };
        let (key, what, w, h) = match (&self.roi, self.source) {
            (Some(r), _) => (
                if r.width < mw {
                    "camera.roi.width"
                } else {
                    "camera.roi.height"
                },
                "the region",
                r.width,
                r.height,
            ),
            (None, SourceKind::V4l2) => (
                if self.v4l2.width < mw {
                    "camera.v4l2.width"
                } else {
                    "camera.v4l2.height"
                },
                "the frame",
                self.v4l2.width,
                self.v4l2.height,
            ),
            (None, SourceKind::Sim) => (
                "camera.sim.tile",
                "the simulated frame",
                self.sim.tile,
                self.sim.tile,
            ),
            // Replayed images are checked one by one as they come.
            (None, SourceKind::Replay) => return Ok(()),
        };
        if w < mw || h < mh {
            return Err(small(key, what, w, h));
        }
        Ok(())
    }
}

/// `[camera.sim]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimCameraConfig {
    /// Texture photograph (`DIR/photos/<texture>.png`); tiles come from x ≥ 384. `None`:
    /// a procedural texture.
    pub photo: Option<PathBuf>,
    /// Tile edge in pixels.
    pub tile: u32,
    /// Share of parts that get a painted defect, 0..=1.
    pub defect_rate: f64,
    /// Seed for tile positions and defects.
    pub seed: u64,
}

impl Default for SimCameraConfig {
    fn default() -> Self {
        Self {
            photo: None,
            tile: 128,
            defect_rate: 0.1,
            seed: 1,
        }
    }
}

impl SimCameraConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !(0.0..=1.0).contains(&self.defect_rate) {
            return Err(Invalid::new(
                "camera.sim.defect_rate",
                "must be within 0..=1",
            ));
        }
        if !(8..=4096).contains(&self.tile) {
            return Err(Invalid::new(
                "camera.sim.tile",
                "must be within 8..=4096 pixels",
            ));
        }
        Ok(())
    }
}

/// `[camera.replay]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    /// A folder of images, or an MVTec-style texture folder (`test/<kind>/*.png`).
    pub dir: PathBuf,
    /// Decode to `"grey"` or `"rgb"`.
    pub color: ColorMode,
    /// Start again from the first image at the end.
    pub loop_forever: bool,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            color: ColorMode::Grey,
            loop_forever: false,
        }
    }
}

impl ReplayConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.dir.as_os_str().is_empty() {
            return Err(Invalid::new(
                "camera.replay.dir",
                "required when camera.source = \"replay\"",
            ));
        }
        Ok(())
    }
}

/// Pixel layout replayed images are decoded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorMode {
    /// 8-bit grey.
    #[default]
    Grey,
    /// 8-bit RGB.
    Rgb,
}

/// `[camera.v4l2]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct V4l2Config {
    /// Device node.
    pub device: PathBuf,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// `"yuyv"`, `"mjpeg"` or `"grey"`.
    pub format: String,
    /// Frames per second asked of the driver.
    pub fps: u32,
    /// Mmap buffers.
    pub buffers: u32,
    /// A dequeue that waits longer than this recreates the stream.
    pub dequeue_timeout_ms: u64,
}

impl Default for V4l2Config {
    fn default() -> Self {
        Self {
            device: PathBuf::from("/dev/video0"),
            width: 640,
            height: 480,
            format: "yuyv".into(),
            fps: 30,
            buffers: 4,
            dequeue_timeout_ms: 1000,
        }
    }
}

impl V4l2Config {
    fn validate(&self) -> Result<(), Invalid> {
        if !["yuyv", "mjpeg", "grey"].contains(&self.format.as_str()) {
            return Err(Invalid::new(
                "camera.v4l2.format",
                "must be one of \"yuyv\", \"mjpeg\", \"grey\"",
            ));
        }
        if self.width == 0 || self.height == 0 {
            return Err(Invalid::new(
                "camera.v4l2.width",
                "width and height must be > 0",
            ));
        }
        if self.fps == 0 {
            return Err(Invalid::new("camera.v4l2.fps", "must be > 0"));
        }
        if !(2..=32).contains(&self.buffers) {
            return Err(Invalid::new("camera.v4l2.buffers", "must be within 2..=32"));
        }
        if self.dequeue_timeout_ms == 0 {
            return Err(Invalid::new(
                "camera.v4l2.dequeue_timeout_ms",
                "must be > 0",
            ));
        }
        Ok(())
    }
}

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

/// What a part does when its inspection is late, missing or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailSafe {
    /// Reject it (the safe default: a wasted good part, never a shipped bad one).
    #[default]
    Reject,
    /// Let it pass (warned at start).
    Pass,
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

    /// Verdict margin in nanoseconds.
    pub fn margin_ns(&self) -> u64 {
        (self.verdict_margin_ms * MS as f64) as u64
    }
}

/// `[supervisor]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorConfig {
    /// Listen address of the NDJSON stream; empty string disables it.
    pub listen: String,
    /// Events kept for `resume <run> <seq>`.
    pub buffer: usize,
    /// Events queued per client before it is dropped as stuck.
    pub client_queue: usize,
    /// Clients served at once; one more is refused with a line that says why.
    pub max_clients: usize,
    /// Must be true for `listen` to be an address other machines can reach: the deliberate
    /// choice to put the line's events on the plant network.
    pub expose: bool,
    /// TLS with client certificates: only supervisors whose certificate the CA signed may read.
    pub tls: Option<StreamTls>,
    /// Log records at or above this level go on the stream: error, warn, info, debug, trace, off.
    pub log_level: String,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7878".into(),
            buffer: 10_000,
            client_queue: 1024,
            max_clients: 16,
            expose: false,
            tls: None,
            log_level: "warn".into(),
        }
    }
}

/// `[supervisor.tls]`: the stream over TLS, readable only with a client certificate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamTls {
    /// The stream's certificate chain (PEM), naming the address supervisors connect to.
    pub cert_file: PathBuf,
    /// Its private key (PEM); refused when others may read it.
    pub key_file: PathBuf,
    /// The CA (PEM) that signs the supervisors' client certificates.
    pub client_ca_file: PathBuf,
}

impl SupervisorConfig {
    /// Check the address, sizes and level.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.listen.is_empty() {
            let Ok(addr) = self.listen.parse::<std::net::SocketAddr>() else {
                return Err(Invalid::new(
                    "supervisor.listen",
                    "must be IP:PORT, e.g. \"127.0.0.1:7878\", or \"\"",
                ));
            };
            if !addr.ip().is_loopback() && !self.expose {
                return Err(Invalid::new(
                    "supervisor.expose",
                    format!(
                        "supervisor.listen = \"{}\" can be reached from the network: set supervisor.expose = true \
                         to mean it (and give [supervisor.tls] to say who may read), or listen on 127.0.0.1",
                        self.listen
                    ),
                ));
            }
        }
        if self.buffer == 0 {
            return Err(Invalid::new("supervisor.buffer", "must be > 0"));
        }
        if self.client_queue == 0 {
            return Err(Invalid::new("supervisor.client_queue", "must be > 0"));
        }
        // Each client holds one thread and up to `client_queue` events: bound both.
        if !(1..=1024).contains(&self.max_clients) {
            return Err(Invalid::new(
                "supervisor.max_clients",
                "must be 1..=1024 (each client costs a thread)",
            ));
        }
        self.level()?;
        Ok(())
    }

    /// The parsed `log_level`.
    pub fn level(&self) -> Result<log::LevelFilter, Invalid> {
        self.log_level.parse().map_err(|_| {
            Invalid::new(
                "supervisor.log_level",
                "must be one of off, error, warn, info, debug, trace",
            )
        })
    }
}

/// `[mqtt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// `mqtt://host:port`, or `mqtts://host:port` for TLS (rustls; the broker's CA from `ca_file`,
    /// else the system's roots).
    pub url: String,
    /// Topic prefix: topics are `<prefix>/<line>/{parts,rejects,alarms,heartbeat}`.
    pub prefix: String,
    /// Client id; defaults to `diffad-<line>`.
    pub client_id: Option<String>,
    /// Messages held while the broker is away; what overflows is counted.
    pub outbox: usize,
    /// Wait between reconnect attempts.
    pub reconnect_ms: u64,
    /// User name.
    pub username: Option<String>,
    /// Password (prefer `password_file`).
    pub password: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// CA bundle (PEM) that signed the broker's certificate (mqtts://).
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub key_file: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            prefix: "plant".into(),
            client_id: None,
            outbox: 10_000,
            reconnect_ms: 1000,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

impl MqttConfig {
    /// Split `url` into (tls, host, port).
    pub fn endpoint(&self) -> Result<(bool, String, u16), Invalid> {
        let bad = || Invalid::new("mqtt.url", "must be mqtt://HOST:PORT or mqtts://HOST:PORT");
        let (tls, rest) = if let Some(r) = self.url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = self.url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok((
            tls,
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        ))
    }

    /// Check URL, sizes and the TLS/credential combination.
    pub fn validate(&self) -> Result<(), Invalid> {
        let (tls, _, _) = self.endpoint()?;
        if !tls && (self.ca_file.is_some() || self.cert_file.is_some()) {
            return Err(Invalid::new(
                "mqtt.ca_file",
                "TLS files given but the url is not mqtts://",
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Invalid::new(
                "mqtt.key_file",
                "cert_file and key_file go together",
            ));
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(Invalid::new(
                "mqtt.password_file",
                "give password or password_file, not both",
            ));
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            return Err(Invalid::new("mqtt.username", "required with a password"));
        }
        if self.prefix.is_empty() || self.prefix.contains(['+', '#']) {
            return Err(Invalid::new(
                "mqtt.prefix",
                "must be non-empty without '+' or '#'",
            ));
        }
        if self.outbox == 0 {
            return Err(Invalid::new("mqtt.outbox", "must be > 0"));
        }
        Ok(())
    }
}

/// `[archive]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Folder for rejected frames and their maps.
    pub dir: PathBuf,
    /// Size cap; oldest files go first.
    pub max_mb: f64,
    /// Rejects waiting to be written before new ones are skipped (and counted).
    pub queue: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("archive"),
            max_mb: 512.0,
            queue: 32,
        }
    }
}

impl ArchiveConfig {
    /// Check the folder and cap.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.dir.as_os_str().is_empty() {
            return Err(Invalid::new("archive.dir", "must not be empty"));
        }
        if !(self.max_mb > 0.0 && self.max_mb.is_finite()) {
            return Err(Invalid::new("archive.max_mb", "must be > 0"));
        }
        if self.queue == 0 {
            return Err(Invalid::new("archive.queue", "must be > 0"));
        }
        Ok(())
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
