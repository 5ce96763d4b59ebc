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
