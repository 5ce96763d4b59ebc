//! `diffad doctor`: check a device against a board file and print a checklist with fixes.
//!
//! Every check returns a [`Check`]; a panic inside one is caught and reported as a failure, so
//! one broken probe never hides the others. System locations (`/dev`, `/sys`, `/etc`, `/run`
//! and the camera's device node) are looked up under `--root`, so tests can hand a fake root
//! made of plain files; the board file's own paths (model, caches, archive) are taken as given.

use std::io::Write;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::gpio::GpioConfig;
use crate::line::board::BoardConfig;
use crate::sinks::archive::ArchiveConfig;
use crate::sinks::mqtt::MqttConfig;
use crate::sources::camera::config::CameraConfig;
use crate::sources::camera::config::SourceKind;
use crate::stages::engine::{Engine, EngineConfig};

mod checklist;

pub use checklist::{Check, Report, Status};

/// How long the MQTT broker gets to accept a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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
    let mut report = Report::default();
    let mut add = |checks: Vec<Check>, report: &mut Report| {
        for c in checks {
            let _ = writeln!(out, "{c}");
            report.checks.push(c);
        }
        let _ = out.flush();
    };
    let board = match config {
        None => None,
        Some(path) => {
            let loaded = catch_unwind(|| BoardConfig::load(path));
            match loaded {
                Ok(Ok(b)) => {
                    add(
                        vec![Check::pass(
                            "board file",
                            format!("{} ({})", b.board.name, path.display()),
                        )],
                        &mut report,
                    );
                    Some(b)
                }
                Ok(Err(e)) => {
                    add(
                        vec![Check::fail(
                            "board file",
                            e.to_string(),
                            "correct the key named (`diffad check-config --keys-only FILE`)",
                        )],
                        &mut report,
                    );
                    None
                }
                Err(_) => {
                    add(
                        vec![Check::fail(
                            "board file",
                            "reading it crashed",
                            "report this as a diffad bug",
                        )],
                        &mut report,
                    );
                    None
                }
            }
        }
    };
    let engine = board.as_ref().map(|b| &b.engine);
    add(guarded("onnxruntime", || check_ort(engine)), &mut report);
    // A simulated board is a desktop: the host's service and clock are nice to have there.
    let deployed = board.as_ref().is_some_and(|b| !b.setup.gpio.sim);
    if let Some(b) = &board {
        let ort_ok = report
            .get("onnxruntime")
            .is_some_and(|c| c.status == Status::Pass);
        add(guarded("model", || check_model(b, ort_ok)), &mut report);
        if b.engine.providers.iter().any(|p| p == "tensorrt") {
            add(
                guarded("tensorrt cache", || {
                    vec![check_writable_dir(
                        "tensorrt cache",
                        &b.engine.tensorrt.cache_dir,
                        "engine.tensorrt.cache_dir",
                    )]
                }),
                &mut report,
            );
        }
        add(
            guarded("gpio", || check_gpio(&b.setup.gpio, root)),
            &mut report,
        );
        add(
            guarded("camera", || vec![check_camera(&b.setup.camera, root)]),
            &mut report,
        );
        add(
            guarded("supervisor", || {
                vec![check_bind(&b.setup.supervisor.listen)]
            }),
            &mut report,
        );
        add(
            guarded("mqtt", || vec![check_mqtt(b.setup.mqtt.as_ref())]),
            &mut report,
        );
        add(
            guarded("archive", || check_archive(b.setup.archive.as_ref())),
            &mut report,
        );
    }
    add(
        guarded("systemd unit", || vec![check_unit(root).needed(deployed)]),
        &mut report,
    );
    add(
        guarded("clock", || vec![check_clock(root).needed(deployed)]),
        &mut report,
    );
    report
}

