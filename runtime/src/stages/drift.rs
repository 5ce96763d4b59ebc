//! The calibration watch: do the line's scores still look like the good parts the threshold was
//! calibrated on, and is the reject rate where the line engineer expects it?
//!
//! A threshold is the upper quantile of good scores from one place (a band of a photograph, a
//! batch of parts, one lighting). Parts from elsewhere can score higher as a whole, and then
//! good parts are rejected at many times the calibrated rate without any single part looking
//! wrong: `tiles-gravel` calibrated on x < 384 rejects 7 % of the good tiles from x >= 384,
//! against 0.5 % aimed for. Most parts on a line are good, so the median score of the last
//! parts should sit at the calibration's good median; the watch raises `score_drift` when it
//! moves by more than `max_shift_std` calibration standard deviations (0.5, the same rule as
//! `calibrate --check-good`), and `reject_rate` when more than `max_reject_rate` of the last
//! parts scored at or above the threshold. Each alarm is raised once and cleared once.

use crate::config::Invalid;
use crate::events::DriftFigures;
use serde::Deserialize;

/// Shortest window accepted: the median of fewer parts moves by chance as much as by drift.
pub const MIN_WINDOW: usize = 20;
/// Longest window accepted (memory, and a drift seen only after days is seen too late).
pub const MAX_WINDOW: usize = 100_000;
/// An alarm clears when its figure falls below this share of its limit, so that a figure
/// hovering at the limit does not raise and clear it part after part.
const CLEAR_AT: f64 = 0.8;

/// `[drift]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Inspected parts in the sliding window; 0 turns the watch off.
    pub window: usize,
    /// Alarm when the window's median score is further than this from the calibration's good
    /// median, in standard deviations of the calibration's good scores.
    pub max_shift_std: f64,
    /// Alarm when more than this share of the window's parts score at or above the threshold
    /// (the line's expected defect rate plus a margin); absent: no reject-rate alarm.
    pub max_reject_rate: Option<f64>,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            window: 200,
            max_shift_std: 0.5,
            max_reject_rate: None,
        }
    }
}

impl DriftConfig {
    /// Check the window and the limits.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.window != 0 && !(MIN_WINDOW..=MAX_WINDOW).contains(&self.window) {
            return Err(Invalid::new(
                "drift.window",
                format!("must be 0 (off) or within {MIN_WINDOW}..={MAX_WINDOW} parts"),
            ));
        }
        if !(self.max_shift_std > 0.0 && self.max_shift_std.is_finite()) {
            return Err(Invalid::new(
                "drift.max_shift_std",
                "must be a number > 0 (0.5 is the rule `calibrate --check-good` uses)",
            ));
        }
        if let Some(r) = self.max_reject_rate {
            if !(r > 0.0 && r < 1.0) {
                return Err(Invalid::new(
                    "drift.max_reject_rate",
                    "must be within (0, 1): the share of parts, e.g. 0.05 for 5 %",
                ));
            }
        }
        Ok(())
    }
}

/// The good-part scores a model was calibrated on (manifest `normal_scores`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reference {
    /// Median good score.
    pub median: f64,
    /// Standard deviation of the good scores.
    pub std: f64,
    /// Good images behind the figures.
    pub n: u64,
}

impl Reference {
    /// Read `normal_scores` as `python -m exporter calibrate` writes it (`p50`, `std`, `n`).
    pub fn from_manifest(v: &serde_json::Value) -> Result<Self, String> {
        let num = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| format!("normal_scores.{k} is missing or not a number"))
        };
        let (median, std, n) = (num("p50")?, num("std")?, num("n")?);
        if !median.is_finite() {
            return Err(format!(
                "normal_scores.p50 is {median}, not a finite number"
            ));
        }
        if !(std > 0.0 && std.is_finite()) {
            return Err(format!("normal_scores.std is {std}: must be > 0"));
        }
        if !(n >= 1.0 && n.fract() == 0.0) {
            return Err(format!(
                "normal_scores.n is {n}: must be a whole count >= 1"
            ));
        }
        Ok(Self {
            median,
            std,
            n: n as u64,
        })
    }
}

/// An alarm the watch raises or clears.
#[derive(Debug, Clone, PartialEq)]
pub struct Alarm {
    /// `score_drift` or `reject_rate`.
    pub code: &'static str,
    /// What was seen and what to do.
    pub message: String,
    /// Raised (true) or cleared (false).
    pub active: bool,
}

