//! The ONNX Runtime session that runs the one-step DiffusionAD graph.
//!
//! One session per engine, one `run` per batch. The input buffer is allocated once at load and
//! filled in place by `preprocess`; `run_visit` hands out views of ORT's outputs, which the
//! inspector copies into map buffers the line gives back. What a frame still costs in
//! allocations is ORT's own output tensors and a few small descriptors per call
//! (`tests/hot_path.rs` counts them).

use std::path::{Path, PathBuf};
use std::time::Instant;

use ort::ep::{self, ExecutionProvider};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::{Outlet, TensorElementType, TensorRef, ValueType};

use crate::config::Invalid;
use crate::model::manifest::{Manifest, ManifestError, METADATA_KEY};
use crate::model::onnxfile;
use crate::model::ortlib::{self, OrtLib, OrtLibError};
use crate::model::selftest::{
    self, Deviation, GoldenCase, Goldens, SelfTestConfig, SelfTestReport, FP16_TOLERANCE,
    FP32_TOLERANCE,
};
use sampler::{Sampler, SamplerSpec, ScoreSpec};

mod config;
pub mod sampler;
mod self_test;
mod session;
pub mod simplex;

pub use config::{CpuConfig, CudaConfig, EngineConfig, TensorRtConfig, PROVIDERS};
use session::{check_io, check_sampler_io, open_session};
pub use session::{tensorrt_cache, tensorrt_cache_dir, tensorrt_version};

/// Why the engine could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// ONNX Runtime itself is missing.
    #[error(transparent)]
    Runtime(#[from] OrtLibError),
    /// The model file cannot be read.
    #[error("model {path}: {source}")]
    Io {
        /// Model path.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not a loadable ONNX model.
    #[error("model {path} is not a loadable ONNX model: {reason}")]
    NotOnnx {
        /// Model path.
        path: String,
        /// ORT's message.
        reason: String,
    },
    /// Manifest problems.
    #[error("model {path} {source}")]
    Manifest {
        /// Model path.
        path: String,
        /// What is wrong.
        source: ManifestError,
    },
    /// The model's signature does not let it in (`engine.require_signature`).
    #[error(transparent)]
    Signature(#[from] crate::model::signature::SignatureError),
    /// Graph and manifest disagree.
    #[error("model {path}: graph does not match its manifest: {reason}")]
    Mismatch {
        /// Model path.
        path: String,
        /// What differs.
        reason: String,
    },
    /// A listed execution provider could not be used and fallback is off.
    #[error(
        "execution provider `{name}` could not be registered: {reason}. Fix the driver/ONNX Runtime build, \
         remove it from engine.providers, or set engine.allow_fallback = true"
    )]
    Provider {
        /// Provider name from the config.
        name: String,
        /// Why.
        reason: String,
    },
    /// The step count cannot be used with this model.
    #[error("model {path}: engine.steps: {reason}")]
    Steps {
        /// Model path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A session call failed.
    #[error("inference failed: {0}")]
    Run(String),
    /// The model has no golden outputs to check the session against.
    #[error(
        "model {model}: golden outputs {golden} are missing or unusable ({reason}); the engine self-test needs them. \
         Re-export the model with `python -m exporter export` (it writes NAME.golden.json and NAME.golden/ \
         beside NAME.onnx) and deploy them with it, or set engine.self_test.enabled = false in the board file to start unchecked"
    )]
    GoldenMissing {
        /// Model path.
        model: String,
        /// The file or folder that is missing.
        golden: String,
        /// Why it could not be read.
        reason: String,
    },
    /// The goldens were computed with another graph.
    #[error(
        "model {model}: golden outputs {golden} belong to another model (their model_sha256 {golden_sha}…, \
         this graph {model_sha}…): re-export the model, or deploy the goldens that came with it"
    )]
    GoldenForeign {
        /// Model path.
        model: String,
        /// The golden file.
        golden: String,
        /// Hash the goldens name.
        golden_sha: String,
        /// Hash of this graph.
        model_sha: String,
    },
    /// The session's outputs disagree with the goldens.
    #[error(
        "model {model} failed its self-test on {providers}: {deviation}. The session does not compute \
         what the exporter computed; refusing to start{hint}"
    )]
    SelfTest {
        /// Model path.
        model: String,
        /// Providers the session used.
        providers: String,
        /// The first output out of tolerance.
        deviation: Box<Deviation>,
        /// What to do.
        hint: String,
    },
}

