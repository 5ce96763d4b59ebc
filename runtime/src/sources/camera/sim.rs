//! Simulated conveyor: grey tiles cut from a texture photograph (evaluation columns x ≥ 384
//! only), a seeded share of them with painted defects and their masks.

use super::{Pacer, Source, SourceError};
use crate::clock::Clock;
use crate::frame::{Frame, GroundTruth, PixelFormat};
use crate::sources::camera::config::SimCameraConfig;
use std::sync::Arc;

/// First photo column tiles may come from: columns left of it are the training region.
pub const EVAL_X0: u32 = 384;

/// Small deterministic generator (SplitMix64): the same seed gives the same line everywhere.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }
    /// Uniform integer in [lo, hi] (inclusive).
    pub fn int(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as u32
    }
}

/// Defect kinds the simulation paints.
pub const DEFECT_KINDS: [&str; 3] = ["scratch", "stain", "hole"];

/// The simulated conveyor source.
pub struct SimConveyor {
    photo: Vec<u8>,
    pw: u32,
    ph: u32,
    origin: String,
    tile: u32,
    defect_rate: f64,
    rng: Rng,
    pacer: Pacer,
    seq: u64,
    pool: Vec<Vec<u8>>,
}

impl SimConveyor {
    /// Load the photo (or make a procedural texture) and start the belt.
    pub fn new(
        cfg: &SimCameraConfig,
        rate_hz: f64,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SourceError> {
        let (pw, ph, photo, origin) = match &cfg.photo {
            Some(p) => {
                let (w, h, d) = super::decode(p, false)?;
                (w, h, d, p.display().to_string())
            }
            None => {
                let (w, h) = (EVAL_X0 + 4 * cfg.tile, 4 * cfg.tile);
                (
                    w,
                    h,
                    procedural_texture(w, h, cfg.seed),
                    "procedural".to_string(),
                )
            }
        };
        if pw < EVAL_X0 + cfg.tile || ph < cfg.tile {
            return Err(SourceError::Config(format!(
                "photo {origin} is {pw}x{ph}: tiles of {} px need width >= {} (x >= {EVAL_X0} only)",
                cfg.tile,
                EVAL_X0 + cfg.tile
            )));
        }
        Ok(Self {
            photo,
            pw,
            ph,
            origin,
            tile: cfg.tile,
            defect_rate: cfg.defect_rate,
            rng: Rng::new(cfg.seed),
            pacer: Pacer::new(clock, rate_hz),
            seq: 0,
            pool: Vec::new(),
        })
    }

    /// Cut and paint the next tile without waiting (deterministic in the seed and part number).
    pub fn make_tile(&mut self) -> (Vec<u8>, GroundTruth, u32, u32) {
        let t = self.tile;
        let x0 = self.rng.int(EVAL_X0, self.pw - t);
        let y0 = self.rng.int(0, self.ph - t);
        let mut data = self.pool.pop().unwrap_or_default();
        data.clear();
        for y in y0..y0 + t {
            let row = (y * self.pw + x0) as usize;
            data.extend_from_slice(&self.photo[row..row + t as usize]);
        }
        let defective = self.rng.f64() < self.defect_rate;
        let truth = if defective {
            let kind = DEFECT_KINDS[self.rng.int(0, DEFECT_KINDS.len() as u32 - 1) as usize];
            let mask = paint_defect(&mut data, t, kind, &mut self.rng);
            GroundTruth {
                defective: true,
                kind: Some(kind.to_string()),
                mask: Some(mask),
            }
        } else {
            GroundTruth {
                defective: false,
                kind: None,
                mask: Some(vec![0; (t * t) as usize]),
            }
        };
        (data, truth, x0, y0)
    }
}

impl Source for SimConveyor {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let (data, truth, x0, y0) = self.make_tile();
        let ts = self.pacer.wait_next();
        self.seq += 1;
        Ok(Some(Frame {
            seq: self.seq,
            timestamp_ns: ts,
            width: self.tile,
            height: self.tile,
            format: PixelFormat::Grey8,
            data,
            truth: Some(truth),
            origin: format!("sim:{}@{x0},{y0}", self.origin),
        }))
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < 16 {
            self.pool.push(buf);
        }
    }

    fn describe(&self) -> String {
        format!(
            "simulated conveyor ({}, {}x{} tiles, {:.0}% defective)",
            self.origin,
            self.tile,
            self.tile,
            self.defect_rate * 100.0
        )
    }
}

