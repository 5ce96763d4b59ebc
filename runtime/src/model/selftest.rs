//! The engine self-test: the model's golden cases (ARCHITECTURE.md §5) through the session with
//! the providers really in use, compared with what the exporter computed.
//!
//! A TensorRT engine built wrongly, a driver bug or a corrupted copy of the model shows here,
//! at start-up, instead of as a line that quietly passes bad parts.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::Invalid;

/// Default tolerance (absolute, on score, map max, map mean and map sum per pixel) for fp32.
pub const FP32_TOLERANCE: f64 = 1e-4;
/// Default tolerance for fp16 graphs and fp16 TensorRT engines.
pub const FP16_TOLERANCE: f64 = 2e-2;

/// `[engine.self_test]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfTestConfig {
    /// Run the golden cases at every start (default). `false` only with a warning.
    pub enabled: bool,
    /// Absolute tolerance; default from the precision (fp32 1e-4, fp16 2e-2) or the manifest's
    /// `self_test.tolerance`.
    pub tolerance: Option<f64>,
}

impl Default for SelfTestConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            tolerance: None,
        }
    }
}

impl SelfTestConfig {
    /// Check the tolerance.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(t) = self.tolerance {
            if !(t.is_finite() && t >= 0.0) {
                return Err(Invalid::new(
                    "engine.self_test.tolerance",
                    "must be a finite number >= 0",
                ));
            }
        }
        Ok(())
    }
}

/// One golden case as the exporter wrote it.
#[derive(Debug, Clone, Deserialize)]
pub struct GoldenCase {
    /// Image path relative to the JSON file.
    pub image: String,
    /// Expected score.
    pub score: f64,
    /// Expected sum of the map.
    pub map_sum: f64,
    /// Expected maximum of the map.
    pub map_max: f64,
    /// Expected mean of the map.
    pub map_mean: f64,
}

/// `NAME.golden.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Goldens {
    /// Graph hash of the model they were computed with (metadata excluded).
    pub model_sha256: String,
    /// The cases.
    pub cases: Vec<GoldenCase>,
    /// Sampler methods: the step count the cases were computed at (the PyTorch reference
    /// sampler's outputs).
    #[serde(default)]
    pub sampler_steps: Option<usize>,
    /// Sampler methods: the same images at other step counts.
    #[serde(default)]
    pub more_steps: Vec<StepGoldens>,
}

/// Golden cases of a sampler method at one more step count.
#[derive(Debug, Clone, Deserialize)]
pub struct StepGoldens {
    /// Sampler steps.
    pub steps: usize,
    /// The cases, images as in [`Goldens::cases`].
    pub cases: Vec<GoldenCase>,
}

/// The outputs compared, in report order.
pub const OUTPUTS: [&str; 4] = ["score", "map max", "map mean", "map sum per pixel"];

/// What the self-test found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SelfTestReport {
    /// The golden file.
    pub golden: PathBuf,
    /// Cases run.
    pub cases: usize,
    /// Largest |value − golden| per output, in [`OUTPUTS`] order.
    pub max_deviation: [f64; 4],
    /// Tolerance applied.
    pub tolerance: f64,
    /// Where the tolerance came from, e.g. `fp32 default`, `engine.self_test.tolerance`.
    pub tolerance_from: String,
    /// Providers the cases ran on.
    pub providers: Vec<String>,
}

impl SelfTestReport {
    /// Largest deviation over every output.
    pub fn worst(&self) -> f64 {
        self.max_deviation.iter().copied().fold(0.0, f64::max)
    }
}

impl fmt::Display for SelfTestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "passed, {} golden cases on {}, max deviation",
            self.cases,
            self.providers.join(" > ")
        )?;
        for (name, d) in OUTPUTS.iter().zip(self.max_deviation) {
            write!(f, " {name} {d:.2e}")?;
            if *name != OUTPUTS[3] {
                write!(f, ",")?;
            }
        }
        write!(
            f,
            " (tolerance {:e}, {})",
            self.tolerance, self.tolerance_from
        )
    }
}

/// One output of one case outside the tolerance.
#[derive(Debug, Clone)]
pub struct Deviation {
    /// The case's image.
    pub image: String,
    /// Which output (one of [`OUTPUTS`]).
    pub output: &'static str,
    /// What the session computed.
    pub value: f64,
    /// What the goldens say.
    pub golden: f64,
    /// |value − golden|.
    pub difference: f64,
    /// The tolerance it exceeds.
    pub tolerance: f64,
    /// Where the tolerance came from.
    pub tolerance_from: String,
}

impl fmt::Display for Deviation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "case {}: {} = {:.6} but golden {:.6} (difference {:.3e} > tolerance {:e}, {})",
            self.image,
            self.output,
            self.value,
            self.golden,
            self.difference,
            self.tolerance,
            self.tolerance_from
        )
    }
}

/// Where a model's goldens live: `NAME.golden.json` beside `NAME.onnx`.
pub fn golden_json(model: &Path) -> PathBuf {
    let stem = model.file_stem().unwrap_or_default().to_string_lossy();
    model.with_file_name(format!("{stem}.golden.json"))
}

/// Compare one case's outputs; returns the four deviations and the first one out of tolerance.
pub fn compare(
    case: &GoldenCase,
    score: f32,
    map: &[f32],
    tolerance: f64,
    tolerance_from: &str,
) -> ([f64; 4], Option<Deviation>) {
    let n = map.len().max(1) as f64;
    let sum: f64 = map.iter().map(|&v| v as f64).sum();
    let max = map.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let values = [score as f64, max, sum / n, sum / n];
    let goldens = [case.score, case.map_max, case.map_mean, case.map_sum / n];
    let mut devs = [0.0; 4];
    let mut first = None;
    for i in 0..4 {
        // NaN counts as out of tolerance.
        let d = (values[i] - goldens[i]).abs();
        devs[i] = if d.is_nan() { f64::INFINITY } else { d };
        if first.is_none() && (d.is_nan() || d > tolerance) {
            let (value, golden) = if i == 3 {
                (sum, case.map_sum)
            } else {
                (values[i], goldens[i])
            };
            first = Some(Deviation {
                image: case.image.clone(),
                output: OUTPUTS[i],
                value,
                golden,
                difference: if i == 3 { d * n } else { d },
                tolerance: if i == 3 { tolerance * n } else { tolerance },
                tolerance_from: tolerance_from.to_string(),
            });
        }
    }
    (devs, first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_names_the_first_output_out_of_tolerance() {
        let case = GoldenCase {
            image: "m.golden/00.png".into(),
            score: 0.5,
            map_sum: 2.0,
            map_max: 0.75,
            map_mean: 0.5,
        };
        let map = [0.25, 0.75, 0.5, 0.5];
        let (devs, bad) = compare(&case, 0.5, &map, 1e-4, "fp32 default");
        assert!(bad.is_none(), "{bad:?}");
        assert!(devs.iter().all(|&d| d < 1e-12));
        let (_, bad) = compare(&case, 0.5, &[0.25, 0.8, 0.5, 0.5], 1e-4, "fp32 default");
        let bad = bad.unwrap();
        assert_eq!(bad.output, "map max");
        assert!((bad.difference - 0.05).abs() < 1e-6);
        let text = bad.to_string();
        assert!(
            text.contains("m.golden/00.png") && text.contains("map max"),
            "{text}"
        );
        let (devs, bad) = compare(&case, f32::NAN, &map, 1e-4, "x");
        assert_eq!(bad.unwrap().output, "score");
        assert!(devs[0].is_infinite());
    }
}
