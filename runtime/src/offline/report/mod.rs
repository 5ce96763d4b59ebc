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
use image::{imageops, Rgb, RgbImage};
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::json;

use crate::offline::eval::{EvalReport, Scored};
use crate::sinks::heatmap;
use crate::sources::imagefile;

mod roc;

pub use roc::{area, roc_points};
use roc::{draw_roc, thin};

mod scores;

pub use scores::histogram;
use scores::{draw_scores, score_range};

/// Size of `roc_image.png` and `roc_pixel.png`.
pub const ROC_SIZE: (u32, u32) = (800, 640);
/// Size of `scores.png`.
pub const SCORES_SIZE: (u32, u32) = (1000, 1000);
/// Tiles per row in `kind_<name>.png`.
pub const GRID_COLS: usize = 6;
/// Side of one tile in `kind_<name>.png`.
const CELL: u32 = 192;
const GAP: u32 = 14;
const MARGIN: u32 = 24;
const TITLE_H: u32 = 56;
const ROW_HEAD_H: u32 = 34;
const LABEL_H: u32 = 46;
const LEGEND_H: u32 = 56;
/// Size of every `kind_<name>.png`.
pub const KIND_SIZE: (u32, u32) = (
    2 * MARGIN + GRID_COLS as u32 * CELL + (GRID_COLS as u32 - 1) * GAP,
    TITLE_H + 2 * (ROW_HEAD_H + CELL + LABEL_H) + LEGEND_H + MARGIN,
);

/// The font file used when `DIFFAD_FONT` is not set (Debian/Ubuntu package `fonts-dejavu-core`).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// Its bold face, used for titles when present.
const DEFAULT_BOLD: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf";
const FONT: &str = "sans-serif";

const GOOD: RGBColor = RGBColor(31, 119, 180);
const DEFECT: RGBColor = RGBColor(214, 39, 40);
const CAUGHT: RGBColor = RGBColor(0, 128, 60);
const TRUTH: Rgb<u8> = Rgb([255, 0, 255]);

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

fn save(buf: Vec<u8>, (w, h): (u32, u32), dest: &Path) -> Result<()> {
    RgbImage::from_raw(w, h, buf)
        .expect("buffer of the figure's size")
        .save(dest)
        .with_context(|| format!("writing {}", dest.display()))
}

