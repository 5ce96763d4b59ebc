//! The model manifest carried in the ONNX file's metadata (ARCHITECTURE.md §5).

use crate::model::onnxfile::{fields, METADATA_PROPS};
use serde::{Deserialize, Serialize};

/// Metadata key under which the exporter stores the manifest JSON.
pub const METADATA_KEY: &str = "diffad.manifest";
/// The manifest schema this runtime understands.
pub const SCHEMA_VERSION: u32 = 1;
/// Methods this runtime can run: DiffusionAD and the survey recipes (ARCHITECTURE §8). All but
/// `anoddpm` are one graph image → (map, score); `anoddpm` is an eps-network the engine's
/// sampler runs (`sampler`).
pub const METHODS: &[&str] = &["diffusionad", "advrad", "dte", "anoddpm"];
/// Methods whose graph is an eps-network run by the engine's sampler.
pub const SAMPLER_METHODS: &[&str] = &["anoddpm"];
/// Range of the score and of every anomaly-map value when the manifest declares no
/// `score.range`: the DiffusionAD graph's map is a sigmoid and its score a top-k mean of it
/// (ARCHITECTURE.md §5), so manifests written before the key existed mean exactly this.
pub const DEFAULT_SCORE_RANGE: [f32; 2] = [0.0, 1.0];

/// What the exporter says about a model: input convention, diffusion settings, threshold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest schema version; must equal [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Anomaly-detection method, e.g. `diffusionad`.
    pub method: String,
    /// Model name, e.g. `tiles-brick`.
    #[serde(default)]
    pub name: String,
    /// Input tensor convention.
    pub input: InputSpec,
    /// Output tensor names.
    pub outputs: OutputSpec,
    /// Diffusion settings baked into the graph.
    #[serde(default)]
    pub diffusion: serde_json::Value,
    /// How the score is reduced from the map; `range` (optional, [`DEFAULT_SCORE_RANGE`] when
    /// absent) bounds the score and every map value.
    #[serde(default)]
    pub score: serde_json::Value,
    /// Calibrated threshold, absent until `python -m exporter calibrate` ran.
    #[serde(default)]
    pub threshold: Option<Threshold>,
    /// Score statistics over good calibration images.
    #[serde(default)]
    pub normal_scores: Option<serde_json::Value>,
    /// Network hyper-parameters.
    #[serde(default)]
    pub architecture: serde_json::Value,
    /// Floating-point operations per frame (whole graph).
    #[serde(default)]
    pub flops_per_frame: f64,
    /// Training provenance.
    #[serde(default)]
    pub training: serde_json::Value,
    /// SHA-256 of the source checkpoint.
    #[serde(default)]
    pub checkpoint_sha256: String,
    /// Exporter version that wrote the file.
    #[serde(default)]
    pub exporter_version: String,
    /// The recipe's own parameters (survey recipes).
    #[serde(default)]
    pub recipe: serde_json::Value,
    /// The sampler's schedule, step rule and noise (sampler methods only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<serde_json::Value>,
    /// Optional self-test settings, e.g. `{"tolerance": 1e-3}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_test: Option<serde_json::Value>,
}

/// The model input: shape, channels and value range.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputSpec {
    /// Graph input name.
    pub name: String,
    /// Static batch size.
    pub batch: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Model height in pixels.
    pub height: usize,
    /// Model width in pixels.
    pub width: usize,
    /// Value range [lo, hi] that 8-bit pixels 0..=255 map onto.
    pub range: [f32; 2],
    /// Resize convention (only `bilinear`).
    #[serde(default = "bilinear")]
    pub resize: String,
}

fn bilinear() -> String {
    "bilinear".into()
}

/// Graph output names.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputSpec {
    /// Anomaly map output, `[B, 1, H, W]`.
    pub map: String,
    /// Score output, `[B]`.
    pub score: String,
}

/// A calibrated decision threshold.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Threshold {
    /// Scores at or above this are rejected.
    pub value: f32,
    /// How it was chosen, e.g. `quantile`.
    #[serde(default)]
    pub method: String,
    /// False-reject rate aimed for on good images.
    #[serde(default)]
    pub target_frr: Option<f64>,
    /// Good images it was calibrated on.
    #[serde(default)]
    pub n_images: Option<u64>,
    /// Which data.
    #[serde(default)]
    pub data: Option<String>,
    /// Sampler methods: the step count the scores were calibrated at.
    #[serde(default)]
    pub sampler_steps: Option<usize>,
    /// Share of the calibration's good images this threshold rejects.
    #[serde(default)]
    pub false_reject_rate: Option<f64>,
    /// Share of the calibration's defective images it lets through (with `--defects`).
    #[serde(default)]
    pub escape_rate: Option<f64>,
    /// Share of the other good images (`calibrate --check-good`) it rejects: the honest estimate.
    #[serde(default)]
    pub check_false_reject_rate: Option<f64>,
}

