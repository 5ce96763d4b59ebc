//! AnoDDPM's partial diffusion, run by the runtime around the model's eps-network
//! (ARCHITECTURE §8): noise the image to `t_start` with simplex noise, take `steps` DDPM or
//! DDIM steps down to x0_hat, and score the blurred reconstruction error.
//!
//! The schedule, the step rule and the noise come from the manifest's `sampler`; the step count
//! is the deploy-time knob (`engine.steps`, `--steps`). Coefficients are worked out in f64 and
//! applied in f32 in the order of the exporter's reference sampler (`exporter/recipes/detect.py`),
//! and the simplex noise is bit-exact with it, so the two agree to the eps-network's own
//! differences (the goldens hold it to 1e-4). Every buffer is allocated when the step count is
//! set, none per frame.

use ort::session::Session;
use ort::value::TensorRef;
use serde::Deserialize;

use super::simplex::{self, SimplexConfig};
use super::EngineError;

/// Names of the eps-network's tensors.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkNames {
    /// Noisy image input, `[B, C, H, W]`.
    pub x_t: String,
    /// Timestep input, `[B]` float.
    pub t: String,
    /// Predicted noise output, `[B, C, H, W]`.
    pub eps: String,
}

/// The step rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// Ancestral DDPM steps on the sub-sequence (noise added on every step but the last).
    Ddpm,
    /// Deterministic DDIM steps (eta 0).
    Ddim,
}

/// `sampler.noise`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseSpec {
    /// Only `simplex`.
    pub kind: String,
    /// Seed of every draw.
    pub seed: u64,
    /// Octaves summed.
    pub octaves: u32,
    /// Amplitude factor per octave.
    pub persistence: f64,
    /// Pixels per lattice cell at octave 0.
    pub period: f64,
    /// Multiplies the octave sum.
    pub scale: f64,
}

/// The manifest's `sampler` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplerSpec {
    /// The eps-network's tensor names.
    pub network: NetworkNames,
    /// Steps of the training schedule.
    #[serde(rename = "T")]
    pub total: usize,
    /// Only `linear`.
    pub schedule: String,
    /// First beta of the linear schedule.
    pub beta_start: f64,
    /// Last beta of the linear schedule.
    pub beta_end: f64,
    /// The image is noised to this timestep.
    pub t_start: usize,
    /// Steps when the board does not say.
    pub steps: usize,
    /// DDPM or DDIM.
    pub kind: StepKind,
    /// The noise.
    pub noise: NoiseSpec,
}

impl SamplerSpec {
    /// Parse and check `sampler` against the image shape; the error names the key.
    pub fn parse(v: &serde_json::Value) -> Result<Self, (&'static str, String)> {
        let s: Self = serde_json::from_value(v.clone()).map_err(|e| ("sampler", e.to_string()))?;
        if s.schedule != "linear" {
            return Err((
                "sampler.schedule",
                format!("`{}`: this runtime runs `linear`", s.schedule),
            ));
        }
        let betas_ok = 0.0 < s.beta_start && s.beta_start <= s.beta_end && s.beta_end < 1.0;
        if !betas_ok {
            return Err((
                "sampler.beta_start",
                format!(
                    "betas {}..{} must satisfy 0 < start <= end < 1",
                    s.beta_start, s.beta_end
                ),
            ));
        }
        if s.total < 2 || s.t_start >= s.total {
            return Err((
                "sampler.t_start",
                format!("{} must lie in [1, T = {})", s.t_start, s.total),
            ));
        }
        s.check_steps(s.steps).map_err(|m| ("sampler.steps", m))?;
        if s.noise.kind != "simplex" {
            return Err((
                "sampler.noise.kind",
                format!("`{}`: this runtime draws `simplex`", s.noise.kind),
            ));
        }
        let n = &s.noise;
        if n.octaves == 0
            || n.period.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
            || !n.scale.is_finite()
            || !n.persistence.is_finite()
        {
            return Err((
                "sampler.noise",
                format!("{n:?} is not a usable simplex noise"),
            ));
        }
        Ok(s)
    }

