//! Board configuration: one TOML file per board, every section validated before the line starts.

use std::fmt;
use std::path::{Path, PathBuf};

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

/// `[board]`: which board this file describes.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardInfo {
    /// Short name, e.g. `jetson-orin-nano`.
    pub name: String,
    /// What the board is, for people.
    #[serde(default)]
    pub description: String,
}

/// A whole board file: `[board]`, `[engine]` and the line's sections.
#[derive(Debug, Clone)]
pub struct BoardConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// `[board]`.
    pub board: BoardInfo,
    /// `[engine]`.
    pub engine: crate::engine::EngineConfig,
    /// `[camera]`, `[gpio]`, `[line]`, `[supervisor]`, `[mqtt]`, `[archive]`.
    pub setup: crate::setup::LineSetup,
}

/// Why a board file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("board config {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML.
    #[error("board config {path} is not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// Parser's message with line and column.
        message: String,
    },
    /// A key is unknown, missing or out of range.
    #[error("board config {path}: {invalid}")]
    Invalid {
        /// The file.
        path: String,
        /// The key and what is allowed.
        invalid: Invalid,
    },
}

impl BoardConfig {
    /// Read, parse and validate a board file; relative paths in it are relative to the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: shown.clone(),
            source,
        })?;
        let invalid = |invalid: Invalid| ConfigError::Invalid {
            path: shown.clone(),
            invalid,
        };
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: shown.clone(),
                    message: e.to_string(),
                })?;
        let board = take_section::<BoardInfo>(&mut table, "board", true).map_err(invalid)?;
        let engine = take_section::<crate::engine::EngineConfig>(&mut table, "engine", true)
            .map_err(invalid)?;
        let setup: crate::setup::LineSetup =
            deserialize(toml::Value::Table(table), "").map_err(invalid)?;
        let mut config = Self {
            path: path.to_path_buf(),
            board: board.expect("required"),
            engine: engine.expect("required"),
            setup,
        };
        config.resolve_paths();
        config.engine.validate().map_err(invalid)?;
        config.setup.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Make relative paths relative to the config file's folder, as a user reading the file expects.
    fn resolve_paths(&mut self) {
        let base = self
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let fix = |p: &mut PathBuf| {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.engine.model);
        fix(&mut self.engine.tensorrt.cache_dir);
        fix(&mut self.setup.camera.replay.dir);
        if let Some(p) = self.setup.camera.sim.photo.as_mut() {
            fix(p);
        }
        if let Some(a) = self.setup.archive.as_mut() {
            fix(&mut a.dir);
        }
    }
}

fn take_section<T: serde::de::DeserializeOwned>(
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
fn deserialize<T: serde::de::DeserializeOwned>(
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
