//! The trade-off between false rejects and escapes as the threshold moves, and the operating
//! points a line engineer chooses from. The exporter's `exporter/sweep.py` implements the same
//! rules, so `diffad eval --sweep` and `python -m exporter evaluate --sweep` print the same table.

use serde::Serialize;

/// Escape-rate targets, each answered with the fewest false rejects.
pub const ESCAPE_TARGETS: [f64; 6] = [0.0, 0.01, 0.02, 0.05, 0.10, 0.20];
/// False-reject targets, each answered with the fewest escapes.
pub const FRR_TARGETS: [f64; 5] = [0.005, 0.01, 0.02, 0.05, 0.10];

/// One operating point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// `escapes<=X` or `false_rejects<=Y` (fractions, as Python prints them).
    pub target: String,
    /// The threshold: midway between the deciding score and the next lower one.
    pub threshold: f64,
    /// Good parts rejected, as a share.
    pub frr: f64,
    /// Defective parts passed, as a share.
    pub escape: f64,
    /// Good parts rejected.
    pub false_rejects: usize,
    /// Defective parts passed.
    pub escapes: usize,
}

/// The operating points of a set of scores.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sweep {
    /// Good images.
    pub good: usize,
    /// Defective images.
    pub defective: usize,
    /// Operating points, escape targets first.
    pub points: Vec<Point>,
}

/// A number as C's `%g` prints these (`0`, `0.05`, `0.5`, `10`), as the exporter names them.
fn pct_g(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() {
        "0".into()
    } else {
        s.into()
    }
}

/// `text` left-aligned in `width - 1` columns and one space, even when it is wider.
fn cell(text: &str, width: usize) -> String {
    format!("{text:<w$} ", w = width - 1)
}

/// The operating points of `good` and `defective` image scores (a part is rejected when its
/// score is at or above the threshold).
pub fn sweep(good: &[f32], defective: &[f32]) -> Sweep {
    let mut g: Vec<f64> = good.iter().map(|&s| f64::from(s)).collect();
    let mut d: Vec<f64> = defective.iter().map(|&s| f64::from(s)).collect();
    g.sort_by(f64::total_cmp);
    d.sort_by(f64::total_cmp);
    let mut cands: Vec<f64> = g
        .iter()
        .chain(&d)
        .copied()
        .filter(|s| s.is_finite())
        .collect();
    cands.sort_by(f64::total_cmp);
    cands.dedup();
    // Sorted scores: counts on either side of a threshold by binary search.
    let false_rejects = |t: f64| g.len() - g.partition_point(|&s| s < t);
    let escapes = |t: f64| d.partition_point(|&s| s < t);
    let share = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    let point = |target: String, i: usize| {
        let t = if i == 0 {
            cands[0]
        } else {
            (cands[i] + cands[i - 1]) / 2.0
        };
        let (fr, es) = (false_rejects(t), escapes(t));
        Point {
            target,
            threshold: t,
            frr: share(fr, g.len()),
            escape: share(es, d.len()),
            false_rejects: fr,
            escapes: es,
        }
    };
    let mut points = Vec::new();
    if !d.is_empty() {
        for x in ESCAPE_TARGETS {
            let best = (0..cands.len())
                .rev()
                .find(|&i| share(escapes(cands[i]), d.len()) <= x);
            if let Some(i) = best {
                points.push(point(format!("escapes<={}", pct_g(x)), i));
            }
        }
    }
    if !g.is_empty() {
        for y in FRR_TARGETS {
            let best = (0..cands.len()).find(|&i| share(false_rejects(cands[i]), g.len()) <= y);
            if let Some(i) = best {
                points.push(point(format!("false_rejects<={}", pct_g(y)), i));
            }
        }
    }
    Sweep {
        good: g.len(),
        defective: d.len(),
        points,
    }
}