/// The sliding window of scores and what it has already said.
#[derive(Debug)]
pub struct DriftWatch {
    window: usize,
    max_shift: f64,
    max_rate: Option<f64>,
    reference: Option<Reference>,
    threshold: f32,
    /// The last `window` scores, oldest overwritten first.
    ring: Vec<f32>,
    next: usize,
    /// Scores in the ring at or above the threshold.
    rejects: usize,
    /// Reused for the median, so a part costs no allocation.
    scratch: Vec<f32>,
    shifted: bool,
    rate_high: bool,
    figures: Option<DriftFigures>,
}

impl DriftWatch {
    /// A watch with `config`'s window and limits; without a `reference` only the reject rate
    /// is watched.
    pub fn new(config: &DriftConfig, reference: Option<Reference>, threshold: f32) -> Self {
        Self {
            window: config.window,
            max_shift: config.max_shift_std,
            max_rate: config.max_reject_rate,
            reference,
            threshold,
            ring: Vec::with_capacity(config.window),
            next: 0,
            rejects: 0,
            scratch: Vec::with_capacity(config.window),
            shifted: false,
            rate_high: false,
            figures: None,
        }
    }

    /// Whether it watches anything at all.
    pub fn is_on(&self) -> bool {
        self.window > 0 && (self.reference.is_some() || self.max_rate.is_some())
    }

    /// Take one inspected part's score; the alarms raised or cleared by it. Scores that are not
    /// finite never reach a verdict (the part fails safe) and are left out.
    pub fn observe(&mut self, score: f32) -> Vec<Alarm> {
        if !self.is_on() || !score.is_finite() {
            return Vec::new();
        }
        let t = self.threshold;
        let high = |s: f32| usize::from(s >= t);
        if self.ring.len() < self.window {
            self.ring.push(score);
        } else {
            self.rejects -= high(self.ring[self.next]);
            self.ring[self.next] = score;
            self.next = (self.next + 1) % self.window;
        }
        self.rejects += high(score);
        if self.ring.len() < self.window {
            return Vec::new();
        }
        let median = self.median();
        let shift = self.reference.map(|r| (median - r.median) / r.std);
        let rate = self.rejects as f64 / self.window as f64;
        self.figures = Some(DriftFigures {
            window: self.window,
            median,
            shift_std: shift,
            reject_rate: rate,
        });
        let mut alarms = Vec::new();
        if let (Some(r), Some(shift)) = (self.reference, shift) {
            if let Some(a) = self.shift_alarm(median, shift, r) {
                alarms.push(a);
            }
        }
        if let Some(a) = self.rate_alarm(rate) {
            alarms.push(a);
        }
        alarms
    }

    /// The window's figures after the last part; none until the window is full.
    pub fn figures(&self) -> Option<DriftFigures> {
        self.figures
    }

    /// Median of the window (the mean of the two middle scores for an even window).
    fn median(&mut self) -> f64 {
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.ring);
        let n = self.scratch.len();
        let (lo_half, upper, _) = self.scratch.select_nth_unstable_by(n / 2, f32::total_cmp);
        let upper = f64::from(*upper);
        if n % 2 == 1 {
            return upper;
        }
        let lower = lo_half.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        (f64::from(lower) + upper) / 2.0
    }

    fn shift_alarm(&mut self, median: f64, shift: f64, r: Reference) -> Option<Alarm> {
        let now = crossed(&mut self.shifted, shift.abs(), self.max_shift)?;
        let what = format!(
            "median score of the last {} parts {median:.4} is {:.2} std {} the calibration's good median {:.4} (std {:.4}, {} good images)",
            self.window,
            shift.abs(),
            if shift >= 0.0 { "above" } else { "below" },
            r.median,
            r.std,
            r.n
        );
        let message = match (now, shift >= 0.0) {
            (true, true) => format!(
                "{what}: good parts here score unlike those the threshold was calibrated on, so \
                 more of them are rejected than calibrated for; check camera, lighting and \
                 material, then recalibrate on a few hundred good parts from this line \
                 (`python -m exporter calibrate`)"
            ),
            (true, false) => format!(
                "{what}: parts score lower than the good parts the threshold was calibrated on, \
                 as a blurred, dark or blank image does, and defects may pass; check the camera \
                 (focus, exposure, lens), then recalibrate on good parts from this line"
            ),
            (false, _) => format!("{what}: back within {:.2} std, cleared", self.max_shift),
        };
        Some(Alarm {
            code: "score_drift",
            message,
            active: now,
        })
    }

    fn rate_alarm(&mut self, rate: f64) -> Option<Alarm> {
        let max = self.max_rate?;
        let now = crossed(&mut self.rate_high, rate, max)?;
        let what = format!(
            "{} of the last {} parts ({:.1} %) scored at or above the threshold {}",
            self.rejects,
            self.window,
            100.0 * rate,
            self.threshold
        );
        let message = if now {
            format!(
                "{what}, more than drift.max_reject_rate {:.1} %: a run of bad parts upstream, or \
                 a threshold that does not fit this line (see score_drift)",
                100.0 * max
            )
        } else {
            format!("{what}: cleared")
        };
        Some(Alarm {
            code: "reject_rate",
            message,
            active: now,
        })
    }
}

