//! A GStreamer pipeline as a camera: any `gst-launch-1.0` description that ends in an appsink
//! (`nvarguscamerasrc` on a Jetson, `v4l2src`, `rtspsrc`, `filesrc ! decodebin` for a recorded
//! video), with the pipeline rebuilt after an error, an end of stream or a stall.
//!
//! - **The appsink.** The description must contain an `appsink` named `camera.gstreamer.sink`
//!   (default `sink`); a description without one is refused rather than completed, because
//!   where the frames leave the pipeline (after which converter, at which size) is the board
//!   file's decision. The source sets the appsink's caps, `sync`, `max-buffers` and `drop`.
//! - **One conversion, in the pipeline.** The appsink's caps are `video/x-raw,format=GRAY8` or
//!   `RGB` (`camera.gstreamer.color`, which must match the model's channels), intersected with
//!   any caps the description gives it. The description converts (`videoconvert`, or
//!   `nvvidconv` out of NVMM memory on a Jetson); a pipeline that cannot produce the format
//!   is a configuration error naming the key, not something retried.
//! - **Rows, not strides.** A mapped frame's rows may be padded (GStreamer aligns strides to 4
//!   bytes: a 130-pixel GRAY8 row is 132 bytes); the rows are copied out unpadded into a
//!   pooled buffer, so nothing frame-sized is allocated per frame once warm.
//! - **Time.** A frame is stamped with its capture time on `CLOCK_MONOTONIC`, the line's clock:
//!   the buffer's running time plus the pipeline's base time, when the pipeline runs on
//!   GStreamer's monotonic system clock (its default) and the result lies within the last
//!   second; otherwise (another clock, a file played without `sync`, a virtual line clock) at
//!   arrival. Live sources stamp buffers when they are captured, so the part's deadline counts
//!   from when it passed the camera, not from when the pipeline delivered it.
//! - **Failures.** An element's error on the bus, an end of stream (`eos = "reconnect"`) and no
//!   frame within `timeout_ms` are [`SourceError::Disconnected`] with the element's words: the
//!   pipeline goes to NULL at once and is rebuilt on the next call after a backoff (250 ms,
//!   doubling to 2 s, reset by a frame), so a dead camera is retried, not spun on. What no
//!   rebuild cures (a format the pipeline cannot give, a missing decoder) is
//!   [`SourceError::Config`] and stops the line. `eos = "end"` ends the source as a replay
//!   ends (a recorded video); `"loop"` plays it again without an alarm.

use super::{Source, SourceError};
use crate::clock::{Clock, MS};
use crate::frame::{Frame, PixelFormat};
use crate::sources::camera::config::{ColorMode, EosPolicy, GstreamerConfig};
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use gstreamer_video::prelude::VideoFrameExt;
use std::sync::{Arc, OnceLock};

/// The key every pipeline error names.
pub const KEY: &str = "camera.gstreamer.pipeline";

/// How long one pull waits before the capture loop gets control back (stop requests, stalls).
const PULL_SLICE_MS: u64 = 100;
/// The first wait before a rebuild after a failure, and the longest.
const BACKOFF_MIN_MS: u64 = 250;
const BACKOFF_MAX_MS: u64 = 2000;
/// A mapped timestamp older than this is not trusted as the capture time.
const MAX_TIMESTAMP_AGE_NS: u64 = 1000 * MS;

/// Initialise GStreamer once per process; the error (no GStreamer, broken registry) is kept.
pub fn init() -> Result<(), SourceError> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| gst::init().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| SourceError::Config(format!("GStreamer does not initialise: {e}")))
}

/// The appsink format and the frame layout for a colour mode.
pub fn format_for(color: ColorMode) -> (gst_video::VideoFormat, PixelFormat) {
    match color {
        ColorMode::Grey => (gst_video::VideoFormat::Gray8, PixelFormat::Grey8),
        ColorMode::Rgb => (gst_video::VideoFormat::Rgb, PixelFormat::Rgb8),
    }
}