/// A seeded value-noise texture (a stand-in for a photo when none is configured).
pub fn procedural_texture(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut acc = vec![0f32; (w * h) as usize];
    for (cell, amp) in [(32u32, 40f32), (8, 20.0), (2, 10.0)] {
        let gw = w / cell + 2;
        let gh = h / cell + 2;
        let grid: Vec<f32> = (0..gw * gh).map(|_| rng.f64() as f32).collect();
        for y in 0..h {
            let fy = y as f32 / cell as f32;
            let (gy, ty) = (fy as u32, fy.fract());
            for x in 0..w {
                let fx = x as f32 / cell as f32;
                let (gx, tx) = (fx as u32, fx.fract());
                let g = |i: u32, j: u32| grid[(j * gw + i) as usize];
                let top = g(gx, gy) * (1.0 - tx) + g(gx + 1, gy) * tx;
                let bot = g(gx, gy + 1) * (1.0 - tx) + g(gx + 1, gy + 1) * tx;
                acc[(y * w + x) as usize] += amp * (top * (1.0 - ty) + bot * ty);
            }
        }
    }
    acc.into_iter()
        .map(|v| (90.0 + v).clamp(0.0, 255.0) as u8)
        .collect()
}

/// Paint one defect of `kind` into a `t`×`t` grey tile; returns its mask (255 = defect).
pub fn paint_defect(data: &mut [u8], t: u32, kind: &str, rng: &mut Rng) -> Vec<u8> {
    let n = t as f64;
    let mut mask = vec![0u8; (t * t) as usize];
    let (cx, cy) = (rng.range(0.2 * n, 0.8 * n), rng.range(0.2 * n, 0.8 * n));
    match kind {
        "scratch" => {
            let ang = rng.range(0.0, std::f64::consts::PI);
            let len = rng.range(0.3 * n, 0.7 * n);
            let half_w = rng.range(0.8, 2.0);
            let bright = rng.f64() < 0.5;
            let (dx, dy) = (ang.cos(), ang.sin());
            for y in 0..t {
                for x in 0..t {
                    let (px, py) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                    let along = px * dx + py * dy;
                    let across = (-px * dy + py * dx).abs();
                    if along.abs() <= len / 2.0 && across <= half_w {
                        let i = (y * t + x) as usize;
                        data[i] = if bright {
                            data[i].saturating_add(90)
                        } else {
                            data[i].saturating_sub(80)
                        };
                        mask[i] = 255;
                    }
                }
            }
        }
        "stain" => {
            let (rx, ry) = (rng.range(0.06 * n, 0.16 * n), rng.range(0.06 * n, 0.16 * n));
            for y in 0..t {
                for x in 0..t {
                    let d =
                        ((x as f64 + 0.5 - cx) / rx).powi(2) + ((y as f64 + 0.5 - cy) / ry).powi(2);
                    if d <= 1.0 {
                        let i = (y * t + x) as usize;
                        let k = 0.35 + 0.3 * d;
                        data[i] = (data[i] as f64 * k) as u8;
                        mask[i] = 255;
                    }
                }
            }
        }
        _ => {
            let r = rng.range(0.03 * n, 0.08 * n);
            for y in 0..t {
                for x in 0..t {
                    if (x as f64 + 0.5 - cx).powi(2) + (y as f64 + 0.5 - cy).powi(2) <= r * r {
                        let i = (y * t + x) as usize;
                        data[i] = 12;
                        mask[i] = 255;
                    }
                }
            }
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::clock::{SimClock, SimMode};

    fn conveyor(seed: u64) -> SimConveyor {
        let clock = Arc::new(SimClock::new(SimMode::Manual, 0));
        let cfg = SimCameraConfig {
            seed,
            defect_rate: 0.5,
            ..Default::default()
        };
        SimConveyor::new(&cfg, 10.0, clock).unwrap()
    }

    #[test]
    fn same_seed_same_tiles_and_defects_have_masks() {
        let (mut a, mut b) = (conveyor(7), conveyor(7));
        let mut defects = 0;
        for _ in 0..40 {
            let (da, ta, xa, _) = a.make_tile();
            let (db, tb, xb, _) = b.make_tile();
            assert_eq!((da.clone(), &ta, xa), (db, &tb, xb));
            assert!(xa >= EVAL_X0);
            let marked = ta.mask.as_ref().unwrap().iter().filter(|&&m| m > 0).count();
            assert_eq!(ta.defective, marked > 0, "{:?}", ta.kind);
            defects += ta.defective as u32;
        }
        assert!((8..=32).contains(&defects), "{defects}");
    }

    #[test]
    fn refuses_photo_without_eval_columns() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("small.png");
        image::GrayImage::new(400, 300).save(&p).unwrap();
        let clock = Arc::new(SimClock::new(SimMode::Manual, 0));
        let cfg = SimCameraConfig {
            photo: Some(p),
            ..Default::default()
        };
        assert!(matches!(
            SimConveyor::new(&cfg, 10.0, clock),
            Err(SourceError::Config(_))
        ));
    }
}
