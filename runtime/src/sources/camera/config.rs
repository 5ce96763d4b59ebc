//! `[camera]`: which source, its geometry and colour, and each source's own keys.

use crate::config::Invalid;
use serde::Deserialize;
use std::path::PathBuf;

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
    /// A GenICam camera (GigE Vision, USB3 Vision) through Aravis.
    Genicam,
    /// A GStreamer pipeline ending in an appsink (CSI through Argus, RTSP, a recorded video).
    Gstreamer,
}

/// `[camera]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CameraConfig {
    /// `"sim"`, `"replay"`, `"v4l2"`, `"genicam"` or `"gstreamer"`.
    pub source: SourceKind,
    /// Alarm and drop `ready` when no frame came for this long.
    pub stall_ms: u64,
    /// Simulated conveyor.
    pub sim: SimCameraConfig,
    /// Replayed images.
    pub replay: ReplayConfig,
    /// Real camera.
    pub v4l2: V4l2Config,
    /// GenICam camera.
    pub genicam: GenicamConfig,
    /// A GStreamer pipeline.
    pub gstreamer: GstreamerConfig,
    /// Region of the frame that is inspected (`{ x, y, width, height }`); the whole frame when
    /// absent. Resized to the model size, or cut into tiles with `camera.tiling`.
    pub roi: Option<crate::frame::Roi>,
    /// Cut the region of interest into model-sized tiles at native resolution.
    pub tiling: TilingConfig,
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
            genicam: GenicamConfig::default(),
            gstreamer: GstreamerConfig::default(),
            roi: None,
            tiling: TilingConfig::default(),
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
            let (w, h, section) = match self.source {
                SourceKind::V4l2 => (self.v4l2.width, self.v4l2.height, "camera.v4l2"),
                SourceKind::Genicam => (self.genicam.width, self.genicam.height, "camera.genicam"),
                _ => (u32::MAX, u32::MAX, ""),
            };
            if u64::from(r.x) + u64::from(r.width) > u64::from(w)
                || u64::from(r.y) + u64::from(r.height) > u64::from(h)
            {
                return Err(Invalid::new(
                    "camera.roi",
                    format!(
                        "{}×{} at ({}, {}) does not fit in the {w}×{h} frames of {section}",
                        r.width, r.height, r.x, r.y
                    ),
                ));
            }
        }
        match self.source {
            SourceKind::Sim => self.sim.validate(),
            SourceKind::Replay => self.replay.validate(),
            SourceKind::V4l2 => self.v4l2.validate(),
            SourceKind::Genicam => self.genicam.validate(),
            SourceKind::Gstreamer => self.gstreamer.validate(),
        }
    }

    /// The colour the selected source delivers against the model's input channels, where the
    /// board file sets it: a grey frame given to a colour model would be judged as a grey part
    /// (a silent wrong answer), and a colour frame to a grey model is converted twice.
    pub fn check_channels(&self, channels: usize) -> Result<(), Invalid> {
        let (key, color) = match self.source {
            SourceKind::Gstreamer => ("camera.gstreamer.color", self.gstreamer.color),
            // Sim tiles are grey and preprocessing converts; replay and V4L2 convert per frame.
            _ => return Ok(()),
        };
        let want = if channels == 3 {
            ColorMode::Rgb
        } else {
            ColorMode::Grey
        };
        if color == want {
            return Ok(());
        }
        let name = |c: ColorMode| match c {
            ColorMode::Grey => "grey",
            ColorMode::Rgb => "rgb",
        };
        Err(Invalid::new(
            key,
            format!(
                "is \"{}\" but the model takes {channels} channel(s): set it to \"{}\" so the \
                 pipeline converts each frame once to what the model judges",
                name(color),
                name(want)
            ),
        ))
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
    /// `"name"` (default) plays in name order; `"shuffle"` in an order drawn from `seed`, the
    /// same every run, so that a rehearsal on a folder sorted by kind mixes good and defective
    /// parts as a line does (a new order each pass when looping).
    pub order: ReplayOrder,
    /// Seed of the shuffled order.
    pub seed: u64,
}

/// The order a replay plays its images in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplayOrder {
    /// Name order (kinds one after the other in an MVTec folder).
    #[default]
    Name,
    /// A seeded shuffle.
    Shuffle,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            color: ColorMode::Grey,
            loop_forever: false,
            order: ReplayOrder::Name,
            seed: 1,
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