/// One image's result straight from the graph.
#[derive(Debug, Clone)]
pub struct Output {
    /// Score as the graph computed it (top-k mean of the map).
    pub score: f32,
    /// Anomaly map, `height × width`, row-major.
    pub map: Vec<f32>,
}

/// A loaded model: ORT session, manifest and reusable input buffer.
pub struct Engine {
    session: Session,
    manifest: Manifest,
    input: Vec<f32>,
    path: PathBuf,
    sha256: String,
    providers: Vec<String>,
    lib: &'static OrtLib,
    config: EngineConfig,
    /// The exporter's graph hash (metadata excluded), `None` if the bytes are not protobuf.
    graph_sha256: Option<String>,
    calls: u64,
    self_test: Option<SelfTestReport>,
    /// The sampler around the eps-network (sampler methods), else one call per batch.
    sampler: Option<Sampler>,
}

impl Engine {
    /// Load `config.model` with the configured providers, checking graph against manifest, then
    /// run the self-test (golden cases) unless `engine.self_test.enabled = false`.
    pub fn load(config: &EngineConfig) -> Result<Self, EngineError> {
        let mut engine = Self::load_unchecked(config)?;
        if config.self_test.enabled {
            engine.checked_start()?;
        } else {
            log::warn!(
                "model {}: engine.self_test.enabled = false: its outputs on {} are NOT checked against its goldens",
                engine.path.display(),
                engine.providers.join(" > ")
            );
        }
        Ok(engine)
    }

    /// Load and check graph against manifest, without the self-test (`diffad inspect` runs it
    /// itself, so that it can print the manifest of a model that fails it).
    pub fn load_unchecked(config: &EngineConfig) -> Result<Self, EngineError> {
        let lib = ortlib::load()?;
        let path = config.model.clone();
        let shown = path.display().to_string();
        let bytes = config.read_model(&path).map_err(|source| EngineError::Io {
            path: shown.clone(),
            source,
        })?;
        check_signature(config, &path, &bytes)?;
        let sha256 = onnxfile::file_sha256(&bytes);
        let graph_sha256 = onnxfile::graph_sha256(&bytes);
        let (session, providers) = open_session(config, &bytes, &sha256, lib, &shown)?;

        let manifest_json = session
            .metadata()
            .ok()
            .and_then(|m| m.custom(METADATA_KEY))
            .ok_or(EngineError::Manifest {
                path: shown.clone(),
                source: ManifestError::Missing,
            })?;
        let manifest = Manifest::parse(&manifest_json).map_err(|source| EngineError::Manifest {
            path: shown.clone(),
            source,
        })?;
        let sampler = build_sampler(&session, &manifest, config.steps, &shown)?;
        let i = &manifest.input;
        let input = vec![0.0; i.batch * i.channels * i.height * i.width];
        log::info!(
            "model {} ({}, model id {} = graph sha256, file sha256 {}) on {} with ONNX Runtime {}",
            shown,
            manifest.name,
            &graph_sha256.as_deref().unwrap_or(&sha256)[..12],
            &sha256[..12],
            providers.join(" > "),
            lib.version
        );
        Ok(Self {
            session,
            manifest,
            input,
            path,
            sha256,
            providers,
            lib,
            config: config.clone(),
            graph_sha256,
            calls: 0,
            self_test: None,
            sampler,
        })
    }

    /// Network calls per image batch: the sampler's step count, else 1.
    pub fn calls_per_batch(&self) -> usize {
        self.sampler.as_ref().map_or(1, Sampler::calls)
    }

    /// The sampler's step count in use (sampler methods only).
    pub fn sampler_steps(&self) -> Option<usize> {
        self.sampler.as_ref().map(Sampler::steps)
    }

    /// Re-plan the sampler for `steps` (the noises are drawn now, not per frame).
    pub fn set_sampler_steps(&mut self, steps: usize) -> Result<(), EngineError> {
        let path = self.path.display().to_string();
        match self.sampler.as_mut() {
            Some(s) => s
                .set_steps(steps)
                .map_err(|reason| EngineError::Steps { path, reason }),
            None => Err(EngineError::Steps {
                path,
                reason: no_sampler(&self.manifest.method),
            }),
        }
    }

