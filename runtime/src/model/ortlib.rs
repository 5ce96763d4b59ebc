//! Finding and loading the ONNX Runtime shared library (ort's `load-dynamic`).
//!
//! Search order: `ORT_DYLIB_PATH`; the project virtualenv's
//! `onnxruntime/capi/libonnxruntime.so.*` (`$VIRTUAL_ENV`, then `.venv` in the working directory
//! and beside the executable's ancestors); the system's `libonnxruntime.so`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Oldest ONNX Runtime this build supports (JetPack 6 ships 1.20).
pub const MIN_VERSION: (u32, u32) = (1, 20);

/// Why ONNX Runtime could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OrtLibError {
    /// No library file was found in any searched place.
    #[error(
        "ONNX Runtime not found (searched: {searched}). Run `scripts/setup` (it installs onnxruntime \
         into .venv), or set ORT_DYLIB_PATH to a libonnxruntime.so of version >= {}.{}",
        MIN_VERSION.0, MIN_VERSION.1
    )]
    NotFound {
        /// Places that were looked at.
        searched: String,
    },
    /// A library was found but could not be loaded or is too old.
    #[error(
        "could not load ONNX Runtime from {path}: {reason}. Point ORT_DYLIB_PATH at ONNX Runtime >= {}.{} \
         (`scripts/setup` installs one into .venv)",
        MIN_VERSION.0, MIN_VERSION.1
    )]
    Load {
        /// The library file.
        path: String,
        /// Loader's message.
        reason: String,
    },
}

/// The loaded library: where it came from and its version string.
#[derive(Clone)]
pub struct OrtLib {
    /// Path of the shared library that was loaded.
    pub path: PathBuf,
    /// Version reported by the library, e.g. `1.32.0`.
    pub version: String,
    /// The process-wide ONNX Runtime environment every session is built in.
    pub env: ort::environment::Environment,
    /// Intra-op threads of the environment's one thread pool, which every session then shares
    /// (`None`: each session has its own; `Some(0)`: one per core).
    pub shared_pool: Option<usize>,
}

static LOADED: OnceLock<Result<OrtLib, OrtLibError>> = OnceLock::new();
static SHARED_POOL: OnceLock<usize> = OnceLock::new();

/// Have every session of this process share one intra-op pool of `threads` (0: one per core),
/// created with the environment by the calling thread. Call before the first [`load`]; returns
/// false if the environment was already built (each session then keeps its own pool).
///
/// Why: the line may hold two models at once (live and a staged candidate). Two pools on a
/// small CPU contend, and a session built on a niced thread (the network runtime's, where a
/// stage happens) has pool threads that keep that nice after it is promoted to live. One pool,
/// made by the line's own thread, is warm and at the line's priority for whichever model runs.
pub fn share_one_pool(threads: usize) -> bool {
    LOADED.get().is_none() && SHARED_POOL.set(threads).is_ok()
}

/// Load ONNX Runtime once per process; later calls return the first outcome.
pub fn load() -> Result<&'static OrtLib, OrtLibError> {
    LOADED
        .get_or_init(load_uncached)
        .as_ref()
        .map_err(Clone::clone)
}

fn load_uncached() -> Result<OrtLib, OrtLibError> {
    let (path, searched) = find();
    let path = path.ok_or(OrtLibError::NotFound { searched })?;
    let load_err = |reason: String| OrtLibError::Load {
        path: path.display().to_string(),
        reason,
    };
    if !path.exists() {
        return Err(load_err("no such file".into()));
    }
    // ort checks the library's API level (>= api-20, i.e. ONNX Runtime 1.20) while loading it.
    let mut builder = ort::init_from(&path)
        .map_err(|e| load_err(e.to_string()))?
        .with_name("diffad");
    let shared_pool = SHARED_POOL.get().copied();
    if let Some(threads) = shared_pool {
        let pool = ort::environment::GlobalThreadPoolOptions::default()
            .with_intra_threads(threads)
            .map_err(|e| load_err(e.to_string()))?;
        builder = builder.with_global_thread_pool(pool);
    }
    let env = builder.build().map_err(|e| load_err(e.to_string()))?;
    let version = version_from_filename(&path).unwrap_or_else(|| parse_build_info(ort::info()));
    if !version_ok(&version) && version != "unknown" {
        return Err(load_err(format!(
            "version {version} is older than supported"
        )));
    }
    Ok(OrtLib {
        path,
        version,
        env,
        shared_pool,
    })
}

fn version_ok(version: &str) -> bool {
    let mut it = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (major, minor) >= MIN_VERSION
}

fn version_from_filename(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let v = name.strip_prefix("libonnxruntime.so.")?;
    (v.split('.').count() >= 2).then(|| v.to_string())
}

fn parse_build_info(info: &str) -> String {
    // e.g. "ORT Build Info: git-branch=rel-1.20.1, git-commit-id=..."
    info.split("rel-")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("unknown")
        .to_string()
}

fn find() -> (Option<PathBuf>, String) {
    let mut searched = Vec::new();
    if let Ok(p) = std::env::var("ORT_DYLIB_PATH") {
        if !p.is_empty() {
            // An explicit choice is never second-guessed: a wrong path is an error, not a fallback.
            return (Some(PathBuf::from(p)), "ORT_DYLIB_PATH".into());
        }
    }
    let mut venvs = Vec::new();
    if let Ok(v) = std::env::var("VIRTUAL_ENV") {
        venvs.push(PathBuf::from(v));
    }
    if let Ok(cwd) = std::env::current_dir() {
        venvs.push(cwd.join(".venv"));
    }
    if let Ok(exe) = std::env::current_exe() {
        venvs.extend(exe.ancestors().skip(1).map(|d| d.join(".venv")));
    }
    for venv in venvs {
        searched.push(venv.display().to_string());
        if let Some(lib) = venv_library(&venv) {
            return (Some(lib), searched.join(", "));
        }
    }
    for dir in [
        "/usr/local/lib",
        "/usr/lib",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib/x86_64-linux-gnu",
    ] {
        let p = Path::new(dir).join("libonnxruntime.so");
        searched.push(p.display().to_string());
        if p.exists() {
            return (Some(p), searched.join(", "));
        }
    }
    (None, searched.join(", "))
}

fn venv_library(venv: &Path) -> Option<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(lib).ok()?.flatten() {
        let capi = entry.path().join("site-packages/onnxruntime/capi");
        if let Ok(files) = std::fs::read_dir(&capi) {
            let mut libs: Vec<PathBuf> = files
                .flatten()
                .map(|f| f.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                })
                .collect();
            libs.sort();
            if let Some(l) = libs.pop() {
                return Some(l);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_ok("1.20.1"));
        assert!(version_ok("1.32.0"));
        assert!(!version_ok("1.19.2"));
        assert_eq!(
            version_from_filename(Path::new("/x/libonnxruntime.so.1.20.1")).as_deref(),
            Some("1.20.1")
        );
        assert_eq!(
            version_from_filename(Path::new("/x/libonnxruntime.so")),
            None
        );
        assert_eq!(
            parse_build_info("ORT Build Info: git-branch=rel-1.20.1, git-commit-id=abc"),
            "1.20.1"
        );
    }
}
