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
use ort::value::{TensorElementType, TensorRef, ValueType};
use serde::Deserialize;

use crate::config::Invalid;
use crate::model::manifest::{Manifest, ManifestError, METADATA_KEY};
use crate::model::onnxfile;
use crate::model::ortlib::{self, OrtLib, OrtLibError};
use crate::model::selftest::{
    self, Deviation, GoldenCase, Goldens, SelfTestConfig, SelfTestReport, FP16_TOLERANCE,
    FP32_TOLERANCE,
};

/// `[engine]`: which model, and which execution providers in order of preference.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Path of the exported `.onnx` model (relative paths are relative to the config file).
    pub model: PathBuf,
    /// Execution providers to try, in order: `tensorrt`, `cuda`, `cpu`.
    #[serde(default = "default_providers")]
    pub providers: Vec<String>,
    /// Carry on with the next provider when a listed GPU provider cannot be registered.
    #[serde(default)]
    pub allow_fallback: bool,
    /// TensorRT options.
    #[serde(default)]
    pub tensorrt: TensorRtConfig,
    /// CUDA options.
    #[serde(default)]
    pub cuda: CudaConfig,
    /// CPU options.
    #[serde(default)]
    pub cpu: CpuConfig,
    /// The golden-case check at every start.
    #[serde(default)]
    pub self_test: SelfTestConfig,
}

fn default_providers() -> Vec<String> {
    vec!["cpu".into()]
}

/// `[engine.tensorrt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TensorRtConfig {
    /// GPU index.
    pub device_id: i32,
    /// Build fp16 engines (norms stay fp32 in the graph).
    pub fp16: bool,
    /// Where built engines and the timing cache are kept.
    pub cache_dir: PathBuf,
    /// Builder workspace in MiB.
    pub workspace_mb: usize,
}

impl Default for TensorRtConfig {
    fn default() -> Self {
        Self {
            device_id: 0,
            fp16: true,
            cache_dir: PathBuf::from("/var/cache/diffad/tensorrt"),
            workspace_mb: 1024,
        }
    }
}

/// `[engine.cuda]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CudaConfig {
    /// GPU index.
    pub device_id: i32,
    /// Arena limit in MiB (0 = ORT's default).
    pub memory_limit_mb: usize,
}

/// `[engine.cpu]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    /// Intra-op threads (0 = one per core).
    pub threads: usize,
}

/// Provider names the config accepts.
pub const PROVIDERS: &[&str] = &["tensorrt", "cuda", "cpu"];

