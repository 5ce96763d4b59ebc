//! Stand-in inspectors for simulations, demos and tests (the real one is the ORT engine).

use crate::clock::Clock;
use crate::frame::{Frame, PixelFormat};
use crate::inspect::{InspectError, Inspection, Inspector};
use std::sync::Arc;

/// Scores by ground truth when the frame has it (defect mask fraction), else by pixel statistics
/// (share of pixels far from the frame mean). Optionally takes virtual time per batch, and
/// can be made slow or failing for chosen frames to exercise the fail-safe paths.
pub struct TruthInspector {
    clock: Arc<dyn Clock>,
    /// Threshold reported to the line.
    pub threshold: f32,
    /// Frames per call.
    pub batch: usize,
    /// Clock time each call takes.
    pub delay_ns: u64,
    /// Extra clock time for frames whose `seq % slow_every == 0`.
    pub slow_every: Option<(u64, u64)>,
    /// Fail frames whose `seq % fail_every == 0`.
    pub fail_every: Option<u64>,
}

impl TruthInspector {
    /// An instant, never-failing inspector with threshold 0.5 and batch 4.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            threshold: 0.5,
            batch: 4,
            delay_ns: 0,
            slow_every: None,
            fail_every: None,
        }
    }

    fn score(frame: &Frame) -> (f32, Vec<f32>) {
        if let Some(mask) = frame.truth.as_ref().and_then(|t| t.mask.as_ref()) {
            let map: Vec<f32> = mask
                .iter()
                .map(|&m| if m > 0 { 1.0 } else { 0.0 })
                .collect();
            let defect = map.iter().any(|&v| v > 0.0);
            let frac = map.iter().sum::<f32>() / map.len().max(1) as f32;
            return (if defect { 0.75 + 0.25 * frac } else { 0.1 }, map);
        }
        if let Some(t) = frame.truth.as_ref() {
            return (if t.defective { 0.9 } else { 0.1 }, Vec::new());
        }
        let px: Vec<f32> = match frame.format {
            PixelFormat::Grey8 => frame.data.iter().map(|&p| p as f32).collect(),
            PixelFormat::Rgb8 => frame
                .data
                .chunks(3)
                .map(|c| crate::preprocess::luma([c[0], c[1], c[2]]) as f32)
                .collect(),
            PixelFormat::Yuyv => frame.data.iter().step_by(2).map(|&p| p as f32).collect(),
            PixelFormat::Mjpeg => return (0.0, Vec::new()),
        };
        let mean = px.iter().sum::<f32>() / px.len().max(1) as f32;
        let map: Vec<f32> = px
            .iter()
            .map(|p| if (p - mean).abs() > 60.0 { 1.0 } else { 0.0 })
            .collect();
        let frac = map.iter().sum::<f32>() / map.len().max(1) as f32;
        ((frac * 20.0).min(1.0), map)
    }
}

impl Inspector for TruthInspector {
    fn batch_size(&self) -> usize {
        self.batch
    }

    fn threshold(&self) -> f32 {
        self.threshold
    }

    fn inspect(&mut self, frames: &[&Frame]) -> Vec<Result<Inspection, InspectError>> {
        let mut delay = self.delay_ns;
        if let Some((every, extra)) = self.slow_every {
            if frames.iter().any(|f| f.seq % every == 0) {
                delay += extra;
            }
        }
        if delay > 0 {
            self.clock.sleep_until(self.clock.now_ns() + delay);
        }
        frames
            .iter()
            .map(|f| {
                if self.fail_every.is_some_and(|n| f.seq % n == 0) {
                    return Err(InspectError(format!("frame {} failed on purpose", f.seq)));
                }
                let (score, map) = Self::score(f);
                let (w, h) = if map.len() == (f.width * f.height) as usize {
                    (f.width, f.height)
                } else {
                    (0, 0)
                };
                Ok(Inspection {
                    score,
                    map: if w > 0 { map } else { Vec::new() },
                    map_width: w,
                    map_height: h,
                    map_roi: None,
                })
            })
            .collect()
    }
}
