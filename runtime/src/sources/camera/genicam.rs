//! A GenICam camera (GigE Vision, USB3 Vision) through Aravis: set up by feature name, stream
//! buffers allocated once and recycled, incomplete frames reported and never inspected, camera
//! time mapped to the line clock, and reconnects with backoff when the camera goes away.

use super::pixels::{convert, Layout};
use super::{SoftTrigger, Source, SourceError, StreamStats};
use crate::clock::{Clock, MS};
use crate::frame::Frame;
use crate::sources::camera::config::{ColorMode, GenicamConfig, GenicamTrigger};
use aravis::glib;
use aravis::glib::prelude::Cast;
use aravis::prelude::*;
use aravis::{Buffer, BufferStatus, Camera, GvStream, Stream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A camera Aravis can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Aravis id (`<vendor>-<serial>` for GigE Vision).
    pub id: String,
    /// Vendor name.
    pub vendor: String,
    /// Model name.
    pub model: String,
    /// `GigEVision` or `USB3Vision`.
    pub protocol: String,
    /// IP address (GigE Vision) or bus address.
    pub address: String,
    /// MAC address or USB id.
    pub physical_id: String,
}

/// The cameras on every interface Aravis knows (GigE Vision discovery, USB3 Vision enumeration).
pub fn list() -> Vec<Found> {
    // SAFETY: Aravis's device list is global state; the one caller at a time is the capture
    // thread while it (re)connects or `diffad doctor`, never both in one process.
    unsafe { aravis::get_device_list() }
        .into_iter()
        .map(|d| Found {
            id: d.id.to_string_lossy().into_owned(),
            vendor: d.vendor.to_string_lossy().into_owned(),
            model: d.model.to_string_lossy().into_owned(),
            protocol: d.protocol.to_string_lossy().into_owned(),
            address: d.address.to_string_lossy().into_owned(),
            physical_id: d.physical_id.to_string_lossy().into_owned(),
        })
        .collect()
}

/// The Aravis id of the camera `wanted` names (id, serial, address or MAC; empty: the only one).
pub fn select(found: &[Found], wanted: &str) -> Result<String, String> {
    let names = || {
        let v: Vec<String> = found
            .iter()
            .map(|f| format!("{} ({} {}, {})", f.id, f.vendor, f.model, f.address))
            .collect();
        if v.is_empty() {
            "none found".to_string()
        } else {
            format!("found: {}", v.join("; "))
        }
    };
    if wanted.is_empty() {
        return match found {
            [one] => Ok(one.id.clone()),
            _ => Err(format!(
                "camera.genicam.camera is empty and there is not exactly one camera ({}); set it to a camera's id or serial",
                names()
            )),
        };
    }
    found
        .iter()
        .find(|f| {
            f.id == wanted
                || f.address == wanted
                || f.physical_id.eq_ignore_ascii_case(wanted)
                || f.id.ends_with(&format!("-{wanted}"))
        })
        .map(|f| f.id.clone())
        .ok_or_else(|| format!("no camera {wanted:?} ({})", names()))
}

/// Maps camera timestamps to the line clock: the offset is the smallest (arrival − camera
/// time) over a window of frames (the frame that waited least in the network and the driver),
/// and its change over time is the drift of the camera's clock against ours.
#[derive(Debug, Default, Clone)]
pub struct ClockMap {
    window: Vec<i128>,
    offset: Option<i128>,
    first: Option<(u64, i128)>,
    drift_ppm: Option<f64>,
}

/// Frames over which the offset is re-estimated.
const CLOCK_WINDOW: usize = 32;

