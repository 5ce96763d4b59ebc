//! The ONNX Runtime session that runs the one-step DiffusionAD graph.
//!
//! One session per engine, one `run` per batch. The input buffer is allocated once at load and
//! filled in place by `preprocess`, so the steady state allocates only ORT's outputs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ort::ep::{self, ExecutionProvider};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::Invalid;
use crate::manifest::{Manifest, ManifestError, METADATA_KEY};
use crate::ortlib::{self, OrtLib, OrtLibError};

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
        Ok(())
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
}

impl Engine {
    /// Load `config.model` with the configured providers, checking graph against manifest.
    pub fn load(config: &EngineConfig) -> Result<Self, EngineError> {
        let lib = ortlib::load()?;
        let path = config.model.clone();
        let shown = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|source| EngineError::Io {
            path: shown.clone(),
            source,
        })?;
        let sha256 = hex(&Sha256::digest(&bytes));
        let not_onnx = |e: ort::Error| EngineError::NotOnnx {
            path: shown.clone(),
            reason: e.to_string(),
        };

        let mut builder = Session::builder(&lib.env)
            .map_err(|e| EngineError::Run(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| EngineError::Run(e.to_string()))?;
        if config.cpu.threads > 0 {
            builder = builder
                .with_intra_threads(config.cpu.threads)
                .map_err(|e| EngineError::Run(e.to_string()))?;
        }
        let providers = register_providers(&mut builder, config, &sha256, &lib.version)?;
        let session = builder.commit_from_memory(&bytes).map_err(not_onnx)?;

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
            "model {} ({}, sha256 {}…) on {} with ONNX Runtime {}",
            shown,
            manifest.name,
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
        })
    }

    /// The model's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of the model file.
    pub fn sha256(&self) -> &str {
        &self.sha256
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
        let i = &self.manifest.input;
        let shape = [
            i.batch as i64,
            i.channels as i64,
            i.height as i64,
            i.width as i64,
        ];
        let (hw, batch) = (i.height * i.width, i.batch);
        let (map_name, score_name) = (
            self.manifest.outputs.map.clone(),
            self.manifest.outputs.score.clone(),
        );
        let tensor = TensorRef::from_array_view((shape, self.input.as_slice()))
            .map_err(|e| EngineError::Run(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![i.name.as_str() => tensor])
            .map_err(|e| EngineError::Run(e.to_string()))?;
        let (_, maps) = outputs[map_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| EngineError::Run(format!("output `{map_name}`: {e}")))?;
        let (_, scores) = outputs[score_name.as_str()]
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
        Ok((0..n.min(batch))
            .map(|b| Output {
                score: scores[b],
                map: maps[b * hw..(b + 1) * hw].to_vec(),
            })
            .collect())
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

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
