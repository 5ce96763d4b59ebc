//! The inspection stage seen from the line: frames in, scores and anomaly maps out.

use crate::frame::Frame;

/// The result of inspecting one frame.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Anomaly score (higher is more anomalous); compared with the threshold by `decide`.
    pub score: f32,
    /// Per-pixel anomaly map in [0, 1], row-major, `map_width` × `map_height` (model size).
    pub map: Vec<f32>,
    /// Map width in pixels.
    pub map_width: u32,
    /// Map height in pixels.
    pub map_height: u32,
    /// Where the map lies in the frame (`camera.roi`); `None`: it covers the whole frame.
    pub map_roi: Option<crate::frame::Roi>,
}

/// Why one frame could not be inspected; the rest of its batch is unaffected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InspectError(pub String);

/// Why a model's output for one frame cannot be turned into a verdict.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum OutputError {
    /// NaN or infinite score.
    #[error("score {0} is not a finite number")]
    ScoreNotFinite(f32),
    /// Score outside the manifest's `score.range`.
    #[error("score {value} is outside the model's score range [{lo}, {hi}]")]
    ScoreOutOfRange {
        /// The score.
        value: f32,
        /// Range start.
        lo: f32,
        /// Range end.
        hi: f32,
    },
    /// NaN or infinite anomaly-map value.
    #[error("anomaly map value {value} at pixel ({x}, {y}) is not a finite number")]
    MapNotFinite {
        /// The value.
        value: f32,
        /// Column.
        x: usize,
        /// Row.
        y: usize,
    },
    /// Anomaly-map value outside the manifest's `score.range`.
    #[error("anomaly map value {value} at pixel ({x}, {y}) is outside the model's score range [{lo}, {hi}]")]
    MapOutOfRange {
        /// The value.
        value: f32,
        /// Column.
        x: usize,
        /// Row.
        y: usize,
        /// Range start.
        lo: f32,
        /// Range end.
        hi: f32,
    },
}

/// Slack on the score range, as a share of its width: a Gaussian-blurred map's kernel sums to 1
/// only to rounding, and fp16 engines round a sigmoid's 1.0 up by up to an ulp (~1e-3).
/// Anything further out is a broken model, not rounding.
pub const RANGE_SLACK: f32 = 2e-3;

/// Check one frame's score and anomaly map (`width` columns) against the model's score range.
pub fn check_output(
    score: f32,
    map: &[f32],
    width: usize,
    [lo, hi]: [f32; 2],
) -> Result<(), OutputError> {
    let slack = RANGE_SLACK * (hi - lo);
    let inside = |v: f32| v >= lo - slack && v <= hi + slack;
    if !score.is_finite() {
        return Err(OutputError::ScoreNotFinite(score));
    }
    if !inside(score) {
        return Err(OutputError::ScoreOutOfRange {
            value: score,
            lo,
            hi,
        });
    }
    let width = width.max(1);
    if let Some((i, &value)) = map.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(OutputError::MapNotFinite {
            value,
            x: i % width,
            y: i / width,
        });
    }
    if let Some((i, &value)) = map.iter().enumerate().find(|(_, &v)| !inside(v)) {
        return Err(OutputError::MapOutOfRange {
            value,
            x: i % width,
            y: i / width,
            lo,
            hi,
        });
    }
    Ok(())
}

/// The inspection error for an unusable output, naming the model and the frame.
pub fn output_error(
    engine: &crate::stages::engine::Engine,
    origin: &str,
    e: OutputError,
) -> InspectError {
    InspectError(format!(
        "model {} on {origin}: {e}; the part cannot be judged (check the model with `diffad inspect`)",
        engine.path().display()
    ))
}

/// Something that scores frames: the real engine, or a deliberately slow/failing one in tests.
pub trait Inspector: Send {
    /// Largest number of frames `inspect` takes at once.
    fn batch_size(&self) -> usize;
    /// Threshold at or above which a part is rejected, with the line's override already applied.
    fn threshold(&self) -> f32;
    /// Inspect up to `batch_size()` frames; one result per frame, in order.
    fn inspect(&mut self, frames: &[&Frame]) -> Vec<Result<Inspection, InspectError>>;
    /// The good-part scores the threshold was calibrated on, when they describe this
    /// inspector's scores (not for tiled parts, whose score is the worst of several tiles).
    fn good_scores(&self) -> Result<crate::stages::drift::Reference, String> {
        Err("this inspector has no calibration statistics".into())
    }
    /// The model's id (graph sha256, 12 hex digits), for archives and logs; empty when none.
    fn model_id(&self) -> String {
        String::new()
    }
    /// A map buffer the line is done with, to fill again instead of allocating one per frame.
    fn recycle_map(&mut self, _map: Vec<f32>) {}
}