impl ClockMap {
    /// The line time of a frame the camera stamped `camera_ns` and we received at `arrival_ns`.
    pub fn map(&mut self, camera_ns: u64, arrival_ns: u64) -> u64 {
        if camera_ns == 0 {
            return arrival_ns;
        }
        let d = i128::from(arrival_ns) - i128::from(camera_ns);
        self.window.push(d);
        let current = *self.window.iter().min().expect("just pushed");
        let offset = *self.offset.get_or_insert(current);
        // Within a window the running minimum can only fall; a new window lets it rise, so a
        // drifting clock is followed.
        let offset = offset.min(current);
        self.offset = Some(offset);
        if self.window.len() >= CLOCK_WINDOW {
            self.offset = Some(current);
            self.window.clear();
            match self.first {
                None => self.first = Some((arrival_ns, current)),
                Some((t0, o0)) if arrival_ns > t0 => {
                    self.drift_ppm = Some((current - o0) as f64 / (arrival_ns - t0) as f64 * 1e6);
                }
                Some(_) => {}
            }
        }
        let t = i128::from(camera_ns) + offset;
        // A jump of the camera's clock (reset, reconnect) must not place a frame in the future
        // or far in the past: fall back to the arrival time and start again.
        if t > i128::from(arrival_ns) || i128::from(arrival_ns) - t > i128::from(1000 * MS) {
            self.reset();
            return arrival_ns;
        }
        t as u64
    }

    /// Drift of the camera clock against the line clock, ppm (positive: the camera's runs
    /// slow), once two windows have been measured.
    pub fn drift(&self) -> Option<f64> {
        self.drift_ppm
    }

    /// Forget the estimate (the camera was reconnected: its clock may have restarted).
    pub fn reset(&mut self) {
        self.window.clear();
        self.offset = None;
        self.first = None;
    }
}

/// One connected camera with its stream.
struct Conn {
    camera: Camera,
    stream: Stream,
    layout: Layout,
    width: usize,
    height: usize,
    lost: Arc<AtomicBool>,
    last_frame_id: Option<u64>,
}

/// The GenICam source.
pub struct GenicamSource {
    cfg: GenicamConfig,
    clock: Arc<dyn Clock>,
    rgb: bool,
    conn: Option<Conn>,
    /// The camera the photo-eye thread fires; `None` while disconnected.
    trigger: Arc<Mutex<Option<Camera>>>,
    pool: Vec<Vec<u8>>,
    n: u64,
    backoff_ms: u64,
    dropped: u64,
    /// Counters of streams closed so far (a reconnect starts the stream's own at zero).
    carried: StreamStats,
    map: ClockMap,
    /// Frames whose camera timestamp was used (the rest are stamped at arrival).
    stamped: u64,
    /// Copy-and-convert time per frame, ns.
    convert_ns: hdrhistogram::Histogram<u64>,
    /// Frame buffers allocated or grown.
    allocated: u64,
}

/// Nanoseconds from 0.1 µs to 10 s at 3 significant figures, fixed size: recording a frame
/// never allocates (a longer time saturates).
fn convert_histogram() -> hdrhistogram::Histogram<u64> {
    let mut h =
        hdrhistogram::Histogram::new_with_bounds(100, 10_000_000_000, 3).expect("valid bounds");
    h.auto(false);
    h
}

/// Longest wait between reconnect attempts.
const MAX_BACKOFF_MS: u64 = 5_000;

impl GenicamSource {
    /// A source that connects on first use (and again after the camera went away). Only the
    /// configuration is checked here; the camera itself may come later.
    pub fn new(cfg: &GenicamConfig, clock: Arc<dyn Clock>) -> Result<Self, SourceError> {
        if Layout::from_genicam(&cfg.pixel_format).is_none() {
            return Err(SourceError::Config(format!(
                "camera.genicam.pixel_format {:?} cannot be converted",
                cfg.pixel_format
            )));
        }
        Ok(Self {
            cfg: cfg.clone(),
            clock,
            rgb: cfg.color == ColorMode::Rgb,
            conn: None,
            trigger: Arc::new(Mutex::new(None)),
            pool: Vec::new(),
            n: 0,
            backoff_ms: 250,
            dropped: 0,
            carried: StreamStats::default(),
            map: ClockMap::default(),
            stamped: 0,
            convert_ns: convert_histogram(),
            allocated: 0,
        })
    }

