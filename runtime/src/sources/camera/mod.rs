//! Frame sources: a simulated conveyor, replayed images, a V4L2 camera, a GenICam camera, or a
//! GStreamer pipeline.

pub mod config;
#[cfg(feature = "genicam")]
pub mod fake_gv;
#[cfg(feature = "genicam")]
pub mod genicam;
#[cfg(feature = "gstreamer")]
pub mod gstreamer;
pub mod pixels;
pub mod replay;
pub mod sim;
#[cfg(feature = "v4l2")]
pub mod v4l2;

use crate::clock::Clock;
use crate::frame::Frame;
use crate::sources::camera::config::CameraConfig;
use crate::sources::camera::config::SourceKind;
use std::sync::Arc;

/// Why a source gave no frame this time.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// No frame within the source's timeout; the capture loop carries on.
    #[error("no frame within {0} ms")]
    Timeout(u64),
    /// The device went away; the source keeps trying to reconnect.
    #[error("camera disconnected: {0}")]
    Disconnected(String),
    /// The source cannot be opened or read as configured.
    #[error("camera: {0}")]
    Config(String),
    /// Reading or decoding failed for one frame.
    #[error("camera io: {0}")]
    Io(String),
    /// A frame arrived but not whole (lost packets, a timeout mid-frame): its part is made or
    /// matched by `frame` (whose `data` is empty) and fails safe without being inspected.
    #[error("incomplete frame {}: {why}", frame.seq)]
    Incomplete {
        /// The frame's sequence number, time and origin; no pixels.
        frame: Box<Frame>,
        /// What the camera's stream reported.
        why: String,
    },
}

/// Stream counters a camera keeps beyond frames dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Packets that never arrived (GigE Vision).
    pub packets_missing: u64,
    /// Packets the camera sent again on request (GigE Vision).
    pub packets_resent: u64,
    /// Frames the camera sent while no buffer was free to take them.
    pub underruns: u64,
}

impl std::ops::AddAssign for StreamStats {
    fn add_assign(&mut self, o: Self) {
        self.packets_missing += o.packets_missing;
        self.packets_resent += o.packets_resent;
        self.underruns += o.underruns;
    }
}

/// Fires a camera's software trigger; handed to the photo-eye thread.
pub trait SoftTrigger: Send {
    /// Expose one frame now.
    fn fire(&mut self) -> Result<(), String>;
}

/// Something that yields frames, one part each.
pub trait Source: Send {
    /// The next frame; `Ok(None)` when the source has ended (replay done, sim part limit).
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError>;
    /// Give a frame's buffer back for reuse.
    fn recycle(&mut self, _buf: Vec<u8>) {}
    /// Frames lost before they reached us (sequence gaps).
    fn dropped(&self) -> u64 {
        0
    }
    /// Stream counters (zero for sources without a network stream).
    fn stream_stats(&self) -> StreamStats {
        StreamStats::default()
    }
    /// What the source measures of itself (conversion, buffers, camera time), if it does.
    fn figures(&self) -> Option<crate::events::CameraFigures> {
        None
    }
    /// A handle that exposes a frame per photo-eye edge, for cameras triggered in software.
    fn soft_trigger(&self) -> Option<Box<dyn SoftTrigger>> {
        None
    }
    /// Short description for logs.
    fn describe(&self) -> String;
}

/// Open the source `cfg` selects; sim and replay are paced at `part_rate_hz` (`line.part_rate_hz`)
/// on `clock`.
pub fn open(
    cfg: &CameraConfig,
    part_rate_hz: f64,
    clock: Arc<dyn Clock>,
) -> Result<Box<dyn Source>, SourceError> {
    match cfg.source {
        SourceKind::Sim => Ok(Box::new(sim::SimConveyor::new(
            &cfg.sim,
            part_rate_hz,
            clock,
        )?)),
        SourceKind::Replay => Ok(Box::new(replay::Replay::new(
            &cfg.replay,
            part_rate_hz,
            clock,
        )?)),
        #[cfg(feature = "v4l2")]
        SourceKind::V4l2 => Ok(Box::new(v4l2::V4l2Source::new(&cfg.v4l2, clock))),
        #[cfg(not(feature = "v4l2"))]
        SourceKind::V4l2 => Err(SourceError::Config(
            "built without the `v4l2` feature".into(),
        )),
        #[cfg(feature = "genicam")]
        SourceKind::Genicam => Ok(Box::new(genicam::GenicamSource::new(&cfg.genicam, clock)?)),
        #[cfg(not(feature = "genicam"))]
        SourceKind::Genicam => Err(SourceError::Config(
            "camera.source = \"genicam\": this diffad was built without the `genicam` feature (rebuild with it, after `scripts/setup` installed libaravis-dev)".into(),
        )),
        #[cfg(feature = "gstreamer")]
        SourceKind::Gstreamer => Ok(Box::new(gstreamer::GstSource::new(&cfg.gstreamer, clock)?)),
        #[cfg(not(feature = "gstreamer"))]
        SourceKind::Gstreamer => Err(SourceError::Config(
            "camera.source = \"gstreamer\": this diffad was built without the `gstreamer` \
             feature; rebuild with it (default; needs libgstreamer1.0-dev and \
             libgstreamer-plugins-base1.0-dev, `scripts/setup`)"
                .into(),
        )),
    }
}

/// Presents parts at a fixed rate on the clock: part `i` at `start + i / rate`.
pub(crate) struct Pacer {
    clock: Arc<dyn Clock>,
    period_ns: u64,
    start_ns: Option<u64>,
    n: u64,
}

impl Pacer {
    pub(crate) fn new(clock: Arc<dyn Clock>, rate_hz: f64) -> Self {
        Self {
            clock,
            period_ns: (1e9 / rate_hz) as u64,
            start_ns: None,
            n: 0,
        }
    }

    /// Sleep until the next part's slot and return its time.
    pub(crate) fn wait_next(&mut self) -> u64 {
        let start = *self.start_ns.get_or_insert_with(|| self.clock.now_ns());
        let t = start + self.n * self.period_ns;
        self.n += 1;
        self.clock.sleep_until(t);
        t
    }
}

/// Decode an image file as 8-bit grey (601 luma for colour images) or RGB.
pub(crate) fn decode(
    path: &std::path::Path,
    rgb: bool,
) -> Result<(u32, u32, Vec<u8>), SourceError> {
    use crate::frame::PixelFormat;
    let f = crate::sources::imagefile::load(path).map_err(|e| SourceError::Io(e.to_string()))?;
    let data = match (f.format, rgb) {
        (PixelFormat::Rgb8, false) => f
            .data
            .chunks_exact(3)
            .map(|p| crate::frame::luma([p[0], p[1], p[2]]))
            .collect(),
        (PixelFormat::Grey8, true) => f.data.iter().flat_map(|&g| [g, g, g]).collect(),
        // imagefile yields only Grey8 and Rgb8 frames.
        _ => f.data,
    };
    Ok((f.width, f.height, data))
}