/// Copy `height` rows of `row_bytes` each, laid out every `stride` bytes in `src`, into `dst`
/// without the padding. `dst` keeps its capacity, so a pooled buffer is not reallocated.
pub fn copy_rows(
    src: &[u8],
    stride: usize,
    row_bytes: usize,
    height: usize,
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    if stride < row_bytes {
        return Err(format!(
            "stride {stride} is shorter than a row of {row_bytes} bytes"
        ));
    }
    // The last row need not carry its padding.
    let need = match height {
        0 => 0,
        h => (h - 1) * stride + row_bytes,
    };
    if src.len() < need {
        return Err(format!(
            "short frame: {} bytes, {height} rows of {row_bytes} every {stride} need {need}",
            src.len()
        ));
    }
    dst.clear();
    if stride == row_bytes {
        dst.extend_from_slice(&src[..need]);
    } else {
        for row in src.chunks(stride).take(height) {
            dst.extend_from_slice(&row[..row_bytes]);
        }
    }
    Ok(())
}

/// Counts frames lost upstream from gaps in the buffers' offsets (frame numbers, where the
/// source sets them, as `v4l2src` and `videotestsrc` do; others leave them unset).
#[derive(Debug, Default, Clone)]
pub struct OffsetGaps {
    last: Option<u64>,
    /// Frames lost so far.
    pub dropped: u64,
}

impl OffsetGaps {
    /// Account for a buffer with `offset` (`None`: unset); returns how many were lost before it.
    pub fn observe(&mut self, offset: Option<u64>) -> u64 {
        let Some(offset) = offset else {
            return 0;
        };
        // Backwards or repeated: the stream restarted (a seek, a new segment), not a loss.
        let gap = match self.last {
            Some(last) if offset > last => offset - last - 1,
            _ => 0,
        };
        self.dropped += gap;
        self.last = Some(offset);
        gap
    }

    /// Forget the last offset (the pipeline was rebuilt and counts afresh).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// The element names a description uses that this GStreamer installation lacks, and the
/// parsed pipeline when there are none. Nothing is started.
pub fn parse(description: &str) -> Result<gst::Element, ParseFailure> {
    init().map_err(|e| ParseFailure::Other(e.to_string()))?;
    let mut ctx = gst::ParseContext::new();
    match gst::parse::launch_full(description, Some(&mut ctx), gst::ParseFlags::FATAL_ERRORS) {
        Ok(e) => Ok(e),
        Err(e) => {
            let missing = ctx.missing_elements();
            if !missing.is_empty() {
                Err(ParseFailure::Missing(missing))
            } else {
                Err(ParseFailure::Other(e.to_string()))
            }
        }
    }
}

/// Why a description did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseFailure {
    /// Elements no installed plugin provides.
    Missing(Vec<String>),
    /// A syntax error, an unknown property, a link that cannot be made; GStreamer's words.
    Other(String),
}

