//! `diffad eval --report DIR`: the evaluation as figures people look at (ROC curves, score
//! histograms, the best caught and worst missed tiles per defect kind) and an `index.md` that a
//! model card can embed with relative links.
//!
//! Every figure is drawn from the scores and maps `eval` computed (`eval::Scored`) and labelled
//! with the metrics of its `EvalReport`; nothing is scored or measured a second time. Charts are
//! drawn with `plotters` into an RGB buffer and written as PNG by `image`; text needs a TrueType
//! font, loaded at run time (see [`load_fonts`]).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use plotters::prelude::*;
use serde_json::json;

use crate::offline::eval::{EvalReport, Scored};

mod index;
mod kinds;
mod roc;
mod scores;

pub use kinds::{GRID_COLS, KIND_SIZE};
pub use roc::{area, roc_points};
pub use scores::histogram;

use index::index_md;
use kinds::{draw_kind, pick, pick_good, Panel};
use roc::{draw_roc, thin};
use scores::{draw_scores, score_range};

/// Size of `roc_image.png` and `roc_pixel.png`.
pub const ROC_SIZE: (u32, u32) = (800, 640);
/// Size of `scores.png`.
pub const SCORES_SIZE: (u32, u32) = (1000, 1000);
/// The font file used when `DIFFAD_FONT` is not set (Debian/Ubuntu package `fonts-dejavu-core`).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Its bold face, used for titles when present.
const DEFAULT_BOLD: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf";
const FONT: &str = "sans-serif";

const GOOD: RGBColor = RGBColor(31, 119, 180);
const DEFECT: RGBColor = RGBColor(214, 39, 40);

/// Register the figures' font with plotters, once per process.
///
/// The font is `DIFFAD_FONT` if set, else [`DEFAULT_FONT`]; a missing or unreadable file is an
/// error that names the file and the package that provides it.
pub fn load_fonts() -> Result<()> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            let (regular, bold) = match std::env::var_os("DIFFAD_FONT") {
                Some(p) => (PathBuf::from(p), None),
                None => (PathBuf::from(DEFAULT_FONT), Some(PathBuf::from(DEFAULT_BOLD))),
            };
            let read = |p: &Path| -> std::result::Result<&'static [u8], String> {
                let bytes = std::fs::read(p).map_err(|e| {
                    format!(
                        "the report's font {} cannot be read ({e}): install the Debian package \
                         fonts-dejavu-core (scripts/setup does), or point DIFFAD_FONT at a .ttf file",
                        p.display()
                    )
                })?;
                Ok(Box::leak(bytes.into_boxed_slice()))
            };
            let bytes = read(&regular)?;
            plotters::style::register_font(FONT, FontStyle::Normal, bytes).map_err(|_| {
                format!(
                    "the report's font {} is not a TrueType/OpenType font",
                    regular.display()
                )
            })?;
            if let Some(b) = bold.filter(|b| b.exists()) {
                if let Ok(bytes) = read(&b) {
                    // A broken bold face only costs the titles their weight.
                    let _ = plotters::style::register_font(FONT, FontStyle::Bold, bytes);
                }
            }
            Ok(())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Make `dir` (and its parents) and prove it is writable, before any image is scored.
pub fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("report folder {}: cannot create it", dir.display()))?;
    let probe = dir.join(".diffad-write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("report folder {}: cannot write into it", dir.display()))?;
    std::fs::remove_file(&probe).ok();
    load_fonts()
}

/// One figure written, with its caption for `index.md`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    /// File name inside the report folder.
    pub file: String,
    /// One-line caption.
    pub caption: String,
}

/// What [`write`] produced.
#[derive(Debug)]
pub struct Written {
    /// The report folder.
    pub dir: PathBuf,
    /// The PNG figures, in `index.md` order.
    pub figures: Vec<Figure>,
    /// Figures that could not be drawn, and why (also in `index.md`).
    pub skipped: Vec<String>,
}

/// Turns a plotters error into one naming the figure being drawn.
fn draw_err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> anyhow::Error + '_ {
    move |e| anyhow!("drawing {what}: {e}")
}

