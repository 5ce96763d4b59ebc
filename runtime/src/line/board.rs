//! The board file: one TOML per board (`[board]`, `[engine]` and the line's sections), loaded
//! and validated before the line starts, then checked against this machine and the model.

use crate::config::{check_path, deserialize, take_section, Invalid, Want};
use std::path::{Path, PathBuf};

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
    pub engine: crate::stages::engine::EngineConfig,
    /// `[camera]`, `[gpio]`, `[line]`, `[supervisor]`, `[mqtt]`, `[archive]`.
    pub setup: crate::line::setup::LineSetup,
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
    /// Valid keys that do not work on this machine or with this model (missing files,
    /// a threshold outside the model's score range, ...).
    #[error(
        "board config {path}: {} problem(s):\n  {}",
        problems.len(),
        problems.iter().map(Invalid::to_string).collect::<Vec<_>>().join("\n  ")
    )]
    Unusable {
        /// The file.
        path: String,
        /// Each problem with its key and what to do.
        problems: Vec<Invalid>,
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
        let engine =
            take_section::<crate::stages::engine::EngineConfig>(&mut table, "engine", true)
                .map_err(invalid)?;
        let setup: crate::line::setup::LineSetup =
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
        for k in &mut self.engine.trusted_keys {
            fix(k);
        }
        fix(&mut self.engine.tensorrt.cache_dir);
        fix(&mut self.setup.camera.replay.dir);
        if let Some(p) = self.setup.camera.sim.photo.as_mut() {
            fix(p);
        }
        if let Some(a) = self.setup.archive.as_mut() {
            fix(&mut a.dir);
        }
        if let Some(t) = self.setup.supervisor.tls.as_mut() {
            fix(&mut t.cert_file);
            fix(&mut t.key_file);
            fix(&mut t.client_ca_file);
        }
        if let Some(c) = self.setup.control.as_mut() {
            fix(&mut c.socket);
        }
        if let Some(o) = self.setup.opcua.as_mut() {
            fix(&mut o.pki_dir);
            if let Some(u) = o.users_file.as_mut() {
                fix(u);
            }
        }
        if let Some(w) = self.setup.web.as_mut() {
            if let Some(t) = w.token_file.as_mut() {
                fix(t);
            }
            if let Some(t) = w.tls.as_mut() {
                fix(&mut t.cert_file);
                fix(&mut t.key_file);
                if let Some(ca) = t.client_ca_file.as_mut() {
                    fix(ca);
                }
            }
        }
    }
}

impl BoardConfig {
    /// What only this machine and the model can tell: every file, folder and device the
    /// config names exists, and the model's manifest agrees with the line (threshold within
    /// its score range, a calibrated threshold, region size). `check-config` and `run`
    /// report these; loading the file does not, so board files can be checked anywhere.
    pub fn check_deployment(&self) -> Vec<Invalid> {
        let mut problems = Vec::new();
        let rel = "relative paths are relative to the board file";
        let mut path = |key: &str, p: &Path, want: Want, fix: &str| {
            problems.extend(check_path(key, p, want, fix));
        };
        let model = &self.engine.model;
        path(
            "engine.model",
            model,
            Want::File,
            &format!("copy the model there or fix the path ({rel})"),
        );
        let golden = model.with_extension("golden.json");
        if self.engine.self_test.enabled && model.is_file() {
            path(
                "engine.model",
                &golden,
                Want::File,
                "the engine self-test needs the model's golden outputs: deploy NAME.golden.json and \
                 NAME.golden/ beside it, or set engine.self_test.enabled = false to start unchecked",
            );
        }
        for (i, k) in self.engine.trusted_keys.iter().enumerate() {
            path(
                &format!("engine.trusted_keys[{i}]"),
                k,
                Want::File,
                &format!("install the public key there (`scripts/deploy` copies it) or fix the path ({rel})"),
            );
        }
        problems.extend(self.camera_paths());
        problems.extend(self.sink_paths());
        if model.is_file() {
            problems.extend(self.check_model());
        }
        problems
    }

    /// The photo, folder or device the camera section names.
    fn camera_paths(&self) -> Vec<Invalid> {
        let mut problems = Vec::new();
        let rel = "relative paths are relative to the board file";
        let mut path = |key: &str, p: &Path, want: Want, fix: &str| {
            problems.extend(check_path(key, p, want, fix));
        };
        let cam = &self.setup.camera;
        match cam.source {
            crate::sources::camera::config::SourceKind::Sim => {
                if let Some(photo) = &cam.sim.photo {
                    path(
                        "camera.sim.photo",
                        photo,
                        Want::File,
                        &format!("write it (`scripts/texture-photos`), fix the path ({rel}), or remove the key for a procedural texture"),
                    );
                }
            }
            crate::sources::camera::config::SourceKind::Replay => path(
                "camera.replay.dir",
                &cam.replay.dir,
                Want::Folder,
                &format!("point it at a folder of images ({rel})"),
            ),
            // The camera is found on the network or the bus when the line starts: `diffad doctor`.
            crate::sources::camera::config::SourceKind::Genicam => {}
            crate::sources::camera::config::SourceKind::V4l2 => path(
                "camera.v4l2.device",
                &cam.v4l2.device,
                Want::Exists,
                "connect the camera, or name its device node (`v4l2-ctl --list-devices`)",
            ),
            // The pipeline's elements and devices are `diffad doctor`'s and `run`'s to check.
            crate::sources::camera::config::SourceKind::Gstreamer => {}
        }
        problems
    }

