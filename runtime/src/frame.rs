//! A camera frame as it travels from a source to the engine.

/// Pixel layout of a frame's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// 8-bit grey, one byte per pixel.
    Grey8,
    /// 8-bit RGB, three bytes per pixel, row-major.
    Rgb8,
    /// YUYV 4:2:2 as V4L2 delivers it (two bytes per pixel).
    Yuyv,
    /// A whole JPEG image, as MJPEG cameras deliver it.
    Mjpeg,
}

/// What is known about a part when a simulation or a labelled dataset produced the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruth {
    /// True when the part carries a defect.
    pub defective: bool,
    /// Defect kind (e.g. `scratch`), `None` for good parts.
    pub kind: Option<String>,
    /// Per-pixel defect mask at frame size (0 = good, non-zero = defect), when known.
    pub mask: Option<Vec<u8>>,
}

/// One captured frame; `data` is reused through the source's buffer pool where it has one.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Source sequence number; gaps mean dropped frames.
    pub seq: u64,
    /// Monotonic capture time in nanoseconds on the line's `Clock`.
    pub timestamp_ns: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Layout of `data`.
    pub format: PixelFormat,
    /// Pixel bytes (or the JPEG stream for `Mjpeg`).
    pub data: Vec<u8>,
    /// Ground truth when the source knows it (simulation, labelled replay).
    pub truth: Option<GroundTruth>,
    /// Where the frame came from (file path, device), for logs and archives.
    pub origin: String,
}

/// Region of interest inside the frame, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roi {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// Pillow's `convert("L")`: ITU-R 601 luma in fixed point, rounded.
pub fn luma([r, g, b]: [u8; 3]) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}