    fn connect(&mut self) -> Result<(), SourceError> {
        let id = select(&list(), &self.cfg.camera).map_err(SourceError::Disconnected)?;
        let gone =
            |what: &str, e: glib::Error| SourceError::Disconnected(format!("{id}: {what}: {e}"));
        let camera = Camera::new(Some(&id)).map_err(|e| gone("open", e))?;
        let device = camera.device().ok_or_else(|| {
            SourceError::Disconnected(format!("{id}: no device behind the camera"))
        })?;
        // Aravis writes out-of-range values unchecked by default; the camera may then clamp
        // them silently. Checked, a refused value is an error naming the feature's range.
        device.set_range_check_policy(aravis::RangeCheckPolicy::Enable);
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        device.connect_control_lost(move |_| flag.store(true, Ordering::SeqCst));
        configure(&camera, &self.cfg)?;
        if camera.is_gv_device() {
            // Aravis's packet-socket receiver delivered nothing on loopback; the plain socket
            // works on every interface, with a receive buffer sized below.
            camera.gv_set_stream_options(aravis::GvStreamOption::PACKET_SOCKET_DISABLED);
            if self.cfg.packet_size > 0 {
                camera
                    .gv_set_packet_size(self.cfg.packet_size as i32)
                    .map_err(|e| {
                        feature_error(
                            &camera,
                            "GevSCPSPacketSize",
                            "camera.genicam.packet_size",
                            e,
                        )
                    })?;
            }
        }
        let payload = camera.payload().map_err(|e| gone("PayloadSize", e))? as usize;
        let stream = camera.create_stream().map_err(|e| gone("stream", e))?;
        if let Some(gv) = stream.dynamic_cast_ref::<GvStream>() {
            gv.set_socket_buffer(aravis::GvStreamSocketBuffer::Fixed);
            gv.set_socket_buffer_size(self.cfg.socket_buffer_bytes as i32);
        }
        for _ in 0..self.cfg.buffers {
            stream.push_buffer(Buffer::new_allocate(payload));
        }
        let (_, _, w, h) = camera.region().map_err(|e| gone("region", e))?;
        camera
            .start_acquisition()
            .map_err(|e| gone("AcquisitionStart", e))?;
        let layout = Layout::from_genicam(&self.cfg.pixel_format).expect("checked in new");
        log::info!(
            "{id}: streaming {w}x{h} {} ({:?} trigger), {} buffers of {payload} bytes",
            self.cfg.pixel_format,
            self.cfg.trigger,
            self.cfg.buffers
        );
        *self.trigger.lock().unwrap_or_else(|e| e.into_inner()) =
            (self.cfg.trigger == GenicamTrigger::Software).then(|| camera.clone());
        self.map.reset();
        self.conn = Some(Conn {
            camera,
            stream,
            layout,
            width: w as usize,
            height: h as usize,
            lost,
            last_frame_id: None,
        });
        Ok(())
    }

    fn close(&mut self) {
        *self.trigger.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(c) = self.conn.take() {
            self.carried += stats_of(&c.stream);
            let _ = c.camera.stop_acquisition();
            // Dropping the stream joins its receive thread and frees its buffers.
            drop(c.stream);
        }
    }

    /// The camera went quiet for `timeout_ms`: still there (an idle trigger) or gone?
    fn check_alive(&mut self) -> Result<(), SourceError> {
        let c = self.conn.as_ref().expect("connected");
        let answer = c.camera.integer("Width");
        if c.lost.load(Ordering::SeqCst) || answer.is_err() {
            let why = answer
                .err()
                .map_or("control lost".to_string(), |e| e.to_string());
            self.close();
            return Err(SourceError::Disconnected(format!(
                "camera {:?} stopped answering: {why}",
                self.cfg.camera
            )));
        }
        Ok(())
    }
}

/// Sum of the stream's own counters.
fn stats_of(stream: &Stream) -> StreamStats {
    let (_, _, underruns) = stream.statistics();
    let (resent, missing) = stream
        .dynamic_cast_ref::<GvStream>()
        .map_or((0, 0), GvStream::statistics);
    StreamStats {
        packets_missing: missing,
        packets_resent: resent,
        underruns,
    }
}

