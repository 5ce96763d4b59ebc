//! The model manifest carried in the ONNX file's metadata (ARCHITECTURE.md §5).

use serde::{Deserialize, Serialize};

/// Metadata key under which the exporter stores the manifest JSON.
pub const METADATA_KEY: &str = "diffad.manifest";
/// The manifest schema this runtime understands.
pub const SCHEMA_VERSION: u32 = 1;
/// Methods this runtime can run.
pub const METHODS: &[&str] = &["diffusionad"];

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
    /// How the score is reduced from the map.
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
        if let Some(t) = &self.threshold {
            if !t.value.is_finite() {
                return Err(ManifestError::Field(
                    "threshold.value",
                    "not a finite number".into(),
                ));
            }
        }
        Ok(())
    }

    /// Top-k used for the score, when the manifest records it.
    pub fn top_k(&self) -> Option<u64> {
        self.score.get("top_k").and_then(|k| k.as_u64())
    }
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
}