/// The library, its version, and each GPU provider the board file lists.
fn check_ort(engine: Option<&EngineConfig>) -> Vec<Check> {
    let lib = match crate::model::ortlib::load() {
        Ok(lib) => lib,
        Err(e) => {
            let what = match &e {
                crate::model::ortlib::OrtLibError::NotFound { .. } => "not found".to_string(),
                crate::model::ortlib::OrtLibError::Load { path, .. } => {
                    format!("{path} did not load")
                }
            };
            let mut checks = vec![Check::fail("onnxruntime", what, e.to_string())];
            for p in engine.map(|e| e.providers.as_slice()).unwrap_or_default() {
                if p != "cpu" {
                    checks.push(Check::skip(&format!("provider {p}"), "needs ONNX Runtime"));
                }
            }
            return checks;
        }
    };
    let mut checks = vec![Check::pass(
        "onnxruntime",
        format!("{} ({})", lib.version, lib.path.display()),
    )];
    use ort::ep::ExecutionProvider;
    for (name, available) in [
        ("tensorrt", ort::ep::TensorRT::is_available()),
        ("cuda", ort::ep::CUDA::is_available()),
    ] {
        let wanted = engine.is_some_and(|e| e.providers.iter().any(|p| p == name));
        let label = format!("provider {name}");
        let ok = matches!(available, Ok(true));
        let what = match &available {
            Ok(true) => "in this ONNX Runtime build".to_string(),
            Ok(false) => "not in this ONNX Runtime build".to_string(),
            Err(e) => format!("cannot be asked: {e}"),
        };
        checks.push(match (wanted, ok) {
            (true, true) => Check::pass(&label, what),
            (true, false) => Check::fail(
                &label,
                format!("{what}; engine.providers lists it"),
                "point ORT_DYLIB_PATH at a GPU build of ONNX Runtime (on a Jetson: onnxruntime-gpu \
                 for your JetPack, see `scripts/setup`), or remove it from engine.providers",
            ),
            (false, _) => Check::skip(&label, format!("{what} (not listed in engine.providers)")),
        });
    }
    checks
}

/// The manifest (read without ONNX Runtime), then a session on the configured providers and
/// the golden self-test in it, then the board keys that depend on the model.
fn check_model(b: &BoardConfig, ort_ok: bool) -> Vec<Check> {
    let model = &b.engine.model;
    let manifest = match crate::model::manifest::Manifest::read(model) {
        Ok(m) => m,
        Err(e) => {
            let fix = if model.exists() {
                "re-export it with `python -m exporter export`"
            } else {
                "copy the model (with NAME.golden.json and NAME.golden/) there (`scripts/deploy`), or fix engine.model"
            };
            return vec![
                Check::fail("model", format!("{}: {e}", model.display()), fix),
                Check::skip("self-test", "needs the model"),
            ];
        }
    };
    let mut checks = vec![Check::pass(
        "model",
        format!("{} ({})", manifest.name, model.display()),
    )];
    checks.push(if !ort_ok {
        Check::skip("self-test", "needs ONNX Runtime")
    } else {
        self_test(&b.engine)
    });
    let covered = [
        "engine.model",
        "camera.sim.photo",
        "camera.replay.dir",
        "camera.v4l2.device",
        "archive.dir",
    ];
    let problems: Vec<String> = b
        .check_deployment()
        .into_iter()
        .filter(|p| !covered.contains(&p.key.as_str()))
        .map(|p| p.to_string())
        .collect();
    checks.push(if problems.is_empty() {
        Check::pass("board vs model", "threshold and region fit the model")
    } else {
        Check::fail(
            "board vs model",
            problems.join("; "),
            "change the keys named (`diffad check-config FILE` explains each)",
        )
    });
    checks
}

fn self_test(engine: &EngineConfig) -> Check {
    let mut e = match Engine::load_unchecked(engine) {
        Ok(e) => e,
        Err(err) => {
            return Check::fail(
                "self-test",
                format!("the session did not start: {err}"),
                "see the message; `diffad inspect MODEL` shows what the model needs",
            )
        }
    };
    let off = if engine.self_test.enabled {
        ""
    } else {
        " (engine.self_test.enabled = false: the line would start without it)"
    };
    match e.run_self_test() {
        Ok(r) => Check::pass("self-test", format!("{r}{off}")),
        Err(err) => Check::fail(
            "self-test",
            err.to_string(),
            "re-export the model with its goldens, or run it on the provider it was checked on",
        ),
    }
}

/// A folder the runtime writes into: writable, or absent with a writable parent (the runtime
/// creates it at start).
pub fn check_writable_dir(name: &str, dir: &Path, key: &str) -> Check {
    if dir.exists() && !dir.is_dir() {
        return Check::fail(
            name,
            format!("{} is not a folder", dir.display()),
            format!("remove it, or point {key} at a folder"),
        );
    }
    let make = format!(
        "`sudo install -d -o diffad {}` (`scripts/deploy` creates it), or change {key}",
        dir.display()
    );
    if !dir.exists() {
        let parent = dir.ancestors().skip(1).find(|p| p.exists());
        return match parent {
            // Only ask: creating folders in system places is the deployer's job, not a check's.
            Some(p) if access_w(p) => Check::pass(
                name,
                format!(
                    "{} absent; created at start ({} writable)",
                    dir.display(),
                    p.display()
                ),
            ),
            _ => Check::fail(
                name,
                format!("{} does not exist and cannot be created", dir.display()),
                make,
            ),
        };
    }
    match probe_write(dir) {
        Ok(()) => Check::pass(name, format!("{} writable", dir.display())),
        Err(e) => Check::fail(
            name,
            format!("{} is not writable: {e}", dir.display()),
            format!(
                "`sudo chown diffad {}` for the user the service runs as",
                dir.display()
            ),
        ),
    }
}