/// What the camera allows for `feature`, for error messages.
fn allowed(camera: &Camera, feature: &str) -> String {
    let Some(device) = camera.device() else {
        return String::new();
    };
    if device.feature(feature).is_none() {
        return format!("the camera has no feature {feature}");
    }
    if let Ok(v) = device.dup_available_enumeration_feature_values_as_strings(feature) {
        if !v.is_empty() {
            let v: Vec<&str> = v.iter().map(|s| s.as_str()).collect();
            return format!("it allows {}", v.join(", "));
        }
    }
    if let Ok((lo, hi)) = device.integer_feature_bounds(feature) {
        return format!("it allows {lo}..={hi}");
    }
    if let Ok((lo, hi)) = device.float_feature_bounds(feature) {
        return format!("it allows {lo}..={hi}");
    }
    String::new()
}

fn feature_error(camera: &Camera, feature: &str, key: &str, e: glib::Error) -> SourceError {
    let allows = allowed(camera, feature);
    SourceError::Config(format!(
        "{key}: the camera refused {feature}: {}{}",
        e.message(),
        if allows.is_empty() {
            String::new()
        } else {
            format!(" ({allows})")
        }
    ))
}

/// Set up the camera as the board file says, every feature checked against the camera.
fn configure(camera: &Camera, cfg: &GenicamConfig) -> Result<(), SourceError> {
    fn refused<'a>(
        camera: &'a Camera,
        feature: &'a str,
        key: &'a str,
    ) -> impl FnOnce(glib::Error) -> SourceError + 'a {
        move |e| feature_error(camera, feature, key, e)
    }
    let fail = |feature: &'static str, key: &'static str| refused(camera, feature, key);
    // Stopped first: some features are locked while the camera streams.
    let _ = camera.stop_acquisition();
    camera
        .set_pixel_format_from_string(&cfg.pixel_format)
        .map_err(fail("PixelFormat", "camera.genicam.pixel_format"))?;
    if cfg.binning > 1 || camera.is_binning_available().unwrap_or(false) {
        camera
            .set_binning(cfg.binning as i32, cfg.binning as i32)
            .map_err(fail("BinningHorizontal", "camera.genicam.binning"))?;
    }
    // Offsets first to 0 so that a new, larger width is not refused against the old offset.
    let _ = camera.set_integer("OffsetX", 0);
    let _ = camera.set_integer("OffsetY", 0);
    camera
        .set_integer("Width", i64::from(cfg.width))
        .map_err(fail("Width", "camera.genicam.width"))?;
    camera
        .set_integer("Height", i64::from(cfg.height))
        .map_err(fail("Height", "camera.genicam.height"))?;
    if cfg.offset_x > 0 {
        camera
            .set_integer("OffsetX", i64::from(cfg.offset_x))
            .map_err(fail("OffsetX", "camera.genicam.offset_x"))?;
    }
    if cfg.offset_y > 0 {
        camera
            .set_integer("OffsetY", i64::from(cfg.offset_y))
            .map_err(fail("OffsetY", "camera.genicam.offset_y"))?;
    }
    if let Some(e) = cfg.exposure_us {
        camera
            .set_exposure_time(e)
            .map_err(fail("ExposureTime", "camera.genicam.exposure_us"))?;
    }
    if let Some(g) = cfg.gain_db {
        camera
            .set_gain(g)
            .map_err(fail("Gain", "camera.genicam.gain_db"))?;
    }
    camera
        .set_acquisition_mode(aravis::AcquisitionMode::Continuous)
        .map_err(fail("AcquisitionMode", "camera.genicam.trigger"))?;
    match cfg.trigger {
        GenicamTrigger::Free => {
            camera
                .clear_triggers()
                .map_err(fail("TriggerMode", "camera.genicam.trigger"))?;
            camera
                .set_frame_rate(cfg.frame_rate)
                .map_err(fail("AcquisitionFrameRate", "camera.genicam.frame_rate"))?;
        }
        GenicamTrigger::Software => camera
            .set_trigger("Software")
            .map_err(fail("TriggerSource", "camera.genicam.trigger"))?,
        GenicamTrigger::Hardware => camera
            .set_trigger(&cfg.hardware_line)
            .map_err(fail("TriggerSource", "camera.genicam.hardware_line"))?,
    }
    for (name, value) in &cfg.features {
        let key = format!("camera.genicam.features.{name}");
        let r = match value {
            toml::Value::String(s) => camera.set_string(name, s),
            toml::Value::Integer(i) => camera
                .set_integer(name, *i)
                .or_else(|_| camera.set_float(name, *i as f64)),
            toml::Value::Float(f) => camera.set_float(name, *f),
            toml::Value::Boolean(b) => camera.set_boolean(name, *b),
            other => {
                return Err(SourceError::Config(format!(
                    "{key}: {other} is not a feature value"
                )))
            }
        };
        r.map_err(|e| feature_error(camera, name, &key, e))?;
    }
    Ok(())
}