    /// The key, certificate and archive paths of the sinks.
    fn sink_paths(&self) -> Vec<Invalid> {
        let mut problems = Vec::new();
        let rel = "relative paths are relative to the board file";
        let mut path = |key: &str, p: &Path, want: Want, fix: &str| {
            problems.extend(check_path(key, p, want, fix));
        };
        if let Some(m) = &self.setup.mqtt {
            for (key, p, want) in [
                ("mqtt.password_file", &m.password_file, Want::Secret),
                ("mqtt.ca_file", &m.ca_file, Want::File),
                ("mqtt.cert_file", &m.cert_file, Want::File),
                ("mqtt.key_file", &m.key_file, Want::Secret),
            ] {
                if let Some(p) = p {
                    path(key, p, want, &format!("create it or fix the path ({rel})"));
                }
            }
        }
        if let Some(t) = &self.setup.supervisor.tls {
            for (key, p, want) in [
                ("supervisor.tls.cert_file", &t.cert_file, Want::File),
                ("supervisor.tls.key_file", &t.key_file, Want::Secret),
                (
                    "supervisor.tls.client_ca_file",
                    &t.client_ca_file,
                    Want::File,
                ),
            ] {
                path(key, p, want, &format!("create it or fix the path ({rel})"));
            }
        }
        if let Some(c) = &self.setup.control {
            // Created at start (mode 0700) when absent; something else in its place cannot be.
            let dir = c.socket.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir.filter(|d| d.exists() && !d.is_dir()) {
                path(
                    "control.socket",
                    dir,
                    Want::Folder,
                    "name a socket path in a folder (systemd's RuntimeDirectory=diffad gives /run/diffad)",
                );
            }
        }
        if let Some(o) = &self.setup.opcua {
            for (key, p, want) in o.files() {
                path(key, p, want, &format!("create it or fix the path ({rel})"));
            }
        }
        if let Some(w) = &self.setup.web {
            for (key, p, want) in w.files() {
                path(key, p, want, &format!("create it or fix the path ({rel})"));
            }
        }
        if let Some(a) = &self.setup.archive {
            // Created at start when absent; something else in its place cannot be.
            if a.dir.exists() && !a.dir.is_dir() {
                path(
                    "archive.dir",
                    &a.dir,
                    Want::Folder,
                    "name a folder (it is created when absent)",
                );
            }
        }
        problems
    }

    /// The line's keys that depend on the model, against its manifest (read without ONNX Runtime).
    fn check_model(&self) -> Vec<Invalid> {
        let model = &self.engine.model;
        let m = match crate::model::manifest::Manifest::read(model) {
            Ok(m) => m,
            Err(e) => {
                return vec![Invalid::new(
                    "engine.model",
                    format!(
                        "model {} {e}; export it with `python -m exporter export`",
                        model.display()
                    ),
                )]
            }
        };
        let mut problems = Vec::new();
        let line = &self.setup.line;
        match (line.threshold, &m.threshold) {
            (Some(t), _) => {
                if let Err(e) = m.check_threshold(t) {
                    problems.push(Invalid::new(
                        "line.threshold",
                        format!(
                            "{e} ({}): it would pass or reject every part alike; set it within the range, \
                             or remove it to use the model's calibrated threshold",
                            model.display()
                        ),
                    ));
                }
            }
            (None, None) => problems.push(Invalid::new(
                "line.threshold",
                format!(
                    "model {} has no calibrated threshold: calibrate it (`python -m exporter calibrate`) or set line.threshold",
                    model.display()
                ),
            )),
            (None, Some(_)) => {}
        }
        if let Err(e) = crate::stages::tiling::check_model(&self.setup.camera, &m.input) {
            problems.push(e);
        }
        problems.extend(self.check_steps(&m));
        problems
    }

    /// `engine.steps` against the model: only a sampler takes it, within [1, t_start], and a
    /// calibrated threshold holds only at the step count it was calibrated at.
    fn check_steps(&self, m: &crate::model::manifest::Manifest) -> Option<Invalid> {
        let steps = self.engine.steps?;
        let model = self.engine.model.display();
        let Some(sampler) = &m.sampler else {
            return Some(Invalid::new(
                "engine.steps",
                format!(
                    "model {model} ({}) runs one network call per part and has no sampler steps; remove engine.steps",
                    m.method
                ),
            ));
        };
        let spec = match crate::stages::engine::sampler::SamplerSpec::parse(sampler) {
            Ok(spec) => spec,
            Err((key, reason)) => {
                return Some(Invalid::new(
                    "engine.model",
                    format!("model {model}: manifest field `{key}` is invalid: {reason}"),
                ))
            }
        };
        if let Err(reason) = spec.check_steps(steps) {
            return Some(Invalid::new(
                "engine.steps",
                format!("model {model}: {reason}"),
            ));
        }
        match (
            self.setup.line.threshold,
            m.threshold_steps_other_than(steps),
        ) {
            (None, Some(at)) => Some(Invalid::new(
                "engine.steps",
                format!(
                    "{steps} steps, but model {model} was calibrated at {at}: recalibrate with \
                     `python -m exporter calibrate MODEL --steps {steps} --good ...`, or set line.threshold"
                ),
            )),
            _ => None,
        }
    }
}
