//! Replay a folder of images, or an MVTec-style dataset with its ground truth, at the part rate.

use super::{Pacer, Source, SourceError};
use crate::clock::Clock;
use crate::frame::{Frame, GroundTruth, PixelFormat};
use crate::sources::camera::config::ColorMode;
use crate::sources::camera::config::ReplayConfig;
use crate::sources::dataset;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One image to play and what is known about it.
#[derive(Debug, Clone)]
struct Item {
    path: PathBuf,
    kind: Option<String>,
    mask: Option<PathBuf>,
}

/// The replay source.
pub struct Replay {
    items: Vec<Item>,
    next: usize,
    rgb: bool,
    looping: bool,
    pacer: Pacer,
    seq: u64,
    dir: PathBuf,
    /// The shuffle's generator, when `order = "shuffle"`.
    shuffle: Option<super::sim::Rng>,
}

/// Fisher–Yates with the replay's own generator.
fn shuffle(items: &mut [Item], rng: &mut super::sim::Rng) {
    for i in (1..items.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

fn sorted_images(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let all = dataset::sorted_dir(dir)
        .map_err(|e| SourceError::Config(format!("{}: {e}", dir.display())))?;
    Ok(all
        .into_iter()
        .filter(|p| p.is_file() && dataset::is_image(p))
        .collect())
}

/// The MVTec root `dir` stands for: itself when it holds `test/`, its parent when `dir` is
/// that `test/` folder (people point at the folder with the images), else none (a flat folder).
fn mvtec_root(dir: &Path) -> Option<PathBuf> {
    if dir.join("test").is_dir() {
        return Some(dir.to_path_buf());
    }
    let parent = dir.parent()?;
    (dir.file_name().is_some_and(|n| n == "test") && parent.join("ground_truth").is_dir())
        .then(|| parent.to_path_buf())
}

/// What a replay of `dir` would play, in words: the layout, the images, the ground truth.
pub fn describe(dir: &Path) -> Result<String, SourceError> {
    let items = scan(dir)?;
    let with_truth = items.iter().filter(|i| i.kind.is_some()).count();
    let mut kinds: Vec<&str> = items.iter().filter_map(|i| i.kind.as_deref()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    Ok(match mvtec_root(dir) {
        Some(root) => format!(
            "MVTec root {}: {} images in {} kinds ({}), ground truth on {with_truth}, {} masks",
            root.display(),
            items.len(),
            kinds.len(),
            kinds.join(", "),
            items.iter().filter(|i| i.mask.is_some()).count()
        ),
        None => format!(
            "flat folder {}: {} images, no ground truth (an MVTec root with test/<kind>/ gives it)",
            dir.display(),
            items.len()
        ),
    })
}

/// List what a replay of `dir` would play: `(path, kind, mask)`; MVTec layout when `dir/test`
/// exists or `dir` is such a `test/` folder.
fn scan(dir: &Path) -> Result<Vec<Item>, SourceError> {
    let Some(dir) = mvtec_root(dir) else {
        return Ok(sorted_images(dir)?
            .into_iter()
            .map(|path| Item {
                path,
                kind: None,
                mask: None,
            })
            .collect());
    };
    // The same layout `eval` reads: test/<kind>/ images, ground_truth/<kind>/ masks.
    let samples = dataset::scan(&dir).map_err(SourceError::Config)?;
    Ok(samples
        .into_iter()
        .map(|s| Item {
            path: s.image,
            kind: Some(s.kind),
            mask: s.mask,
        })
        .collect())
}

impl Replay {
    /// Scan `cfg.dir`; refuses an empty folder.
    pub fn new(
        cfg: &ReplayConfig,
        rate_hz: f64,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SourceError> {
        let items = scan(&cfg.dir)?;
        if items.is_empty() {
            return Err(SourceError::Config(format!(
                "no png/jpeg images in {}: camera.replay.dir takes a folder of images, or an \
                 MVTec root (test/<kind>/ images, ground_truth/<kind>/ masks) or its test/ folder",
                cfg.dir.display()
            )));
        }
        let mut items = items;
        let mut rng = (cfg.order == super::config::ReplayOrder::Shuffle)
            .then(|| super::sim::Rng::new(cfg.seed));
        if let Some(rng) = rng.as_mut() {
            shuffle(&mut items, rng);
        }
        Ok(Self {
            items,
            next: 0,
            rgb: cfg.color == ColorMode::Rgb,
            looping: cfg.loop_forever,
            pacer: Pacer::new(clock, rate_hz),
            seq: 0,
            dir: cfg.dir.clone(),
            shuffle: rng,
        })
    }

    /// Number of images in one pass.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when there is nothing to play (never after `new`).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl Source for Replay {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.next >= self.items.len() {
            if !self.looping {
                return Ok(None);
            }
            if let Some(rng) = self.shuffle.as_mut() {
                shuffle(&mut self.items, rng);
            }
            self.next = 0;
        }
        let item = self.items[self.next].clone();
        self.next += 1;
        let (w, h, data) = match super::decode(&item.path, self.rgb) {
            Ok(d) => d,
            Err(e) => {
                // A failed read takes its frame's slot, as a camera's would: images that
                // vanished (a share unmounted, a folder moved) are retried at the frame rate,
                // not in a tight loop that starves the line's other threads.
                self.pacer.wait_next();
                return Err(e);
            }
        };
        let truth = item.kind.as_ref().map(|kind| {
            let defective = kind != "good";
            let mask = match &item.mask {
                Some(m) => super::decode(m, false)
                    .ok()
                    .filter(|(mw, mh, _)| (*mw, *mh) == (w, h))
                    .map(|(_, _, d)| d),
                None if !defective => Some(vec![0; (w * h) as usize]),
                None => None,
            };
            GroundTruth {
                defective,
                kind: defective.then(|| kind.clone()),
                mask,
            }
        });
        let ts = self.pacer.wait_next();
        self.seq += 1;
        Ok(Some(Frame {
            seq: self.seq,
            timestamp_ns: ts,
            width: w,
            height: h,
            format: if self.rgb {
                PixelFormat::Rgb8
            } else {
                PixelFormat::Grey8
            },
            data,
            truth,
            origin: item.path.display().to_string(),
        }))
    }

    fn describe(&self) -> String {
        format!(
            "replay of {} ({} images)",
            self.dir.display(),
            self.items.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::clock::{SimClock, SimMode};

    #[test]
    fn images_that_vanish_fail_at_the_frame_rate_and_play_again_when_back() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("imgs");
        std::fs::create_dir(&dir).unwrap();
        for i in 0..3u8 {
            image::GrayImage::from_pixel(8, 8, image::Luma([i]))
                .save(dir.join(format!("{i}.png")))
                .unwrap();
        }
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock::new());
        let cfg = ReplayConfig {
            dir: dir.clone(),
            loop_forever: true,
            ..Default::default()
        };
        let rate = 200.0;
        let mut r = Replay::new(&cfg, rate, clock.clone()).unwrap();
        assert!(r.next_frame().unwrap().is_some());
        let moved = d.path().join("away");
        std::fs::rename(&dir, &moved).unwrap();
        let t0 = clock.now_ns();
        let failed = 10;
        for _ in 0..failed {
            let got = r.next_frame();
            assert!(matches!(got, Err(SourceError::Io(_))), "{got:?}");
        }
        // Before the fix these failed reads took microseconds each: a tight loop.
        let took_ms = (clock.now_ns() - t0) as f64 / 1e6;
        let want_ms = failed as f64 * 1e3 / rate;
        assert!(
            took_ms >= 0.8 * want_ms,
            "{failed} failed reads in {took_ms:.1} ms"
        );
        std::fs::rename(&moved, &dir).unwrap();
        let f = r.next_frame().unwrap().unwrap();
        assert_eq!(f.seq, 2, "failed reads are not frames");
    }

    #[test]
    fn shuffle_mixes_the_kinds_the_same_way_for_a_seed() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for kind in ["good", "hole"] {
            std::fs::create_dir_all(root.join("test").join(kind)).unwrap();
            for i in 0..10 {
                image::GrayImage::from_pixel(8, 8, image::Luma([i * 20]))
                    .save(root.join("test").join(kind).join(format!("{i:03}.png")))
                    .unwrap();
            }
        }
        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(SimMode::Auto, 0));
        let _running = crate::clock::Held::new(clock.clone());
        let play = |order, seed| {
            let cfg = ReplayConfig {
                dir: root.to_path_buf(),
                order,
                seed,
                ..Default::default()
            };
            let mut r = Replay::new(&cfg, 1e3, clock.clone()).unwrap();
            (0..20)
                .map(|_| r.next_frame().unwrap().unwrap().origin)
                .collect::<Vec<String>>()
        };
        let named = play(super::super::config::ReplayOrder::Name, 1);
        assert!(named[..10].iter().all(|o| o.contains("good")), "{named:?}");
        let shuffled = play(super::super::config::ReplayOrder::Shuffle, 7);
        assert_eq!(
            shuffled,
            play(super::super::config::ReplayOrder::Shuffle, 7)
        );
        assert_ne!(
            shuffled,
            play(super::super::config::ReplayOrder::Shuffle, 8)
        );
        let goods_first_half = shuffled[..10].iter().filter(|o| o.contains("good")).count();
        assert!((2..=8).contains(&goods_first_half), "{shuffled:?}");
        let mut a = shuffled.clone();
        let mut b = named.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b, "every image once");
    }

    #[test]
    fn mvtec_layout_keeps_truth_and_masks() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for (kind, name) in [("good", "000"), ("scratch", "001")] {
            std::fs::create_dir_all(root.join("test").join(kind)).unwrap();
            image::RgbImage::from_pixel(16, 16, image::Rgb([255, 0, 0]))
                .save(root.join("test").join(kind).join(format!("{name}.png")))
                .unwrap();
        }
        std::fs::create_dir_all(root.join("ground_truth/scratch")).unwrap();
        let mut m = image::GrayImage::new(16, 16);
        m.put_pixel(3, 3, image::Luma([255]));
        m.save(root.join("ground_truth/scratch/001_mask.png"))
            .unwrap();

        let clock: Arc<dyn Clock> = Arc::new(SimClock::new(SimMode::Auto, 0));
        let _running = crate::clock::Held::new(clock.clone());
        let cfg = ReplayConfig {
            dir: root.to_path_buf(),
            ..Default::default()
        };
        let mut r = Replay::new(&cfg, 1e3, clock).unwrap();
        let a = r.next_frame().unwrap().unwrap();
        assert!(!a.truth.as_ref().unwrap().defective);
        assert_eq!(a.data[0], 76, "601 luma of pure red");
        let b = r.next_frame().unwrap().unwrap();
        assert_eq!(b.timestamp_ns - a.timestamp_ns, 1_000_000);
        let t = b.truth.unwrap();
        assert!(t.defective);
        assert_eq!(t.kind.as_deref(), Some("scratch"));
        assert_eq!(t.mask.unwrap()[3 * 16 + 3], 255);
        assert!(r.next_frame().unwrap().is_none());
    }
}