/// A calibrated false-reject rate above this is called out by `check-config` (the exporter's
/// default `--max-frr`).
pub const FALSE_REJECT_CEILING: f64 = 0.10;

impl Threshold {
    /// The calibrated rates in words, empty when the manifest predates them.
    pub fn rates(&self) -> String {
        let calibrated = match (self.false_reject_rate, self.escape_rate) {
            (Some(f), Some(e)) => format!(
                ", rejecting {:.1} % of its good images and letting {:.1} % of its defects through",
                100.0 * f,
                100.0 * e
            ),
            (Some(f), None) => format!(", rejecting {:.1} % of its good images", 100.0 * f),
            _ => String::new(),
        };
        calibrated
            + &self.check_false_reject_rate.map_or(String::new(), |c| {
                format!(
                    " ({:.1} % of the other good images it was checked on)",
                    100.0 * c
                )
            })
    }

    /// The worse of the calibrated and checked false-reject rates, when either is known.
    pub fn worst_false_reject_rate(&self) -> Option<f64> {
        match (self.false_reject_rate, self.check_false_reject_rate) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The metadata key is absent.
    #[error("has no `{METADATA_KEY}` metadata: it was not written by `python -m exporter export`")]
    Missing,
    /// The JSON does not parse or lacks required fields.
    #[error("manifest is not valid: {0}")]
    Malformed(String),
    /// Another schema version.
    #[error("manifest schema version {0} is not supported (this runtime reads version {SCHEMA_VERSION}); re-export the model or upgrade diffad")]
    Schema(u32),
    /// A method this runtime does not run.
    #[error("method `{0}` is not supported (supported: {supported})", supported = METHODS.join(", "))]
    Method(String),
    /// Values out of range.
    #[error("manifest field `{0}` is invalid: {1}")]
    Field(&'static str, String),
    /// The file cannot be read.
    #[error("cannot be read: {0}")]
    Io(String),
    /// The file is not an ONNX (protobuf) model.
    #[error("is not an ONNX model: {0}")]
    NotOnnx(&'static str),
}

/// A value (threshold or score) outside the range the model's scores lie in.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("{value:?} is outside the model's score range [{lo}, {hi}]")]
pub struct OutOfRange {
    /// The value.
    pub value: f32,
    /// Lowest score the model gives.
    pub lo: f32,
    /// Highest score the model gives.
    pub hi: f32,
}

impl Manifest {
    /// Parse and check a manifest JSON string.
    pub fn parse(json: &str) -> Result<Self, ManifestError> {
        let v: serde_json::Value =
            serde_json::from_str(json).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        // Check the version before the fields: a newer schema may have moved them.
        let schema = v.get("schema_version").and_then(|s| s.as_u64());
        match schema {
            Some(s) if s == SCHEMA_VERSION as u64 => {}
            Some(s) => return Err(ManifestError::Schema(s as u32)),
            None => return Err(ManifestError::Malformed("missing `schema_version`".into())),
        }
        let m: Manifest =
            serde_json::from_value(v).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), ManifestError> {
        if !METHODS.contains(&self.method.as_str()) {
            return Err(ManifestError::Method(self.method.clone()));
        }
        let i = &self.input;
        if i.channels != 1 && i.channels != 3 {
            return Err(ManifestError::Field(
                "input.channels",
                format!("{} (must be 1 or 3)", i.channels),
            ));
        }
        if i.batch == 0 || i.height == 0 || i.width == 0 {
            return Err(ManifestError::Field(
                "input",
                "batch, height and width must be positive".into(),
            ));
        }
        if !(i.range[0].is_finite() && i.range[1].is_finite() && i.range[0] < i.range[1]) {
            return Err(ManifestError::Field(
                "input.range",
                format!("{:?} (must be [lo, hi] with lo < hi)", i.range),
            ));
        }
        if i.resize != "bilinear" {
            return Err(ManifestError::Field(
                "input.resize",
                format!("`{}` (only `bilinear`)", i.resize),
            ));
        }
        if let Some(r) = self.score.get("range") {
            let pair = r
                .as_array()
                .filter(|a| a.len() == 2)
                .and_then(|a| Some([a[0].as_f64()? as f32, a[1].as_f64()? as f32]));
            match pair {
                Some([lo, hi]) if lo.is_finite() && hi.is_finite() && lo < hi => {}
                _ => {
                    return Err(ManifestError::Field(
                        "score.range",
                        format!("{r} (must be [lo, hi] with lo < hi)"),
                    ))
                }
            }
        }
        match (
            SAMPLER_METHODS.contains(&self.method.as_str()),
            &self.sampler,
        ) {
            (true, None) => {
                return Err(ManifestError::Field(
                    "sampler",
                    format!(
                        "missing: method `{}` needs the sampler's settings",
                        self.method
                    ),
                ))
            }
            (false, Some(_)) => {
                return Err(ManifestError::Field(
                    "sampler",
                    format!(
                        "method `{}` runs one graph and takes no sampler",
                        self.method
                    ),
                ))
            }
            _ => {}
        }
        if let Some(t) = &self.threshold {
            if !t.value.is_finite() {
                return Err(ManifestError::Field(
                    "threshold.value",
                    "not a finite number".into(),
                ));
            }
            self.check_threshold(t.value)
                .map_err(|e| ManifestError::Field("threshold.value", e.to_string()))?;
        }
        Ok(())
    }

    /// `[lo, hi]` that every score and anomaly-map value of this model lies in.
    pub fn score_range(&self) -> [f32; 2] {
        self.score
            .get("range")
            .and_then(|r| r.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| Some([a[0].as_f64()? as f32, a[1].as_f64()? as f32]))
            .unwrap_or(DEFAULT_SCORE_RANGE)
    }

    /// A threshold outside the score range passes (or rejects) every part whatever it looks
    /// like, so it is refused rather than applied.
    pub fn check_threshold(&self, value: f32) -> Result<(), OutOfRange> {
        let [lo, hi] = self.score_range();
        if value.is_finite() && (lo..=hi).contains(&value) {
            Ok(())
        } else {
            Err(OutOfRange { value, lo, hi })
        }
    }

    /// Sampler methods: the step count the calibrated threshold holds for (the threshold's
    /// own record, else the manifest's default step count, which calibration sets).
    pub fn calibrated_steps(&self) -> Option<usize> {
        let default = self
            .sampler
            .as_ref()
            .and_then(|s| s.get("steps"))
            .and_then(|s| s.as_u64())
            .map(|s| s as usize);
        self.threshold
            .as_ref()
            .and_then(|t| t.sampler_steps)
            .or(default)
    }

    /// Sampler methods with a calibrated threshold: the step count it was calibrated at, when
    /// that is not `steps` (a sampler's scores move with its step count, so the threshold does
    /// not hold there).
    pub fn threshold_steps_other_than(&self, steps: usize) -> Option<usize> {
        self.threshold.as_ref()?;
        self.calibrated_steps().filter(|&at| at != steps)
    }

    /// Read the manifest from an ONNX file's bytes without ONNX Runtime (`check-config` runs
    /// where the runtime library may be absent); the manifest is checked as at load.
    pub fn from_onnx(bytes: &[u8]) -> Result<Self, ManifestError> {
        let json = onnx_metadata(bytes, METADATA_KEY)?.ok_or(ManifestError::Missing)?;
        Self::parse(&json)
    }

    /// [`Manifest::from_onnx`] on a file.
    pub fn read(path: &std::path::Path) -> Result<Self, ManifestError> {
        let bytes = crate::files::read_capped(
            path,
            crate::files::mb(crate::files::MODEL_CAP_MB),
            "the model file",
        )
        .map_err(|e| ManifestError::Io(format!("{}: {e}", path.display())))?;
        Self::from_onnx(&bytes)
    }

    /// Top-k used for the score, when the manifest records it.
    pub fn top_k(&self) -> Option<u64> {
        self.score.get("top_k").and_then(|k| k.as_u64())
    }
}

/// The value stored under `key` in a serialized `ModelProto`'s `metadata_props` (field 14, each
/// a `StringStringEntryProto` with key 1 and value 2).
fn onnx_metadata(bytes: &[u8], key: &str) -> Result<Option<String>, ManifestError> {
    let mut found = None;
    for field in fields(bytes).ok_or(ManifestError::NotOnnx("malformed protobuf"))? {
        let Some(entry) = field.payload.filter(|_| field.number == METADATA_PROPS) else {
            continue;
        };
        let (mut k, mut v) = (None, None);
        for f in fields(entry).ok_or(ManifestError::NotOnnx("malformed metadata"))? {
            match (f.number, f.payload) {
                (1, Some(b)) => k = Some(b),
                (2, Some(b)) => v = Some(b),
                _ => {}
            }
        }
        if k == Some(key.as_bytes()) {
            let text = std::str::from_utf8(v.unwrap_or_default())
                .map_err(|_| ManifestError::Malformed("not UTF-8".into()))?;
            found = Some(text.to_string());
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> serde_json::Value {
        serde_json::json!({
            "schema_version": 1, "method": "diffusionad", "name": "t",
            "input": {"name": "image", "batch": 1, "channels": 1, "height": 8, "width": 8, "range": [0.0, 1.0]},
            "outputs": {"map": "anomaly_map", "score": "score"},
            "score": {"reduction": "topk_mean", "top_k": 5},
            "threshold": {"value": 0.3, "method": "quantile"}
        })
    }

    #[test]
    fn calibrated_rates_are_read_and_worded_and_absent_ones_say_nothing() {
        let m = Manifest::parse(&sample().to_string()).unwrap();
        assert_eq!(m.threshold.unwrap().rates(), "");
        let mut v = sample();
        v["threshold"]["false_reject_rate"] = 0.25.into();
        v["threshold"]["escape_rate"] = 0.05.into();
        let t = Manifest::parse(&v.to_string()).unwrap().threshold.unwrap();
        assert_eq!(
            t.rates(),
            ", rejecting 25.0 % of its good images and letting 5.0 % of its defects through"
        );
        assert!(t.false_reject_rate.unwrap() > FALSE_REJECT_CEILING);
    }

    #[test]
    fn parses_and_refuses() {
        let m = Manifest::parse(&sample().to_string()).unwrap();
        assert_eq!(m.top_k(), Some(5));
        assert_eq!(m.threshold.unwrap().value, 0.3);

        let mut v = sample();
        v["schema_version"] = 2.into();
        assert!(matches!(
            Manifest::parse(&v.to_string()),
            Err(ManifestError::Schema(2))
        ));
        let mut v = sample();
        v["method"] = "patchcore".into();
        assert!(matches!(
            Manifest::parse(&v.to_string()),
            Err(ManifestError::Method(_))
        ));
        let mut v = sample();
        v["input"]["channels"] = 2.into();
        assert!(matches!(
            Manifest::parse(&v.to_string()),
            Err(ManifestError::Field("input.channels", _))
        ));
        assert!(matches!(
            Manifest::parse("{"),
            Err(ManifestError::Malformed(_))
        ));
    }

    #[test]
    fn the_checked_false_reject_rate_is_shown_and_counts_against_the_ceiling() {
        let t: Threshold = serde_json::from_str(
            r#"{"value": 0.24, "false_reject_rate": 0.05, "check_false_reject_rate": 0.9}"#,
        )
        .unwrap();
        assert_eq!(t.worst_false_reject_rate(), Some(0.9));
        assert!(
            t.rates().contains("5.0 % of its good images"),
            "{}",
            t.rates()
        );
        assert!(
            t.rates().contains("90.0 % of the other good images"),
            "{}",
            t.rates()
        );
        let old: Threshold = serde_json::from_str(r#"{"value": 0.24}"#).unwrap();
        assert_eq!(
            (old.worst_false_reject_rate(), old.rates()),
            (None, String::new())
        );
    }

    #[test]
    fn score_range_defaults_to_unit_and_bounds_the_threshold() {
        let m = Manifest::parse(&sample().to_string()).unwrap();
        assert_eq!(m.score_range(), [0.0, 1.0]);
        assert!(m.check_threshold(0.0).is_ok() && m.check_threshold(1.0).is_ok());
        let e = m.check_threshold(5.0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "5.0 is outside the model's score range [0, 1]"
        );
        assert!(m.check_threshold(f32::NAN).is_err());
        assert!(m.check_threshold(-0.1).is_err());

        let mut v = sample();
        v["score"]["range"] = serde_json::json!([0.0, 10.0]);
        v["threshold"]["value"] = 5.0.into();
        let m = Manifest::parse(&v.to_string()).unwrap();
        assert_eq!(m.score_range(), [0.0, 10.0]);

        let mut v = sample();
        v["threshold"]["value"] = 1.5.into();
        assert!(matches!(
            Manifest::parse(&v.to_string()),
            Err(ManifestError::Field("threshold.value", _))
        ));
        for bad in [
            serde_json::json!([1.0, 0.0]),
            serde_json::json!([0.0]),
            serde_json::json!("wide"),
        ] {
            let mut v = sample();
            v["score"]["range"] = bad;
            assert!(matches!(
                Manifest::parse(&v.to_string()),
                Err(ManifestError::Field("score.range", _))
            ));
        }
    }

    #[test]
    fn reads_the_manifest_from_onnx_bytes_without_the_runtime() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let m = Manifest::read(&fixtures.join("sigmoid.onnx")).unwrap();
        assert_eq!((m.input.width, m.threshold.unwrap().value), (16, 0.6));
        assert!(matches!(
            Manifest::read(&fixtures.join("no-manifest.onnx")),
            Err(ManifestError::Missing)
        ));
        assert!(matches!(
            Manifest::read(&fixtures.join("schema-v2.onnx")),
            Err(ManifestError::Schema(2))
        ));
        assert!(matches!(
            Manifest::read(&fixtures.join("absent.onnx")),
            Err(ManifestError::Io(_))
        ));
        assert!(matches!(
            Manifest::from_onnx(b"\x0a\xff"),
            Err(ManifestError::NotOnnx(_))
        ));
    }
}
