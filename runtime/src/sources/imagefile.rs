//! Image files on disk as frames (for `infer`, `eval` and the replay source).

use std::path::Path;

use crate::frame::{Frame, PixelFormat};

/// Why an image file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("image {path}: {reason}")]
pub struct ImageFileError {
    /// The file.
    pub path: String,
    /// What went wrong, and what to do.
    pub reason: String,
}

/// Decode an image file into a Grey8 (grey images) or Rgb8 (anything else) frame.
pub fn load(path: &Path) -> Result<Frame, ImageFileError> {
    let err = |reason: String| ImageFileError {
        path: path.display().to_string(),
        reason,
    };
    let bytes = crate::files::read_capped(path, crate::files::IMAGE_CAP, "an image file")
        .map_err(|e| err(e.to_string()))?;
    decode(&bytes, &path.display().to_string()).map_err(err)
}

/// Decode encoded image bytes (PNG, JPEG) into a frame; `origin` names it in errors and logs.
pub fn decode(bytes: &[u8], origin: &str) -> Result<Frame, String> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| format!("not a readable PNG/JPEG image ({e})"))?;
    let (width, height) = (img.width(), img.height());
    if width == 0 || height == 0 {
        return Err("image is empty".into());
    }
    let (format, data) = match img {
        image::DynamicImage::ImageLuma8(g) => (PixelFormat::Grey8, g.into_raw()),
        image::DynamicImage::ImageLuma16(_)
        | image::DynamicImage::ImageLumaA8(_)
        | image::DynamicImage::ImageLumaA16(_) => (PixelFormat::Grey8, img.into_luma8().into_raw()),
        other => (PixelFormat::Rgb8, other.into_rgb8().into_raw()),
    };
    Ok(Frame {
        seq: 0,
        timestamp_ns: 0,
        width,
        height,
        format,
        data,
        truth: None,
        origin: origin.to_string(),
    })
}
