//! Opening the ONNX Runtime session: providers registered in order, graph I/O checked against
//! the manifest, the TensorRT engine cache.

use super::*;

/// A session on `config`'s providers from the model bytes; returns it with the providers used.
pub(super) fn open_session(
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
    // With the environment's shared pool the session has no threads of its own to size.
    if config.cpu.threads > 0 && lib.shared_pool.is_none() {
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

/// `[B, C, H, W]` of the manifest's input.
fn image_shape(m: &Manifest) -> [i64; 4] {
    let i = &m.input;
    [
        i.batch as i64,
        i.channels as i64,
        i.height as i64,
        i.width as i64,
    ]
}

/// The tensor `name` among `outlets` (`what`: input or output), checked to be float32 of shape
/// `want`.
fn check_named(outlets: &[Outlet], what: &str, name: &str, want: &[i64]) -> Result<(), String> {
    let o = outlets
        .iter()
        .find(|o| o.name() == name)
        .ok_or_else(|| format!("{what} `{name}` is missing"))?;
    check_tensor(o.name(), o.dtype(), name, want)
}

pub(super) fn check_io(session: &Session, m: &Manifest) -> Result<(), String> {
    let inputs = session.inputs();
    if inputs.len() != 1 {
        return Err(format!(
            "graph has {} inputs, expected 1 (`{}`)",
            inputs.len(),
            m.input.name
        ));
    }
    let image = image_shape(m);
    check_tensor(inputs[0].name(), inputs[0].dtype(), &m.input.name, &image)?;
    let hw = [image[0], 1, image[2], image[3]];
    check_named(session.outputs(), "output", &m.outputs.map, &hw)?;
    check_named(session.outputs(), "output", &m.outputs.score, &hw[..1])
}

/// A sampler method's graph: inputs x_t `[B, C, H, W]` and t `[B]`, output eps like x_t.
pub(super) fn check_sampler_io(
    session: &Session,
    m: &Manifest,
    names: &super::sampler::NetworkNames,
) -> Result<(), String> {
    let image = image_shape(m);
    let inputs = session.inputs();
    if inputs.len() != 2 {
        return Err(format!(
            "graph has {} inputs, the sampler feeds 2 (`{}`, `{}`)",
            inputs.len(),
            names.x_t,
            names.t
        ));
    }
    check_named(inputs, "input", &names.x_t, &image)?;
    check_named(inputs, "input", &names.t, &image[..1])?;
    check_named(session.outputs(), "output", &names.eps, &image)
}

pub(super) fn check_tensor(
    name: &str,
    ty: &ValueType,
    want_name: &str,
    want: &[i64],
) -> Result<(), String> {
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
pub(super) fn register_providers(
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

pub(super) fn register(
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
    let bytes = config
        .read_model(&config.model)
        .map_err(|source| EngineError::Io {
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