/// Create and remove a file: the only test of writability that ACLs, read-only mounts and
/// root squashing all answer truthfully.
fn probe_write(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".diffad-doctor-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Whether the current user may read and write `path` (by the kernel's own rules).
pub fn access_rw(path: &Path) -> bool {
    access(path, libc::R_OK | libc::W_OK)
}

fn access_w(path: &Path) -> bool {
    access(path, libc::W_OK | libc::X_OK)
}

fn access(path: &Path, mode: libc::c_int) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

/// A GPIO chip found under a root: its device node and the label sysfs gives for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChipEntry {
    /// `ROOT/dev/gpiochipN`.
    pub dev: PathBuf,
    /// `gpiochipN`.
    pub name: String,
    /// The driver's label (`tegra234-gpio`), when sysfs has it.
    pub label: Option<String>,
}

/// Every `ROOT/dev/gpiochip*` with its label from `ROOT/sys/bus/gpio/devices/gpiochipN/label`
/// (or the legacy `ROOT/sys/class/gpio/gpiochip*/label` whose `device` names the chip; on the
/// real root, failing both, the label the chip itself reports).
pub fn gpio_chips(root: &Root) -> Vec<ChipEntry> {
    let Ok(entries) = std::fs::read_dir(root.path("/dev")) else {
        return Vec::new();
    };
    let mut chips: Vec<ChipEntry> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            name.starts_with("gpiochip").then(|| ChipEntry {
                label: chip_label(root, &name).or_else(|| {
                    // Kernels without the legacy sysfs class: ask the chip itself.
                    root.is_real()
                        .then(|| crate::gpio::chip_label(&e.path()).ok())
                        .flatten()
                }),
                dev: e.path(),
                name,
            })
        })
        .collect();
    chips.sort_by(|a, b| a.name.cmp(&b.name));
    chips
}

fn chip_label(root: &Root, name: &str) -> Option<String> {
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    if let Some(l) = read(root.path(format!("/sys/bus/gpio/devices/{name}/label"))) {
        return Some(l);
    }
    // The legacy class numbers chips by their first line, not by N; its `device/` links the
    // chip device, whose directory holds `gpiochipN`.
    for e in std::fs::read_dir(root.path("/sys/class/gpio"))
        .ok()?
        .flatten()
    {
        if e.path().join("device").join(name).exists() {
            if let Some(l) = read(e.path().join("label")) {
                return Some(l);
            }
        }
    }
    None
}

/// The chip the board file names, by label or by `gpiochipN`.
pub fn find_chip<'a>(chips: &'a [ChipEntry], wanted: &str) -> Option<&'a ChipEntry> {
    chips
        .iter()
        .find(|c| c.label.as_deref() == Some(wanted) || c.name == wanted)
}

fn check_gpio(cfg: &GpioConfig, root: &Root) -> Vec<Check> {
    if cfg.sim {
        return vec![Check::skip("gpio", "simulated pins (gpio.sim = true)")];
    }
    let chips = gpio_chips(root);
    let Some(chip) = find_chip(&chips, &cfg.chip) else {
        let seen: Vec<String> = chips
            .iter()
            .map(|c| format!("{} ({})", c.name, c.label.as_deref().unwrap_or("no label")))
            .collect();
        return vec![Check::fail(
            "gpio chip",
            format!(
                "no chip labelled {:?} under {} (found: {})",
                cfg.chip,
                root.path("/dev").display(),
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(", ")
                }
            ),
            "check the kernel's GPIO driver (`gpiodetect`), or set gpio.chip to a label it lists",
        )];
    };
    let mut checks = vec![if access_rw(&chip.dev) {
        Check::pass(
            "gpio chip",
            format!("{} is {}, read/write", cfg.chip, chip.dev.display()),
        )
    } else {
        Check::fail(
            "gpio chip",
            format!("{} is not readable/writable by this user", chip.dev.display()),
            "add the service user to the group owning it (`sudo usermod -aG gpio diffad`) or install a udev rule",
        )
    }];
    for (key, line) in cfg.lines() {
        let label = key.to_string();
        checks.push(if !root.is_real() {
            Check::skip(
                &label,
                format!(
                    "{:?}: line names need the kernel's chip interface (not under --root)",
                    line.name
                ),
            )
        } else {
            match crate::gpio::find_line(&cfg.chip, &line.name) {
                Ok((path, offset)) => Check::pass(
                    &label,
                    format!("{:?} is line {offset} of {}", line.name, path.display()),
                ),
                Err(e) => Check::fail(
                    &label,
                    e.to_string(),
                    format!(
                        "list the names with `gpioinfo {}` and fix {key}.name",
                        cfg.chip
                    ),
                ),
            }
        });
    }
    checks
}