fn pct(v: f64) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{:.1} %", 100.0 * v)
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.4}"))
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
    let n_good = scored.iter().filter(|s| !s.defective).count();
    let n_def = scored.len() - n_good;
    let scores: Vec<f32> = scored.iter().map(|s| s.score).collect();
    let labels: Vec<bool> = scored.iter().map(|s| s.defective).collect();
    let (Some(roc), Some(image_auroc)) = (roc_points(&scores, &labels), report.image_auroc) else {
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
    load_fonts()?;
    let mut figures = Vec::new();
    let mut skipped = Vec::new();
    let name = Path::new(&report.dataset)
        .file_name()
        .map_or(report.dataset.clone(), |n| n.to_string_lossy().to_string());

    // 1. ROC curves.
    let op = (report.false_reject_rate, 1.0 - report.escape_rate);
    draw_roc(
        &dir.join("roc_image.png"),
        &format!("Image-level ROC: {name}"),
        &roc,
        &format!("image ROC, AUROC {image_auroc:.4} ({n_good} good, {n_def} defective)"),
        Some((op, thr)),
        (
            "false positive rate (good images flagged)",
            "true positive rate (defective images caught)",
        ),
    )?;
    figures.push(Figure {
        file: "roc_image.png".into(),
        caption: format!(
            "Image-level ROC over {n_good} good and {n_def} defective images, AUROC {image_auroc:.4}; \
             the dot is the threshold {thr:.4} (false rejects {}, escapes {}).",
            pct(report.false_reject_rate),
            pct(report.escape_rate)
        ),
    });
    let flat_scores: Vec<f32> = scored.iter().flat_map(|s| s.map.iter().copied()).collect();
    let flat_labels: Vec<bool> = scored.iter().flat_map(|s| s.mask.iter().copied()).collect();
    let pixel = roc_points(&flat_scores, &flat_labels).zip(report.pixel_auroc);
    let mut pixel_json = serde_json::Value::Null;
    drop(flat_scores);
    drop(flat_labels);
    match pixel {
        Some((curve, pixel_auroc)) => {
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
            pixel_json =
                json!({"auroc_trapezoid": full_area, "distinct_scores": n_pix - 1, "points": pts});
        }
        None => {
            let why =
                "roc_pixel.png not drawn: no ground-truth mask marks a defect pixel".to_string();
            log::warn!("{why}");
            skipped.push(why);
        }
    }

    // 2. Score histograms.
    let (lo, hi) = score_range(&scores, thr);
    let bins = 30;
    let good: Vec<f32> = scored
        .iter()
        .filter(|s| !s.defective)
        .map(|s| s.score)
        .collect();
    let defective: Vec<f32> = scored
        .iter()
        .filter(|s| s.defective)
        .map(|s| s.score)
        .collect();
    let (hg, hd) = (
        histogram(&good, lo, hi, bins),
        histogram(&defective, lo, hi, bins),
    );
    draw_scores(
        &dir.join("scores.png"),
        &name,
        report,
        scored,
        (lo, hi),
        (&hg, &hd),
    )?;
    figures.push(Figure {
        file: "scores.png".into(),
        caption: format!(
            "Image scores of good (blue, n = {n_good}) and defective (red, n = {n_def}) images with the threshold {thr:.4}; below, every image's score by defect kind."
        ),
    });

    // 3. Per defect kind: best caught and worst missed.
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
        draw_kind(&dir.join(&file), &k.kind, k.n, escaped, &best, &worst, thr)?;
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

    // The numbers behind the figures, and the index.
    let figures_json = json!({
        "threshold": thr,
        "image_auroc": image_auroc,
        "pixel_auroc": report.pixel_auroc,
        "image_roc": {"auroc_trapezoid": area(&roc), "points": roc},
        "pixel_roc": pixel_json,
        "histogram": {"lo": lo, "hi": hi, "bins": bins, "good": hg, "defective": hd},
        "scores": scored.iter().map(|s| json!({"image": s.image, "kind": s.kind, "score": s.score})).collect::<Vec<_>>(),
        "kinds": kinds_json,
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

/// The best caught (highest scores at or above `thr`) and worst missed (lowest scores, so the
/// escapes first) defective tiles of `kind`; no tile in both. With few tiles the two rows share
/// them: the first row takes at most half (rounded up) unless there are more than two rows' worth.
fn pick<'a>(scored: &'a [Scored], kind: &str, thr: f32) -> (Vec<&'a Scored>, Vec<&'a Scored>) {
    let mut of_kind: Vec<&Scored> = scored.iter().filter(|s| s.kind == kind).collect();
    of_kind.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.image.cmp(&b.image)));
    let n = of_kind.len();
    let caught = of_kind.iter().filter(|s| s.score >= thr).count();
    let n_best = GRID_COLS
        .min(caught)
        .min(n.saturating_sub(GRID_COLS).max(n.div_ceil(2)));
    let best = of_kind[..n_best].to_vec();
    let worst = of_kind[n_best..]
        .iter()
        .rev()
        .take(GRID_COLS)
        .copied()
        .collect();
    (best, worst)
}

/// The heatmap overlay of one scored tile, fitted into a `CELL` square, with the ground-truth
/// outline drawn over it.
fn cell_image(s: &Scored, thr: f32) -> Result<RgbImage> {
    let frame = imagefile::load(&s.image)?;
    let over = heatmap::overlay(&frame, &s.map, s.map_width, s.map_height, thr)
        .map_err(|e| anyhow!("{}: {e}", s.image.display()))?;
    let (w, h) = over.dimensions();
    let scale = CELL as f64 / w.max(h) as f64;
    let (cw, ch) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    let filter = if scale >= 1.0 {
        imageops::FilterType::Nearest
    } else {
        imageops::FilterType::Triangle
    };
    let mut img = imageops::resize(&over, cw, ch, filter);
    let (mw, mh) = (s.map_width as usize, s.map_height as usize);
    let truth = |x: u32, y: u32| -> bool {
        s.mask[(y as usize * mh / ch as usize) * mw + x as usize * mw / cw as usize]
    };
    for y in 0..ch {
        for x in 0..cw {
            if truth(x, y)
                && [(-1i32, 0i32), (1, 0), (0, -1), (0, 1)]
                    .iter()
                    .any(|(dx, dy)| {
                        let (nx, ny) = (x as i32 + dx, y as i32 + dy);
                        nx < 0
                            || ny < 0
                            || nx as u32 >= cw
                            || ny as u32 >= ch
                            || !truth(nx as u32, ny as u32)
                    })
            {
                img.put_pixel(x, y, TRUTH);
            }
        }
    }
    Ok(img)
}