/// How a GenICam camera is triggered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenicamTrigger {
    /// `TriggerMode = Off`: the camera runs at `frame_rate`; with `line.trigger = "frame"`
    /// every frame is a part.
    #[default]
    Free,
    /// `TriggerSource = Software`: the line fires `TriggerSoftware` for each photo-eye edge
    /// (`line.trigger = "gpio"`).
    Software,
    /// `TriggerSource = <hardware_line>`: the photo-eye is wired to the camera, which makes the
    /// part (`line.trigger = "frame"`).
    Hardware,
}

/// `[camera.genicam]`: a GigE Vision or USB3 Vision camera, set up through its GenICam
/// features (SFNC names).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenicamConfig {
    /// The camera's Aravis id (`<vendor>-<serial>`, e.g. `Aravis-Fake-GV01`), its serial number,
    /// or its address; empty: the only camera found.
    pub camera: String,
    /// `PixelFormat`: `Mono8`, `Mono10`, `Mono12`, `Mono16`, `BayerRG8`, `BayerGR8`,
    /// `BayerGB8`, `BayerBG8`, `RGB8` or `BGR8`.
    pub pixel_format: String,
    /// `Width` (after binning).
    pub width: u32,
    /// `Height` (after binning).
    pub height: u32,
    /// `OffsetX`.
    pub offset_x: u32,
    /// `OffsetY`.
    pub offset_y: u32,
    /// `BinningHorizontal` and `BinningVertical` (1: none).
    pub binning: u32,
    /// `ExposureTime` in µs (`None`: leave the camera's).
    pub exposure_us: Option<f64>,
    /// `Gain` in dB (`None`: leave the camera's).
    pub gain_db: Option<f64>,
    /// `AcquisitionFrameRate` when free-running.
    pub frame_rate: f64,
    /// `"free"`, `"software"` or `"hardware"`.
    pub trigger: GenicamTrigger,
    /// `TriggerSource` for `trigger = "hardware"` (e.g. `Line1`).
    pub hardware_line: String,
    /// Frames decoded to `"grey"` or `"rgb"` (Bayer and RGB formats).
    pub color: ColorMode,
    /// Stream buffers allocated once and recycled.
    pub buffers: u32,
    /// A frame that takes longer than this is a stall: the camera is checked, and reconnected
    /// when it does not answer.
    pub timeout_ms: u64,
    /// GigE Vision: receive socket buffer asked of the kernel, bytes (capped by
    /// `net.core.rmem_max`; `diffad doctor` says how to raise it).
    pub socket_buffer_bytes: u32,
    /// GigE Vision: `GevSCPSPacketSize` in bytes (0: negotiated by Aravis).
    pub packet_size: u32,
    /// Any other GenICam feature, by name: `{ BalanceWhiteAuto = "Off", ReverseX = true }`.
    pub features: std::collections::BTreeMap<String, toml::Value>,
}

impl Default for GenicamConfig {
    fn default() -> Self {
        Self {
            camera: String::new(),
            pixel_format: "Mono8".into(),
            width: 640,
            height: 480,
            offset_x: 0,
            offset_y: 0,
            binning: 1,
            exposure_us: None,
            gain_db: None,
            frame_rate: 30.0,
            trigger: GenicamTrigger::Free,
            hardware_line: "Line1".into(),
            color: ColorMode::Grey,
            buffers: 8,
            timeout_ms: 1000,
            socket_buffer_bytes: 8 << 20,
            packet_size: 0,
            features: Default::default(),
        }
    }
}

/// What a GStreamer pipeline's end of stream means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EosPolicy {
    /// A camera failure: alarm, rebuild the pipeline with backoff (live cameras, RTSP).
    #[default]
    Reconnect,
    /// Play the pipeline again from the start, without an alarm (a recorded video on a loop).
    Loop,
    /// The source ends and the line stops once its parts are decided, as a replay does.
    End,
}

/// `[camera.gstreamer]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GstreamerConfig {
    /// A `gst-launch-1.0` pipeline description ending in `appsink name=<sink>`.
    pub pipeline: String,
    /// The name of the appsink frames are pulled from.
    pub sink: String,
    /// `"grey"` or `"rgb"`: the appsink's caps (`GRAY8` or `RGB`), the model's channels.
    pub color: ColorMode,
    /// Whether the appsink holds each frame until its presentation time. Unset: a live
    /// pipeline (a camera) hands frames over as they arrive, a recorded video plays at its
    /// frame rate; `false` decodes a video as fast as the line takes it.
    pub sync: Option<bool>,
    /// Frames the appsink queues before it blocks the pipeline (`max-buffers`).
    pub buffers: u32,
    /// No frame for this long once frames flowed: the pipeline is stalled and is rebuilt.
    pub timeout_ms: u64,
    /// The first frame after (re)building may take this long (Argus starts in seconds).
    pub start_timeout_ms: u64,
    /// `"reconnect"` (default), `"loop"` or `"end"`: what an end of stream means.
    pub eos: EosPolicy,
}

