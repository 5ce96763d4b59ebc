//! The shipped systemd unit: it parses cleanly and `systemd-analyze security` rates it OK.

use std::path::Path;
use std::process::Command;

fn unit() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/diffad.service")
}

fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze").args(args).output().expect(
        "this test needs systemd-analyze (Debian package `systemd`; `scripts/setup --test-deps`)",
    )
}

/// The overall exposure `systemd-analyze security --offline=true` gives a unit file.
fn exposure(path: &Path) -> f64 {
    let out = systemd_analyze(&["security", "--offline=true", path.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(": ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"))
}

#[test]
fn systemd_rates_the_shipped_unit_ok() {
    let level = exposure(&unit());
    assert!(
        level <= 2.0,
        "exposure {level} > 2.0: harden scripts/diffad.service"
    );
    // The measure itself can fail: the unit as it was before hardening rated 9.6.
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("bare.service");
    std::fs::write(
        &bare,
        "[Service]\nType=notify\nExecStart=/usr/local/bin/diffad run\n",
    )
    .unwrap();
    assert!(exposure(&bare) > 9.0);
}

#[test]
fn the_unit_verifies_without_a_warning() {
    let text = std::fs::read_to_string(unit()).unwrap();
    assert!(text.contains("ExecStart=/usr/local/bin/diffad run"));
    // verify wants the binary to exist: point it at the one this build made.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("diffad.service");
    std::fs::write(
        &copy,
        text.replace("/usr/local/bin/diffad", env!("CARGO_BIN_EXE_diffad")),
    )
    .unwrap();
    let out = systemd_analyze(&["verify", copy.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
    // Unknown keys and bad values are only warnings to systemd: the test must see them.
    std::fs::write(
        &copy,
        text.replace("ProtectSystem=strict", "ProtectSystem=stricter")
            .replace("/usr/local/bin/diffad", env!("CARGO_BIN_EXE_diffad")),
    )
    .unwrap();
    let out = systemd_analyze(&["verify", copy.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&out.stderr).trim().is_empty());
}
