//! `diffad doctor` end to end: the built binary against the shipped board files, on this
//! machine and against fake roots (device nodes as plain files, fake sysfs, a fake unit).

mod common;

use common::root;
use std::path::Path;
use std::process::{Command, Output};

fn doctor(args: &[&str], fake_root: Option<&Path>) -> (i32, String) {
    doctor_with(args, fake_root, |_| {})
}

fn doctor_with(
    args: &[&str],
    fake_root: Option<&Path>,
    env: impl FnOnce(&mut Command),
) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_diffad"));
    env(&mut cmd);
    cmd.arg("doctor").args(args);
    if let Some(r) = fake_root {
        cmd.arg("--root").arg(r);
    }
    let out: Output = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let code = out.status.code().unwrap_or(-1);
    // Anything but 0 or 1 (a panic is 101, a refused argument 2) means doctor itself broke.
    assert!(
        code == 0 || code == 1,
        "exit {code}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, stdout)
}

/// The line of the checklist for `name`, e.g. `✓ gpio chip  ...`.
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.get(4..).is_some_and(|rest| rest.starts_with(name)))
        .unwrap_or_else(|| panic!("no line {name:?} in\n{out}"))
}

fn mark<'a>(out: &'a str, name: &str) -> &'a str {
    line(out, name).split(' ').next().unwrap()
}