    /// The self-test's result, when it ran at load.
    pub fn self_test(&self) -> Option<&SelfTestReport> {
        self.self_test.as_ref()
    }

    /// Session calls made so far (the self-test's included).
    pub fn session_calls(&self) -> u64 {
        self.calls
    }

    /// The model's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of the model file.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The model's id: the first 12 hex digits of its graph SHA-256 (weights and graph, not the
    /// manifest), as `python -m exporter export` prints it and model cards name it; calibration
    /// does not change it. The file's hash stands in for a file that is not protobuf.
    pub fn model_id(&self) -> &str {
        &self.graph_sha256.as_deref().unwrap_or(&self.sha256)[..12]
    }

    /// Model path as loaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Providers this session really registered, in priority order (CPU always last).
    pub fn providers(&self) -> &[String] {
        &self.providers
    }

    /// ONNX Runtime library in use.
    pub fn runtime(&self) -> &OrtLib {
        self.lib
    }

    /// Static batch size of the graph.
    pub fn batch_size(&self) -> usize {
        self.manifest.input.batch
    }

    /// Elements of one image in the input tensor (C × H × W).
    pub fn image_len(&self) -> usize {
        let i = &self.manifest.input;
        i.channels * i.height * i.width
    }

    /// The input buffer, `[B, C, H, W]` row-major, for `preprocess` to fill in place.
    pub fn input_mut(&mut self) -> &mut [f32] {
        &mut self.input
    }

    /// Run the graph on the whole input buffer; returns the first `n` images' outputs.
    pub fn run(&mut self, n: usize) -> Result<Vec<Output>, EngineError> {
        let mut out = Vec::with_capacity(n.min(self.batch_size()));
        self.run_visit(n, |_, score, map| {
            out.push(Output {
                score,
                map: map.to_vec(),
            })
        })?;
        Ok(out)
    }

    /// Run the graph on the whole input buffer and hand the first `n` images' score and map
    /// (`height × width`) to `visit(index, score, map)` without copying them.
    pub fn run_visit(
        &mut self,
        n: usize,
        mut visit: impl FnMut(usize, f32, &[f32]),
    ) -> Result<(), EngineError> {
        let i = &self.manifest.input;
        let shape = [
            i.batch as i64,
            i.channels as i64,
            i.height as i64,
            i.width as i64,
        ];
        let (hw, batch) = (i.height * i.width, i.batch);
        let (map_name, score_name) = (
            self.manifest.outputs.map.as_str(),
            self.manifest.outputs.score.as_str(),
        );
        if let Some(s) = self.sampler.as_mut() {
            self.calls += s.run(&mut self.session, &self.input, n, visit)?;
            return Ok(());
        }
        let tensor = TensorRef::from_array_view((shape, self.input.as_slice()))
            .map_err(|e| EngineError::Run(e.to_string()))?;
        self.calls += 1;
        let outputs = self
            .session
            .run(ort::inputs![i.name.as_str() => tensor])
            .map_err(|e| EngineError::Run(e.to_string()))?;
        let (_, maps) = outputs[map_name]
            .try_extract_tensor::<f32>()
            .map_err(|e| EngineError::Run(format!("output `{map_name}`: {e}")))?;
        let (_, scores) = outputs[score_name]
            .try_extract_tensor::<f32>()
            .map_err(|e| EngineError::Run(format!("output `{score_name}`: {e}")))?;
        if maps.len() != batch * hw || scores.len() != batch {
            return Err(EngineError::Run(format!(
                "unexpected output sizes: map {} (expected {}), score {} (expected {batch})",
                maps.len(),
                batch * hw,
                scores.len()
            )));
        }
        for b in 0..n.min(batch) {
            visit(b, scores[b], &maps[b * hw..(b + 1) * hw]);
        }
        Ok(())
    }

    /// Time `iterations` bare session calls (the backend's limit), returning per-call seconds.
    pub fn time_bare(&mut self, iterations: usize) -> Result<Vec<f64>, EngineError> {
        let mut times = Vec::with_capacity(iterations);
        let n = self.batch_size();
        for _ in 0..iterations {
            let t = Instant::now();
            self.run(n)?;
            times.push(t.elapsed().as_secs_f64());
        }
        Ok(times)
    }
}

