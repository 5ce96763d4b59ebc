//! `[engine]`: the model, the execution providers in order, and their options.

use super::*;
use serde::Deserialize;

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
    /// Sampler steps per image for multi-step recipes (`anoddpm`): fewer is faster, more
    /// reconstructs more faithfully. Absent: the model's own. Refused for one-call models.
    #[serde(default)]
    pub steps: Option<usize>,
    /// Refuse a model whose signature (`MODEL.minisig`) no key of `trusted_keys` verifies, at
    /// start and when staged on a running line.
    #[serde(default)]
    pub require_signature: bool,
    /// Public keys (minisign `.pub` files) whose signatures are trusted. With keys but without
    /// `require_signature`, a model that is signed is still checked; an unsigned one is let in.
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// Largest model file read (MB); a larger file, or one that is not a regular file, is
    /// refused before it is read.
    #[serde(default = "default_max_model_mb")]
    pub max_model_mb: f64,
}

fn default_max_model_mb() -> f64 {
    crate::files::MODEL_CAP_MB
}

impl EngineConfig {
    /// Read the model file within `max_model_mb`.
    pub fn read_model(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        crate::files::read_capped(
            path,
            crate::files::mb(self.max_model_mb),
            "engine.model (cap: engine.max_model_mb)",
        )
    }
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuConfig {
    /// Intra-op threads (0 = one per core).
    pub threads: usize,
    /// `diffad run`: every model the line loads (live, candidate) runs on one shared pool of
    /// `threads`, made by the line's thread (`ortlib::share_one_pool`); false: a pool each.
    pub shared_pool: bool,
}

impl Default for CpuConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            shared_pool: true,
        }
    }
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
            steps: None,
            require_signature: false,
            trusted_keys: Vec::new(),
            max_model_mb: crate::files::MODEL_CAP_MB,
        }
    }

    /// Check values that serde cannot.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(self.max_model_mb > 0.0 && self.max_model_mb <= 2048.0) {
            return Err(Invalid::new(
                "engine.max_model_mb",
                "must be within (0, 2048] (ONNX files cannot exceed 2 GB)",
            ));
        }
        if self.require_signature && self.trusted_keys.is_empty() {
            return Err(Invalid::new(
                "engine.trusted_keys",
                "engine.require_signature = true needs at least one public key (minisign .pub) to check models against",
            ));
        }
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
        if self.steps == Some(0) {
            return Err(Invalid::new("engine.steps", "must be at least 1"));
        }
        if self.tensorrt.workspace_mb == 0 {
            return Err(Invalid::new("engine.tensorrt.workspace_mb", "must be > 0"));
        }
        self.self_test.validate()
    }
}