/// The alarm's new state when `figure` crossed its limit: raised above `limit`, cleared only
/// below `CLEAR_AT * limit`; `None` while it stays as it was.
fn crossed(raised: &mut bool, figure: f64, limit: f64) -> Option<bool> {
    let now = figure > if *raised { CLEAR_AT * limit } else { limit };
    if now == *raised {
        return None;
    }
    *raised = now;
    Some(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Reference {
        Reference {
            median: 0.4,
            std: 0.1,
            n: 400,
        }
    }

    fn config(window: usize) -> DriftConfig {
        DriftConfig {
            window,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_validate_and_bad_values_name_their_key() {
        DriftConfig::default().validate().unwrap();
        config(0).validate().unwrap();
        for (c, key) in [
            (config(5), "drift.window"),
            (config(MAX_WINDOW + 1), "drift.window"),
            (
                DriftConfig {
                    max_shift_std: 0.0,
                    ..Default::default()
                },
                "drift.max_shift_std",
            ),
            (
                DriftConfig {
                    max_shift_std: f64::NAN,
                    ..Default::default()
                },
                "drift.max_shift_std",
            ),
            (
                DriftConfig {
                    max_reject_rate: Some(1.0),
                    ..Default::default()
                },
                "drift.max_reject_rate",
            ),
        ] {
            assert_eq!(c.validate().unwrap_err().key, key);
        }
    }

    #[test]
    fn reference_reads_the_calibration_statistics_and_refuses_broken_ones() {
        let v = serde_json::json!({"n": 400, "mean": 0.39, "std": 0.12, "p50": 0.38, "p99": 0.6});
        assert_eq!(
            Reference::from_manifest(&v).unwrap(),
            Reference {
                median: 0.38,
                std: 0.12,
                n: 400
            }
        );
        for (v, says) in [
            (serde_json::json!({"n": 400, "std": 0.1}), "p50"),
            (serde_json::json!({"n": 400, "std": 0.0, "p50": 0.3}), "std"),
            (serde_json::json!({"n": 0, "std": 0.1, "p50": 0.3}), "n"),
            (serde_json::json!({"n": 4, "std": "x", "p50": 0.3}), "std"),
        ] {
            let e = Reference::from_manifest(&v).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn nothing_is_said_before_the_window_is_full() {
        let mut w = DriftWatch::new(&config(20), Some(reference()), 0.7);
        for _ in 0..19 {
            assert!(w.observe(0.9).is_empty());
        }
        let a = w.observe(0.9);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].code, "score_drift");
        assert!(a[0].active);
    }

    #[test]
    fn a_shift_is_raised_once_and_cleared_once_with_hysteresis() {
        let mut w = DriftWatch::new(&config(20), Some(reference()), 0.7);
        // Good parts at the calibration median: nothing, however long.
        for i in 0..100 {
            let s = 0.4 + 0.01 * ((i % 7) as f32 - 3.0);
            assert!(w.observe(s).is_empty(), "part {i}");
        }
        // The median moves to 0.46 (0.6 std): raised when it crosses, then quiet.
        let mut said = Vec::new();
        for _ in 0..40 {
            said.extend(w.observe(0.46));
        }
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].active && said[0].message.contains("0.60 std above"));
        assert!(said[0].message.contains("recalibrate"));
        // 0.445 (0.45 std) is below the limit but above the clearing point (0.4 std): still raised.
        for _ in 0..40 {
            assert!(w.observe(0.445).is_empty());
        }
        let mut said = Vec::new();
        for _ in 0..40 {
            said.extend(w.observe(0.41));
        }
        assert_eq!(said.len(), 1);
        assert!(!said[0].active && said[0].message.contains("cleared"));
    }

    #[test]
    fn figures_follow_the_window() {
        let cfg = DriftConfig {
            window: 20,
            max_reject_rate: Some(0.5),
            ..Default::default()
        };
        let mut w = DriftWatch::new(&cfg, Some(reference()), 0.7);
        for _ in 0..19 {
            w.observe(0.5);
        }
        assert_eq!(w.figures(), None, "not before the window is full");
        w.observe(0.9);
        let f = w.figures().unwrap();
        assert_eq!((f.window, f.median), (20, 0.5));
        assert!((f.shift_std.unwrap() - 1.0).abs() < 1e-6, "{f:?}");
        assert!((f.reject_rate - 0.05).abs() < 1e-12, "{f:?}");
        assert_eq!(
            f.to_string(),
            "last 20 parts: median score 0.5000 (+1.00 std from the calibration's good median), 5.0 % at or above the threshold"
        );
        let mut blind = DriftWatch::new(&cfg, None, 0.7);
        for _ in 0..20 {
            blind.observe(0.5);
        }
        assert_eq!(blind.figures().unwrap().shift_std, None);
    }

    #[test]
    fn a_downward_shift_points_at_the_camera() {
        let mut w = DriftWatch::new(&config(21), Some(reference()), 0.7);
        let said: Vec<Alarm> = (0..21).flat_map(|_| w.observe(0.2)).collect();
        assert_eq!(said.len(), 1);
        assert!(
            said[0].message.contains("2.00 std below"),
            "{}",
            said[0].message
        );
        assert!(said[0].message.contains("camera"));
    }

    #[test]
    fn a_few_defects_do_not_move_the_median() {
        // One part in ten scores far above the threshold; the other nine are good.
        let mut w = DriftWatch::new(&config(200), Some(reference()), 0.7);
        for i in 0..2000 {
            let s = if i % 10 == 0 {
                0.95
            } else {
                0.4 + 0.02 * ((i % 9) as f32 - 4.0)
            };
            assert!(w.observe(s).is_empty(), "part {i}");
        }
    }

    #[test]
    fn the_reject_rate_counts_the_window_only() {
        let cfg = DriftConfig {
            window: 20,
            max_reject_rate: Some(0.2),
            ..Default::default()
        };
        // No reference: the rate is still watched.
        let mut w = DriftWatch::new(&cfg, None, 0.7);
        assert!(w.is_on());
        // 4 of 20 at the threshold (inclusive, as decide is): 20 %, not more.
        let mut said = Vec::new();
        for i in 0..20 {
            said.extend(w.observe(if i % 5 == 4 { 0.7 } else { 0.3 }));
        }
        assert!(said.is_empty(), "{said:?}");
        said.extend(w.observe(0.8));
        assert_eq!(said.len(), 1, "5 of the last 20: {said:?}");
        assert!(said[0].active && said[0].message.contains("5 of the last 20 parts (25.0 %)"));
        // Good parts push the high ones out of the window: cleared below 16 %.
        let mut said = Vec::new();
        for _ in 0..20 {
            said.extend(w.observe(0.3));
        }
        assert_eq!(said.len(), 1);
        assert!(!said[0].active);
    }

    #[test]
    fn off_when_told_or_when_there_is_nothing_to_compare_with() {
        let mut off = DriftWatch::new(&config(0), Some(reference()), 0.7);
        let mut blind = DriftWatch::new(&config(20), None, 0.7);
        assert!(!off.is_on() && !blind.is_on());
        for _ in 0..100 {
            assert!(off.observe(0.99).is_empty() && blind.observe(0.99).is_empty());
        }
    }

    #[test]
    fn scores_that_are_not_finite_are_left_out() {
        let mut w = DriftWatch::new(&config(20), Some(reference()), 0.7);
        for _ in 0..19 {
            w.observe(0.4);
        }
        assert!(w.observe(f32::NAN).is_empty());
        assert!(w.observe(f32::INFINITY).is_empty());
        assert!(w.observe(0.4).is_empty(), "the window is full only now");
    }

    #[test]
    fn the_median_of_an_even_window_is_the_mean_of_the_middle_two() {
        let mut w = DriftWatch::new(&config(20), Some(reference()), 0.7);
        for i in 0..20 {
            w.observe(i as f32);
        }
        assert_eq!(w.median(), 9.5);
        w.observe(100.0); // replaces 0: 1..=19 and 100
        assert_eq!(w.median(), 10.5);
    }
}