impl Source for GenicamSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.conn.is_none() {
            if let Err(e) = self.connect() {
                self.close();
                if matches!(e, SourceError::Config(_)) {
                    return Err(e);
                }
                // Back off so a missing camera is retried, not spun on.
                self.clock
                    .sleep_until(self.clock.now_ns() + self.backoff_ms * MS);
                self.backoff_ms = (self.backoff_ms * 2).min(MAX_BACKOFF_MS);
                return Err(e);
            }
        }
        let conn = self.conn.as_mut().expect("connected above");
        let Some(buffer) = conn.stream.timeout_pop_buffer(self.cfg.timeout_ms * 1000) else {
            self.check_alive()?;
            return Err(SourceError::Timeout(self.cfg.timeout_ms));
        };
        self.backoff_ms = 250;
        let arrival = self.clock.now_ns();
        let frame_id = buffer.frame_id();
        if let Some(last) = conn.last_frame_id {
            // GigE Vision block ids are 16 bits on older cameras, 64 on newer; a gap counts
            // the frames lost in between, a wrap or restart does not.
            let gap = frame_id.wrapping_sub(last).wrapping_sub(1);
            if gap < 1 << 15 {
                self.dropped += gap;
            }
        }
        conn.last_frame_id = Some(frame_id);
        self.n += 1;
        let ts = self.map.map(buffer.timestamp(), arrival);
        if ts != arrival {
            self.stamped += 1;
        }
        let mut frame = Frame {
            seq: self.n,
            timestamp_ns: ts,
            width: conn.width as u32,
            height: conn.height as u32,
            format: crate::frame::PixelFormat::Grey8,
            data: Vec::new(),
            truth: None,
            origin: format!("genicam:{}#{frame_id}", self.cfg.camera),
        };
        let status = buffer.status();
        if status != BufferStatus::Success {
            conn.stream.push_buffer(buffer);
            return Err(SourceError::Incomplete {
                frame: Box::new(frame),
                why: format!("{status:?}"),
            });
        }
        let (ptr, len) = buffer.data();
        // SAFETY: Aravis owns `len` bytes at `ptr` for as long as `buffer` lives, and nothing
        // writes them until the buffer is pushed back to the stream below.
        let bytes = unsafe { std::slice::from_raw_parts(ptr as *const u8, len) };
        let (w, h) = (
            buffer.image_width() as usize,
            buffer.image_height() as usize,
        );
        let started = std::time::Instant::now();
        let mut data = self.pool.pop().unwrap_or_default();
        if data.capacity() < w * h * if self.rgb { 3 } else { 1 } {
            self.allocated += 1;
        }
        let converted = convert(conn.layout, bytes, w, h, self.rgb, &mut data);
        conn.stream.push_buffer(buffer);
        self.convert_ns
            .saturating_record(started.elapsed().as_nanos() as u64);
        match converted {
            Ok(format) => {
                frame.format = format;
                frame.width = w as u32;
                frame.height = h as u32;
                frame.data = data;
                Ok(Some(frame))
            }
            Err(why) => {
                self.pool.push(data);
                Err(SourceError::Incomplete {
                    frame: Box::new(frame),
                    why,
                })
            }
        }
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < self.cfg.buffers as usize {
            self.pool.push(buf);
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped
    }

    fn stream_stats(&self) -> StreamStats {
        let mut s = self.carried;
        if let Some(c) = &self.conn {
            s += stats_of(&c.stream);
        }
        s
    }

    fn figures(&self) -> Option<crate::events::CameraFigures> {
        let h = &self.convert_ns;
        let us = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1e3
            }
        };
        Some(crate::events::CameraFigures {
            frames_converted: h.len(),
            convert_p50_us: us(0.5),
            convert_p99_us: us(0.99),
            convert_max_us: if h.is_empty() {
                0.0
            } else {
                h.max() as f64 / 1e3
            },
            buffers_allocated: self.allocated,
            camera_stamped: self.stamped,
            clock_drift_ppm: self.map.drift(),
        })
    }

    fn soft_trigger(&self) -> Option<Box<dyn SoftTrigger>> {
        (self.cfg.trigger == GenicamTrigger::Software).then(|| {
            Box::new(Fire {
                camera: self.trigger.clone(),
            }) as Box<dyn SoftTrigger>
        })
    }

    fn describe(&self) -> String {
        format!(
            "genicam {:?} {}x{} {} {:?} trigger",
            self.cfg.camera,
            self.cfg.width,
            self.cfg.height,
            self.cfg.pixel_format,
            self.cfg.trigger
        )
    }
}