fn draw_kind(
    dest: &Path,
    kind: &str,
    n: usize,
    escaped: usize,
    best: &[&Scored],
    worst: &[&Scored],
    thr: f32,
) -> Result<()> {
    let (w, h) = KIND_SIZE;
    let mut cells = Vec::new();
    for s in best.iter().chain(worst) {
        cells.push(cell_image(s, thr)?);
    }
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let what = format!("kind_{kind}.png");
        let e = draw_err(&what);
        let root: DrawingArea<BitMapBackend, Shift> =
            BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let title = (FONT, 26).into_font().style(FontStyle::Bold).color(&BLACK);
        let head = (FONT, 19).into_font().color(&BLACK);
        let small = (FONT, 14).into_font().color(&RGBColor(90, 90, 90));
        root.draw(&Text::new(
            format!(
                "Defect kind \u{201c}{kind}\u{201d}: {n} tiles, {} caught, {escaped} escaped at threshold {thr:.4}",
                n - escaped
            ),
            (MARGIN as i32, 14),
            title,
        ))
        .map_err(&e)?;
        let rows: [(&[&Scored], String); 2] = [
            (
                best,
                format!(
                    "Best caught: the highest-scoring tiles at or above the threshold ({} shown)",
                    best.len()
                ),
            ),
            (
                worst,
                if escaped > 0 {
                    format!(
                        "Worst missed: the lowest-scoring tiles ({} shown; {escaped} escaped below the threshold)",
                        worst.len()
                    )
                } else {
                    format!(
                        "Worst missed: none escaped; the lowest-scoring tiles, closest calls first ({} shown)",
                        worst.len()
                    )
                },
            ),
        ];
        let mut next = cells.into_iter();
        for (r, (tiles, heading)) in rows.iter().enumerate() {
            let y0 = (TITLE_H + r as u32 * (ROW_HEAD_H + CELL + LABEL_H)) as i32;
            root.draw(&Text::new(
                heading.clone(),
                (MARGIN as i32, y0 + 6),
                head.clone(),
            ))
            .map_err(&e)?;
            let ty = y0 + ROW_HEAD_H as i32;
            for c in 0..GRID_COLS {
                let x = (MARGIN + c as u32 * (CELL + GAP)) as i32;
                let frame = [(x - 1, ty - 1), (x + CELL as i32, ty + CELL as i32)];
                let Some(s) = tiles.get(c) else {
                    root.draw(&Rectangle::new(
                        frame,
                        RGBColor(225, 225, 225).stroke_width(1),
                    ))
                    .map_err(&e)?;
                    root.draw(&Text::new(
                        "no more tiles",
                        (x + 50, ty + CELL as i32 / 2 - 8),
                        small.clone(),
                    ))
                    .map_err(&e)?;
                    continue;
                };
                let img = next.next().expect("one image per tile");
                let (cw, ch) = img.dimensions();
                let el = BitMapElement::<(i32, i32)>::with_owned_buffer(
                    (x, ty),
                    (cw, ch),
                    img.into_raw(),
                )
                .expect("buffer of the tile's size");
                root.draw(&el).map_err(&e)?;
                let caught = s.score >= thr;
                let color = if caught { CAUGHT } else { DEFECT };
                root.draw(&Rectangle::new(frame, color.stroke_width(2)))
                    .map_err(&e)?;
                let verdict = if caught {
                    "reject: caught"
                } else {
                    "pass: ESCAPED"
                };
                root.draw(&Text::new(
                    format!("{:.4}  {verdict}", s.score),
                    (x, ty + CELL as i32 + 6),
                    (FONT, 16).into_font().style(FontStyle::Bold).color(&color),
                ))
                .map_err(&e)?;
                let file = s
                    .image
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                root.draw(&Text::new(file, (x, ty + CELL as i32 + 26), small.clone()))
                    .map_err(&e)?;
            }
        }
        // Colour key: the map's turbo scale with the threshold, and the two contours.
        let ky = (TITLE_H + 2 * (ROW_HEAD_H + CELL + LABEL_H)) as i32 + 8;
        let (kx, kw) = (MARGIN as i32 + 120, 360i32);
        root.draw(&Text::new(
            "anomaly map",
            (MARGIN as i32, ky + 2),
            small.clone(),
        ))
        .map_err(&e)?;
        for i in 0..kw {
            let c = heatmap::turbo(i as f32 / (kw - 1) as f32);
            root.draw(&Rectangle::new(
                [(kx + i, ky), (kx + i + 1, ky + 18)],
                RGBColor(c[0], c[1], c[2]).filled(),
            ))
            .map_err(&e)?;
        }
        let tx = kx + (thr.clamp(0.0, 1.0) * (kw - 1) as f32) as i32;
        root.draw(&PathElement::new(
            vec![(tx, ky - 4), (tx, ky + 22)],
            BLACK.stroke_width(2),
        ))
        .map_err(&e)?;
        for (v, x) in [("0", kx - 16), ("1", kx + kw + 6)] {
            root.draw(&Text::new(v, (x, ky + 2), small.clone()))
                .map_err(&e)?;
        }
        let label = format!("threshold {thr:.3}");
        let lw = root.estimate_text_size(&label, &small).map_err(&e)?.0 as i32;
        root.draw(&Text::new(
            label,
            ((tx - lw / 2).clamp(kx, kx + kw - lw), ky + 24),
            small.clone(),
        ))
        .map_err(&e)?;
        let lx = kx + kw + 50;
        root.draw(&Rectangle::new(
            [(lx, ky + 2), (lx + 22, ky + 16)],
            ShapeStyle::from(&WHITE).filled(),
        ))
        .map_err(&e)?;
        root.draw(&Rectangle::new(
            [(lx, ky + 2), (lx + 22, ky + 16)],
            RGBColor(150, 150, 150).stroke_width(1),
        ))
        .map_err(&e)?;
        root.draw(&Text::new(
            "map ≥ threshold (contour)",
            (lx + 30, ky + 2),
            small.clone(),
        ))
        .map_err(&e)?;
        let lx = lx + 250;
        root.draw(&Rectangle::new(
            [(lx, ky + 2), (lx + 22, ky + 16)],
            RGBColor(TRUTH.0[0], TRUTH.0[1], TRUTH.0[2]).filled(),
        ))
        .map_err(&e)?;
        root.draw(&Text::new(
            "ground-truth defect (contour)",
            (lx + 30, ky + 2),
            small.clone(),
        ))
        .map_err(&e)?;
        root.present().map_err(&e)?;
    }
    save(buf, (w, h), dest)
}

