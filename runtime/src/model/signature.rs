//! Model signatures in minisign's format (Ed25519, `MODEL.minisig` beside the model), as
//! `python -m exporter sign` and Debian's `minisign -S` write them: checked against the board's
//! trusted public keys over the very bytes the engine loads.

use minisign_verify::{PublicKey, Signature};
use std::path::{Path, PathBuf};

/// The public half of the demo key the shipped models are signed with (`models/demo-signing.pub`).
/// Its secret half is in the repository too: it proves the mechanism, never a model's origin.
pub const DEMO_PUBLIC_KEY: &str = "RWTBsX+qLBGIu4reYZ2NBAr3IgKYnmeEvO7DIArg2TTSgJD1QfLd0BYs";

/// Why a signature does not let a model in; each names the files.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// `engine.require_signature` without keys to check against.
    #[error("engine.require_signature is set but engine.trusted_keys names no key: add the public key(s) your models are signed with")]
    NoKeys,
    /// A trusted key file is unusable.
    #[error("engine.trusted_keys: {path}: {message}")]
    Key {
        /// The key file.
        path: String,
        /// Why.
        message: String,
    },
    /// The model has no signature file.
    #[error("model {model} is not signed: {sig} is missing (sign it with `python -m exporter sign {model} --key KEY`)")]
    Missing {
        /// The model.
        model: String,
        /// The signature file looked for.
        sig: String,
    },
    /// The signature file is unreadable or not minisign's format.
    #[error("signature {sig}: {message}")]
    Unreadable {
        /// The signature file.
        sig: String,
        /// Why.
        message: String,
    },
    /// No trusted key verifies the signature: the model was altered, or signed by another key.
    #[error("model {model} does not match its signature {sig} under any trusted key ({tried}): it was altered after signing, or signed with a key this board does not trust")]
    Bad {
        /// The model.
        model: String,
        /// Its signature file.
        sig: String,
        /// Each key tried, with what it said.
        tried: String,
    },
}

/// A public key the board trusts.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// Its file.
    pub path: PathBuf,
    /// The key.
    pub key: PublicKey,
    /// Its base64 line (the key itself).
    pub line: String,
}

impl TrustedKey {
    /// Whether this is the repository's demo key.
    pub fn is_demo(&self) -> bool {
        self.line == DEMO_PUBLIC_KEY
    }
}

/// A signature that checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The key file that verified it.
    pub key: PathBuf,
    /// Whether that is the demo key.
    pub demo: bool,
    /// The signature's trusted comment (signed too).
    pub trusted_comment: String,
}

/// Read the trusted keys (minisign `.pub` files).
pub fn load_keys(paths: &[PathBuf]) -> Result<Vec<TrustedKey>, SignatureError> {
    paths
        .iter()
        .map(|p| {
            let err = |message: String| SignatureError::Key {
                path: p.display().to_string(),
                message,
            };
            let meta = std::fs::metadata(p).map_err(|e| err(e.to_string()))?;
            if !meta.is_file() || meta.len() > 4096 {
                return Err(err("not a minisign public key file".into()));
            }
            let text = std::fs::read_to_string(p).map_err(|e| err(e.to_string()))?;
            let key = PublicKey::decode(&text)
                .map_err(|e| err(format!("not a minisign public key ({e})")))?;
            let line = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
                .unwrap_or_default()
                .to_string();
            Ok(TrustedKey {
                path: p.clone(),
                key,
                line,
            })
        })
        .collect()
}

/// Where a model's signature lives: `MODEL.minisig` (minisign's convention).
pub fn signature_path(model: &Path) -> PathBuf {
    let mut name = model.file_name().unwrap_or_default().to_os_string();
    name.push(".minisig");
    model.with_file_name(name)
}

/// Check `bytes` (the model file `model` as loaded) against its signature and `keys`.
pub fn verify(model: &Path, bytes: &[u8], keys: &[TrustedKey]) -> Result<Verified, SignatureError> {
    if keys.is_empty() {
        return Err(SignatureError::NoKeys);
    }
    let sig_path = signature_path(model);
    let (shown, sig_shown) = (model.display().to_string(), sig_path.display().to_string());
    let text = match std::fs::metadata(&sig_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SignatureError::Missing {
                model: shown,
                sig: sig_shown,
            })
        }
        Ok(m) if !m.is_file() || m.len() > 16 * 1024 => {
            return Err(SignatureError::Unreadable {
                sig: sig_shown,
                message: "not a signature file".into(),
            })
        }
        _ => std::fs::read_to_string(&sig_path).map_err(|e| SignatureError::Unreadable {
            sig: sig_shown.clone(),
            message: e.to_string(),
        })?,
    };
    let sig = Signature::decode(&text).map_err(|e| SignatureError::Unreadable {
        sig: sig_shown.clone(),
        message: format!("not minisign's format ({e})"),
    })?;
    let mut tried = Vec::new();
    for k in keys {
        // Legacy (unhashed) signatures are refused: minisign itself stopped making them.
        match k.key.verify(bytes, &sig, false) {
            Ok(()) => {
                return Ok(Verified {
                    key: k.path.clone(),
                    demo: k.is_demo(),
                    trusted_comment: sig.trusted_comment().to_string(),
                })
            }
            Err(e) => tried.push(format!("{}: {e}", k.path.display())),
        }
    }
    Err(SignatureError::Bad {
        model: shown,
        sig: sig_shown,
        tried: tried.join("; "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    #[test]
    fn the_shipped_model_verifies_under_the_demo_key_and_a_flipped_byte_does_not() {
        let model = root().join("models/tiles-brick/model.onnx");
        let keys = load_keys(&[root().join("models/demo-signing.pub")]).unwrap();
        assert!(keys[0].is_demo());
        let mut bytes = std::fs::read(&model).unwrap();
        let v = verify(&model, &bytes, &keys).unwrap();
        assert!(v.demo && v.trusted_comment.contains("model.onnx"), "{v:?}");
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        let e = verify(&model, &bytes, &keys).unwrap_err().to_string();
        assert!(
            e.contains("does not match its signature") && e.contains("demo-signing.pub"),
            "{e}"
        );
    }

    #[test]
    fn missing_signatures_keys_and_garbage_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        std::fs::write(&model, b"x").unwrap();
        let keys = load_keys(&[root().join("models/demo-signing.pub")]).unwrap();
        let e = verify(&model, b"x", &keys).unwrap_err().to_string();
        assert!(
            e.contains("is not signed") && e.contains("m.onnx.minisig"),
            "{e}"
        );
        std::fs::write(signature_path(&model), "garbage").unwrap();
        assert!(verify(&model, b"x", &keys)
            .unwrap_err()
            .to_string()
            .contains("not minisign's format"));
        assert!(matches!(
            verify(&model, b"x", &[]),
            Err(SignatureError::NoKeys)
        ));
        let bad = dir.path().join("k.pub");
        std::fs::write(&bad, "untrusted comment: x\nnot a key\n").unwrap();
        let e = load_keys(&[bad]).unwrap_err().to_string();
        assert!(
            e.contains("engine.trusted_keys") && e.contains("k.pub"),
            "{e}"
        );
    }
}