impl EngineConfig {
    /// A CPU-only config for `model`, as the CLI uses when no board config is given.
    pub fn cpu(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            providers: default_providers(),
            allow_fallback: false,
            tensorrt: TensorRtConfig::default(),
            cuda: CudaConfig::default(),
            cpu: CpuConfig::default(),
            self_test: SelfTestConfig::default(),
        }
    }

    /// Check values that serde cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.providers.is_empty() {
            return Err(Invalid::new(
                "engine.providers",
                "empty; list at least one of \"tensorrt\", \"cuda\", \"cpu\"",
            ));
        }
        for (i, p) in self.providers.iter().enumerate() {
            if !PROVIDERS.contains(&p.as_str()) {
                return Err(Invalid::new(
                    format!("engine.providers[{i}]"),
                    format!("unknown provider \"{p}\"; allowed: \"tensorrt\", \"cuda\", \"cpu\""),
                ));
            }
            if self.providers[..i].contains(p) {
                return Err(Invalid::new(
                    format!("engine.providers[{i}]"),
                    format!("\"{p}\" is listed twice"),
                ));
            }
        }
        if self.tensorrt.workspace_mb == 0 {
            return Err(Invalid::new("engine.tensorrt.workspace_mb", "must be > 0"));
        }
        self.self_test.validate()
    }
}

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
        let bytes = std::fs::read(&path).map_err(|source| EngineError::Io {
            path: shown.clone(),
            source,
        })?;
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
        check_io(&session, &manifest).map_err(|reason| EngineError::Mismatch {
            path: shown.clone(),
            reason,
        })?;

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
        })
    }

    /// The self-test at start: refuse on failure, or with `engine.allow_fallback` re-create
    /// the session on the CPU provider and start only if the goldens pass there.
    fn checked_start(&mut self) -> Result<(), EngineError> {
        let shown = self.path.display().to_string();
        match self.run_self_test() {
            Ok(r) => {
                log::info!("model {shown}: self-test {r}");
                self.self_test = Some(r);
                Ok(())
            }
            Err(e @ EngineError::SelfTest { .. })
                if self.config.allow_fallback && self.providers.iter().any(|p| p != "cpu") =>
            {
                log::error!("{e}");
                log::error!(
                    "model {shown}: falling back to the CPU provider as engine.allow_fallback allows; expect it to be much slower"
                );
                let mut cpu = self.config.clone();
                cpu.providers = vec!["cpu".into()];
                let bytes = std::fs::read(&self.path).map_err(|source| EngineError::Io {
                    path: shown.clone(),
                    source,
                })?;
                let sha = onnxfile::file_sha256(&bytes);
                let (session, providers) = open_session(&cpu, &bytes, &sha, self.lib, &shown)?;
                self.session = session;
                self.providers = providers;
                self.graph_sha256 = onnxfile::graph_sha256(&bytes);
                self.sha256 = sha;
                self.config = cpu;
                let r = self.run_self_test()?;
                log::warn!("model {shown}: self-test on the CPU fallback {r}");
                self.self_test = Some(r);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The golden file, its cases and their images, checked to belong to this model and to be
    /// at its input size.
    fn golden_cases(&self) -> Result<(PathBuf, Goldens, Vec<crate::frame::Frame>), EngineError> {
        let model = self.path.display().to_string();
        let gpath = selftest::golden_json(&self.path);
        let golden = gpath.display().to_string();
        let missing = |golden: &str, reason: String| EngineError::GoldenMissing {
            model: model.clone(),
            golden: golden.to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&gpath).map_err(|e| missing(&golden, e.to_string()))?;
        let goldens: Goldens = serde_json::from_str(&text)
            .map_err(|e| missing(&golden, format!("not a golden file: {e}")))?;
        if goldens.cases.is_empty() {
            return Err(missing(&golden, "it lists no cases".into()));
        }
        let graph_sha = self.graph_sha256.clone();
        let want = goldens.model_sha256.to_ascii_lowercase();
        // The exporter hashes the graph without its metadata (calibration rewrites only the
        // manifest); a whole-file hash is accepted too.
        if graph_sha.as_deref() != Some(want.as_str()) && self.sha256 != want {
            let short = |s: &str| s.chars().take(12).collect::<String>();
            return Err(EngineError::GoldenForeign {
                model,
                golden,
                golden_sha: short(&want),
                model_sha: short(graph_sha.as_deref().unwrap_or(&self.sha256)),
            });
        }
        let base = gpath.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut frames = Vec::with_capacity(goldens.cases.len());
        for case in &goldens.cases {
            let p = base.join(&case.image);
            let frame = crate::sources::imagefile::load(&p)
                .map_err(|e| missing(&p.display().to_string(), e.reason))?;
            let i = &self.manifest.input;
            if (frame.width as usize, frame.height as usize) != (i.width, i.height) {
                // §5: golden inputs are at the model size, so no resize blurs the comparison.
                return Err(missing(
                    &p.display().to_string(),
                    format!(
                        "it is {}×{}, the model takes {}×{}",
                        frame.width, frame.height, i.width, i.height
                    ),
                ));
            }
            frames.push(frame);
        }
        Ok((gpath, goldens, frames))
    }

    /// Run the model's golden cases (`NAME.golden.json` + `NAME.golden/*.png`) through this
    /// session and compare score, map max, map mean and map sum with the tolerance.
    pub fn run_self_test(&mut self) -> Result<SelfTestReport, EngineError> {
        let model = self.path.display().to_string();
        let (gpath, goldens, frames) = self.golden_cases()?;
        let missing = |golden: &str, reason: String| EngineError::GoldenMissing {
            model: model.clone(),
            golden: golden.to_string(),
            reason,
        };
        let (tolerance, from) = self.tolerance();
        let mut pre = crate::stages::preprocess::Preprocessor::new(&self.manifest.input, None);
        let (batch, len) = (self.batch_size(), self.image_len());
        let mut devs = [0.0f64; 4];
        let mut first: Option<Deviation> = None;
        let cases: Vec<&GoldenCase> = goldens.cases.iter().collect();
        for (chunk, fchunk) in cases.chunks(batch).zip(frames.chunks(batch)) {
            for (slot, frame) in fchunk.iter().enumerate() {
                let out = &mut self.input[slot * len..(slot + 1) * len];
                pre.run(frame, out).map_err(|e| {
                    missing(&frame.origin, format!("does not fit the model input: {e}"))
                })?;
            }
            self.input[fchunk.len() * len..].fill(0.0);
            self.run_visit(chunk.len(), |b, score, map| {
                let (d, bad) = selftest::compare(chunk[b], score, map, tolerance, &from);
                for (acc, d) in devs.iter_mut().zip(d) {
                    *acc = acc.max(d);
                }
                if first.is_none() {
                    first = bad;
                }
            })?;
        }
        if let Some(deviation) = first {
            let gpu = self.providers.iter().any(|p| p != "cpu");
            let hint = if gpu && !self.config.allow_fallback {
                ". Rebuild the engine (`diffad build-engine`), check the driver, or set engine.allow_fallback = true to fall back to the CPU provider"
            } else {
                ". Its goldens may be stale (re-export the model) or this ONNX Runtime computes differently; engine.self_test.tolerance widens the check"
            };
            return Err(EngineError::SelfTest {
                model,
                providers: self.providers.join(" > "),
                deviation: Box::new(deviation),
                hint: hint.into(),
            });
        }
        Ok(SelfTestReport {
            golden: gpath,
            cases: goldens.cases.len(),
            max_deviation: devs,
            tolerance,
            tolerance_from: from,
            providers: self.providers.clone(),
        })
    }

    /// The self-test tolerance and where it came from: the board file, else the manifest's
    /// `self_test.tolerance`, else the precision's default (an fp16 graph, or an fp16 TensorRT
    /// engine, gets the fp16 one).
    pub fn tolerance(&self) -> (f64, String) {
        if let Some(t) = self.config.self_test.tolerance {
            return (t, "engine.self_test.tolerance".into());
        }
        if let Some(t) = self
            .manifest
            .self_test
            .as_ref()
            .and_then(|s| s.get("tolerance"))
            .and_then(|t| t.as_f64())
            .filter(|t| t.is_finite() && *t >= 0.0)
        {
            return (t, "manifest self_test.tolerance".into());
        }
        let precision = self
            .manifest
            .architecture
            .get("precision")
            .and_then(|p| p.as_str())
            .unwrap_or("fp32");
        if precision == "fp16" {
            (FP16_TOLERANCE, "fp16 model default".into())
        } else if self.config.tensorrt.fp16 && self.providers.iter().any(|p| p == "tensorrt") {
            (FP16_TOLERANCE, "TensorRT fp16 engine default".into())
        } else {
            (FP32_TOLERANCE, format!("{precision} default"))
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

/// A session on `config`'s providers from the model bytes; returns it with the providers used.
fn open_session(
    config: &EngineConfig,
    bytes: &[u8],
    sha256: &str,
    lib: &OrtLib,
    shown: &str,
) -> Result<(Session, Vec<String>), EngineError> {
    let mut builder = Session::builder(&lib.env)
        .map_err(|e| EngineError::Run(e.to_string()))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| EngineError::Run(e.to_string()))?;
    if config.cpu.threads > 0 {
        builder = builder
            .with_intra_threads(config.cpu.threads)
            .map_err(|e| EngineError::Run(e.to_string()))?;
    }
    let providers = register_providers(&mut builder, config, sha256, &lib.version)?;
    let session = builder
        .commit_from_memory(bytes)
        .map_err(|e| EngineError::NotOnnx {
            path: shown.to_string(),
            reason: e.to_string(),
        })?;
    Ok((session, providers))
}

fn check_io(session: &Session, m: &Manifest) -> Result<(), String> {
    let inputs = session.inputs();
    if inputs.len() != 1 {
        return Err(format!(
            "graph has {} inputs, expected 1 (`{}`)",
            inputs.len(),
            m.input.name
        ));
    }
    let want = [
        m.input.batch as i64,
        m.input.channels as i64,
        m.input.height as i64,
        m.input.width as i64,
    ];
    check_tensor(inputs[0].name(), inputs[0].dtype(), &m.input.name, &want)?;
    let hw = [
        m.input.batch as i64,
        1,
        m.input.height as i64,
        m.input.width as i64,
    ];
    for (name, want) in [(&m.outputs.map, &hw[..]), (&m.outputs.score, &hw[..1])] {
        let out = session
            .outputs()
            .iter()
            .find(|o| o.name() == name.as_str())
            .ok_or_else(|| format!("output `{name}` is missing"))?;
        check_tensor(out.name(), out.dtype(), name, want)?;
    }
    Ok(())
}

fn check_tensor(name: &str, ty: &ValueType, want_name: &str, want: &[i64]) -> Result<(), String> {
    if name != want_name {
        return Err(format!("tensor `{name}`, manifest says `{want_name}`"));
    }
    match ty {
        ValueType::Tensor {
            ty: TensorElementType::Float32,
            shape,
            ..
        } => {
            let dims: Vec<i64> = shape.iter().copied().collect();
            // A dynamic dimension (-1) is accepted where the manifest fixes it.
            let ok =
                dims.len() == want.len() && dims.iter().zip(want).all(|(d, w)| *d == *w || *d < 0);
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "`{name}` has shape {dims:?}, manifest implies {want:?}"
                ))
            }
        }
        other => Err(format!("`{name}` is {other:?}, expected a float32 tensor")),
    }
}

/// Register each configured provider; returns the names really registered (plus CPU).
fn register_providers(
    builder: &mut SessionBuilder,
    config: &EngineConfig,
    model_sha: &str,
    ort_version: &str,
) -> Result<Vec<String>, EngineError> {
    let mut used = Vec::new();
    for name in &config.providers {
        let attempt = match name.as_str() {
            "tensorrt" => register(builder, ep::TensorRT::is_available(), || {
                let dir = tensorrt_cache_dir(&config.tensorrt, model_sha, ort_version);
                if let Err(e) = std::fs::create_dir_all(&dir) {
                    log::warn!("cannot create TensorRT cache dir {}: {e}", dir.display());
                }
                let dir = dir.display().to_string();
                ep::TensorRT::default()
                    .with_device_id(config.tensorrt.device_id)
                    .with_fp16(config.tensorrt.fp16)
                    .with_max_workspace_size(config.tensorrt.workspace_mb << 20)
                    .with_engine_cache(true)
                    .with_engine_cache_path(&dir)
                    .with_timing_cache(true)
                    .with_timing_cache_path(&dir)
                    .build()
                    .error_on_failure()
            }),
            "cuda" => register(builder, ep::CUDA::is_available(), || {
                let mut cuda = ep::CUDA::default().with_device_id(config.cuda.device_id);
                if config.cuda.memory_limit_mb > 0 {
                    cuda = cuda.with_memory_limit(config.cuda.memory_limit_mb << 20);
                }
                cuda.build().error_on_failure()
            }),
            _ => Ok(()),
        };
        match attempt {
            Ok(()) => used.push(name.clone()),
            Err(reason) if config.allow_fallback => {
                log::error!("execution provider `{name}` unavailable ({reason}); falling back as engine.allow_fallback allows");
            }
            Err(reason) => {
                return Err(EngineError::Provider {
                    name: name.clone(),
                    reason,
                })
            }
        }
        if name == "cpu" {
            break;
        }
    }
    if used.last().map(String::as_str) != Some("cpu") {
        // ORT always places nodes no other provider takes on the CPU.
        used.push("cpu".into());
    }
    Ok(used)
}

fn register(
    builder: &mut SessionBuilder,
    available: ort::Result<bool>,
    make: impl FnOnce() -> ep::ExecutionProviderDispatch,
) -> Result<(), String> {
    match available {
        Ok(true) => make().register(builder).map_err(|e| e.to_string()),
        Ok(false) => Err("not included in this ONNX Runtime build (install the GPU build, e.g. JetPack's onnxruntime-gpu)".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Cache directory for TensorRT engines: keyed by model hash, ORT and TensorRT versions, device.
pub fn tensorrt_cache_dir(trt: &TensorRtConfig, model_sha: &str, ort_version: &str) -> PathBuf {
    let trt_version = tensorrt_version().unwrap_or_else(|| "unknown".into());
    trt.cache_dir.join(format!(
        "{}-ort{}-trt{}-dev{}{}",
        &model_sha[..16.min(model_sha.len())],
        ort_version,
        trt_version,
        trt.device_id,
        if trt.fp16 { "-fp16" } else { "" }
    ))
}

/// TensorRT version from the `libnvinfer.so.X.Y.Z` file name, where one is installed.
pub fn tensorrt_version() -> Option<String> {
    const DIRS: &[&str] = &[
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/local/lib",
        "/usr/lib",
    ];
    let mut best: Option<String> = None;
    for dir in DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(v) = name.strip_prefix("libnvinfer.so.") {
                if v.split('.').count() >= 2 && best.as_ref().is_none_or(|b| v.len() > b.len()) {
                    best = Some(v.to_string());
                }
            }
        }
    }
    best
}

/// Whether the TensorRT cache for `config`'s model already holds a built engine.
pub fn tensorrt_cache(config: &EngineConfig) -> Result<Option<(PathBuf, bool)>, EngineError> {
    if !config.providers.iter().any(|p| p == "tensorrt") {
        return Ok(None);
    }
    let lib = crate::model::ortlib::load()?;
    let bytes = std::fs::read(&config.model).map_err(|source| EngineError::Io {
        path: config.model.display().to_string(),
        source,
    })?;
    let sha = crate::model::onnxfile::file_sha256(&bytes);
    let dir = tensorrt_cache_dir(&config.tensorrt, &sha, &lib.version);
    let built = crate::sources::dataset::sorted_dir(&dir)
        .map(|files| {
            files
                .iter()
                .any(|f| f.extension().is_some_and(|e| e == "engine"))
        })
        .unwrap_or(false);
    Ok(Some((dir, built)))
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