impl ParseFailure {
    /// As the source reports it: the key, what is wrong, where the fix is.
    pub fn to_config(&self) -> SourceError {
        SourceError::Config(match self {
            ParseFailure::Missing(names) => format!(
                "{KEY}: no GStreamer element {} in this installation: install the plugin that \
                 provides it (`diffad doctor --config BOARD` names the package; \
                 `gst-inspect-1.0 NAME` checks) or fix the name",
                names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ParseFailure::Other(e) => format!(
                "{KEY}: GStreamer cannot build it: {e} (try it with `gst-launch-1.0 -v` and the \
                 same description, `appsink` replaced by `fakesink`)"
            ),
        })
    }
}

/// A parsed pipeline and its appsink, set up for the line, not yet started.
struct Built {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
}

/// Parse `cfg.pipeline`, find its appsink and give it the line's caps and queueing.
fn build(cfg: &GstreamerConfig) -> Result<Built, SourceError> {
    let element = parse(&cfg.pipeline).map_err(|f| f.to_config())?;
    let no_sink = || {
        SourceError::Config(format!(
            "{KEY}: no appsink named `{}`: end the pipeline with \
             `! videoconvert ! appsink name={}` (camera.gstreamer.sink names it)",
            cfg.sink, cfg.sink
        ))
    };
    // A description of one element parses to that element, not to a pipeline.
    let pipeline = element.downcast::<gst::Pipeline>().map_err(|_| no_sink())?;
    let named = pipeline.by_name(&cfg.sink).ok_or_else(no_sink)?;
    let factory = named
        .factory()
        .map(|f| f.name().to_string())
        .unwrap_or_default();
    let sink = named.downcast::<gst_app::AppSink>().map_err(|_| {
        SourceError::Config(format!(
            "{KEY}: the element named `{}` is a `{factory}`, not an appsink: end the pipeline \
             with `! appsink name={}`",
            cfg.sink, cfg.sink
        ))
    })?;
    let (format, _) = format_for(cfg.color);
    let ours = gst::Caps::builder("video/x-raw")
        .field("format", format.to_str())
        .build();
    let caps = match sink.caps() {
        Some(theirs) => {
            let both = theirs.intersect(&ours);
            if both.is_empty() {
                return Err(SourceError::Config(format!(
                    "{KEY}: the appsink's caps `{theirs}` exclude `{ours}`, the format \
                     camera.gstreamer.color asks for: remove them or make them agree"
                )));
            }
            both
        }
        None => ours,
    };
    sink.set_caps(Some(&caps));
    sink.set_sync(cfg.sync.unwrap_or(true));
    sink.set_max_buffers(cfg.buffers);
    // Blocking, not dropping: a live source drops at the camera (counted from its buffer
    // offsets) and a recorded video loses nothing.
    sink.set_drop(false);
    sink.set_property("emit-signals", false);
    Ok(Built { pipeline, sink })
}

/// Build `cfg.pipeline` as `run` would, without starting it: the factory names of its
/// elements (in the bins too), or the configuration error `run` would stop at.
pub fn elements(cfg: &GstreamerConfig) -> Result<Vec<String>, SourceError> {
    let built = build(cfg)?;
    let mut names: Vec<String> = built
        .pipeline
        .iterate_recurse()
        .into_iter()
        .flatten()
        .filter_map(|e| e.factory().map(|f| f.name().to_string()))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// A started pipeline.
struct Live {
    pipeline: gst::Pipeline,
    sink: gst_app::AppSink,
    bus: gst::Bus,
    /// Line-clock time of the start or of the last frame: stalls count from it.
    since_ns: u64,
    /// Frames since the start.
    frames: u64,
    /// The caps of the last sample and their layout (recomputed only when they change).
    info: Option<(gst::Caps, gst_video::VideoInfo)>,
    /// Whether the pipeline's clock is GStreamer's monotonic system clock (asked once).
    monotonic: Option<bool>,
}

impl Drop for Live {
    fn drop(&mut self) {
        // Stops the streaming threads and releases the device before a rebuild opens it again.
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// What the bus said. Its EOS message is not news: the appsink posts it when the end reaches
/// it, with frames still queued; the appsink's own EOS (`is_eos`) comes after the last one.
enum BusNews {
    Nothing,
    Failed(SourceError),
}

/// The GStreamer source.
pub struct GstSource {
    cfg: GstreamerConfig,
    clock: Arc<dyn Clock>,
    /// The pipeline parsed at `new` (so configuration errors refuse start-up), started on
    /// the first call.
    staged: Option<Built>,
    live: Option<Live>,
    format: PixelFormat,
    bytes_per_pixel: usize,
    gaps: OffsetGaps,
    n: u64,
    pool: Vec<Vec<u8>>,
    /// Wait before the next build (ms); 0 for the first one and after frames flowed.
    backoff_ms: u64,
    origin: String,
}

impl GstSource {
    /// Parse the pipeline and check its appsink now; start it on the first frame asked for.
    pub fn new(cfg: &GstreamerConfig, clock: Arc<dyn Clock>) -> Result<Self, SourceError> {
        let staged = build(cfg)?;
        let (_, format) = format_for(cfg.color);
        Ok(Self {
            cfg: cfg.clone(),
            clock,
            staged: Some(staged),
            live: None,
            format,
            bytes_per_pixel: if format == PixelFormat::Rgb8 { 3 } else { 1 },
            gaps: OffsetGaps::default(),
            n: 0,
            pool: Vec::new(),
            backoff_ms: 0,
            origin: format!("gstreamer:{}", cfg.sink),
        })
    }

    /// Start a pipeline (the staged one, or a fresh build); errors from the start itself.
    fn start(&mut self) -> Result<(), SourceError> {
        if self.backoff_ms > 0 {
            // Back off so a pipeline that fails at once is retried, not spun on.
            self.clock
                .sleep_until(self.clock.now_ns() + self.backoff_ms * MS);
        }
        let built = match self.staged.take() {
            Some(b) => b,
            None => build(&self.cfg)?,
        };
        let bus = built.pipeline.bus().expect("a pipeline has a bus");
        let live = Live {
            pipeline: built.pipeline,
            sink: built.sink,
            bus,
            since_ns: self.clock.now_ns(),
            frames: 0,
            info: None,
            monotonic: None,
        };
        // A live pipeline does not preroll. Its frames are due when they arrive: a synchronised
        // appsink would hold each back by the pipeline's latency (a frame period for
        // `videotestsrc`: 50 ms more from trigger to verdict at 20 fps).
        let paused = live.pipeline.set_state(gst::State::Paused);
        if paused == Ok(gst::StateChangeSuccess::NoPreroll) && self.cfg.sync.is_none() {
            live.sink.set_sync(false);
        }
        let started = paused.and_then(|_| live.pipeline.set_state(gst::State::Playing));
        // The reason for a refused start is on the bus (a missing file, a busy device).
        if let BusNews::Failed(e) = drain_bus(&live) {
            return Err(self.failed(e));
        }
        if started.is_err() {
            return Err(self.failed(SourceError::Disconnected(format!(
                "{KEY}: the pipeline does not start"
            ))));
        }
        self.gaps.reset();
        self.live = Some(live);
        log::info!("gstreamer: pipeline started: {}", self.cfg.pipeline.trim());
        Ok(())
    }

    /// Tear the pipeline down after a failure and lengthen the wait before the next build.
    fn failed(&mut self, e: SourceError) -> SourceError {
        self.live = None;
        self.backoff_ms = (self.backoff_ms * 2).clamp(BACKOFF_MIN_MS, BACKOFF_MAX_MS);
        e
    }

    /// The frame in `sample`, copied out of GStreamer's buffer into a pooled one.
    fn frame_of(&mut self, sample: &gst::Sample) -> Result<Frame, SourceError> {
        let now = self.clock.now_ns();
        let live = self.live.as_mut().expect("pulled from a live pipeline");
        let buffer = sample
            .buffer()
            .ok_or_else(|| SourceError::Io("sample without a buffer".into()))?;
        let caps = sample
            .caps()
            .ok_or_else(|| SourceError::Io("sample without caps".into()))?;
        let fresh = match &live.info {
            Some((c, _)) => c.as_ptr() != caps.as_ptr(),
            None => true,
        };
        if fresh {
            let info = gst_video::VideoInfo::from_caps(caps)
                .map_err(|e| SourceError::Io(format!("caps {caps}: {e}")))?;
            log::info!(
                "gstreamer: {}×{} {} at the appsink",
                info.width(),
                info.height(),
                info.format().to_str()
            );
            live.info = Some((caps.to_owned(), info));
        }
        let info = &live.info.as_ref().expect("set above").1;
        let (want, _) = format_for(self.cfg.color);
        if info.format() != want {
            return Err(SourceError::Io(format!(
                "the appsink gave {}, not {}",
                info.format().to_str(),
                want.to_str()
            )));
        }
        let (w, h) = (info.width(), info.height());
        let mapped = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, info)
            .map_err(|e| SourceError::Io(format!("mapping a frame: {e}")))?;
        let stride = usize::try_from(mapped.plane_stride()[0])
            .map_err(|_| SourceError::Io("negative stride".into()))?;
        let plane = mapped
            .plane_data(0)
            .map_err(|e| SourceError::Io(format!("frame plane: {e}")))?;
        let mut data = self.pool.pop().unwrap_or_default();
        if let Err(e) = copy_rows(
            plane,
            stride,
            w as usize * self.bytes_per_pixel,
            h as usize,
            &mut data,
        ) {
            self.pool.push(data);
            return Err(SourceError::Io(e));
        }
        drop(mapped);
        let offset = buffer.offset();
        self.gaps
            .observe((offset != gst::ffi::GST_BUFFER_OFFSET_NONE).then_some(offset));
        let captured = capture_ns(live, sample, buffer);
        let ts = match captured {
            Some(t) if t <= now && now - t < MAX_TIMESTAMP_AGE_NS => t,
            _ => now,
        };
        live.since_ns = now;
        live.frames += 1;
        self.backoff_ms = 0;
        self.n += 1;
        Ok(Frame {
            seq: self.n,
            timestamp_ns: ts,
            width: w,
            height: h,
            format: self.format,
            data,
            truth: None,
            origin: self.origin.clone(),
        })
    }

    /// An end of stream, as `camera.gstreamer.eos` says: `Ok(true)` to pull again at once,
    /// `Ok(false)` when the source has ended.
    fn end_of_stream(&mut self) -> Result<bool, SourceError> {
        let frames = self.live.as_ref().map_or(0, |l| l.frames);
        match self.cfg.eos {
            EosPolicy::End => {
                self.live = None;
                log::info!("gstreamer: end of stream after {} frames", self.n);
                Ok(false)
            }
            // A video that ends before its first frame would loop without end.
            EosPolicy::Loop if frames > 0 => {
                self.live = None;
                self.backoff_ms = 0;
                log::info!("gstreamer: end of stream, playing again from the start");
                self.start()?;
                Ok(true)
            }
            _ => Err(self.failed(SourceError::Disconnected(format!(
                "end of stream from the pipeline after {frames} frames (camera.gstreamer.eos = \
                 \"reconnect\": rebuilding it)"
            )))),
        }
    }
}

/// The capture time of `buffer` on `CLOCK_MONOTONIC`, when the pipeline's clock is it.
fn capture_ns(live: &mut Live, sample: &gst::Sample, buffer: &gst::BufferRef) -> Option<u64> {
    let monotonic = *live.monotonic.get_or_insert_with(|| {
        live.pipeline.clock().is_some_and(|c| {
            c.downcast_ref::<gst::SystemClock>().is_some()
                && c.property::<gst::ClockType>("clock-type") == gst::ClockType::Monotonic
        })
    });
    if !monotonic {
        return None;
    }
    let segment = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
    let running = segment.to_running_time(buffer.pts()?)?;
    let base = live.pipeline.base_time()?;
    Some((base + running).nseconds())
}

/// Read every message the bus holds (so none pile up), keeping the first error.
fn drain_bus(live: &Live) -> BusNews {
    let mut news = BusNews::Nothing;
    while let Some(msg) = live.bus.pop() {
        use gst::MessageView;
        match msg.view() {
            MessageView::Error(err) => {
                if matches!(news, BusNews::Failed(_)) {
                    continue;
                }
                news = BusNews::Failed(classify(
                    &err.src()
                        .map(|s| s.name().to_string())
                        .unwrap_or_else(|| "the pipeline".into()),
                    &err.error(),
                    err.debug().as_deref(),
                ));
            }
            MessageView::Warning(w) => log::warn!(
                "gstreamer: {}: {}",
                w.src().map(|s| s.name().to_string()).unwrap_or_default(),
                w.error()
            ),
            // A live element's latency changed: the pipeline must redistribute it, or a
            // synchronising appsink would hold frames back by the old figure.
            MessageView::Latency(_) => {
                let _ = live.pipeline.recalculate_latency();
            }
            MessageView::ClockLost(_) => {
                // The documented recovery: a new clock is chosen on the way back to PLAYING.
                let _ = live.pipeline.set_state(gst::State::Paused);
                let _ = live.pipeline.set_state(gst::State::Playing);
            }
            _ => {}
        }
    }
    news
}

/// An element's error as the line should take it: one no rebuild can cure (a missing plugin,
/// caps that cannot be negotiated) stops the line naming the key; the rest are a camera gone.
fn classify(element: &str, err: &gst::glib::Error, debug: Option<&str>) -> SourceError {
    let debug = debug.unwrap_or("");
    let text = format!("{element}: {err}");
    if debug.contains("not-negotiated") {
        return SourceError::Config(format!(
            "{KEY}: {text}: the pipeline cannot deliver the format camera.gstreamer.color asks \
             for: put `videoconvert` (or `nvvidconv` on a Jetson) before the appsink"
        ));
    }
    if err.matches(gst::CoreError::MissingPlugin) || err.matches(gst::StreamError::CodecNotFound) {
        return SourceError::Config(format!(
            "{KEY}: {text}: install the plugin for this stream (`diffad doctor --config BOARD`)"
        ));
    }
    SourceError::Disconnected(if debug.is_empty() {
        text
    } else {
        format!("{text} ({debug})")
    })
}

impl Source for GstSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.live.is_none() {
            self.start()?;
        }
        loop {
            let news = drain_bus(self.live.as_ref().expect("started above"));
            match news {
                BusNews::Failed(e) => return Err(self.failed(e)),
                BusNews::Nothing => {}
            }
            let live = self.live.as_ref().expect("started above");
            let limit_ms = if live.frames == 0 {
                self.cfg.start_timeout_ms
            } else {
                self.cfg.timeout_ms
            };
            let slice = PULL_SLICE_MS.min(limit_ms);
            if let Some(sample) = live
                .sink
                .try_pull_sample(gst::ClockTime::from_mseconds(slice))
            {
                return self.frame_of(&sample).map(Some);
            }
            let live = self.live.as_ref().expect("started above");
            // An element that fails posts its error, then its streaming thread sends the end
            // of stream down: the error, read first, is the news.
            if let BusNews::Failed(e) = drain_bus(live) {
                return Err(self.failed(e));
            }
            if live.sink.is_eos() {
                if self.end_of_stream()? {
                    continue;
                }
                return Ok(None);
            }
            let waited_ms = self.clock.now_ns().saturating_sub(live.since_ns) / MS;
            if waited_ms >= limit_ms {
                let what = if live.frames == 0 {
                    "camera.gstreamer.start_timeout_ms after the start"
                } else {
                    "camera.gstreamer.timeout_ms"
                };
                return Err(self.failed(SourceError::Disconnected(format!(
                    "the pipeline stalled: no frame within {limit_ms} ms ({what}); rebuilding it"
                ))));
            }
            return Err(SourceError::Timeout(slice));
        }
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < 8 {
            self.pool.push(buf);
        }
    }

    fn dropped(&self) -> u64 {
        self.gaps.dropped
    }

    fn describe(&self) -> String {
        format!(
            "gstreamer `{}` ({} at appsink `{}`)",
            self.cfg.pipeline.trim(),
            format_for(self.cfg.color).0.to_str(),
            self.cfg.sink
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_rows_are_copied_without_their_padding() {
        // 3 rows of 5 bytes every 8 (GStreamer pads GRAY8 rows to 4-byte multiples); the
        // last row carries no padding.
        let mut src = Vec::new();
        for r in 0..3u8 {
            src.extend((0..5).map(|c| r * 10 + c));
            if r < 2 {
                src.extend([0xEE; 3]);
            }
        }
        let mut dst = Vec::with_capacity(64);
        let cap = dst.capacity();
        copy_rows(&src, 8, 5, 3, &mut dst).unwrap();
        assert_eq!(dst, [0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 20, 21, 22, 23, 24]);
        assert_eq!(
            dst.capacity(),
            cap,
            "a pooled buffer is reused, not regrown"
        );
        // Unpadded: one copy, same result shape.
        copy_rows(&dst.clone(), 5, 5, 3, &mut dst).unwrap();
        assert_eq!(dst.len(), 15);
    }

    #[test]
    fn short_or_inconsistent_frames_are_refused() {
        let mut dst = Vec::new();
        let e = copy_rows(&[0; 20], 8, 5, 3, &mut dst).unwrap_err();
        assert!(e.contains("short frame"), "{e}");
        assert!(copy_rows(&[0; 21], 8, 5, 3, &mut dst).is_ok());
        assert!(copy_rows(&[0; 64], 4, 5, 3, &mut dst).is_err());
    }

    #[test]
    fn offset_gaps_count_lost_frames_and_restarts_are_not_losses() {
        let mut g = OffsetGaps::default();
        assert_eq!(g.observe(Some(0)), 0);
        assert_eq!(g.observe(Some(1)), 0);
        assert_eq!(g.observe(Some(4)), 2);
        assert_eq!(g.observe(None), 0, "unset offsets tell nothing");
        assert_eq!(g.observe(Some(5)), 0);
        assert_eq!(g.observe(Some(0)), 0, "backwards: a restart");
        g.reset();
        assert_eq!(
            g.observe(Some(9)),
            0,
            "after a rebuild the count starts afresh"
        );
        assert_eq!(g.dropped, 2);
    }

    #[test]
    fn the_appsink_gets_the_models_format_and_a_padded_frame_comes_out_whole() {
        // 130 × 4 GRAY8: GStreamer pads each row to 132 bytes. The gradient pattern is
        // vertical: each row one value, so a row copied at the wrong stride mixes two values.
        let cfg = GstreamerConfig {
            pipeline: "videotestsrc num-buffers=3 pattern=gradient ! \
                       video/x-raw,width=130,height=4 ! videoconvert ! appsink name=sink"
                .into(),
            ..Default::default()
        };
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock::new());
        let mut src = GstSource::new(&cfg, clock).unwrap();
        let f = loop {
            match src.next_frame() {
                Ok(Some(f)) => break f,
                Err(SourceError::Timeout(_)) => continue,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!((f.width, f.height, f.format), (130, 4, PixelFormat::Grey8));
        assert_eq!(f.data.len(), 520, "rows without their padding");
        let rows: Vec<&[u8]> = f.data.chunks(130).collect();
        for r in &rows {
            assert!(r.iter().all(|&v| v == r[0]), "{r:?}");
        }
        assert!(rows[3][0] > rows[0][0], "{:?}", f.data);
        let now = crate::clock::monotonic_ns();
        assert!(f.timestamp_ns <= now && now - f.timestamp_ns < 1000 * MS);
    }

    #[test]
    fn config_errors_name_the_key_and_the_fix() {
        let err = |p: &str| match build(&GstreamerConfig {
            pipeline: p.into(),
            ..Default::default()
        }) {
            Err(SourceError::Config(e)) => e,
            Err(e) => panic!("{p}: not a config error: {e}"),
            Ok(_) => panic!("{p}: accepted"),
        };
        let e = err("nosuchelementsrc ! videoconvert ! appsink name=sink");
        assert!(
            e.starts_with(KEY) && e.contains("`nosuchelementsrc`"),
            "{e}"
        );
        let e = err("videotestsrc ! videoconvert ! fakesink");
        assert!(e.contains("no appsink named `sink`"), "{e}");
        let e = err("videotestsrc ! videoconvert ! fakesink name=sink");
        assert!(e.contains("`fakesink`, not an appsink"), "{e}");
        let e = err("videotestsrc ! ! appsink name=sink");
        assert!(e.starts_with(KEY), "{e}");
        let e = err("videotestsrc ! appsink name=sink caps=video/x-raw,format=RGB");
        assert!(e.contains("exclude"), "{e}");
    }
}
