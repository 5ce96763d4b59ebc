//! A Video4Linux2 camera over mmap streaming (YUYV, MJPEG, GREY), with reconnects.

use super::{Source, SourceError};
use crate::clock::{Clock, MS};
use crate::frame::{Frame, PixelFormat};
use crate::sources::camera::config::V4l2Config;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use v4l::buffer::Type;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::Capture;
use v4l::{Device, FourCC};

/// The FourCC and frame layout for a configured format name.
pub fn format_for(name: &str) -> Option<([u8; 4], PixelFormat)> {
    match name {
        "yuyv" => Some((*b"YUYV", PixelFormat::Yuyv)),
        "mjpeg" => Some((*b"MJPG", PixelFormat::Mjpeg)),
        "grey" => Some((*b"GREY", PixelFormat::Grey8)),
        _ => None,
    }
}

/// Open the device without streaming and check it offers the configured format; returns the
/// driver's card name.
pub fn probe(cfg: &V4l2Config) -> Result<String, String> {
    let path = cfg.device.display().to_string();
    let dev = Device::with_path(&cfg.device).map_err(|e| format!("{path}: {e}"))?;
    let card = dev
        .query_caps()
        .map(|c| c.card)
        .map_err(|e| format!("{path}: {e}"))?;
    let (fourcc, _) =
        format_for(&cfg.format).ok_or_else(|| format!("unknown format {:?}", cfg.format))?;
    let offered = dev.enum_formats().map_err(|e| format!("{path}: {e}"))?;
    if offered.iter().any(|f| f.fourcc == FourCC::new(&fourcc)) {
        Ok(card)
    } else {
        let names: Vec<String> = offered.iter().map(|f| f.fourcc.to_string()).collect();
        Err(format!(
            "{path} ({card}) does not offer {} (offers {})",
            cfg.format,
            names.join(", ")
        ))
    }
}

/// Bytes a frame of `format` must carry (`None`: variable, i.e. MJPEG).
pub fn frame_bytes(format: PixelFormat, w: u32, h: u32) -> Option<usize> {
    match format {
        PixelFormat::Grey8 => Some((w * h) as usize),
        PixelFormat::Yuyv => Some((w * h * 2) as usize),
        PixelFormat::Rgb8 => Some((w * h * 3) as usize),
        PixelFormat::Mjpeg => None,
    }
}

/// Counts frames the driver dropped from gaps in its 32-bit sequence numbers.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    last: Option<u32>,
    /// Frames lost so far.
    pub dropped: u64,
}

impl SeqTracker {
    /// Account for a frame with driver sequence `seq`; returns how many were lost before it.
    pub fn observe(&mut self, seq: u32) -> u64 {
        let gap = match self.last {
            Some(last) => seq.wrapping_sub(last).wrapping_sub(1) as u64,
            None => 0,
        };
        // A sequence going backwards means the stream restarted: not a loss.
        let gap = if gap > u32::MAX as u64 / 2 { 0 } else { gap };
        self.dropped += gap;
        self.last = Some(seq);
        gap
    }

    /// Forget the last number (the stream was recreated and restarts its count).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

struct Open {
    // Field order matters: the stream unmaps its buffers before the device closes.
    stream: Stream<'static>,
    _dev: Device,
}

/// The V4L2 source.
pub struct V4l2Source {
    cfg: V4l2Config,
    clock: Arc<dyn Clock>,
    open: Option<Open>,
    format: PixelFormat,
    seq: SeqTracker,
    n: u64,
    pool: Vec<Vec<u8>>,
    width: u32,
    height: u32,
}

impl V4l2Source {
    /// A source that opens the device on first use (and again after it vanishes).
    pub fn new(cfg: &V4l2Config, clock: Arc<dyn Clock>) -> Self {
        let format = format_for(&cfg.format).map_or(PixelFormat::Yuyv, |f| f.1);
        Self {
            cfg: cfg.clone(),
            clock,
            open: None,
            format,
            seq: SeqTracker::default(),
            n: 0,
            pool: Vec::new(),
            width: cfg.width,
            height: cfg.height,
        }
    }

