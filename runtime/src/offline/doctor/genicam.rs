//! GenICam cameras: which ones Aravis finds, whether the board's camera is among them, and the
//! kernel's receive buffer limit that GigE Vision streaming needs.

use super::{Check, Root};
use crate::sources::camera::config::GenicamConfig;

/// `net.core.rmem_max` below which a GigE Vision stream of one frame per buffer loses packets.
const RMEM_FIX: &str = "sudo sysctl -w net.core.rmem_max=33554432 (and the same line in /etc/sysctl.d/90-diffad.conf to keep it)";

/// The kernel's receive buffer limit (`/proc/sys/net/core/rmem_max`), bytes.
pub fn rmem_max(root: &Root) -> Option<u64> {
    std::fs::read_to_string(root.path("/proc/sys/net/core/rmem_max"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The receive buffer the board asks for against what the kernel grants.
pub fn check_rmem(cfg: &GenicamConfig, root: &Root) -> Check {
    let want = u64::from(cfg.socket_buffer_bytes);
    match rmem_max(root) {
        None => Check::skip("receive buffer", "net.core.rmem_max not readable"),
        Some(max) if max >= want => Check::pass(
            "receive buffer",
            format!("net.core.rmem_max {max} ≥ camera.genicam.socket_buffer_bytes {want}"),
        ),
        Some(max) => Check::fail(
            "receive buffer",
            format!(
                "net.core.rmem_max is {max} bytes, below the {want} camera.genicam.socket_buffer_bytes asks: GigE Vision frames will arrive incomplete"
            ),
            RMEM_FIX,
        ),
    }
}

/// The board's GenICam camera: found on a network or bus, or what was found instead.
#[cfg(feature = "genicam")]
pub(super) fn check_camera(cfg: &GenicamConfig, root: &Root) -> Check {
    use crate::sources::camera::genicam;
    if !root.is_real() {
        return Check::skip("camera", "GenICam discovery is not run under --root");
    }
    let found = genicam::list();
    match genicam::select(&found, &cfg.camera) {
        Ok(id) => Check::pass("camera", format!("GenICam camera {id} found")),
        Err(e) => Check::fail(
            "camera",
            e,
            "power the camera and connect it (GigE: same subnet as this host, `arv-camera-test-0.8` should see it), or set camera.genicam.camera to a listed id",
        ),
    }
}

/// Without the `genicam` feature the board's camera cannot be opened at all.
#[cfg(not(feature = "genicam"))]
pub(super) fn check_camera(_cfg: &GenicamConfig, _root: &Root) -> Check {
    Check::fail(
        "camera",
        "camera.source = \"genicam\", but this diffad was built without the `genicam` feature",
        "install libaravis-dev (`scripts/setup`) and rebuild with the default features",
    )
}

/// Every GenICam camera Aravis finds, one line each (advisory: a host may have none).
pub(super) fn list_cameras(root: &Root) -> Vec<Check> {
    if !root.is_real() {
        return vec![Check::skip("genicam cameras", "not searched under --root").needed(false)];
    }
    #[cfg(feature = "genicam")]
    {
        let found = crate::sources::camera::genicam::list();
        if found.is_empty() {
            return vec![
                Check::skip("genicam cameras", "none found on any interface").needed(false),
            ];
        }
        found
            .into_iter()
            .map(|f| {
                Check::pass(
                    "genicam camera",
                    format!(
                        "{} — {} {} ({} at {}, {})",
                        f.id, f.vendor, f.model, f.protocol, f.address, f.physical_id
                    ),
                )
                .needed(false)
            })
            .collect()
    }
    #[cfg(not(feature = "genicam"))]
    vec![Check::skip("genicam cameras", "built without the `genicam` feature").needed(false)]
}