impl Drop for GenicamSource {
    fn drop(&mut self) {
        self.close();
    }
}

/// `TriggerSoftware` on the connected camera, from the photo-eye thread.
struct Fire {
    camera: Arc<Mutex<Option<Camera>>>,
}

impl SoftTrigger for Fire {
    fn fire(&mut self) -> Result<(), String> {
        let guard = self.camera.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(c) => c.software_trigger().map_err(|e| e.to_string()),
            None => Err("camera not connected".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(id: &str, addr: &str) -> Found {
        Found {
            id: id.into(),
            vendor: "V".into(),
            model: "M".into(),
            protocol: "GigEVision".into(),
            address: addr.into(),
            physical_id: "00:11:22:33:44:55".into(),
        }
    }

    #[test]
    fn a_camera_is_selected_by_id_serial_address_or_mac() {
        let f = [
            found("Basler-123", "10.0.0.2"),
            found("Aravis-Fake-GV01", "127.0.0.1"),
        ];
        assert_eq!(select(&f, "Aravis-Fake-GV01").unwrap(), "Aravis-Fake-GV01");
        assert_eq!(select(&f, "123").unwrap(), "Basler-123");
        assert_eq!(select(&f, "127.0.0.1").unwrap(), "Aravis-Fake-GV01");
        let e = select(&f, "").unwrap_err();
        assert!(
            e.contains("not exactly one") && e.contains("Basler-123"),
            "{e}"
        );
        assert_eq!(select(&f[..1], "").unwrap(), "Basler-123");
        let e = select(&f, "GV02").unwrap_err();
        assert!(e.contains("no camera \"GV02\""), "{e}");
        assert!(select(&[], "").unwrap_err().contains("none found"));
    }

    #[test]
    fn camera_time_maps_to_the_least_delayed_arrival_and_drift_is_measured() {
        let mut m = ClockMap::default();
        // Camera clock 1e9 ns ahead, running 100 ppm fast; network delay 1..=3 ms.
        let mut worst = 0i128;
        for i in 0..200u64 {
            let line = 5_000_000_000 + i * 33 * MS;
            let cam = 1_000_000_000 + line - 5_000_000_000 + line / 10_000;
            let delay = (i % 3 + 1) * MS;
            let t = m.map(cam + 6_000_000_000 - 5_000_000_000, line + delay);
            worst = worst.max((i128::from(t) - i128::from(line)).abs());
        }
        assert!(
            worst < i128::from(2 * MS),
            "mapped within the jitter: {worst} ns"
        );
        let drift = m.drift().expect("measured");
        assert!((drift + 100.0).abs() < 20.0, "drift {drift}");
        // No timestamp: the arrival.
        assert_eq!(m.map(0, 42), 42);
        // A camera clock that jumps back is not trusted for that frame.
        assert_eq!(m.map(1, 9_000_000_000), 9_000_000_000);
    }
}