fn check_camera(cfg: &CameraConfig, root: &Root) -> Check {
    match cfg.source {
        SourceKind::Sim => match &cfg.sim.photo {
            None => Check::pass("camera", "simulated, procedural texture"),
            Some(p) if p.is_file() => Check::pass("camera", format!("simulated, photo {}", p.display())),
            Some(p) => Check::fail(
                "camera",
                format!("camera.sim.photo {} does not exist", p.display()),
                "run `scripts/texture-photos`, fix the path, or remove the key for a procedural texture",
            ),
        },
        SourceKind::Replay => {
            let d = &cfg.replay.dir;
            if d.is_dir() {
                Check::pass("camera", format!("replay of {}", d.display()))
            } else {
                Check::fail(
                    "camera",
                    format!("camera.replay.dir {} is not a folder", d.display()),
                    "point it at a folder of images",
                )
            }
        }
        SourceKind::V4l2 => {
            let node = root.path(&cfg.v4l2.device);
            if !node.exists() {
                return Check::fail(
                    "camera",
                    format!("{} does not exist", node.display()),
                    "connect the camera, or set camera.v4l2.device (`v4l2-ctl --list-devices`)",
                );
            }
            if !access_rw(&node) {
                return Check::fail(
                    "camera",
                    format!("{} is not readable/writable by this user", node.display()),
                    "add the service user to the `video` group (`sudo usermod -aG video diffad`)",
                );
            }
            if !root.is_real() {
                return Check::pass("camera", format!("{} accessible (not opened under --root)", node.display()));
            }
            probe_v4l2(cfg)
        }
    }
}

#[cfg(feature = "v4l2")]
fn probe_v4l2(cfg: &CameraConfig) -> Check {
    let v = &cfg.v4l2;
    match crate::sources::camera::v4l2::probe(v) {
        Ok(card) => Check::pass(
            "camera",
            format!("{} ({card}) offers {}", v.device.display(), v.format),
        ),
        Err(e) => Check::fail(
            "camera",
            e,
            "check the camera with `v4l2-ctl --list-formats-ext` and set camera.v4l2.format",
        ),
    }
}

#[cfg(not(feature = "v4l2"))]
fn probe_v4l2(cfg: &CameraConfig) -> Check {
    Check::fail(
        "camera",
        format!(
            "{}: this build has no V4L2 support",
            cfg.v4l2.device.display()
        ),
        "build with the `v4l2` feature",
    )
}

/// The supervisor's listen address can be bound now (then it is released).
pub fn check_bind(listen: &str) -> Check {
    if listen.is_empty() {
        return Check::skip("supervisor", "off (supervisor.listen is empty)");
    }
    match TcpListener::bind(listen) {
        Ok(l) => {
            drop(l);
            Check::pass("supervisor", format!("{listen} can be bound"))
        }
        Err(e) => Check::fail(
            "supervisor",
            format!("cannot bind {listen}: {e}"),
            "stop what holds the port (`ss -ltnp`; another diffad?), or change supervisor.listen",
        ),
    }
}

/// The broker accepts a TCP connection within [`CONNECT_TIMEOUT`].
pub fn check_mqtt(cfg: Option<&MqttConfig>) -> Check {
    let Some(cfg) = cfg else {
        return Check::skip("mqtt", "off (no [mqtt])");
    };
    let (_, host, port) = match cfg.endpoint() {
        Ok(e) => e,
        Err(e) => return Check::fail("mqtt", e.to_string(), "fix mqtt.url"),
    };
    let addrs: Vec<_> = match (host.as_str(), port).to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return Check::fail(
                "mqtt",
                format!("cannot resolve {host}: {e}"),
                "check DNS or /etc/hosts, or use the broker's address in mqtt.url",
            )
        }
    };
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(_) => return Check::pass("mqtt", format!("broker {host}:{port} reachable")),
            Err(e) => last = e.to_string(),
        }
    }
    Check::fail(
        "mqtt",
        format!("broker {host}:{port} unreachable: {last}"),
        "start the broker or open the firewall; events are queued (mqtt.outbox) meanwhile",
    )
}

