//! MVTec-AD-style datasets: `test/<kind>/*.png` with masks in `ground_truth/<kind>/<stem>_mask.png`.

use std::path::{Path, PathBuf};

/// One labelled test image.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Image path.
    pub image: PathBuf,
    /// Defect kind; `good` for normal images.
    pub kind: String,
    /// Mask path for defective images, when present.
    pub mask: Option<PathBuf>,
}

impl Sample {
    /// True for defective samples.
    pub fn defective(&self) -> bool {
        self.kind != "good"
    }
}

/// List the test images of an MVTec-style dataset, sorted by kind then name.
pub fn scan(root: &Path) -> Result<Vec<Sample>, String> {
    let test = root.join("test");
    let kinds = sorted_dir(&test).map_err(|e| {
        format!("{}: {e}; expected an MVTec-AD-style folder with test/<kind>/*.png (make one with `python -m exporter make-tiles`)", test.display())
    })?;
    let mut out = Vec::new();
    for kind_dir in kinds.into_iter().filter(|p| p.is_dir()) {
        let kind = kind_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        for image in sorted_dir(&kind_dir).map_err(|e| format!("{}: {e}", kind_dir.display()))? {
            if !is_image(&image) {
                continue;
            }
            let mask = (kind != "good")
                .then(|| {
                    let stem = image.file_stem().unwrap_or_default().to_string_lossy();
                    root.join("ground_truth")
                        .join(&kind)
                        .join(format!("{stem}_mask.png"))
                })
                .filter(|m| m.exists());
            out.push(Sample {
                image,
                kind: kind.clone(),
                mask,
            });
        }
    }
    if out.is_empty() {
        return Err(format!("{}: no images under test/<kind>/", root.display()));
    }
    Ok(out)
}

/// Why a ground-truth mask cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// Not a readable image.
    #[error("mask {path}: not a readable PNG/JPEG image ({reason})")]
    Unreadable {
        /// The mask file.
        path: String,
        /// Decoder's message.
        reason: String,
    },
    /// Mask and image differ in size.
    #[error(
        "mask {path} is {mask_width}×{mask_height} but its image {image} is {width}×{height}: \
         a mask must cover its image pixel for pixel (stretching it would move the ground truth); \
         regenerate the mask at the image's size"
    )]
    Size {
        /// The mask file.
        path: String,
        /// Mask width.
        mask_width: u32,
        /// Mask height.
        mask_height: u32,
        /// The image it belongs to.
        image: String,
        /// Image width.
        width: u32,
        /// Image height.
        height: u32,
    },
}

/// Load the mask at `path` for `image` of `image_size`, cropped to `roi` like the image, at the
/// anomaly map's `w` × `h` (nearest neighbour); `true` marks defect pixels.
pub fn load_mask(
    path: &Path,
    image: &Path,
    image_size: (u32, u32),
    roi: Option<crate::frame::Roi>,
    (w, h): (u32, u32),
) -> Result<Vec<bool>, MaskError> {
    let unreadable = |reason: String| MaskError::Unreadable {
        path: path.display().to_string(),
        reason,
    };
    let bytes = crate::files::read_capped(path, crate::files::IMAGE_CAP, "a mask file")
        .map_err(|e| unreadable(e.to_string()))?;
    let mut img = image::load_from_memory(&bytes)
        .map_err(|e| unreadable(e.to_string()))?
        .into_luma8();
    if img.dimensions() != image_size {
        return Err(MaskError::Size {
            path: path.display().to_string(),
            mask_width: img.width(),
            mask_height: img.height(),
            image: image.display().to_string(),
            width: image_size.0,
            height: image_size.1,
        });
    }
    // The map covers the ROI only: so must the mask. The image was inspected, so the ROI fits.
    if let Some(r) = roi {
        img = image::imageops::crop_imm(&img, r.x, r.y, r.width, r.height).to_image();
    }
    let img = if img.dimensions() == (w, h) {
        img
    } else {
        image::imageops::resize(&img, w, h, image::imageops::FilterType::Nearest)
    };
    Ok(img.into_raw().into_iter().map(|v| v > 127).collect())
}

/// Files of a folder, sorted by name.
pub fn sorted_dir(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    Ok(v)
}

/// PNG/JPEG by extension.
pub fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}