/// Map buffers kept for reuse: enough for the batches in flight, not the whole run.
const SPARE_MAPS: usize = 64;

/// The threshold in force: the line's (or `--threshold`) override when given, else the model's
/// calibrated one. The one place the override is resolved.
pub fn resolve_threshold(line_override: Option<f32>, calibrated: Option<f32>) -> Option<f32> {
    line_override.or(calibrated)
}

/// `threshold` if given, else the manifest's calibrated one; an error when there is neither.
pub fn threshold_of(
    engine: &crate::stages::engine::Engine,
    threshold: Option<f32>,
) -> Result<f32, InspectError> {
    let calibrated = engine.manifest().threshold.as_ref().map(|t| t.value);
    if let (None, Some(now)) = (threshold, engine.sampler_steps()) {
        if let Some(at) = engine.manifest().threshold_steps_other_than(now) {
            return Err(InspectError(format!(
                "model {} was calibrated at {at} sampler steps but runs {now} (engine.steps / --steps): recalibrate at {now} with `python -m exporter calibrate MODEL --steps {now} --good ...`, or set line.threshold (--threshold)",
                engine.path().display()
            )));
        }
    }
    match resolve_threshold(threshold, calibrated) {
        Some(t) => Ok(t),
        None => Err(InspectError(format!(
            "model {} has no calibrated threshold: run `python -m exporter calibrate` on it, or set line.threshold",
            engine.path().display()
        ))),
    }
}

/// The real inspector: preprocess into the engine's input buffer, one session call per batch.
pub struct EngineInspector {
    engine: crate::stages::engine::Engine,
    pre: crate::stages::preprocess::Preprocessor,
    threshold: f32,
    roi: Option<crate::frame::Roi>,
    /// Map buffers handed back by the line (`recycle_map`), filled again by `inspect`.
    spare: Vec<Vec<f32>>,
    /// Per-batch scratch: each slot's preprocessing result, then its score and map.
    slots: Vec<Result<(), InspectError>>,
    outs: Vec<(f32, Vec<f32>)>,
}

impl EngineInspector {
    /// Wrap a loaded engine; the threshold is `threshold` if given, else the manifest's.
    /// Frames smaller than the model's input are refused unless [`Self::allow_upscale`].
    pub fn new(
        engine: crate::stages::engine::Engine,
        roi: Option<crate::frame::Roi>,
        threshold: Option<f32>,
    ) -> Result<Self, InspectError> {
        let threshold = threshold_of(&engine, threshold)?;
        let pre = crate::stages::preprocess::Preprocessor::new(&engine.manifest().input, roi);
        Ok(Self {
            engine,
            pre,
            threshold,
            roi,
            spare: Vec::new(),
            slots: Vec::new(),
            outs: Vec::new(),
        })
    }

    /// Resize frames smaller than the model's input up to it (with a warning) instead of
    /// refusing them.
    pub fn allow_upscale(mut self, allow: bool) -> Self {
        self.pre.set_allow_upscale(allow);
        self
    }

    /// The engine inside.
    pub fn engine(&self) -> &crate::stages::engine::Engine {
        &self.engine
    }

    /// Mutable access to the engine (benchmarks time bare session calls through it).
    pub fn engine_mut(&mut self) -> &mut crate::stages::engine::Engine {
        &mut self.engine
    }
}

impl Inspector for EngineInspector {
    fn batch_size(&self) -> usize {
        self.engine.batch_size()
    }

    fn threshold(&self) -> f32 {
        self.threshold
    }

    fn model_id(&self) -> String {
        self.engine.model_id().to_string()
    }

    fn good_scores(&self) -> Result<crate::stages::drift::Reference, String> {
        let path = self.engine.path().display();
        match &self.engine.manifest().normal_scores {
            None => Err(format!(
                "model {path} carries no good-score statistics (normal_scores): calibrate it with `python -m exporter calibrate`"
            )),
            Some(v) => crate::stages::drift::Reference::from_manifest(v)
                .map_err(|e| format!("model {path}: {e}; recalibrate it with `python -m exporter calibrate`")),
        }
    }

