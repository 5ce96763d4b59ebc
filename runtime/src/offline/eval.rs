//! `diffad eval`: image and pixel AUROC, PRO and rates at the threshold on an MVTec-style folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;

use crate::offline::infer::{inspector, InspectOptions};
use crate::offline::metrics::{auroc, pro};
use crate::sources::camera::config::CameraConfig;
use crate::sources::dataset;
use crate::sources::imagefile;
use crate::stages::engine::EngineConfig;
use crate::stages::inspect::Inspector;

/// Everything `eval` measures.
#[derive(Debug, serde::Serialize)]
pub struct EvalReport {
    /// Dataset folder.
    pub dataset: String,
    /// Threshold used for rates.
    pub threshold: f32,
    /// Images scored.
    pub images: usize,
    /// Images that could not be read (always 0: `eval` refuses to report on a partial dataset).
    pub failed: usize,
    /// Image-level AUROC.
    pub image_auroc: Option<f64>,
    /// Pixel-level AUROC over all test pixels.
    pub pixel_auroc: Option<f64>,
    /// PRO integrated to 30 % FPR.
    pub pro: Option<f64>,
    /// Good images rejected / good images.
    pub false_reject_rate: f64,
    /// Defective images passed / defective images.
    pub escape_rate: f64,
    /// Per defect kind: count, mean score, rejected share.
    pub kinds: Vec<KindRow>,
    /// Images per second through decode → preprocess → infer.
    pub images_per_s: f64,
    /// The false-reject / escape trade-off (printed by `eval --sweep`).
    pub sweep: Option<crate::offline::sweep::Sweep>,
}

/// One defect kind's line in the report.
#[derive(Debug, serde::Serialize)]
pub struct KindRow {
    /// Kind (`good` for normal images).
    pub kind: String,
    /// Images.
    pub n: usize,
    /// Mean score.
    pub mean_score: f64,
    /// Share rejected at the threshold.
    pub rejected: f64,
}

/// One scored test image, as `eval` saw it; `eval --report` draws its figures from these.
#[derive(Debug, Clone)]
pub struct Scored {
    /// Image path.
    pub image: PathBuf,
    /// Defect kind (its folder name); `good` for normal images.
    pub kind: String,
    /// True for defective images.
    pub defective: bool,
    /// Image score.
    pub score: f32,
    /// Anomaly map, `map_width` × `map_height`.
    pub map: Vec<f32>,
    /// Ground-truth mask at the map's size (all false for good images and missing masks).
    pub mask: Vec<bool>,
    /// Map width.
    pub map_width: u32,
    /// Map height.
    pub map_height: u32,
}

/// Why `eval` reports no metrics.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Some test images or masks could not be used; metrics without them would look complete.
    #[error(
        "{} of {total} test images of {root} could not be evaluated, so no metrics are reported \
         (they would silently leave those images out); fix or remove them:\n  {}",
        failures.len(),
        shown(failures)
    )]
    Unusable {
        /// The dataset folder.
        root: String,
        /// Test images found.
        total: usize,
        /// One line per image: the file and why.
        failures: Vec<String>,
    },
}

/// The first failures, one per line, and how many more there are.
fn shown(failures: &[String]) -> String {
    const SHOWN: usize = 20;
    let mut lines: Vec<String> = failures.iter().take(SHOWN).cloned().collect();
    if failures.len() > SHOWN {
        lines.push(format!(
            "… and {} more (each logged above)",
            failures.len() - SHOWN
        ));
    }
    lines.join("\n  ")
}

/// `diffad eval`: image/pixel AUROC, PRO and rates at the threshold on an MVTec-style folder.
pub fn eval(
    config: &EngineConfig,
    camera: Option<&CameraConfig>,
    root: &Path,
    opts: InspectOptions,
) -> Result<EvalReport> {
    eval_scored(config, camera, root, opts).map(|(report, _)| report)
}

