//! Reject archive: each rejected part's frame (PNG, or the camera's JPEG) and its anomaly map,
//! in a folder kept under a size cap by deleting the oldest files first.
//!
//! Part numbers restart with every run, so file names carry the run's id (its UTC start time
//! and process id): `{run}_{part:08}_{tag}.png`. A file is never overwritten: a name already
//! taken gets a `-N` suffix, so the size ledger counts each file once.

use crate::config::Invalid;
use crate::events::Outcome;
use crate::frame::{Frame, PixelFormat};
use crate::stages::inspect::Inspection;
use crossbeam_channel::{Receiver, Sender};
use std::collections::VecDeque;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A rejected part's frame and map, for the archive.
pub struct ArchiveJob {
    /// Part number.
    pub part: u64,
    /// Its outcome.
    pub outcome: Outcome,
    /// The frame.
    pub frame: Frame,
    /// The inspection, if there was one.
    pub inspection: Option<Inspection>,
    /// Threshold in force (drawn as the overlay's contour).
    pub threshold: f32,
    /// The model that judged it, when one did (else the run's model is written).
    pub model: Option<std::sync::Arc<str>>,
}

/// What the archive did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ArchiveStats {
    /// Parts written.
    pub written: u64,
    /// Files deleted to stay under the cap.
    pub deleted: u64,
    /// Parts that could not be written.
    pub errors: u64,
}

/// The archive writer thread.
pub struct Archive {
    tx: Option<Sender<ArchiveJob>>,
    handle: Option<JoinHandle<ArchiveStats>>,
}

/// Bytes free to an unprivileged writer on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Create the folder if needed and prove a file can be written there; the free space.
///
/// `run`, `check-config` and `doctor` all refuse an archive that cannot take a file: the
/// board asked for evidence to be kept, and a folder that cannot hold it is a setup mistake
/// better found before the first rejected part.
pub fn check_writable(dir: &Path) -> Result<u64, String> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".diffad-probe-{}", std::process::id()));
    let wrote = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .and_then(|mut f| f.write_all(b"probe").and_then(|()| f.sync_all()));
    let _ = std::fs::remove_file(&probe);
    wrote.map_err(|e| format!("cannot write into {}: {e}", dir.display()))?;
    free_bytes(dir).map_err(|e| format!("cannot read the free space of {}: {e}", dir.display()))
}

