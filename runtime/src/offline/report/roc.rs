//! The ROC curves: their points and area (checked against `eval`'s AUROC) and the figure.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::{draw_err, legend, pct, save, DEFECT, FONT, GOOD, ROC_SIZE};

/// The ROC curve of `scores` against `labels` (true = defective): `(fpr, tpr)` from (0, 0) to
/// (1, 1), one point per distinct score, ties taken together (a diagonal step), so the
/// trapezoidal area equals [`crate::offline::metrics::auroc`]. `None` when a class is absent.
pub fn roc_points(scores: &[f32], labels: &[bool]) -> Option<Vec<(f64, f64)>> {
    assert_eq!(scores.len(), labels.len());
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut out = vec![(0.0, 0.0)];
    let mut i = 0;
    while i < idx.len() {
        let s = scores[idx[i]];
        while i < idx.len() && scores[idx[i]] == s {
            if labels[idx[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        out.push((fp as f64 / neg as f64, tp as f64 / pos as f64));
    }
    Some(out)
}

/// Trapezoidal area under a curve of `(x, y)` points.
pub fn area(points: &[(f64, f64)]) -> f64 {
    points
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum()
}

/// Drop points closer than `step` (in both coordinates) to the last kept one; keeps the ends.
pub(super) fn thin(points: &[(f64, f64)], step: f64) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (i, &p) in points.iter().enumerate() {
        let keep = match out.last() {
            None => true,
            Some(&(x, y)) => {
                i + 1 == points.len() || (p.0 - x).abs() >= step || (p.1 - y).abs() >= step
            }
        };
        if keep {
            out.push(p);
        }
    }
    out
}

/// One ROC curve into `dest`, with the threshold's operating point when given.
pub(super) fn draw_roc(
    dest: &Path,
    title: &str,
    points: &[(f64, f64)],
    label: &str,
    operating: Option<((f64, f64), f32)>,
    (x_desc, y_desc): (&str, &str),
) -> Result<()> {
    let (w, h) = ROC_SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let e = draw_err(title);
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(&e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FONT, 26).into_font().style(FontStyle::Bold))
            .margin(16)
            .x_label_area_size(56)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.01f64..1.01f64, -0.01f64..1.01f64)
            .map_err(&e)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .axis_desc_style((FONT, 18))
            .label_style((FONT, 16))
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .light_line_style(WHITE)
            .draw()
            .map_err(&e)?;
        chart
            .draw_series(DashedLineSeries::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                8,
                6,
                RGBColor(120, 120, 120).stroke_width(1),
            ))
            .map_err(&e)?
            .label("chance (AUROC 0.5)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], RGBColor(120, 120, 120)));
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                GOOD.stroke_width(3),
            ))
            .map_err(&e)?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], GOOD.stroke_width(3)));
        if let Some(((fpr, tpr), thr)) = operating {
            chart
                .draw_series(std::iter::once(Circle::new((fpr, tpr), 7, DEFECT.filled())))
                .map_err(&e)?
                .label(format!(
                    "threshold {thr:.4}: false rejects {}, caught {}",
                    pct(fpr),
                    pct(tpr)
                ))
                .legend(|(x, y)| Circle::new((x + 12, y), 6, DEFECT.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight).map_err(&e)?;
        root.present().map_err(&e)?;
    }
    save(buf, (w, h), dest)
}