/// The legend box every chart draws, at `pos`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    pos: SeriesLabelPosition,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    chart
        .configure_series_labels()
        .position(pos)
        .margin(14)
        .label_font((FONT, 17))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
}

/// Write the figure's RGB buffer as the PNG `dest`.
fn save(buf: Vec<u8>, (w, h): (u32, u32), dest: &Path) -> Result<()> {
    RgbImage::from_raw(w, h, buf)
        .expect("buffer of the figure's size")
        .save(dest)
        .with_context(|| format!("writing {}", dest.display()))
}

/// A rate as a percentage, or `n/a` when it could not be computed.
fn pct(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{:.1} %", 100.0 * v)
    }
}

/// A file-name-safe version of a defect kind's folder name.
pub fn file_stem(kind: &str) -> String {
    kind.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Write the figures, `figures.json` (the numbers they were drawn from) and `index.md` into
/// `dir` ([`prepare`]d), from `eval`'s own results.
pub fn write(dir: &Path, model: &Path, report: &EvalReport, scored: &[Scored]) -> Result<Written> {
    check_finite(report, scored)?;
    let n_good = scored.iter().filter(|s| !s.defective).count();
    let counts = (n_good, scored.len() - n_good);
    let scores: Vec<f32> = scored.iter().map(|s| s.score).collect();
    let (roc, image_auroc) = image_roc(report, scored, &scores, counts)?;
    load_fonts()?;
    let mut figures = Vec::new();
    let mut skipped = Vec::new();
    let name = Path::new(&report.dataset)
        .file_name()
        .map_or(report.dataset.clone(), |n| n.to_string_lossy().to_string());

    figures.push(image_roc_figure(
        dir,
        &name,
        report,
        (&roc, image_auroc),
        counts,
    )?);
    let pixel_json = pixel_roc_figure(dir, &name, report, scored, &mut figures, &mut skipped)?;
    let (figure, histogram_json) = scores_figure(dir, &name, report, scored, &scores, counts)?;
    figures.push(figure);
    let good_json = good_figure(dir, report, scored, &mut figures)?;
    let kinds_json = kind_figures(dir, report, scored, &mut figures)?;

    // The numbers behind the figures, and the index.
    let figures_json = json!({
        "threshold": report.threshold,
        "image_auroc": image_auroc,
        "pixel_auroc": report.pixel_auroc,
        "image_roc": {"auroc_trapezoid": area(&roc), "points": roc},
        "pixel_roc": pixel_json,
        "histogram": histogram_json,
        "scores": scored.iter().map(|s| json!({"image": s.image, "kind": s.kind, "score": s.score})).collect::<Vec<_>>(),
        "kinds": kinds_json,
        "good_highest": good_json,
    });
    let dest = dir.join("figures.json");
    std::fs::write(&dest, serde_json::to_string_pretty(&figures_json)?)
        .with_context(|| format!("writing {}", dest.display()))?;
    let dest = dir.join("index.md");
    std::fs::write(&dest, index_md(model, report, &figures, &skipped))
        .with_context(|| format!("writing {}", dest.display()))?;
    Ok(Written {
        dir: dir.to_path_buf(),
        figures,
        skipped,
    })
}

/// Refuse a non-finite threshold, score or map value before anything is drawn.
fn check_finite(report: &EvalReport, scored: &[Scored]) -> Result<()> {
    let thr = report.threshold;
    if !thr.is_finite() {
        bail!("threshold {thr} is not a finite number: no figures drawn");
    }
    for s in scored {
        if !s.score.is_finite() {
            bail!(
                "score of {} is {}: the model produced a non-finite score; no figures drawn",
                s.image.display(),
                s.score
            );
        }
        if let Some(v) = s.map.iter().find(|v| !v.is_finite()) {
            bail!(
                "anomaly map of {} holds {v}: the model produced non-finite values; no figures drawn",
                s.image.display()
            );
        }
    }
    Ok(())
}

/// The image-level ROC curve and eval's AUROC, which its area must equal; an error when a class
/// is missing.
fn image_roc(
    report: &EvalReport,
    scored: &[Scored],
    scores: &[f32],
    (n_good, n_def): (usize, usize),
) -> Result<(Vec<(f64, f64)>, f64)> {
    let labels: Vec<bool> = scored.iter().map(|s| s.defective).collect();
    let (Some(roc), Some(image_auroc)) = (roc_points(scores, &labels), report.image_auroc) else {
        bail!(
            "{}: the report needs good and defective images, found {n_good} good and {n_def} \
             defective (test/good/ and test/<defect kind>/)",
            report.dataset
        );
    };
    if (area(&roc) - image_auroc).abs() > 1e-9 {
        bail!(
            "internal error: the ROC curve's area {} disagrees with eval's AUROC {image_auroc}",
            area(&roc)
        );
    }
    Ok((roc, image_auroc))
}

/// `roc_image.png`, with the threshold's operating point.
fn image_roc_figure(
    dir: &Path,
    name: &str,
    report: &EvalReport,
    (roc, image_auroc): (&[(f64, f64)], f64),
    (n_good, n_def): (usize, usize),
) -> Result<Figure> {
    let thr = report.threshold;
    let op = (report.false_reject_rate, 1.0 - report.escape_rate);
    draw_roc(
        &dir.join("roc_image.png"),
        &format!("Image-level ROC: {name}"),
        roc,
        &format!("image ROC, AUROC {image_auroc:.4} ({n_good} good, {n_def} defective)"),
        Some((op, thr)),
        (
            "false positive rate (good images flagged)",
            "true positive rate (defective images caught)",
        ),
    )?;
    Ok(Figure {
        file: "roc_image.png".into(),
        caption: format!(
            "Image-level ROC over {n_good} good and {n_def} defective images, AUROC {image_auroc:.4}; \
             the dot is the threshold {thr:.4} (false rejects {}, escapes {}).",
            pct(report.false_reject_rate),
            pct(report.escape_rate)
        ),
    })
}

/// `roc_pixel.png` over every map pixel, or a note in `skipped` when no mask marks a defect;
/// returns its numbers for `figures.json`.
fn pixel_roc_figure(
    dir: &Path,
    name: &str,
    report: &EvalReport,
    scored: &[Scored],
    figures: &mut Vec<Figure>,
    skipped: &mut Vec<String>,
) -> Result<serde_json::Value> {
    // The flattened maps can be large: they go before the figure is drawn.
    let pixel = {
        let flat_scores: Vec<f32> = scored.iter().flat_map(|s| s.map.iter().copied()).collect();
        let flat_labels: Vec<bool> = scored.iter().flat_map(|s| s.mask.iter().copied()).collect();
        roc_points(&flat_scores, &flat_labels).zip(report.pixel_auroc)
    };
    let Some((curve, pixel_auroc)) = pixel else {
        let why = "roc_pixel.png not drawn: no ground-truth mask marks a defect pixel".to_string();
        log::warn!("{why}");
        skipped.push(why);
        return Ok(serde_json::Value::Null);
    };
    let full_area = area(&curve);
    if (full_area - pixel_auroc).abs() > 1e-6 {
        bail!("internal error: the pixel ROC curve's area {full_area} disagrees with eval's pixel AUROC {pixel_auroc}");
    }
    let pts = thin(&curve, 1e-3);
    let n_pix = curve.len();
    draw_roc(
        &dir.join("roc_pixel.png"),
        &format!("Pixel-level ROC: {name}"),
        &pts,
        &format!("pixel ROC, AUROC {pixel_auroc:.4}"),
        None,
        (
            "false positive rate (defect-free pixels flagged)",
            "true positive rate (defect pixels flagged)",
        ),
    )?;
    figures.push(Figure {
        file: "roc_pixel.png".into(),
        caption: format!(
            "Pixel-level ROC over every map pixel of the {} scored images against the ground-truth masks, AUROC {pixel_auroc:.4}.",
            scored.len()
        ),
    });
    Ok(json!({"auroc_trapezoid": full_area, "distinct_scores": n_pix - 1, "points": pts}))
}

/// `scores.png`; returns its histograms for `figures.json`.
fn scores_figure(
    dir: &Path,
    name: &str,
    report: &EvalReport,
    scored: &[Scored],
    scores: &[f32],
    (n_good, n_def): (usize, usize),
) -> Result<(Figure, serde_json::Value)> {
    let thr = report.threshold;
    let (lo, hi) = score_range(scores, thr);
    let bins = 30;
    let of_class = |defective: bool| -> Vec<f32> {
        scored
            .iter()
            .filter(|s| s.defective == defective)
            .map(|s| s.score)
            .collect()
    };
    let (hg, hd) = (
        histogram(&of_class(false), lo, hi, bins),
        histogram(&of_class(true), lo, hi, bins),
    );
    draw_scores(
        &dir.join("scores.png"),
        name,
        report,
        scored,
        (lo, hi),
        (&hg, &hd),
    )?;
    let figure = Figure {
        file: "scores.png".into(),
        caption: format!(
            "Image scores of good (blue, n = {n_good}) and defective (red, n = {n_def}) images with the threshold {thr:.4}; below, every image's score by defect kind."
        ),
    };
    Ok((
        figure,
        json!({"lo": lo, "hi": hi, "bins": bins, "good": hg, "defective": hd}),
    ))
}

/// One `kind_<name>.png` per defect kind, each under a distinct file name; returns their tiles
/// for `figures.json`.
fn kind_figures(
    dir: &Path,
    report: &EvalReport,
    scored: &[Scored],
    figures: &mut Vec<Figure>,
) -> Result<serde_json::Map<String, serde_json::Value>> {
    let thr = report.threshold;
    let mut kinds_json = serde_json::Map::new();
    let mut used = std::collections::HashSet::new();
    for k in report.kinds.iter().filter(|k| k.kind != "good") {
        let mut stem = file_stem(&k.kind);
        while !used.insert(stem.clone()) {
            stem.push('_');
        }
        let file = format!("kind_{stem}.png");
        let (best, worst) = pick(scored, &k.kind, thr);
        let escaped = scored
            .iter()
            .filter(|s| s.kind == k.kind && s.score < thr)
            .count();
        let panel = Panel::Defect {
            kind: &k.kind,
            n: k.n,
            escaped,
        };
        draw_kind(&dir.join(&file), &panel, &best, &worst, thr)?;
        let list = |v: &[&Scored]| -> Vec<serde_json::Value> {
            v.iter()
                .map(|s| json!({"image": s.image, "score": s.score, "caught": s.score >= thr}))
                .collect()
        };
        kinds_json.insert(
            k.kind.clone(),
            json!({"file": file, "n": k.n, "escaped": escaped, "best_caught": list(&best), "worst_missed": list(&worst)}),
        );
        figures.push(Figure {
            file,
            caption: format!(
                "{}: {} best caught and {} worst missed tiles ({escaped} of {} escaped) with their heatmaps; white contour: map ≥ threshold, magenta: ground truth.",
                k.kind,
                best.len(),
                worst.len(),
                k.n
            ),
        });
    }
    Ok(kinds_json)
}

/// `good_highest.png`: the good tiles that scored highest, so the false rejects a threshold
/// costs are seen with their heatmaps; returns them for `figures.json` (`null` without good
/// tiles).
fn good_figure(
    dir: &Path,
    report: &EvalReport,
    scored: &[Scored],
    figures: &mut Vec<Figure>,
) -> Result<serde_json::Value> {
    let thr = report.threshold;
    let n = scored.iter().filter(|s| !s.defective).count();
    if n == 0 {
        return Ok(serde_json::Value::Null);
    }
    let rejected = scored
        .iter()
        .filter(|s| !s.defective && s.score >= thr)
        .count();
    let (first, second) = pick_good(scored);
    let file = "good_highest.png".to_string();
    draw_kind(
        &dir.join(&file),
        &Panel::Good { n, rejected },
        &first,
        &second,
        thr,
    )?;
    let tiles: Vec<serde_json::Value> = first
        .iter()
        .chain(&second)
        .map(|s| json!({"image": s.image, "score": s.score, "rejected": s.score >= thr}))
        .collect();
    figures.push(Figure {
        file: file.clone(),
        caption: format!(
            "Good tiles: the {} highest-scoring of {n} with their heatmaps ({rejected} rejected at the threshold: what the threshold costs in good parts).",
            tiles.len()
        ),
    });
    Ok(json!({"file": file, "n": n, "rejected": rejected, "highest": tiles}))
}

#[cfg(test)]
mod tests;