fn check_archive(cfg: Option<&ArchiveConfig>) -> Vec<Check> {
    let Some(a) = cfg else {
        return vec![Check::skip("archive", "off (no [archive])")];
    };
    let mut checks = vec![check_writable_dir("archive", &a.dir, "archive.dir")];
    // The folder may not exist yet: its nearest existing ancestor holds the space.
    let Some(existing) = a.dir.ancestors().find(|p| p.exists()) else {
        return checks;
    };
    checks.push(match free_mb(existing) {
        Ok(free) => disk_check(free, a.max_mb),
        Err(e) => Check::fail(
            "archive space",
            format!("cannot ask {} for free space: {e}", existing.display()),
            "check the mount",
        ),
    });
    checks
}

/// Free space against the archive's cap: the archive must fit before it starts pruning.
pub fn disk_check(free_mb: f64, max_mb: f64) -> Check {
    if free_mb >= max_mb {
        Check::pass(
            "archive space",
            format!("{free_mb:.0} MB free ≥ archive.max_mb {max_mb:.0}"),
        )
    } else {
        Check::fail(
            "archive space",
            format!("{free_mb:.0} MB free < archive.max_mb {max_mb:.0}"),
            "free disk space, or lower archive.max_mb below what is free",
        )
    }
}

/// Megabytes an unprivileged user may still write on the file system holding `path`.
pub fn free_mb(path: &Path) -> std::io::Result<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: zeroed statvfs is a valid out-parameter; `c` outlives the call.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s.f_bavail as f64 * s.f_frsize as f64 / 1e6)
}

/// `WatchdogSec=` from a unit file's text, when set to something other than 0/off.
pub fn watchdog_sec(unit: &str) -> Option<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("WatchdogSec="))
        .map(str::trim)
        .next_back()
        .filter(|v| !v.is_empty() && *v != "0" && *v != "off" && *v != "infinity")
        .map(str::to_string)
}

/// The last `User=` of a unit file's text (`None`: it runs as root).
pub fn unit_user(unit: &str) -> Option<String> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix("User="))
        .map(str::trim)
        .next_back()
        .filter(|u| !u.is_empty())
        .map(str::to_string)
}

/// The systemd unit: installed, with a watchdog so a wedged line is restarted, and not as root.
pub fn check_unit(root: &Root) -> Check {
    let unit = root.path("/etc/systemd/system/diffad.service");
    let text = match std::fs::read_to_string(&unit) {
        Err(e) => {
            return Check::fail(
                "systemd unit",
                format!("{}: {e}", unit.display()),
                "install it with `scripts/deploy` (from scripts/diffad.service)",
            )
        }
        Ok(t) => t,
    };
    let Some(w) = watchdog_sec(&text) else {
        return Check::fail(
            "systemd unit",
            format!("{} has no WatchdogSec", unit.display()),
            "add `WatchdogSec=10` under [Service] (as scripts/diffad.service has) and `systemctl daemon-reload`",
        );
    };
    match unit_user(&text).filter(|u| u != "root" && u != "0") {
        Some(u) => Check::pass(
            "systemd unit",
            format!("{} with WatchdogSec={w}, as user {u}", unit.display()),
        ),
        None => Check::fail(
            "systemd unit",
            format!("{} runs the line as root", unit.display()),
            "install the hardened unit (`scripts/deploy` creates its user `diffad`): README \"Security on the line\"",
        ),
    }
}

/// The clock is synchronised: event timestamps and archive names are compared across units.
pub fn check_clock(root: &Root) -> Check {
    let flag = root.path("/run/systemd/timesync/synchronized");
    if flag.exists() {
        return Check::pass("clock", format!("synchronised ({})", flag.display()));
    }
    let fix = "enable time sync: `sudo timedatectl set-ntp true` (systemd-timesyncd) or chrony";
    if !root.is_real() {
        return Check::fail("clock", format!("{} absent", flag.display()), fix);
    }
    // chrony and ntpd do not write the timesyncd flag; the kernel knows either way.
    // SAFETY: zeroed timex with modes = 0 only reads the kernel's state.
    let mut t: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut t) };
    if state == -1 {
        return Check::fail(
            "clock",
            format!("adjtimex failed: {}", std::io::Error::last_os_error()),
            fix,
        );
    }
    if state != libc::TIME_ERROR && t.status & libc::STA_UNSYNC == 0 {
        Check::pass("clock", "synchronised (kernel NTP state)")
    } else {
        Check::fail("clock", "not synchronised (kernel NTP state)", fix)
    }
}

#[cfg(test)]
mod tests;