/// `eval` and the per-image results its figures are computed from.
pub fn eval_scored(
    config: &EngineConfig,
    camera: Option<&CameraConfig>,
    root: &Path,
    opts: InspectOptions,
) -> Result<(EvalReport, Vec<Scored>)> {
    let samples = dataset::scan(root).map_err(anyhow::Error::msg)?;
    let roi = camera.and_then(|c| c.roi);
    let mut insp = inspector(config, camera, opts)?;
    let mut scored = Vec::with_capacity(samples.len());
    let mut failures = Vec::new();
    let start = Instant::now();
    for s in &samples {
        match score_one(&mut *insp, s, roi) {
            Ok(one) => scored.push(one),
            Err(e) => {
                log::error!("{e}");
                failures.push(e);
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    if !failures.is_empty() {
        return Err(EvalError::Unusable {
            root: root.display().to_string(),
            total: samples.len(),
            failures,
        }
        .into());
    }
    let report = report_of(root, insp.threshold(), &scored, elapsed);
    Ok((report, scored))
}

/// One test image scored, with its mask at map size; the error names the file.
fn score_one(
    insp: &mut dyn Inspector,
    s: &dataset::Sample,
    roi: Option<crate::frame::Roi>,
) -> Result<Scored, String> {
    let shown = s.image.display().to_string();
    // Every error names its file: image and inspection errors carry the image's path.
    let (r, size) = imagefile::load(&s.image)
        .map_err(|e| e.to_string())
        .and_then(|f| {
            insp.inspect(&[&f])
                .pop()
                .expect("one result")
                .map(|r| (r, (f.width, f.height)))
                .map_err(|e| e.to_string())
        })
        .map_err(|e| {
            if e.contains(&shown) {
                e
            } else {
                format!("{shown}: {e}")
            }
        })?;
    let mask = match &s.mask {
        Some(m) => dataset::load_mask(m, &s.image, size, roi, (r.map_width, r.map_height))
            .map_err(|e| e.to_string())?,
        None if s.defective() => {
            log::warn!(
                "{}: no mask; pixel metrics treat it as all-defect-free",
                s.image.display()
            );
            vec![false; r.map.len()]
        }
        None => vec![false; r.map.len()],
    };
    Ok(Scored {
        image: s.image.clone(),
        kind: s.kind.clone(),
        defective: s.defective(),
        score: r.score,
        map: r.map,
        mask,
        map_width: r.map_width,
        map_height: r.map_height,
    })
}

/// The metrics over every scored image at threshold `thr`.
fn report_of(root: &Path, thr: f32, scored: &[Scored], elapsed: f64) -> EvalReport {
    let scores: Vec<f32> = scored.iter().map(|s| s.score).collect();
    let labels: Vec<bool> = scored.iter().map(|s| s.defective).collect();
    let width = scored.last().map_or(0, |s| s.map_width as usize);
    let flat_scores: Vec<f32> = scored.iter().flat_map(|s| s.map.iter().copied()).collect();
    let flat_labels: Vec<bool> = scored.iter().flat_map(|s| s.mask.iter().copied()).collect();
    let map_refs: Vec<&[f32]> = scored.iter().map(|s| s.map.as_slice()).collect();
    let mask_refs: Vec<&[bool]> = scored.iter().map(|s| s.mask.as_slice()).collect();
    let rate = |want_defective: bool, rejected: bool| {
        let group: Vec<f32> = scores
            .iter()
            .zip(&labels)
            .filter(|(_, &l)| l == want_defective)
            .map(|(s, _)| *s)
            .collect();
        let hit = group.iter().filter(|&&s| (s >= thr) == rejected).count();
        if group.is_empty() {
            f64::NAN
        } else {
            hit as f64 / group.len() as f64
        }
    };
    let of = |defective: bool| -> Vec<f32> {
        scored
            .iter()
            .filter(|s| s.defective == defective)
            .map(|s| s.score)
            .collect()
    };
    EvalReport {
        dataset: root.display().to_string(),
        threshold: thr,
        images: scores.len(),
        failed: 0,
        image_auroc: auroc(&scores, &labels),
        pixel_auroc: auroc(&flat_scores, &flat_labels),
        pro: pro(&map_refs, &mask_refs, width, 0.3),
        false_reject_rate: rate(false, true),
        escape_rate: rate(true, false),
        kinds: kind_rows(scored, thr),
        images_per_s: scores.len() as f64 / elapsed,
        sweep: Some(crate::offline::sweep::sweep(&of(false), &of(true))),
    }
}

/// One row per defect kind (and `good`), sorted by name.
fn kind_rows(scored: &[Scored], thr: f32) -> Vec<KindRow> {
    let mut kind_names: Vec<String> = scored.iter().map(|s| s.kind.clone()).collect();
    kind_names.sort();
    kind_names.dedup();
    kind_names
        .into_iter()
        .map(|k| {
            let ks: Vec<f32> = scored
                .iter()
                .filter(|s| s.kind == k)
                .map(|s| s.score)
                .collect();
            KindRow {
                n: ks.len(),
                mean_score: ks.iter().map(|&s| s as f64).sum::<f64>() / ks.len() as f64,
                rejected: ks.iter().filter(|&&s| s >= thr).count() as f64 / ks.len() as f64,
                kind: k,
            }
        })
        .collect()
}

/// `diffad eval --report DIR`: `eval`, then its figures and `index.md` in `dir` (checked
/// writable, and the font loaded, before any image is scored).
pub fn eval_report(
    config: &EngineConfig,
    camera: Option<&CameraConfig>,
    root: &Path,
    opts: InspectOptions,
    dir: &Path,
) -> Result<(EvalReport, crate::offline::report::Written)> {
    crate::offline::report::prepare(dir)?;
    let (report, scored) = eval_scored(config, camera, root, opts)?;
    let written = crate::offline::report::write(dir, &config.model, &report, &scored)?;
    Ok((report, written))
}

impl std::fmt::Display for EvalReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        writeln!(f, "dataset          {}", self.dataset)?;
        writeln!(
            f,
            "images           {} ({} unreadable)",
            self.images, self.failed
        )?;
        writeln!(f, "image AUROC      {}", opt(self.image_auroc))?;
        writeln!(f, "pixel AUROC      {}", opt(self.pixel_auroc))?;
        if self.pixel_auroc.is_some_and(|a| a < 0.5) {
            writeln!(
                f,
                "  note: below 0.5 ranks defect pixels BELOW good ones. Usually the masks mark more than \
                 what changed (large smears or blobs whose inside looks normal, so the map fires on their \
                 edges only), or they are inverted or misaligned: look at the overlays of `--report` \
                 before trusting the figure"
            )?;
        }
        writeln!(f, "PRO (FPR ≤ 0.3)  {}", opt(self.pro))?;
        writeln!(f, "threshold        {:.5}", self.threshold)?;
        // A rate over no images is not 0 % and not NaN: say which images were missing.
        let rate = |v: f64, none: &str| {
            if v.is_finite() {
                format!("{:.2} %", 100.0 * v)
            } else {
                format!("n/a ({none})")
            }
        };
        writeln!(
            f,
            "false rejects    {}",
            rate(self.false_reject_rate, "no good images")
        )?;
        writeln!(
            f,
            "escapes          {}",
            rate(self.escape_rate, "no defective images")
        )?;
        writeln!(f, "throughput       {:.1} images/s", self.images_per_s)?;
        writeln!(
            f,
            "{:<16} {:>5} {:>11} {:>10}",
            "kind", "n", "mean score", "rejected"
        )?;
        for k in &self.kinds {
            writeln!(
                f,
                "{:<16} {:>5} {:>11.5} {:>9.1} %",
                k.kind,
                k.n,
                k.mean_score,
                100.0 * k.rejected
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_over_no_images_says_which_were_missing_not_nan() {
        let report = EvalReport {
            dataset: "/data/brick".into(),
            threshold: 0.5,
            images: 3,
            failed: 0,
            image_auroc: None,
            pixel_auroc: None,
            pro: None,
            false_reject_rate: f64::NAN,
            escape_rate: 1.0 / 3.0,
            kinds: vec![],
            images_per_s: 1.0,
            sweep: None,
        };
        let text = report.to_string();
        assert!(
            text.contains("false rejects    n/a (no good images)"),
            "{text}"
        );
        assert!(text.contains("escapes          33.33 %"), "{text}");
        assert!(!text.contains("NaN"), "{text}");
    }
}