impl Default for GstreamerConfig {
    fn default() -> Self {
        Self {
            pipeline: String::new(),
            sink: "sink".into(),
            color: ColorMode::Grey,
            sync: None,
            buffers: 4,
            timeout_ms: 2000,
            start_timeout_ms: 10_000,
            eos: EosPolicy::Reconnect,
        }
    }
}

/// GenICam pixel formats the GenICam source converts.
pub const GENICAM_PIXEL_FORMATS: [&str; 10] = [
    "Mono8", "Mono10", "Mono12", "Mono16", "BayerRG8", "BayerGR8", "BayerGB8", "BayerBG8", "RGB8",
    "BGR8",
];

impl GenicamConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !GENICAM_PIXEL_FORMATS.contains(&self.pixel_format.as_str()) {
            return Err(Invalid::new(
                "camera.genicam.pixel_format",
                format!(
                    "{:?} is not one the line converts; use one of {}",
                    self.pixel_format,
                    GENICAM_PIXEL_FORMATS.join(", ")
                ),
            ));
        }
        if self.width == 0 || self.height == 0 {
            return Err(Invalid::new(
                "camera.genicam.width",
                "width and height must be > 0",
            ));
        }
        if !(1..=8).contains(&self.binning) {
            return Err(Invalid::new(
                "camera.genicam.binning",
                "must be within 1..=8",
            ));
        }
        if !(self.frame_rate > 0.0 && self.frame_rate <= 10_000.0) {
            return Err(Invalid::new(
                "camera.genicam.frame_rate",
                "must be within (0, 10000] frames per second",
            ));
        }
        if let Some(e) = self.exposure_us {
            if !(e > 0.0 && e.is_finite()) {
                return Err(Invalid::new("camera.genicam.exposure_us", "must be > 0"));
            }
        }
        if self.gain_db.is_some_and(|g| !g.is_finite()) {
            return Err(Invalid::new("camera.genicam.gain_db", "must be a number"));
        }
        if !(2..=64).contains(&self.buffers) {
            return Err(Invalid::new(
                "camera.genicam.buffers",
                "must be within 2..=64",
            ));
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            return Err(Invalid::new(
                "camera.genicam.timeout_ms",
                "must be within 10..=60000",
            ));
        }
        if self.trigger == GenicamTrigger::Hardware && self.hardware_line.is_empty() {
            return Err(Invalid::new(
                "camera.genicam.hardware_line",
                "required when trigger = \"hardware\" (the camera input the photo-eye is wired to, e.g. \"Line1\")",
            ));
        }
        for (name, v) in &self.features {
            if !matches!(
                v,
                toml::Value::String(_)
                    | toml::Value::Integer(_)
                    | toml::Value::Float(_)
                    | toml::Value::Boolean(_)
            ) {
                return Err(Invalid::new(
                    format!("camera.genicam.features.{name}"),
                    "must be a string, an integer, a number or a boolean",
                ));
            }
        }
        Ok(())
    }
}

impl GstreamerConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if self.pipeline.trim().is_empty() {
            return Err(Invalid::new(
                "camera.gstreamer.pipeline",
                "required when camera.source = \"gstreamer\": a pipeline ending in \
                 `! videoconvert ! appsink name=sink`, e.g. \
                 \"videotestsrc ! videoconvert ! appsink name=sink\"",
            ));
        }
        if self.sink.trim().is_empty() {
            return Err(Invalid::new(
                "camera.gstreamer.sink",
                "must name the pipeline's appsink (default \"sink\")",
            ));
        }
        if !(1..=32).contains(&self.buffers) {
            return Err(Invalid::new(
                "camera.gstreamer.buffers",
                "must be within 1..=32",
            ));
        }
        if self.timeout_ms == 0 {
            return Err(Invalid::new("camera.gstreamer.timeout_ms", "must be > 0"));
        }
        if self.start_timeout_ms == 0 {
            return Err(Invalid::new(
                "camera.gstreamer.start_timeout_ms",
                "must be > 0",
            ));
        }
        Ok(())
    }
}

/// `[camera.tiling]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TilingConfig {
    /// Cut the ROI into model-sized tiles at native resolution (default: resize it instead).
    pub enabled: bool,
    /// Least overlap in pixels between neighbouring tiles (the last row/column overlap more).
    pub overlap: u32,
}