    fn inspect(&mut self, frames: &[&Frame]) -> Vec<Result<Inspection, InspectError>> {
        let mut results = Vec::with_capacity(frames.len());
        for chunk in frames.chunks(self.batch_size()) {
            self.fill_inputs(chunk);
            let (mw, mh) = (
                self.engine.manifest().input.width as u32,
                self.engine.manifest().input.height as u32,
            );
            let range = self.engine.manifest().score_range();
            let (spare, outs) = (&mut self.spare, &mut self.outs);
            let ran = self.engine.run_visit(chunk.len(), |_, score, map| {
                // A buffer the line handed back, refilled: no allocation per frame.
                let mut m = spare.pop().unwrap_or_default();
                m.clear();
                m.extend_from_slice(map);
                outs.push((score, m));
            });
            if let Err(e) = ran {
                self.outs.clear();
                self.slots.clear();
                results.extend(chunk.iter().map(|_| Err(InspectError(e.to_string()))));
                continue;
            }
            for ((pre, (score, map)), frame) in
                self.slots.drain(..).zip(self.outs.drain(..)).zip(chunk)
            {
                results.push(pre.and_then(|()| {
                    check_output(score, &map, mw as usize, range)
                        .map_err(|e| output_error(&self.engine, &frame.origin, e))?;
                    Ok(Inspection {
                        score,
                        map,
                        map_width: mw,
                        map_height: mh,
                        map_roi: self.roi,
                    })
                }));
            }
        }
        results
    }

    fn recycle_map(&mut self, map: Vec<f32>) {
        if self.spare.len() < SPARE_MAPS {
            self.spare.push(map);
        }
    }
}

impl EngineInspector {
    /// Preprocess each frame of the batch into its slot of the engine's input buffer; a frame
    /// that cannot be preprocessed leaves a zeroed slot and its error in `self.slots`.
    fn fill_inputs(&mut self, chunk: &[&Frame]) {
        let len = self.engine.image_len();
        self.slots.clear();
        for (slot, frame) in chunk.iter().enumerate() {
            let out = &mut self.engine.input_mut()[slot * len..(slot + 1) * len];
            match self.pre.run(frame, out) {
                Ok(()) => self.slots.push(Ok(())),
                Err(e) => {
                    // The slot still goes through the graph with the batch; its result is dropped.
                    out.fill(0.0);
                    self.slots.push(Err(InspectError(e.to_string())));
                }
            }
        }
    }
}

impl EngineInspector {
    /// The manifest's calibrated threshold, or +∞ when the model is uncalibrated.
    pub fn manifest_threshold(&self) -> f32 {
        self.engine
            .manifest()
            .threshold
            .as_ref()
            .map_or(f32::INFINITY, |t| t.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_threshold_overrides_the_model() {
        assert_eq!(resolve_threshold(Some(0.7), Some(0.3)), Some(0.7));
        assert_eq!(resolve_threshold(None, Some(0.3)), Some(0.3));
        assert_eq!(resolve_threshold(None, None), None);
    }

    #[test]
    fn non_finite_and_out_of_range_outputs_are_errors() {
        let r = [0.0, 1.0];
        assert_eq!(check_output(0.5, &[0.1, 0.9, 1.0, 0.0], 2, r), Ok(()));
        assert!(matches!(
            check_output(f32::NAN, &[0.1; 4], 2, r),
            Err(OutputError::ScoreNotFinite(s)) if s.is_nan()
        ));
        assert!(matches!(
            check_output(f32::INFINITY, &[0.1; 4], 2, r),
            Err(OutputError::ScoreNotFinite(_))
        ));
        assert_eq!(
            check_output(2.5, &[0.1; 4], 2, r),
            Err(OutputError::ScoreOutOfRange {
                value: 2.5,
                lo: 0.0,
                hi: 1.0
            })
        );
        assert!(check_output(-0.01, &[0.1; 4], 2, r).is_err());
        assert!(matches!(
            check_output(0.5, &[0.1, 0.1, 0.1, f32::NEG_INFINITY], 2, r),
            Err(OutputError::MapNotFinite { x: 1, y: 1, .. })
        ));
        assert!(matches!(
            check_output(0.5, &[0.1, 3.0, 0.1, 0.1], 2, r),
            Err(OutputError::MapOutOfRange { x: 1, y: 0, .. })
        ));
        // Rounding at the ends is not an error.
        assert_eq!(check_output(1.000_001, &[1.000_001; 4], 2, r), Ok(()));
        let text = check_output(2.5, &[0.1; 4], 2, r).unwrap_err().to_string();
        assert_eq!(text, "score 2.5 is outside the model's score range [0, 1]");
    }
}
