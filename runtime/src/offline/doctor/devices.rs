//! The device checks: the GPIO chip and lines, and the camera.

use std::path::PathBuf;

use super::{access_rw, Check, Root};
use crate::gpio::GpioConfig;
use crate::sources::camera::config::{CameraConfig, SourceKind};

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

/// The label sysfs gives chip `name`, from the bus or the legacy class.
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

/// The chip the board file names, readable and writable, and each of its named lines.
pub(super) fn check_gpio(cfg: &GpioConfig, root: &Root) -> Vec<Check> {
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

/// The configured camera source: its photo, folder or device node, opened on the real root.
pub(super) fn check_camera(cfg: &CameraConfig, root: &Root) -> Check {
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
        SourceKind::Genicam => super::genicam::check_camera(&cfg.genicam, root),
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
        SourceKind::Gstreamer => super::gstreamer::check_pipeline(&cfg.gstreamer),
    }
}

/// Open the V4L2 device and ask it for the configured format.
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

/// Without the `v4l2` feature a V4L2 camera cannot work: say so.
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