fn touch(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A fake Jetson: the chip with its label, a camera node, the unit with a watchdog, the clock flag.
fn healthy_root(dir: &Path) {
    touch(&dir.join("dev/gpiochip0"), "");
    touch(
        &dir.join("sys/bus/gpio/devices/gpiochip0/label"),
        "tegra234-gpio\n",
    );
    touch(&dir.join("dev/video0"), "");
    touch(
        &dir.join("etc/systemd/system/diffad.service"),
        &std::fs::read_to_string(root().join("scripts/diffad.service")).unwrap(),
    );
    touch(&dir.join("run/systemd/timesync/synchronized"), "");
}

/// desktop-sim as shipped, but with the photo (written by `scripts/texture-photos`, maybe not
/// here) replaced by the procedural texture and the archive and port in a temporary place.
fn desktop_sim_copy(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(root().join("board-configs/desktop-sim.toml")).unwrap();
    let model = root().join("models/tiles-brick/model.onnx");
    let key = root().join("models/demo-signing.pub");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("photo ="))
        .map(|l| {
            if l.starts_with("model =") {
                format!("model = {:?}", model.display().to_string())
            } else if l.starts_with("trusted_keys =") {
                format!("trusted_keys = [{:?}]", key.display().to_string())
            } else if l.starts_with("socket =") {
                format!(
                    "socket = {:?}",
                    dir.join("control.sock").display().to_string()
                )
            } else if l.starts_with("dir =") {
                format!("dir = {:?}", dir.join("archive").display().to_string())
            } else if l.starts_with("listen =") {
                "listen = \"127.0.0.1:0\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let path = dir.join("desktop-sim.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn desktop_sim_passes_on_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    let config = desktop_sim_copy(dir.path());
    let empty = tempfile::tempdir().unwrap();
    let (code, out) = doctor(&["--config", config.to_str().unwrap()], Some(empty.path()));
    assert_eq!(code, 0, "{out}");
    for name in [
        "board file",
        "onnxruntime",
        "model",
        "self-test",
        "camera",
        "supervisor",
        "archive",
    ] {
        assert_eq!(mark(&out, name), "✓", "{name}:\n{out}");
    }
    assert_eq!(mark(&out, "gpio"), "–", "{out}");
    // A desktop has no unit and may have no time sync: shown, but advisory.
    assert!(line(&out, "systemd unit").contains("advisory"), "{out}");
    assert!(out.contains("all checks passed"), "{out}");
}

#[test]
fn jetson_config_on_an_empty_root_lists_each_missing_piece_with_its_fix() {
    let empty = tempfile::tempdir().unwrap();
    let config = root().join("board-configs/jetson-orin-nano.toml");
    let (code, out) = doctor(&["--config", config.to_str().unwrap()], Some(empty.path()));
    assert_eq!(code, 1, "{out}");
    for name in [
        "provider tensorrt",
        "model",
        "gpio chip",
        "camera",
        "systemd unit",
        "clock",
    ] {
        assert_eq!(mark(&out, name), "✗", "{name}:\n{out}");
    }
    assert_eq!(mark(&out, "self-test"), "–", "{out}");
    let fixes = out
        .lines()
        .filter(|l| l.trim_start().starts_with("fix:"))
        .count();
    let failed = out.lines().filter(|l| l.starts_with('✗')).count();
    assert!(fixes >= failed, "every ✗ has a fix:\n{out}");
    assert!(out.contains("check(s) failed"), "{out}");
}

#[test]
fn jetson_config_on_a_healthy_fake_root_passes_the_host_checks() {
    let fake = tempfile::tempdir().unwrap();
    healthy_root(fake.path());
    let config = root().join("board-configs/jetson-orin-nano.toml");
    let (code, out) = doctor(&["--config", config.to_str().unwrap()], Some(fake.path()));
    // The model and the GPU providers are not on this machine.
    assert_eq!(code, 1, "{out}");
    assert_eq!(mark(&out, "gpio chip"), "✓", "{out}");
    assert!(line(&out, "gpio chip").contains("gpiochip0"), "{out}");
    // Line names need the kernel's chip interface, which a fake root has not.
    assert_eq!(mark(&out, "gpio.reject"), "–", "{out}");
    assert_eq!(mark(&out, "camera"), "✓", "{out}");
    assert_eq!(mark(&out, "systemd unit"), "✓", "{out}");
    assert!(
        line(&out, "systemd unit").contains("WatchdogSec=10"),
        "{out}"
    );
    assert_eq!(mark(&out, "clock"), "✓", "{out}");
}

#[test]
fn a_unit_without_watchdog_and_a_wrong_chip_are_named() {
    let fake = tempfile::tempdir().unwrap();
    healthy_root(fake.path());
    touch(
        &fake.path().join("sys/bus/gpio/devices/gpiochip0/label"),
        "tegra194-gpio\n",
    );
    touch(
        &fake.path().join("etc/systemd/system/diffad.service"),
        "[Service]\nType=notify\n",
    );
    let config = root().join("board-configs/jetson-orin-nano.toml");
    let (code, out) = doctor(&["--config", config.to_str().unwrap()], Some(fake.path()));
    assert_eq!(code, 1);
    assert_eq!(mark(&out, "gpio chip"), "✗", "{out}");
    assert!(line(&out, "gpio chip").contains("tegra194-gpio"), "{out}");
    assert_eq!(mark(&out, "systemd unit"), "✗", "{out}");
    assert!(
        out.contains("WatchdogSec=10"),
        "the fix names the setting:\n{out}"
    );
}

#[test]
fn a_broken_board_file_is_a_failed_check_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[board]\nname = \"x\"\n[engine]\nmodel = \"m.onnx\"\nbogus = 1\n",
    )
    .unwrap();
    let (code, out) = doctor(&["--config", bad.to_str().unwrap()], Some(dir.path()));
    assert_eq!(code, 1, "{out}");
    assert_eq!(mark(&out, "board file"), "✗", "{out}");
    assert!(line(&out, "board file").contains("bogus"), "{out}");
    assert_eq!(mark(&out, "onnxruntime"), "✓", "{out}");
}

#[test]
fn without_a_board_file_only_runtime_and_host() {
    let empty = tempfile::tempdir().unwrap();
    let (code, out) = doctor(&[], Some(empty.path()));
    assert_eq!(code, 0, "{out}");
    assert_eq!(mark(&out, "onnxruntime"), "✓", "{out}");
    assert!(!out.contains("gpio"), "{out}");
    assert!(!out.contains("model"), "{out}");
}

#[test]
fn a_missing_onnx_runtime_fails_with_its_fix_and_skips_the_self_test() {
    let dir = tempfile::tempdir().unwrap();
    let config = desktop_sim_copy(dir.path());
    let gone = dir.path().join("libonnxruntime.so.1.20.0");
    let (code, out) = doctor_with(
        &["--config", config.to_str().unwrap()],
        Some(dir.path()),
        |c| {
            c.env("ORT_DYLIB_PATH", &gone);
        },
    );
    assert_eq!(code, 1, "{out}");
    assert_eq!(mark(&out, "onnxruntime"), "✗", "{out}");
    assert!(out.contains("ORT_DYLIB_PATH"), "the fix names it:\n{out}");
    assert_eq!(mark(&out, "model"), "✓", "{out}");
    assert_eq!(mark(&out, "self-test"), "–", "{out}");
}

/// The permission failures a field engineer meets when the service user is not in the right
/// groups: doctor runs as an unprivileged user (`nobody`, through `setpriv` when the tests run as
/// root, who passes every permission check), the chip and camera nodes are not theirs, and each
/// is a ✗ with the fix that names the group or the udev rule.
#[test]
fn nodes_the_user_may_not_open_are_named_with_the_group_fix() {
    use std::os::unix::fs::PermissionsExt;
    let fake = tempfile::tempdir().unwrap();
    healthy_root(fake.path());
    // Everyone may walk the tree; no one but the owner (root, or the test's user with 000: no one)
    // may open the device nodes.
    for d in ["", "dev", "sys", "etc", "run"] {
        let p = fake.path().join(d);
        if p.is_dir() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    for node in ["dev/gpiochip0", "dev/video0"] {
        std::fs::set_permissions(
            fake.path().join(node),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
    }
    let config = root().join("board-configs/jetson-orin-nano.toml");
    let as_root = unsafe { libc::geteuid() } == 0;
    let (_, out) = doctor_with(
        &["--config", config.to_str().unwrap()],
        Some(fake.path()),
        |cmd| {
            if as_root {
                // Re-run the same command line as nobody.
                let program = cmd.get_program().to_owned();
                *cmd = Command::new("setpriv");
                cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                    .arg(program);
            }
        },
    );
    assert_eq!(mark(&out, "gpio chip"), "✗", "{out}");
    assert!(
        line(&out, "gpio chip").contains("not readable/writable by this user"),
        "{out}"
    );
    assert!(
        out.contains("usermod -aG gpio") || out.contains("udev"),
        "{out}"
    );
    assert_eq!(mark(&out, "camera"), "✗", "{out}");
    assert!(
        out.contains("usermod -aG video"),
        "the fix names the group:\n{out}"
    );
}

#[test]
fn the_demo_key_trusted_on_a_board_with_real_pins_fails_the_signature_check() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root().join("board-configs/jetson-orin-nano.toml")).unwrap();
    let model = root().join("models/tiles-brick/model.onnx");
    let demo = root().join("models/demo-signing.pub");
    let text = text
        .replace(
            "/opt/diffad/models/tiles-brick/model.onnx",
            &model.display().to_string(),
        )
        .replace("/etc/diffad/keys/models.pub", &demo.display().to_string());
    let board = dir.path().join("jetson.toml");
    std::fs::write(&board, text).unwrap();
    let (code, out) = doctor(&["--config", board.to_str().unwrap()], Some(dir.path()));
    assert_eq!(code, 1, "{out}");
    assert_eq!(mark(&out, "signature"), "✗", "{out}");
    assert!(line(&out, "signature").contains("DEMO key"), "{out}");
    // The same key on the simulated desktop line is fine.
    let sim = desktop_sim_copy(dir.path());
    let (_, out) = doctor(&["--config", sim.to_str().unwrap()], Some(dir.path()));
    assert_eq!(mark(&out, "signature"), "✓", "{out}");
}
