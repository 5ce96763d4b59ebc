//! Board configuration: one TOML file per board, every section validated before the line starts.

use std::fmt;

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
