//! `diffad doctor`: check a device against a board file and print a checklist with fixes.
//!
//! Every check returns a [`Check`]; a panic inside one is caught and reported as a failure, so
//! one broken probe never hides the others. System locations (`/dev`, `/sys`, `/etc`, `/run`
//! and the camera's device node) are looked up under `--root`, so tests can hand a fake root
//! made of plain files; the board file's own paths (model, caches, archive) are taken as given.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use crate::line::board::BoardConfig;

mod checklist;
mod devices;
mod genicam;
mod gstreamer;
mod host;
mod model;
mod network;
mod opcua;
mod storage;

pub use checklist::{Check, Report, Status};
pub use devices::{find_chip, gpio_chips, ChipEntry};
pub use host::{check_clock, check_reject_timing, check_unit, unit_user, watchdog_sec};
pub use network::{check_bind, check_mqtt};
pub use opcua::check_opcua;
pub use storage::{access_rw, check_writable_dir, disk_check, free_mb};

use devices::{check_camera, check_gpio};
use model::{check_model, check_ort};
use storage::check_archive;

/// Where system paths are looked up: `/` on a real unit, a fake tree in tests.
#[derive(Debug, Clone)]
pub struct Root(PathBuf);

impl Root {
    /// A root directory (`/` for the real system).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self(dir.into())
    }

    /// Whether this is the running system, where devices can be opened and the kernel asked.
    pub fn is_real(&self) -> bool {
        self.0 == Path::new("/")
    }

    /// `path` (absolute on the unit) under this root.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        let p = path.as_ref();
        match p.strip_prefix("/") {
            Ok(rel) => self.0.join(rel),
            Err(_) => p.to_path_buf(),
        }
    }
}

/// Run `f`, turning a panic into a failed check named `name`.
fn guarded(name: &str, f: impl FnOnce() -> Vec<Check>) -> Vec<Check> {
    // The panic hook stays as it is: its message on stderr (with RUST_BACKTRACE) is what a bug
    // report needs, and swapping a process-wide hook would race with other threads.
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        vec![Check::fail(
            name,
            format!("the check itself crashed: {msg}"),
            "report this as a diffad bug, with this output",
        )]
    })
}

/// Check the host, and with `config` everything the board file needs; print each line as it
/// is known so a slow check (the self-test) shows what came before it.
pub fn run(config: Option<&Path>, root: &Root, out: &mut dyn Write) -> Report {
    let mut list = Printed {
        out,
        report: Report::default(),
    };
    let board = config.and_then(|path| load_board(path, &mut list));
    let engine = board.as_ref().map(|b| &b.engine);
    list.add(guarded("onnxruntime", || check_ort(engine)));
    // A simulated board is a desktop: the host's service and clock are nice to have there.
    let deployed = board.as_ref().is_some_and(|b| !b.setup.gpio.sim);
    if let Some(b) = &board {
        board_checks(b, root, &mut list);
    }
    host_checks(root, deployed, &mut list);
    list.report
}

/// The report so far, each check printed as it is added.
struct Printed<'a> {
    out: &'a mut dyn Write,
    report: Report,
}

impl Printed<'_> {
    /// Print `checks` and add them to the report.
    fn add(&mut self, checks: Vec<Check>) {
        for c in checks {
            let _ = writeln!(self.out, "{c}");
            self.report.checks.push(c);
        }
        let _ = self.out.flush();
    }
}

/// The board file at `path`, its check added either way.
fn load_board(path: &Path, list: &mut Printed) -> Option<BoardConfig> {
    let loaded = catch_unwind(|| BoardConfig::load(path));
    match loaded {
        Ok(Ok(b)) => {
            list.add(vec![Check::pass(
                "board file",
                format!("{} ({})", b.board.name, path.display()),
            )]);
            Some(b)
        }
        Ok(Err(e)) => {
            list.add(vec![Check::fail(
                "board file",
                e.to_string(),
                "correct the key named (`diffad check-config --keys-only FILE`)",
            )]);
            None
        }
        Err(_) => {
            list.add(vec![Check::fail(
                "board file",
                "reading it crashed",
                "report this as a diffad bug",
            )]);
            None
        }
    }
}

/// What the board file needs: the model (when ONNX Runtime loaded), the TensorRT cache, the
/// pins, the camera, the supervisor, MQTT, the OPC UA server and the archive; and, advisory, the reject timing.
fn board_checks(b: &BoardConfig, root: &Root, list: &mut Printed) {
    let ort_ok = list
        .report
        .get("onnxruntime")
        .is_some_and(|c| c.status == Status::Pass);
    list.add(guarded("model", || check_model(b, ort_ok)));
    if b.engine.providers.iter().any(|p| p == "tensorrt") {
        list.add(guarded("tensorrt cache", || {
            vec![check_writable_dir(
                "tensorrt cache",
                &b.engine.tensorrt.cache_dir,
                "engine.tensorrt.cache_dir",
            )]
        }));
    }
    list.add(guarded("gpio", || check_gpio(&b.setup.gpio, root)));
    list.add(guarded("camera", || {
        vec![check_camera(&b.setup.camera, root)]
    }));
    if b.setup.camera.source == crate::sources::camera::config::SourceKind::Genicam {
        list.add(guarded("receive buffer", || {
            vec![genicam::check_rmem(&b.setup.camera.genicam, root)]
        }));
    }
    list.add(guarded("supervisor", || {
        vec![check_bind(&b.setup.supervisor.listen)]
    }));
    list.add(guarded("mqtt", || vec![check_mqtt(b.setup.mqtt.as_ref())]));
    list.add(guarded("opcua", || check_opcua(b.setup.opcua.as_ref())));
    list.add(guarded("archive", || {
        check_archive(b.setup.archive.as_ref())
    }));
    list.add(guarded("reject timing", || {
        vec![check_reject_timing(root, &b.setup.line).needed(false)]
    }));
}

/// The service unit and the clock; advisory unless the board is `deployed`.
fn host_checks(root: &Root, deployed: bool, list: &mut Printed) {
    list.add(guarded("genicam cameras", || genicam::list_cameras(root)));
    list.add(guarded("systemd unit", || {
        vec![check_unit(root).needed(deployed)]
    }));
    list.add(guarded(
        "clock",
        || vec![check_clock(root).needed(deployed)],
    ));
}

#[cfg(test)]
mod tests;