fn index_md(model: &Path, r: &EvalReport, figures: &[Figure], skipped: &[String]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "# Evaluation report\n");
    let _ = writeln!(
        s,
        "Model `{}` on `{}`: {} images scored ({} unreadable), threshold {:.5}. \
         Written by `diffad eval --report`; the numbers behind the figures are in \
         [figures.json](figures.json).\n",
        model.display(),
        r.dataset,
        r.images,
        r.failed,
        r.threshold
    );
    let _ = writeln!(
        s,
        "| image AUROC | pixel AUROC | PRO (FPR ≤ 30 %) | false rejects | escapes |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
    let _ = writeln!(
        s,
        "| {} | {} | {} | {} | {} |\n",
        opt(r.image_auroc),
        opt(r.pixel_auroc),
        opt(r.pro),
        pct(r.false_reject_rate),
        pct(r.escape_rate)
    );
    let _ = writeln!(s, "| kind | images | mean score | rejected |");
    let _ = writeln!(s, "| --- | --- | --- | --- |");
    for k in &r.kinds {
        let _ = writeln!(
            s,
            "| {} | {} | {:.4} | {} |",
            k.kind,
            k.n,
            k.mean_score,
            pct(k.rejected)
        );
    }
    let _ = writeln!(s, "\n## Figures\n");
    for f in figures {
        let _ = writeln!(s, "![{}]({})\n", f.file, f.file);
        let _ = writeln!(s, "[`{}`]({}): {}\n", f.file, f.file, f.caption);
    }
    for why in skipped {
        let _ = writeln!(s, "- {why}");
    }
    s
}

#[cfg(test)]
mod tests;
