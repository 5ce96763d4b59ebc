//! A GigE Vision camera that shows the simulated conveyor's tiles: Aravis's own fake camera
//! (real GVCP and GVSP) with its test pattern replaced by [`SimConveyor`] tiles, so that a
//! GenICam board can be rehearsed on a desktop and compared part for part with the sim camera.
//!
//! Frame `n` the camera sends (its GVSP block id) is the sim camera's part `n` for the same
//! `[camera.sim]` settings: the same tiles in the same order.

use super::sim::SimConveyor;
use super::{Source, SourceError};
use crate::clock::SystemClock;
use crate::sources::camera::config::SimCameraConfig;
use aravis::glib::object::ObjectType;
use aravis::GvFakeCamera;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the fill callback reads and writes, owned by [`FakeGvCamera`].
struct Feed {
    sim: Mutex<SimConveyor>,
    tile: usize,
    frames: AtomicU64,
    warned: AtomicBool,
}

/// A running fake camera; it stops (and its sockets close) when dropped.
pub struct FakeGvCamera {
    camera: GvFakeCamera,
    feed: Arc<Feed>,
}

impl FakeGvCamera {
    /// Serve `sim`'s tiles on `interface` (a name or address, e.g. `127.0.0.1`) as camera
    /// `Aravis-Fake-<serial>`, losing `lost_per_mille` of the stream's packets.
    pub fn start(
        interface: &str,
        serial: &str,
        sim: &SimCameraConfig,
        lost_per_mille: f64,
    ) -> Result<Self, SourceError> {
        if !(0.0..=1000.0).contains(&lost_per_mille) {
            return Err(SourceError::Config(format!(
                "fake camera: lost packets per thousand is {lost_per_mille}; give 0 to 1000"
            )));
        }
        let conveyor = SimConveyor::new(sim, 1.0, Arc::new(SystemClock::new()))?;
        let camera = GvFakeCamera::new(Some(interface), Some(serial));
        if !camera.is_running() {
            return Err(SourceError::Config(format!(
                "fake camera on {interface:?}: GVCP port 3956 could not be opened (another camera \
                 running there, or no such interface)"
            )));
        }
        camera.set_gvsp_lost_ratio(lost_per_mille / 1000.0);
        let feed = Arc::new(Feed {
            sim: Mutex::new(conveyor),
            tile: sim.tile as usize,
            frames: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        });
        let fake = camera.fake_camera().ok_or_else(|| {
            SourceError::Config("fake camera: Aravis gave no camera behind it".into())
        })?;
        // SAFETY: `feed` outlives the camera's use of the pointer: `Drop` stops the camera
        // (joining its streaming thread) before the `Arc` it points into is released.
        unsafe {
            aravis_sys::arv_fake_camera_set_fill_pattern(
                fake.as_ptr(),
                Some(fill),
                Arc::as_ptr(&feed) as *mut c_void,
            );
        }
        Ok(Self { camera, feed })
    }

    /// Frames filled so far.
    pub fn frames(&self) -> u64 {
        self.feed.frames.load(Ordering::Relaxed)
    }
}

impl Drop for FakeGvCamera {
    fn drop(&mut self) {
        if let Some(fake) = self.camera.fake_camera() {
            // SAFETY: the default pattern needs no data; after this the callback above is no
            // longer called with the pointer to `feed`.
            unsafe {
                aravis_sys::arv_fake_camera_set_fill_pattern(
                    fake.as_ptr(),
                    None,
                    std::ptr::null_mut(),
                );
            }
        }
    }
}

/// Aravis's fill callback: the next tile into the camera's frame buffer.
unsafe extern "C" fn fill(
    buffer: *mut aravis_sys::ArvBuffer,
    data: *mut c_void,
    _exposure_us: u32,
    _gain: u32,
    pixel_format: aravis_sys::ArvPixelFormat,
) {
    // SAFETY: `data` is the `Feed` set with this callback, alive while the camera runs.
    let feed = unsafe { &*(data as *const Feed) };
    // SAFETY: Aravis hands a live buffer whose image part it has just sized.
    let (w, h) = unsafe {
        (
            aravis_sys::arv_buffer_get_image_width(buffer) as usize,
            aravis_sys::arv_buffer_get_image_height(buffer) as usize,
        )
    };
    let mut size = 0usize;
    // SAFETY: as above; the reported size is what was received so far (0 on the camera side),
    // while the allocation holds the payload, which Aravis checked is at least `w * h` for Mono8.
    let dst = unsafe { aravis_sys::arv_buffer_get_data(buffer, &mut size) };
    if pixel_format != aravis_sys::ARV_PIXEL_FORMAT_MONO_8 || w != feed.tile || h != feed.tile {
        if !feed.warned.swap(true, Ordering::Relaxed) {
            log::error!(
                "fake camera: the line set {w}x{h} pixel format {pixel_format:#x}; it shows \
                 {t}x{t} Mono8 tiles only (set camera.genicam width = height = {t}, \
                 pixel_format = \"Mono8\")",
                t = feed.tile
            );
        }
        return;
    }
    let mut sim = feed.sim.lock().unwrap_or_else(|e| e.into_inner());
    let (tile, _, _, _) = sim.make_tile();
    // SAFETY: `dst` holds at least w * h bytes (see above) and nothing else writes it now.
    unsafe { std::ptr::copy_nonoverlapping(tile.as_ptr(), dst, w * h) };
    sim.recycle(tile);
    feed.frames.fetch_add(1, Ordering::Relaxed);
}