fn no_sampler(method: &str) -> String {
    format!(
        "method `{method}` runs one network call per image and has no sampler steps; remove engine.steps (or --steps)"
    )
}

/// The sampler a sampler method needs, planned for `steps` (None: the manifest's), with the
/// eps-network's I/O checked; a one-graph model gets its I/O checked and no sampler.
fn build_sampler(
    session: &Session,
    manifest: &Manifest,
    steps: Option<usize>,
    shown: &str,
) -> Result<Option<Sampler>, EngineError> {
    let mismatch = |reason| EngineError::Mismatch {
        path: shown.to_string(),
        reason,
    };
    let Some(v) = &manifest.sampler else {
        if steps.is_some() {
            return Err(EngineError::Steps {
                path: shown.to_string(),
                reason: no_sampler(&manifest.method),
            });
        }
        check_io(session, manifest).map_err(mismatch)?;
        return Ok(None);
    };
    let field = |key, reason| EngineError::Manifest {
        path: shown.to_string(),
        source: ManifestError::Field(key, reason),
    };
    let spec = SamplerSpec::parse(v).map_err(|(key, reason)| field(key, reason))?;
    check_sampler_io(session, manifest, &spec.network).map_err(mismatch)?;
    let top_k = manifest.top_k().ok_or_else(|| {
        field(
            "score.top_k",
            "missing; the sampler scores the top-k mean".into(),
        )
    })?;
    let sigma = match manifest.score.get("blur_sigma") {
        None => 0.0,
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| field("score.blur_sigma", format!("{v} (must be a number >= 0)")))?,
    };
    let i = &manifest.input;
    let score = ScoreSpec {
        top_k: top_k as usize,
        sigma,
    };
    Sampler::new(spec, score, [i.batch, i.channels, i.height, i.width], steps)
        .map(Some)
        .map_err(|reason| EngineError::Steps {
            path: shown.to_string(),
            reason,
        })
}

/// Whether `path` must pass the signature check under `config`: always when
/// `engine.require_signature`, else when it is signed and keys are configured.
pub fn signature_checked(config: &EngineConfig, path: &Path) -> bool {
    config.require_signature
        || (!config.trusted_keys.is_empty()
            && crate::model::signature::signature_path(path).exists())
}

/// The signature check over the bytes about to be loaded, when [`signature_checked`].
fn check_signature(config: &EngineConfig, path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    use crate::model::signature;
    if !signature_checked(config, path) {
        return Ok(());
    }
    let keys = signature::load_keys(&config.trusted_keys)?;
    let v = signature::verify(path, bytes, &keys)?;
    if v.demo {
        log::warn!(
            "model {}: signature verified with the DEMO key {} (public in the repository): it proves nothing about where the model came from; trust your own key on a production line",
            path.display(),
            v.key.display()
        );
    } else {
        log::info!(
            "model {}: signature verified with {}",
            path.display(),
            v.key.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_keys() {
        let mut c = EngineConfig::cpu("m.onnx");
        assert!(c.validate().is_ok());
        c.providers = vec!["cuda".into(), "gpu".into()];
        assert_eq!(c.validate().unwrap_err().key, "engine.providers[1]");
        c.providers = vec!["cpu".into(), "cpu".into()];
        assert_eq!(c.validate().unwrap_err().key, "engine.providers[1]");
        c.providers.clear();
        assert_eq!(c.validate().unwrap_err().key, "engine.providers");
    }

    #[test]
    fn cache_dir_keys_everything() {
        let t = TensorRtConfig {
            cache_dir: "/c".into(),
            ..Default::default()
        };
        let a = tensorrt_cache_dir(&t, "aaaaaaaaaaaaaaaaaaaa", "1.20.1");
        let b = tensorrt_cache_dir(&t, "bbbbbbbbbbbbbbbbbbbb", "1.20.1");
        let c = tensorrt_cache_dir(&t, "aaaaaaaaaaaaaaaaaaaa", "1.32.0");
        let d = tensorrt_cache_dir(
            &TensorRtConfig {
                device_id: 1,
                ..t.clone()
            },
            "aaaaaaaaaaaaaaaaaaaa",
            "1.20.1",
        );
        assert!(a != b && a != c && a != d);
        assert!(a.to_string_lossy().contains("ort1.20.1"));
    }
}