    /// Whether the sampler can take `steps` steps: from 1 to `t_start`.
    pub fn check_steps(&self, steps: usize) -> Result<(), String> {
        if steps == 0 || steps > self.t_start {
            return Err(format!(
                "{steps} steps: the model samples from t_start = {t}, so at least 1 and at most {t}",
                t = self.t_start
            ));
        }
        Ok(())
    }

    fn simplex(&self) -> SimplexConfig {
        let n = &self.noise;
        SimplexConfig {
            octaves: n.octaves,
            persistence: n.persistence,
            period: n.period,
            scale: n.scale,
        }
    }

    /// abar_t for t = 0..T−1, as numpy's `cumprod(1 − linspace(start, end, T))`.
    fn abar(&self) -> Vec<f64> {
        let n = self.total;
        let step = (self.beta_end - self.beta_start) / (n - 1) as f64;
        let mut acc = 1.0f64;
        (0..n)
            .map(|i| {
                // numpy's linspace: start + i·step, the last value set to `end` exactly
                let beta = if i == n - 1 {
                    self.beta_end
                } else {
                    self.beta_start + i as f64 * step
                };
                acc *= 1.0 - beta;
                acc
            })
            .collect()
    }
}

/// The eps-network's timesteps, first to last: `t_start · i / steps` for i = steps..1.
pub fn timesteps(t_start: usize, steps: usize) -> Vec<usize> {
    (1..=steps).rev().map(|i| t_start * i / steps).collect()
}

/// One step's coefficients, f64-derived, applied in f32.
#[derive(Debug, Clone, Copy)]
struct Step {
    t: f32,
    sqrt_a: f32,
    sqrt_1ma: f32,
    /// DDIM: √ā_prev, √(1 − ā_prev); DDPM: the posterior-mean coefficients of x0_hat and x_t.
    c1: f32,
    c2: f32,
    /// DDPM's noise scale (0 on the last step and for DDIM).
    sigma: f32,
}

/// How map values become the score (`score.top_k`, `score.blur_sigma`).
#[derive(Debug, Clone)]
pub struct ScoreSpec {
    /// Values averaged.
    pub top_k: usize,
    /// Gaussian blur of the error map, px (0: none).
    pub sigma: f64,
}

/// A loaded sampler: spec, schedule, the plan for the current step count and its buffers.
pub struct Sampler {
    spec: SamplerSpec,
    score: ScoreSpec,
    abar: Vec<f64>,
    shape: [usize; 4],
    steps: usize,
    plan: Vec<Step>,
    start: (f32, f32),
    /// `[steps + 1][C·H·W]`: the initial noise, then each DDPM step's.
    noises: Vec<Vec<f32>>,
    x: Vec<f32>,
    t_in: Vec<f32>,
    kernel: Vec<f32>,
    map: Vec<f32>,
    tmp: Vec<f32>,
    top: Vec<f32>,
}

impl Sampler {
    /// A sampler for images `[B, C, H, W]`, planned for `steps` (None: the manifest's).
    pub fn new(
        spec: SamplerSpec,
        score: ScoreSpec,
        shape: [usize; 4],
        steps: Option<usize>,
    ) -> Result<Self, String> {
        let [b, c, h, w] = shape;
        let r = blur_radius(score.sigma);
        if score.sigma > 0.0 && (r >= h || r >= w) {
            return Err(format!(
                "score.blur_sigma {} needs a radius {r} below the image size {h}×{w}",
                score.sigma
            ));
        }
        if score.top_k == 0 {
            return Err("score.top_k must be at least 1".into());
        }
        let mut s = Self {
            abar: spec.abar(),
            kernel: gaussian_kernel(score.sigma),
            spec,
            score,
            shape,
            steps: 0,
            plan: Vec::new(),
            start: (0.0, 0.0),
            noises: Vec::new(),
            x: vec![0.0; b * c * h * w],
            t_in: vec![0.0; b],
            map: vec![0.0; b * h * w],
            tmp: vec![0.0; h * w],
            top: Vec::with_capacity(h * w),
        };
        let steps = steps.unwrap_or(s.spec.steps);
        s.set_steps(steps)?;
        Ok(s)
    }

