//! Seeded multi-octave 2-D simplex noise, bit-exact with the exporter's `exporter/simplex.py`.
//!
//! The sampler redraws the noise the exporter used from the manifest's seed, so both sides must
//! compute the same doubles in the same order: only IEEE-exact operations (+, −, ×, floor,
//! comparisons), each rounded on its own (Rust does not contract to FMA), and an integer
//! generator (SplitMix64) for the permutations. `tests/fixtures/simplex/` holds the exporter's
//! fields; the tests here compare them bit for bit.

use serde::Deserialize;

// 0.5 (√3 − 1) and (3 − √3) / 6, written as the exporter writes them.
const F2: f64 = 0.366_025_403_784_438_65;
const G2: f64 = 0.211_324_865_405_187_13;
const G2X2: f64 = 2.0 * G2;
const GRAD_X: [f64; 8] = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 0.0, 0.0];
const GRAD_Y: [f64; 8] = [1.0, 1.0, -1.0, -1.0, 0.0, 0.0, 1.0, -1.0];
const DRAW_MIX: u64 = 0x9E37_79B9_7F4A_7C15;
const OCTAVE_MIX: u64 = 0xBF58_476D_1CE4_E5B9;
/// Offsets in [0, 256): a u64's top 53 bits times 2^-45, exact.
const OFFSET_SCALE: f64 = 1.0 / (1u64 << 45) as f64;

/// How a field is built (the manifest's `sampler.noise`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimplexConfig {
    /// Octaves summed.
    pub octaves: u32,
    /// Amplitude factor from one octave to the next.
    pub persistence: f64,
    /// Pixels per lattice cell at octave 0.
    pub period: f64,
    /// Multiplies the octave sum.
    pub scale: f64,
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn octave_seed(seed: u64, draw: u64, octave: u64) -> u64 {
    seed ^ draw.wrapping_mul(DRAW_MIX) ^ octave.wrapping_mul(OCTAVE_MIX)
}

/// One octave's permutation (doubled) and (x, y) offset.
struct Octave {
    perm: [usize; 512],
    ox: f64,
    oy: f64,
}

impl Octave {
    fn new(seed: u64) -> Self {
        let mut state = seed;
        let mut p: [usize; 256] = std::array::from_fn(|i| i);
        for i in (1..256usize).rev() {
            let j = (splitmix64(&mut state) % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        let ox = (splitmix64(&mut state) >> 11) as f64 * OFFSET_SCALE;
        let oy = (splitmix64(&mut state) >> 11) as f64 * OFFSET_SCALE;
        Self {
            perm: std::array::from_fn(|i| p[i & 255]),
            ox,
            oy,
        }
    }

    /// Classic 2-D simplex noise (Gustavson), in the exporter's operation order.
    fn noise(&self, x: f64, y: f64) -> f64 {
        let perm = &self.perm;
        let s = (x + y) * F2;
        let i = (x + s).floor();
        let j = (y + s).floor();
        let t = (i + j) * G2;
        let x0 = x - (i - t);
        let y0 = y - (j - t);
        let (i1, j1) = if x0 > y0 { (1.0, 0.0) } else { (0.0, 1.0) };
        let x1 = x0 - i1 + G2;
        let y1 = y0 - j1 + G2;
        let x2 = x0 - 1.0 + G2X2;
        let y2 = y0 - 1.0 + G2X2;
        let ii = (i as i64 & 255) as usize;
        let jj = (j as i64 & 255) as usize;
        let (i1u, j1u) = (i1 as usize, j1 as usize);
        let g0 = perm[ii + perm[jj]] % 8;
        let g1 = perm[ii + i1u + perm[jj + j1u]] % 8;
        let g2 = perm[ii + 1 + perm[jj + 1]] % 8;
        let n = corner(x0, y0, g0) + corner(x1, y1, g1);
        let n = n + corner(x2, y2, g2);
        70.0 * n
    }
}

fn corner(dx: f64, dy: f64, g: usize) -> f64 {
    let t = 0.5 - dx * dx - dy * dy;
    let t2 = t * t;
    if t < 0.0 {
        0.0
    } else {
        t2 * t2 * (GRAD_X[g] * dx + GRAD_Y[g] * dy)
    }
}

/// The float64 field `[height × width]` for (`seed`, `draw`), before the final cast.
pub fn field64(seed: u64, draw: u64, height: usize, width: usize, cfg: &SimplexConfig) -> Vec<f64> {
    let mut out = vec![0.0f64; height * width];
    let mut amp = 1.0f64;
    let mut freq = 1.0 / cfg.period;
    for o in 0..cfg.octaves as u64 {
        let oct = Octave::new(octave_seed(seed, draw, o));
        for (r, row) in out.chunks_exact_mut(width).enumerate() {
            let y = r as f64 * freq + oct.oy;
            for (c, v) in row.iter_mut().enumerate() {
                *v += amp * oct.noise(c as f64 * freq + oct.ox, y);
            }
        }
        amp *= cfg.persistence;
        freq *= 2.0;
    }
    for v in &mut out {
        *v *= cfg.scale;
    }
    out
}

/// Fills `out` (`[C, H, W]`) with draw `draw`: channel `c` is field `draw × C + c`, as f32.
pub fn fill_noise(
    seed: u64,
    draw: u64,
    channels: usize,
    height: usize,
    width: usize,
    cfg: &SimplexConfig,
    out: &mut [f32],
) {
    for (c, plane) in out
        .chunks_exact_mut(height * width)
        .take(channels)
        .enumerate()
    {
        let f = field64(seed, draw * channels as u64 + c as u64, height, width, cfg);
        for (o, v) in plane.iter_mut().zip(f) {
            *o = v as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/simplex");

    #[derive(Deserialize)]
    struct Case {
        seed: u64,
        draw: u64,
        height: usize,
        width: usize,
        config: SimplexConfig,
        file: String,
    }

    fn read_f64(path: &str) -> Vec<f64> {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn fields_are_bit_identical_to_the_exporters() {
        let cases: Vec<Case> = serde_json::from_str(
            &std::fs::read_to_string(format!("{DATA}/cases.json")).expect("cases.json"),
        )
        .expect("parse cases.json");
        assert!(cases.len() >= 3);
        for case in &cases {
            let want = read_f64(&format!("{DATA}/{}", case.file));
            let got = field64(case.seed, case.draw, case.height, case.width, &case.config);
            assert_eq!(got.len(), want.len(), "{}", case.file);
            let differ = got
                .iter()
                .zip(&want)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            assert_eq!(
                differ, 0,
                "{}: {differ} values differ in their bits",
                case.file
            );
        }
    }

    #[test]
    fn draws_and_seeds_give_different_fields_of_about_unit_spread() {
        let cfg = SimplexConfig {
            octaves: 6,
            persistence: 0.8,
            period: 32.0,
            scale: 1.343,
        };
        let a = field64(1, 0, 64, 64, &cfg);
        let b = field64(1, 1, 64, 64, &cfg);
        let c = field64(2, 0, 64, 64, &cfg);
        assert!(a != b && a != c);
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!((0.3..3.0).contains(&var), "variance {var}");
        let mut out = vec![0.0f32; 2 * 64 * 64];
        fill_noise(1, 0, 2, 64, 64, &cfg, &mut out);
        assert_eq!(out[0], a[0] as f32);
        assert_eq!(out[64 * 64 + 7], b[7] as f32);
    }
}