impl std::fmt::Display for Sweep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Column for column the exporter's `format_sweep`.
        writeln!(
            f,
            "{}{}{}escapes",
            cell("target", 23),
            cell("threshold", 12),
            cell("false rejects", 21)
        )?;
        for p in &self.points {
            let (what, v) = p.target.split_once("<=").unwrap_or((&p.target, "0"));
            let name = if what == "escapes" {
                "escapes"
            } else {
                "false rejects"
            };
            let label = format!(
                "{name} <= {}%",
                pct_g(v.parse::<f64>().unwrap_or(0.0) * 100.0)
            );
            let fr = format!("{:.1} % ({}/{})", 100.0 * p.frr, p.false_rejects, self.good);
            let es = format!(
                "{:.1} % ({}/{})",
                100.0 * p.escape,
                p.escapes,
                self.defective
            );
            writeln!(
                f,
                "{}{}{}{es}",
                cell(&label, 23),
                cell(&format!("{:.6}", p.threshold), 12),
                cell(&fr, 21)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operating_points_sit_between_samples_and_meet_their_targets() {
        let good = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
        let bad = [0.55f32, 0.85, 0.95, 1.2];
        let s = sweep(&good, &bad);
        let p = &s.points[0];
        // No escapes: the threshold must sit below 0.55, midway to 0.5.
        assert_eq!(p.target, "escapes<=0");
        assert!((p.threshold - 0.525).abs() < 1e-6, "{p:?}");
        assert_eq!((p.false_rejects, p.escapes), (5, 0));
        // 20 % escapes allowed: one of four may pass, so the cut moves above 0.55.
        let p = s
            .points
            .iter()
            .find(|p| p.target == "escapes<=0.2")
            .unwrap();
        assert_eq!((p.false_rejects, p.escapes), (5, 0), "{p:?}");
        let p = s
            .points
            .iter()
            .find(|p| p.target == "false_rejects<=0.1")
            .unwrap();
        assert_eq!((p.false_rejects, p.escapes), (1, 2), "{p:?}");
        assert!((p.threshold - 0.925).abs() < 1e-6, "{p:?}");
        let table = s.to_string();
        assert!(table.contains("escapes <= 0%"), "{table}");
        assert!(
            table.contains("false rejects <= 0.5%")
                || !s.points.iter().any(|p| p.target == "false_rejects<=0.005"),
            "{table}"
        );
    }

    /// The exporter's test_format_sweep_rows, row for row.
    #[test]
    fn the_table_matches_the_exporters() {
        let s = Sweep {
            good: 128,
            defective: 48,
            points: vec![Point {
                target: "escapes<=0.05".into(),
                threshold: 0.412345,
                frr: 4.0 / 128.0,
                escape: 2.0 / 48.0,
                false_rejects: 4,
                escapes: 2,
            }],
        };
        let t = s.to_string();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "target                 threshold   false rejects        escapes"
        );
        assert_eq!(
            lines[1],
            "escapes <= 5%          0.412345    3.1 % (4/128)        4.2 % (2/48)"
        );
    }

    #[test]
    fn ties_and_missing_groups() {
        // Only observed scores are candidates: no cut among three equal good scores rejects
        // fewer than all of them, so no false-reject target is met and none is printed.
        let s = sweep(&[0.5, 0.5, 0.5], &[]);
        assert!(s.points.is_empty(), "{s:?}");
        let s = sweep(&[], &[0.3, 0.3]);
        assert_eq!(s.points.len(), ESCAPE_TARGETS.len());
        assert!(s.points.iter().all(|p| p.escapes == 0));
        assert_eq!(
            (
                pct_g(0.0).as_str(),
                pct_g(0.05).as_str(),
                pct_g(0.005).as_str()
            ),
            ("0", "0.05", "0.005")
        );
        assert_eq!(
            (
                pct_g(0.0).as_str(),
                pct_g(0.5).as_str(),
                pct_g(10.0).as_str()
            ),
            ("0", "0.5", "10")
        );
    }
}