    /// The step count in use.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The manifest's step count.
    pub fn default_steps(&self) -> usize {
        self.spec.steps
    }

    /// Re-plan for `steps`: timesteps, coefficients and every noise drawn now, not per frame.
    pub fn set_steps(&mut self, steps: usize) -> Result<(), String> {
        self.spec.check_steps(steps)?;
        if steps == self.steps {
            return Ok(());
        }
        let ab = &self.abar;
        let ts = timesteps(self.spec.t_start, steps);
        let a0 = ab[self.spec.t_start];
        self.start = (a0.sqrt() as f32, (1.0 - a0).sqrt() as f32);
        self.plan = ts
            .iter()
            .enumerate()
            .map(|(n, &t)| {
                let a_t = ab[t];
                let last = n + 1 == ts.len();
                let a_p = if last { 1.0 } else { ab[ts[n + 1]] };
                let (c1, c2, sigma) = match self.spec.kind {
                    StepKind::Ddim => (a_p.sqrt(), (1.0 - a_p).sqrt(), 0.0),
                    StepKind::Ddpm => {
                        let beta = 1.0 - a_t / a_p;
                        let c1 = a_p.sqrt() * beta / (1.0 - a_t);
                        let c2 = (1.0 - beta).sqrt() * (1.0 - a_p) / (1.0 - a_t);
                        let var = beta * (1.0 - a_p) / (1.0 - a_t);
                        (c1, c2, if last { 0.0 } else { var.sqrt() })
                    }
                };
                Step {
                    t: t as f32,
                    sqrt_a: a_t.sqrt() as f32,
                    sqrt_1ma: (1.0 - a_t).sqrt() as f32,
                    c1: c1 as f32,
                    c2: c2 as f32,
                    sigma: sigma as f32,
                }
            })
            .collect();
        let [_, c, h, w] = self.shape;
        let draws = match self.spec.kind {
            StepKind::Ddpm => steps,
            StepKind::Ddim => 1,
        };
        let cfg = self.spec.simplex();
        self.noises = (0..draws as u64)
            .map(|d| {
                let mut v = vec![0.0f32; c * h * w];
                simplex::fill_noise(self.spec.noise.seed, d, c, h, w, &cfg, &mut v);
                v
            })
            .collect();
        self.steps = steps;
        Ok(())
    }

    /// Network calls per batch at the current step count.
    pub fn calls(&self) -> usize {
        self.steps
    }

    /// Sample every image of `input` (`[B, C, H, W]`) down to x0_hat, then hand the first `n`
    /// images' score and map to `visit`; returns the session calls made.
    pub fn run(
        &mut self,
        session: &mut Session,
        input: &[f32],
        n: usize,
        mut visit: impl FnMut(usize, f32, &[f32]),
    ) -> Result<u64, EngineError> {
        let [b, c, h, w] = self.shape;
        let chw = c * h * w;
        let (sa0, sn0) = self.start;
        for (x, (x0, z)) in self
            .x
            .iter_mut()
            .zip(input.iter().zip(self.noises[0].iter().cycle()))
        {
            *x = sa0 * *x0 + sn0 * *z;
        }
        let names = &self.spec.network;
        let shape = [b as i64, c as i64, h as i64, w as i64];
        for (n_step, step) in self.plan.iter().enumerate() {
            self.t_in.fill(step.t);
            let outputs = {
                let x = TensorRef::from_array_view((shape, self.x.as_slice()))
                    .map_err(|e| EngineError::Run(e.to_string()))?;
                let t = TensorRef::from_array_view(([b as i64], self.t_in.as_slice()))
                    .map_err(|e| EngineError::Run(e.to_string()))?;
                session
                    .run(ort::inputs![names.x_t.as_str() => x, names.t.as_str() => t])
                    .map_err(|e| EngineError::Run(e.to_string()))?
            };
            let (_, eps) = outputs[names.eps.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| EngineError::Run(format!("output `{}`: {e}", names.eps)))?;
            if eps.len() != self.x.len() {
                return Err(EngineError::Run(format!(
                    "output `{}` has {} values, expected {}",
                    names.eps,
                    eps.len(),
                    self.x.len()
                )));
            }
            let noise = match self.spec.kind {
                StepKind::Ddpm if step.sigma != 0.0 => Some(&self.noises[n_step + 1][..]),
                _ => None,
            };
            for (i, (x, e)) in self.x.iter_mut().zip(eps.iter()).enumerate() {
                let x0h = ((*x - step.sqrt_1ma * *e) / step.sqrt_a).clamp(-1.0, 1.0);
                *x = match self.spec.kind {
                    StepKind::Ddim => step.c1 * x0h + step.c2 * *e,
                    StepKind::Ddpm => {
                        let mean = step.c1 * x0h + step.c2 * *x;
                        match noise {
                            Some(z) => mean + step.sigma * z[i % chw],
                            None => mean,
                        }
                    }
                };
            }
        }
        self.score_all(input, n.min(b), &mut visit);
        Ok(self.plan.len() as u64)
    }

