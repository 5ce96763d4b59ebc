//! What every configuration section shares: the error that names a key, strict deserializing
//! with the dotted path of the failing key, and the checks on the paths a section names.

use std::fmt;
use std::path::Path;

/// A configuration value that is present but not acceptable, named by its dotted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Dotted path of the offending key, e.g. `gpio.reject.pulse_ms`.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl Invalid {
    /// Build an error for `key` with a message that says what is allowed.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for Invalid {}

/// Where a configured path should lead.
#[derive(Clone, Copy)]
pub enum Want {
    /// A file.
    File,
    /// A folder.
    Folder,
    /// A file or a device node.
    Exists,
    /// A file with a secret (key, password): others may not read it.
    Secret,
}

/// Whether others (not owner, not group) may read or write a file.
fn secret_exposed(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o006 != 0
}

/// The first `(key, value, lo, hi)` whose value lies outside `lo..=hi`, as an error naming it.
pub fn check_ranges(ranges: &[(&str, usize, usize, usize)]) -> Result<(), Invalid> {
    for &(key, v, lo, hi) in ranges {
        if !(lo..=hi).contains(&v) {
            return Err(Invalid::new(
                key,
                format!("is {v}: must be within {lo}..={hi}"),
            ));
        }
    }
    Ok(())
}

/// `Some(problem)` when `path` (the value of `key`) is not what the config needs.
pub fn check_path(key: &str, path: &Path, want: Want, fix: &str) -> Option<Invalid> {
    let meta = std::fs::metadata(path);
    let problem = match (&meta, want) {
        (Err(e), _) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
        (Err(e), _) => format!("cannot be read ({e})"),
        (Ok(m), Want::File) if m.is_dir() => "is a folder, not a file".into(),
        (Ok(m), Want::Folder) if !m.is_dir() => "is not a folder".into(),
        (Ok(m), Want::Secret) if m.is_dir() => "is a folder, not a file".into(),
        (Ok(m), Want::Secret) if secret_exposed(m) => {
            use std::os::unix::fs::PermissionsExt;
            return Some(Invalid::new(
                key,
                format!(
                    "{} is readable by others (mode {:04o}): it holds a secret; `chmod 600` it (or 640 with the service's group)",
                    path.display(),
                    m.permissions().mode() & 0o7777
                ),
            ));
        }
        _ => return None,
    };
    Some(Invalid::new(
        key,
        format!("{} {problem}: {fix}", path.display()),
    ))
}

/// Take section `key` out of `table` (an error when `required` and absent).
pub fn take_section<T: serde::de::DeserializeOwned>(
    table: &mut toml::Table,
    key: &str,
    required: bool,
) -> Result<Option<T>, Invalid> {
    match table.remove(key) {
        Some(v) => deserialize(v, key).map(Some),
        None if required => Err(Invalid::new(key, format!("section [{key}] is missing"))),
        None => Ok(None),
    }
}

/// Deserialize with the dotted path of the failing key in the error.
pub fn deserialize<T: serde::de::DeserializeOwned>(
    value: toml::Value,
    prefix: &str,
) -> Result<T, Invalid> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        // toml appends its own "in `key`" context; the dotted key already says it.
        let message = e
            .inner()
            .to_string()
            .split("\nin `")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let mut key: Vec<String> = Vec::new();
        if !prefix.is_empty() {
            key.push(prefix.to_string());
        }
        if inner != "." && !inner.is_empty() {
            key.push(inner);
        }
        Invalid::new(key.join("."), message)
    })
}