impl Archive {
    /// Create the folder and start the writer; file names carry the run id
    /// ([`crate::events::run_id`]). `lost` counts each rejected part not written.
    pub fn start(
        cfg: &ArchiveConfig,
        run: &str,
        model_id: &str,
        lost: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let free = check_writable(&cfg.dir).map_err(std::io::Error::other)?;
        let reserve = cfg.reserve_bytes();
        if free < reserve {
            log::warn!(
                "archive: {} has {:.1} MB free, under archive.min_free_mb = {}: rejected parts will not be archived until space is freed",
                cfg.dir.display(),
                free as f64 / 1048576.0,
                cfg.min_free_mb
            );
        }
        let (tx, rx) = crossbeam_channel::bounded(cfg.queue);
        let run = run.to_string();
        log::info!("archive: run {run} into {}", cfg.dir.display());
        let mut store = Store::open(&cfg.dir, (cfg.max_mb * 1024.0 * 1024.0) as u64, run)?;
        store.model = model_id.to_string();
        store.reserve = reserve;
        store.lost = lost;
        let handle = std::thread::Builder::new()
            .name("archive".into())
            .spawn(move || {
                // Off the part's path: PNG encoding at a fault-reject per skipped part under
                // overload must not take the engine's CPU (a full queue is counted lost).
                crate::priority::lower_this_thread("archive");
                store.run(rx)
            })?;
        Ok(Self {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Where the reject stage sends rejected parts.
    pub fn sender(&self) -> Sender<ArchiveJob> {
        self.tx.clone().expect("archive running")
    }

    /// Write what is queued and stop.
    pub fn finish(mut self) -> ArchiveStats {
        self.tx.take();
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Store {
    dir: PathBuf,
    run: String,
    /// The model's id, written into each sidecar.
    model: String,
    cap: u64,
    files: VecDeque<(PathBuf, u64)>,
    total: u64,
    stats: ArchiveStats,
    /// Free space a write must leave on the file system.
    reserve: u64,
    /// Parts not written, shared with the line's counters.
    lost: Arc<AtomicU64>,
}

/// Bytes a file takes on disk (its allocated blocks).
fn on_disk(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    (m.blocks() * 512).max(m.len())
}

fn ours(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e == "png" || e == "jpg" || e == "json")
}

impl Store {
    fn open(dir: &Path, cap: u64, run: String) -> std::io::Result<Self> {
        let mut files: Vec<(std::time::SystemTime, PathBuf, u64)> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                (m.is_file() && ours(&e.path())).then(|| {
                    (
                        m.modified().unwrap_or(std::time::UNIX_EPOCH),
                        e.path(),
                        on_disk(&m),
                    )
                })
            })
            .collect();
        files.sort();
        let total = files.iter().map(|f| f.2).sum();
        let mut s = Self {
            dir: dir.to_path_buf(),
            run,
            model: String::new(),
            cap,
            files: files.into_iter().map(|f| (f.1, f.2)).collect(),
            total,
            stats: ArchiveStats::default(),
            reserve: 0,
            lost: Arc::default(),
        };
        s.trim();
        Ok(s)
    }

    fn run(&mut self, rx: Receiver<ArchiveJob>) -> ArchiveStats {
        while let Some(job) = crate::clock::poll_recv(&rx) {
            let before = self.files.len();
            match self.write(&job) {
                Ok(()) => self.stats.written += 1,
                Err(e) => {
                    // A part's evidence is whole or absent: the files of it already written
                    // go, so that every sidecar in the folder stands for a complete part.
                    self.unwrite(before);
                    self.stats.errors += 1;
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    log::warn!("archive: part {} not archived: {e}", job.part);
                }
            }
        }
        self.stats.clone()
    }

    /// Write a new file; `AlreadyExists` rather than overwrite one (the ledger counts it already).
    fn put(&mut self, name: String, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write as _;
        let path = self.dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        if let Err(e) = file.write_all(bytes) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        // The cap counts what the files take on disk: a small file takes a whole block (4 KB
        // on ext4 and tmpfs), several times its length.
        let used = file
            .metadata()
            .map_or(0, |m| on_disk(&m))
            .max(bytes.len() as u64);
        self.total += used;
        self.files.push_back((path, used));
        self.trim();
        Ok(())
    }

    /// Remove the files written after the ledger held `keep` of them.
    fn unwrite(&mut self, keep: usize) {
        while self.files.len() > keep {
            let Some((p, n)) = self.files.pop_back() else {
                break;
            };
            self.total -= n;
            let _ = std::fs::remove_file(&p);
        }
    }

    fn trim(&mut self) {
        while self.total > self.cap {
            let Some((p, n)) = self.files.pop_front() else {
                break;
            };
            self.total -= n;
            if std::fs::remove_file(&p).is_ok() {
                self.stats.deleted += 1;
            }
        }
    }

    fn write(&mut self, job: &ArchiveJob) -> Result<(), String> {
        let tag = match job.outcome {
            Outcome::FaultReject | Outcome::FaultPass => "fault",
            _ => "reject",
        };
        let base = format!("{}_{:08}_{tag}", self.run, job.part);
        let (bytes, ext) = frame_file(&job.frame)?;
        // The files of one part are about three times its frame file.
        let need = self.reserve + 3 * bytes.len() as u64;
        match free_bytes(&self.dir) {
            Ok(free) if free < need => {
                return Err(format!(
                    "disk full: {:.1} MB free in {}, archive.min_free_mb = {}",
                    free as f64 / 1048576.0,
                    self.dir.display(),
                    self.reserve as f64 / 1048576.0
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("free space of {}: {e}", self.dir.display())),
        }
        // Same run id (a clock set back, a reused pid) or a stray file: take the next free stem.
        let mut stem = base.clone();
        for n in 1.. {
            match self.put(format!("{stem}.{ext}"), &bytes) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => {
                    stem = format!("{base}-{n}");
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        // What the images alone do not say: which part, from where, why, by which model.
        let truth = job.frame.truth.as_ref();
        let written = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let sidecar = serde_json::json!({
            "part": job.part,
            "outcome": job.outcome,
            "origin": job.frame.origin,
            "score": job.inspection.as_ref().map(|i| i.score),
            "threshold": job.threshold,
            "model_id": job.model.as_deref().unwrap_or(&self.model),
            "run": self.run,
            "frame_seq": job.frame.seq,
            "frame_timestamp_ns": job.frame.timestamp_ns,
            "written_unix_s": written,
            "defective": truth.map(|t| t.defective),
            "kind": truth.and_then(|t| t.kind.clone()),
        });
        self.put(format!("{stem}.json"), sidecar.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        if let Some(insp) = &job.inspection {
            if let Some(png) = map_png(insp)? {
                self.put(format!("{stem}_map.png"), &png)
                    .map_err(|e| e.to_string())?;
            }
            if let Some(png) = overlay_png(&job.frame, insp, job.threshold)? {
                self.put(format!("{stem}_overlay.png"), &png)
                    .map_err(|e| e.to_string())?;
            }
        }

        Ok(())
    }
}

fn encode_png<P: image::PixelWithColorType>(
    img: &image::ImageBuffer<P, Vec<P::Subpixel>>,
) -> Result<Vec<u8>, String>
where
    [P::Subpixel]: image::EncodableLayout,
{
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

/// The frame as an image file: `(bytes, extension)`; MJPEG frames are stored as they came.
pub fn frame_file(f: &Frame) -> Result<(Vec<u8>, &'static str), String> {
    let bad = || {
        format!(
            "frame of {} bytes does not fit {}x{} {:?}",
            f.data.len(),
            f.width,
            f.height,
            f.format
        )
    };
    match f.format {
        PixelFormat::Mjpeg => Ok((f.data.clone(), "jpg")),
        PixelFormat::Grey8 => {
            let img =
                image::GrayImage::from_raw(f.width, f.height, f.data.clone()).ok_or_else(bad)?;
            Ok((encode_png(&img)?, "png"))
        }
        PixelFormat::Rgb8 => {
            let img =
                image::RgbImage::from_raw(f.width, f.height, f.data.clone()).ok_or_else(bad)?;
            Ok((encode_png(&img)?, "png"))
        }
        PixelFormat::Yuyv => {
            // Luma only: every other byte is Y.
            let y: Vec<u8> = f.data.iter().step_by(2).copied().collect();
            let img = image::GrayImage::from_raw(f.width, f.height, y).ok_or_else(bad)?;
            Ok((encode_png(&img)?, "png"))
        }
    }
}

/// The anomaly map as a grey PNG (0..1 → 0..255) at model size.
pub fn map_png(insp: &Inspection) -> Result<Option<Vec<u8>>, String> {
    if insp.map.is_empty() || insp.map.len() != (insp.map_width * insp.map_height) as usize {
        return Ok(None);
    }
    let px: Vec<u8> = insp
        .map
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let img = image::GrayImage::from_raw(insp.map_width, insp.map_height, px).ok_or("map size")?;
    encode_png(&img).map(Some)
}

/// The anomaly map over the frame (turbo colours, threshold contour) as PNG.
pub fn overlay_png(
    frame: &Frame,
    insp: &Inspection,
    threshold: f32,
) -> Result<Option<Vec<u8>>, String> {
    if insp.map.is_empty() || insp.map.len() != (insp.map_width * insp.map_height) as usize {
        return Ok(None);
    }
    let img = crate::sinks::heatmap::overlay_in(
        frame,
        &insp.map,
        insp.map_width,
        insp.map_height,
        insp.map_roi,
        threshold,
    )?;
    encode_png(&img).map(Some)
}

/// `[archive]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Folder for rejected frames and their maps.
    pub dir: PathBuf,
    /// Size cap; oldest files go first.
    pub max_mb: f64,
    /// Rejects waiting to be written before new ones are skipped (and counted).
    pub queue: usize,
    /// Free space left to the rest of the system: a part is not archived (and is counted) when
    /// writing it would leave less.
    pub min_free_mb: f64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("archive"),
            max_mb: 512.0,
            queue: 32,
            min_free_mb: 32.0,
        }
    }
}

impl ArchiveConfig {
    /// Check the folder and cap.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.dir.as_os_str().is_empty() {
            return Err(Invalid::new("archive.dir", "must not be empty"));
        }
        if !(self.max_mb > 0.0 && self.max_mb.is_finite()) {
            return Err(Invalid::new("archive.max_mb", "must be > 0"));
        }
        if self.queue == 0 {
            return Err(Invalid::new("archive.queue", "must be > 0"));
        }
        if !(self.min_free_mb >= 0.0 && self.min_free_mb.is_finite()) {
            return Err(Invalid::new("archive.min_free_mb", "must be >= 0"));
        }
        Ok(())
    }

    /// `min_free_mb` in bytes.
    pub fn reserve_bytes(&self) -> u64 {
        (self.min_free_mb * 1048576.0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(part: u64) -> ArchiveJob {
        ArchiveJob {
            part,
            outcome: Outcome::Reject,
            frame: Frame {
                seq: part,
                timestamp_ns: 0,
                width: 64,
                height: 64,
                format: PixelFormat::Grey8,
                data: (0..64 * 64).map(|i| (i * 7 % 251) as u8).collect(),
                truth: None,
                origin: String::new(),
            },
            threshold: 0.5,
            model: None,
            inspection: Some(Inspection {
                score: 1.0,
                map: vec![0.5; 16 * 16],
                map_width: 16,
                map_height: 16,
                map_roi: None,
            }),
        }
    }

    #[test]
    fn writes_frame_and_map_and_keeps_under_cap() {
        let d = tempfile::tempdir().unwrap();
        let cfg = ArchiveConfig {
            dir: d.path().to_path_buf(),
            max_mb: 0.05,
            queue: 64,
            min_free_mb: 0.0,
        };
        let a = Archive::start(&cfg, "20240101-000000-1", "abcdef012345", Arc::default()).unwrap();
        for p in 1..=20 {
            a.sender().send(job(p)).unwrap();
        }
        let stats = a.finish();
        assert_eq!(stats.written, 20);
        assert!(stats.deleted > 0);
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        names.sort();
        let total: u64 = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| on_disk(&e.unwrap().metadata().unwrap()))
            .sum();
        assert!(total <= (0.05 * 1024.0 * 1024.0) as u64, "{total} on disk");
        let has = |suffix: &str| names.iter().any(|n| n.ends_with(suffix));
        assert!(has("_00000020_reject.png"), "{names:?}");
        assert!(has("_00000020_reject_map.png"), "{names:?}");
        assert!(has("_00000020_reject_overlay.png"), "{names:?}");
        let sidecar = names
            .iter()
            .find(|n| n.ends_with("_00000020_reject.json"))
            .expect("a sidecar beside the images");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.path().join(sidecar)).unwrap()).unwrap();
        assert_eq!(
            (
                v["part"].as_u64(),
                v["model_id"].as_str(),
                v["outcome"].as_str()
            ),
            (Some(20), Some("abcdef012345"), Some("reject"))
        );
        assert!(
            v["threshold"].as_f64().is_some() && v.get("origin").is_some(),
            "{v}"
        );
        assert!(!has("_00000001_reject.png"), "oldest go first: {names:?}");
        assert!(
            names.iter().all(|n| n.starts_with("20240101-000000-1_")),
            "run id: {names:?}"
        );
    }

    /// Files in `dir`: names and the sum of their sizes.
    fn listing(dir: &Path) -> (Vec<String>, u64) {
        let mut names = Vec::new();
        let mut total = 0;
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            names.push(e.file_name().to_string_lossy().into_owned());
            total += on_disk(&e.metadata().unwrap());
        }
        names.sort();
        (names, total)
    }

    #[test]
    fn a_restart_never_overwrites_and_the_ledger_counts_each_file_once() {
        let d = tempfile::tempdir().unwrap();
        let cap = 1 << 30;
        let run = |id: &str, parts: std::ops::RangeInclusive<u64>| {
            let mut store = Store::open(d.path(), cap, id.into()).unwrap();
            for p in parts {
                store.write(&job(p)).unwrap();
            }
            store
        };
        run("20240101-000000-1", 1..=3);
        // A restart: part numbers begin again at 1.
        let second = run("20240101-000100-2", 1..=3);
        let (names, on_disk) = listing(d.path());
        assert_eq!(
            names.len(),
            24,
            "4 files per part (frame, map, overlay, sidecar), 6 parts: {names:?}"
        );
        assert!(names.contains(&"20240101-000000-1_00000001_reject.png".into()));
        assert!(names.contains(&"20240101-000100-2_00000001_reject.png".into()));
        assert_eq!(second.total, on_disk, "ledger = folder");
        // Even the same run id again (clock set back, pid reused) overwrites nothing.
        let before = std::fs::read(d.path().join("20240101-000000-1_00000001_reject.png")).unwrap();
        let mut again = Store::open(d.path(), cap, "20240101-000000-1".into()).unwrap();
        let mut other = job(1);
        other.frame.data.iter_mut().for_each(|p| *p = 255 - *p);
        again.write(&other).unwrap();
        let (names, on_disk) = listing(d.path());
        assert_eq!(names.len(), 28, "{names:?}");
        assert!(names.contains(&"20240101-000000-1_00000001_reject-1.json".into()));
        assert!(names.contains(&"20240101-000000-1_00000001_reject-1.png".into()));
        assert!(names.contains(&"20240101-000000-1_00000001_reject-1_map.png".into()));
        assert_eq!(
            std::fs::read(d.path().join("20240101-000000-1_00000001_reject.png")).unwrap(),
            before,
            "the first run's file is untouched"
        );
        assert_eq!(again.total, on_disk, "ledger = folder");
    }
}