    /// Error maps (mean over channels of |x0 − x0_hat| / 2, blurred) and top-k scores.
    fn score_all(&mut self, input: &[f32], n: usize, visit: &mut impl FnMut(usize, f32, &[f32])) {
        let [_, c, h, w] = self.shape;
        let (hw, chw) = (h * w, c * h * w);
        for b in 0..n {
            let map = &mut self.map[b * hw..(b + 1) * hw];
            let (x0, xh) = (
                &input[b * chw..(b + 1) * chw],
                &self.x[b * chw..(b + 1) * chw],
            );
            for (p, m) in map.iter_mut().enumerate() {
                let mut s = 0.0f32;
                for ch in 0..c {
                    s += (x0[ch * hw + p] - xh[ch * hw + p]).abs();
                }
                *m = s / c as f32 * 0.5;
            }
            if self.score.sigma > 0.0 {
                blur(map, &mut self.tmp, h, w, &self.kernel);
            }
            let score = topk_mean(map, self.score.top_k, &mut self.top);
            visit(b, score, map);
        }
    }
}

fn blur_radius(sigma: f64) -> usize {
    ((3.0 * sigma + 0.5) as usize).max(1)
}

/// The exporter's kernel: exp(−x² / 2σ²) for x in −r..=r, in f32, normalised.
fn gaussian_kernel(sigma: f64) -> Vec<f32> {
    if sigma <= 0.0 {
        return Vec::new();
    }
    let r = blur_radius(sigma) as i64;
    let two_s2 = (2.0 * sigma * sigma) as f32;
    let k: Vec<f32> = (-r..=r)
        .map(|x| (-((x * x) as f32) / two_s2).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    k.iter().map(|v| v / sum).collect()
}

/// Index `i` reflected into 0..n without repeating the edge (PyTorch's `reflect`).
fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let i = if i < 0 { -i } else { i };
    (if i >= n { 2 * (n - 1) - i } else { i }) as usize
}

/// Separable blur of `map` (`h × w`) in place, rows then columns, edges reflected.
fn blur(map: &mut [f32], tmp: &mut [f32], h: usize, w: usize, k: &[f32]) {
    let r = (k.len() / 2) as isize;
    for y in 0..h {
        let row = &map[y * w..(y + 1) * w];
        for x in 0..w {
            let mut s = 0.0f32;
            for (j, kv) in k.iter().enumerate() {
                s += kv * row[reflect(x as isize + j as isize - r, w)];
            }
            tmp[y * w + x] = s;
        }
    }
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0f32;
            for (j, kv) in k.iter().enumerate() {
                s += kv * tmp[reflect(y as isize + j as isize - r, h) * w + x];
            }
            map[y * w + x] = s;
        }
    }
}