    fn connect(&mut self) -> Result<(), SourceError> {
        let path = self.cfg.device.display().to_string();
        let gone = |e: std::io::Error| SourceError::Disconnected(format!("{path}: {e}"));
        let dev = Device::with_path(&self.cfg.device).map_err(gone)?;
        let (fourcc, format) = format_for(&self.cfg.format)
            .ok_or_else(|| SourceError::Config(self.cfg.format.clone()))?;
        let mut fmt = dev.format().map_err(gone)?;
        fmt.width = self.cfg.width;
        fmt.height = self.cfg.height;
        fmt.fourcc = FourCC::new(&fourcc);
        let got = dev.set_format(&fmt).map_err(gone)?;
        if got.fourcc != FourCC::new(&fourcc) {
            return Err(SourceError::Config(format!(
                "{path} refused format {} (offers {})",
                self.cfg.format, got.fourcc
            )));
        }
        if (got.width, got.height) != (self.cfg.width, self.cfg.height) {
            log::warn!(
                "{path}: asked {}x{}, driver gives {}x{}",
                self.cfg.width,
                self.cfg.height,
                got.width,
                got.height
            );
        }
        self.width = got.width;
        self.height = got.height;
        if let Err(e) = dev.set_params(&v4l::video::capture::Parameters::with_fps(self.cfg.fps)) {
            log::warn!("{path}: cannot set {} fps: {e}", self.cfg.fps);
        }
        let mut stream =
            Stream::with_buffers(&dev, Type::VideoCapture, self.cfg.buffers).map_err(gone)?;
        stream.set_timeout(Duration::from_millis(self.cfg.dequeue_timeout_ms));
        self.format = format;
        self.seq.reset();
        self.open = Some(Open { stream, _dev: dev });
        log::info!(
            "{path}: streaming {}x{} {} at {} fps",
            self.width,
            self.height,
            self.cfg.format,
            self.cfg.fps
        );
        Ok(())
    }

    fn close(&mut self) {
        if let Some(o) = self.open.take() {
            // v4l's stream panics in Drop when STREAMOFF fails other than with ENODEV.
            let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(o)));
        }
    }
}

impl Source for V4l2Source {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.open.is_none() {
            if let Err(e) = self.connect() {
                // Back off so a missing camera is retried, not spun on.
                self.clock.sleep_until(self.clock.now_ns() + 500 * MS);
                return Err(e);
            }
        }
        let open = self.open.as_mut().expect("connected above");
        match open.stream.next() {
            Ok((buf, meta)) => {
                let used = (meta.bytesused as usize).min(buf.len());
                if let Some(need) = frame_bytes(self.format, self.width, self.height) {
                    if used < need {
                        return Err(SourceError::Io(format!(
                            "short frame: {used} of {need} bytes"
                        )));
                    }
                }
                self.seq.observe(meta.sequence);
                let now = self.clock.now_ns();
                let kernel_ns =
                    meta.timestamp.sec as u64 * 1_000_000_000 + meta.timestamp.usec as u64 * 1000;
                // Driver timestamps are CLOCK_MONOTONIC like `SystemClock`; trust them only if sane.
                let ts = if kernel_ns > 0 && kernel_ns <= now && now - kernel_ns < 1000 * MS {
                    kernel_ns
                } else {
                    now
                };
                let mut data = self.pool.pop().unwrap_or_default();
                data.clear();
                data.extend_from_slice(&buf[..used]);
                self.n += 1;
                Ok(Some(Frame {
                    seq: self.n,
                    timestamp_ns: ts,
                    width: self.width,
                    height: self.height,
                    format: self.format,
                    data,
                    truth: None,
                    origin: self.cfg.device.display().to_string(),
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                // v4l 0.14 re-queues the last buffer on the next call even though the kernel
                // may still hold it; recreating the stream is the only clean recovery.
                self.close();
                Err(SourceError::Timeout(self.cfg.dequeue_timeout_ms))
            }
            Err(e) => {
                self.close();
                Err(SourceError::Disconnected(format!(
                    "{}: {e}",
                    self.cfg.device.display()
                )))
            }
        }
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < 8 {
            self.pool.push(buf);
        }
    }

    fn dropped(&self) -> u64 {
        self.seq.dropped
    }

    fn describe(&self) -> String {
        format!(
            "v4l2 {} {}x{} {} @ {} fps",
            self.cfg.device.display(),
            self.cfg.width,
            self.cfg.height,
            self.cfg.format,
            self.cfg.fps
        )
    }
}

impl Drop for V4l2Source {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_gaps_count_drops_and_survive_wrap_and_restart() {
        let mut s = SeqTracker::default();
        assert_eq!(s.observe(10), 0);
        assert_eq!(s.observe(11), 0);
        assert_eq!(s.observe(14), 2);
        assert_eq!(s.observe(5), 0, "backwards: the stream restarted");
        s.reset();
        assert_eq!(s.observe(u32::MAX - 1), 0);
        assert_eq!(s.observe(u32::MAX), 0);
        assert_eq!(s.observe(0), 0, "wraps");
        assert_eq!(s.observe(2), 1);
        assert_eq!(s.dropped, 3);
    }

    #[test]
    fn formats_map_to_fourcc_and_layout() {
        assert_eq!(format_for("yuyv"), Some((*b"YUYV", PixelFormat::Yuyv)));
        assert_eq!(format_for("mjpeg").unwrap().1, PixelFormat::Mjpeg);
        assert_eq!(format_for("grey").unwrap().0, *b"GREY");
        assert_eq!(format_for("rgb3"), None);
        assert_eq!(frame_bytes(PixelFormat::Yuyv, 4, 2), Some(16));
        assert_eq!(frame_bytes(PixelFormat::Mjpeg, 4, 2), None);
    }
}
