//! The storage checks: folders the runtime writes into, and the archive's disk space.

use std::path::Path;

use super::Check;
use crate::sinks::archive::ArchiveConfig;

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

/// Whether the current user may create entries in the folder `path`.
fn access_w(path: &Path) -> bool {
    access(path, libc::W_OK | libc::X_OK)
}

/// `access(2)`: the kernel's answer for the real user, ACLs and read-only mounts included.
fn access(path: &Path, mode: libc::c_int) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c.as_ptr(), mode) == 0 }
}

/// The archive's folder, and whether its disk holds `archive.max_mb`.
pub(super) fn check_archive(cfg: Option<&ArchiveConfig>) -> Vec<Check> {
    let Some(a) = cfg else {
        return vec![Check::skip("archive", "off (no [archive])")];
    };
    let mut checks = vec![check_writable_dir("archive", &a.dir, "archive.dir")];
    // The folder may not exist yet: its nearest existing ancestor holds the space.
    let Some(existing) = a.dir.ancestors().find(|p| p.exists()) else {
        return checks;
    };
    checks.push(match free_mb(existing) {
        // The archive fills to its cap and must still leave `min_free_mb` to the system.
        Ok(free) => disk_check(free, a.max_mb + a.min_free_mb),
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
            format!("{free_mb:.0} MB free ≥ {max_mb:.0} MB (archive.max_mb + archive.min_free_mb)"),
        )
    } else {
        Check::fail(
            "archive space",
            format!("{free_mb:.0} MB free < {max_mb:.0} MB (archive.max_mb + archive.min_free_mb)"),
            "free disk space, or lower archive.max_mb (or archive.min_free_mb) below what is free",
        )
    }
}

/// Megabytes an unprivileged user may still write on the file system holding `path`.
pub fn free_mb(path: &Path) -> std::io::Result<f64> {
    crate::sinks::archive::free_bytes(path).map(|b| b as f64 / 1e6)
}