/// Mean of the `k` largest values (all of them when fewer), summed in f64.
fn topk_mean(map: &[f32], k: usize, scratch: &mut Vec<f32>) -> f32 {
    scratch.clear();
    scratch.extend_from_slice(map);
    let k = k.min(scratch.len());
    let idx = scratch.len() - k;
    scratch.select_nth_unstable_by(idx, |a, b| a.total_cmp(b));
    (scratch[idx..].iter().map(|v| *v as f64).sum::<f64>() / k as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str) -> serde_json::Value {
        serde_json::json!({
            "network": {"x_t": "x_t", "t": "t", "eps": "eps"},
            "T": 1000, "schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
            "t_start": 250, "steps": 10, "kind": kind,
            "noise": {"kind": "simplex", "seed": 0, "octaves": 6, "persistence": 0.8,
                      "period": 32.0, "scale": 1.343}
        })
    }

    #[test]
    fn timesteps_match_the_exporter() {
        assert_eq!(
            timesteps(250, 10),
            vec![250, 225, 200, 175, 150, 125, 100, 75, 50, 25]
        );
        assert_eq!(timesteps(250, 25)[22..], [30, 20, 10]);
        assert_eq!(timesteps(7, 3), vec![7, 4, 2]);
    }

    #[test]
    fn the_schedule_is_numpys_linear_cumprod() {
        let s = SamplerSpec::parse(&spec("ddpm")).unwrap();
        let ab = s.abar();
        // numpy: np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[[0, 249, 999]]
        assert_eq!(ab[0], 0.9999);
        assert_eq!(ab[249], 0.5240853738253606);
        assert_eq!(ab[999], 4.035829765375676e-05);
    }

    #[test]
    fn bad_specs_name_their_key() {
        let mut v = spec("ddpm");
        v["steps"] = 300.into();
        assert_eq!(SamplerSpec::parse(&v).unwrap_err().0, "sampler.steps");
        let mut v = spec("ddpm");
        v["noise"]["kind"] = "gaussian".into();
        assert_eq!(SamplerSpec::parse(&v).unwrap_err().0, "sampler.noise.kind");
        let mut v = spec("ddpm");
        v["kind"] = "euler".into();
        assert_eq!(SamplerSpec::parse(&v).unwrap_err().0, "sampler");
        let mut v = spec("ddim");
        v["t_start"] = 1000.into();
        assert_eq!(SamplerSpec::parse(&v).unwrap_err().0, "sampler.t_start");
        let s = SamplerSpec::parse(&spec("ddim")).unwrap();
        let score = ScoreSpec {
            top_k: 50,
            sigma: 2.0,
        };
        let mut sm = Sampler::new(s, score, [1, 1, 32, 32], Some(5)).unwrap();
        assert_eq!(sm.steps(), 5);
        assert!(sm.set_steps(0).is_err());
        assert!(sm.set_steps(251).is_err());
        assert_eq!(
            sm.steps(),
            5,
            "a refused step count leaves the plan as it was"
        );
    }

    #[test]
    fn blur_keeps_a_constant_and_spreads_a_spike_symmetrically() {
        let k = gaussian_kernel(2.0);
        assert_eq!(k.len(), 13);
        assert!((k.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let (h, w) = (16, 16);
        let mut m = vec![0.25f32; h * w];
        let mut tmp = vec![0.0; h * w];
        blur(&mut m, &mut tmp, h, w, &k);
        assert!(m.iter().all(|v| (v - 0.25).abs() < 1e-6));
        let mut m = vec![0.0f32; h * w];
        m[8 * w + 8] = 1.0;
        blur(&mut m, &mut tmp, h, w, &k);
        assert!((m[8 * w + 6] - m[8 * w + 10]).abs() < 1e-7);
        assert!((m[6 * w + 8] - m[8 * w + 6]).abs() < 1e-7);
        assert!(m[8 * w + 8] > m[8 * w + 9]);
        let mut scratch = Vec::new();
        assert_eq!(topk_mean(&[1.0, 5.0, 3.0, 4.0], 2, &mut scratch), 4.5);
        assert_eq!(topk_mean(&[1.0, 5.0], 10, &mut scratch), 3.0);
    }
}
