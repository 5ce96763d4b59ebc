//! `scores.png`: the histograms of good and defective image scores above, every image's score
//! by defect kind below, both on the same score axis with the threshold.

use std::path::Path;

use anyhow::Result;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::{draw_err, legend, pct, save, DEFECT, FONT, GOOD, SCORES_SIZE};
use crate::offline::eval::{EvalReport, Scored};

/// The drawing area both panels are drawn on.
type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

/// Histogram of `values` over `bins` equal bins spanning `[lo, hi]`.
pub fn histogram(values: &[f32], lo: f64, hi: f64, bins: usize) -> Vec<usize> {
    let mut counts = vec![0; bins];
    for &v in values {
        let b = (((v as f64 - lo) / (hi - lo)) * bins as f64).floor();
        counts[(b.max(0.0) as usize).min(bins - 1)] += 1;
    }
    counts
}

/// The score axis: every score and the threshold, with a little room either side.
pub(super) fn score_range(scores: &[f32], thr: f32) -> (f64, f64) {
    let lo = scores.iter().fold(thr, |a, &b| a.min(b)) as f64;
    let hi = scores.iter().fold(thr, |a, &b| a.max(b)) as f64;
    let pad = ((hi - lo) * 0.04).max(1e-3);
    (lo - pad, hi + pad)
}

/// Draw `scores.png` into `dest` from the histograms `hg` (good) and `hd` (defective) over
/// `[lo, hi]`.
pub(super) fn draw_scores(
    dest: &Path,
    name: &str,
    report: &EvalReport,
    scored: &[Scored],
    (lo, hi): (f64, f64),
    (hg, hd): (&[usize], &[usize]),
) -> Result<()> {
    let (w, h) = SCORES_SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let e = draw_err("scores.png");
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let (top, bottom) = root.split_vertically(h * 55 / 100);
        let (kinds, labels) = kind_rows(report);
        // Both panels share the score axis's position, so both leave room for the widest label.
        let label_font = TextStyle::from((FONT, 16).into_font());
        let mut label_w = 0;
        for l in &labels {
            label_w = label_w.max(root.estimate_text_size(l, &label_font).map_err(&e)?.0);
        }
        draw_histograms(&top, name, report, (lo, hi), (hg, hd), label_w)?;
        draw_strips(
            &bottom,
            report,
            scored,
            (lo, hi),
            (&kinds, &labels),
            label_w,
        )?;
        root.present().map_err(&e)?;
    }
    save(buf, (w, h), dest)
}

/// The defect kinds, good first, and each one's axis label (images, share rejected).
fn kind_rows(report: &EvalReport) -> (Vec<&str>, Vec<String>) {
    let mut kinds: Vec<&str> = report.kinds.iter().map(|k| k.kind.as_str()).collect();
    kinds.sort_by_key(|k| (*k != "good", *k));
    let labels = kinds
        .iter()
        .map(|k| {
            let row = report
                .kinds
                .iter()
                .find(|r| r.kind == *k)
                .expect("kind row");
            format!("{k} ({}): {} rejected", row.n, pct(row.rejected))
        })
        .collect();
    (kinds, labels)
}

/// The upper panel: histograms of good and defective images with the threshold.
fn draw_histograms(
    top: &Area,
    name: &str,
    report: &EvalReport,
    (lo, hi): (f64, f64),
    (hg, hd): (&[usize], &[usize]),
    label_w: u32,
) -> Result<()> {
    let e = draw_err("scores.png");
    let thr = report.threshold as f64;
    let bins = hg.len();
    let bw = (hi - lo) / bins as f64;
    let ymax = hg.iter().chain(hd).copied().max().unwrap_or(1).max(1) as f64 * 1.2;
    let mut chart = ChartBuilder::on(top)
        .caption(
            format!(
                "Image scores: {name} (false rejects {}, escapes {})",
                pct(report.false_reject_rate),
                pct(report.escape_rate)
            ),
            (FONT, 24).into_font().style(FontStyle::Bold),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(label_w + 24)
        .build_cartesian_2d(lo..hi, 0f64..ymax)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .x_desc("image score")
        .y_desc("images per bin")
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 16))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .light_line_style(WHITE)
        .draw()
        .map_err(&e)?;
    for (counts, color, label) in [
        (hg, GOOD, format!("good (n = {})", hg.iter().sum::<usize>())),
        (
            hd,
            DEFECT,
            format!("defective (n = {})", hd.iter().sum::<usize>()),
        ),
    ] {
        chart
            .draw_series(
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, &c)| c > 0)
                    .map(|(i, &c)| {
                        let x0 = lo + i as f64 * bw;
                        Rectangle::new([(x0, 0.0), (x0 + bw, c as f64)], color.mix(0.5).filled())
                    }),
            )
            .map_err(&e)?
            .label(label)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 7), (x + 18, y + 7)], color.mix(0.5).filled())
            });
    }
    chart
        .draw_series(LineSeries::new(
            vec![(thr, 0.0), (thr, ymax)],
            BLACK.stroke_width(2),
        ))
        .map_err(&e)?
        .label(format!("threshold {thr:.4}"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], BLACK.stroke_width(2)));
    chart
        .draw_series(std::iter::once(Text::new(
            format!("threshold {thr:.4}"),
            (thr + (hi - lo) * 0.008, ymax * 0.97),
            (FONT, 17).into_font(),
        )))
        .map_err(&e)?;
    legend(&mut chart, SeriesLabelPosition::UpperRight).map_err(&e)?;
    Ok(())
}

/// The lower panel: one row of dots per defect kind, one dot per image, with the threshold.
fn draw_strips(
    bottom: &Area,
    report: &EvalReport,
    scored: &[Scored],
    (lo, hi): (f64, f64),
    (kinds, labels): (&[&str], &[String]),
    label_w: u32,
) -> Result<()> {
    let e = draw_err("scores.png");
    let thr = report.threshold as f64;
    let n = kinds.len() as i32;
    let mut chart = ChartBuilder::on(bottom)
        .caption(
            "Every image's score by defect kind",
            (FONT, 20).into_font().style(FontStyle::Bold),
        )
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(label_w + 24)
        .build_cartesian_2d(lo..hi, (0..n - 1).into_segmented())
        .map_err(&e)?;
    let fmt = |v: &SegmentValue<i32>| match v {
        SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
        _ => String::new(),
    };
    chart
        .configure_mesh()
        .x_desc("image score")
        .axis_desc_style((FONT, 18))
        .label_style((FONT, 16))
        .y_labels(kinds.len())
        .y_label_formatter(&fmt)
        .disable_y_mesh()
        .light_line_style(WHITE)
        .draw()
        .map_err(&e)?;
    for (i, k) in kinds.iter().enumerate() {
        let color = if *k == "good" { GOOD } else { DEFECT };
        chart
            .draw_series(scored.iter().filter(|s| s.kind == *k).map(|s| {
                Circle::new(
                    (s.score as f64, SegmentValue::CenterOf(i as i32)),
                    6,
                    color.mix(0.45).filled(),
                )
            }))
            .map_err(&e)?;
    }
    chart
        .draw_series(LineSeries::new(
            vec![(thr, SegmentValue::Exact(0)), (thr, SegmentValue::Exact(n))],
            BLACK.stroke_width(2),
        ))
        .map_err(&e)?;
    Ok(())
}
