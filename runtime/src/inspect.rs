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
    pub map_roi: Option<crate::preprocess::Roi>,
}

/// Why one frame could not be inspected; the rest of its batch is unaffected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InspectError(pub String);

/// Something that scores frames: the real engine, or a deliberately slow/failing one in tests.
pub trait Inspector: Send {
    /// Largest number of frames `inspect` takes at once.
    fn batch_size(&self) -> usize;
    /// Threshold at or above which a part is rejected.
    fn threshold(&self) -> f32;
    /// Inspect up to `batch_size()` frames; one result per frame, in order.
    fn inspect(&mut self, frames: &[&Frame]) -> Vec<Result<Inspection, InspectError>>;
}

/// `threshold` if given, else the manifest's calibrated one; an error when there is neither.
pub fn threshold_of(
    engine: &crate::engine::Engine,
    threshold: Option<f32>,
) -> Result<f32, InspectError> {
    match (threshold, &engine.manifest().threshold) {
        (Some(t), _) => Ok(t),
        (None, Some(t)) => Ok(t.value),
        (None, None) => Err(InspectError(format!(
            "model {} has no calibrated threshold: run `python -m exporter calibrate` on it, or set line.threshold",
            engine.path().display()
        ))),
    }
}

/// The real inspector: preprocess into the engine's input buffer, one session call per batch.
pub struct EngineInspector {
    engine: crate::engine::Engine,
    pre: crate::preprocess::Preprocessor,
    threshold: f32,
    roi: Option<crate::preprocess::Roi>,
}

impl EngineInspector {
    /// Wrap a loaded engine; the threshold is `threshold` if given, else the manifest's.
    pub fn new(
        engine: crate::engine::Engine,
        roi: Option<crate::preprocess::Roi>,
        threshold: Option<f32>,
    ) -> Result<Self, InspectError> {
        let threshold = threshold_of(&engine, threshold)?;
        let pre = crate::preprocess::Preprocessor::new(&engine.manifest().input, roi);
        Ok(Self {
            engine,
            pre,
            threshold,
            roi,
        })
    }

    /// The engine inside.
    pub fn engine(&self) -> &crate::engine::Engine {
        &self.engine
    }

    /// Mutable access to the engine (benchmarks time bare session calls through it).
    pub fn engine_mut(&mut self) -> &mut crate::engine::Engine {
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

    fn inspect(&mut self, frames: &[&Frame]) -> Vec<Result<Inspection, InspectError>> {
        let mut results = Vec::with_capacity(frames.len());
        for chunk in frames.chunks(self.batch_size()) {
            let len = self.engine.image_len();
            let mut ok = Vec::with_capacity(chunk.len());
            for (slot, frame) in chunk.iter().enumerate() {
                let out = &mut self.engine.input_mut()[slot * len..(slot + 1) * len];
                match self.pre.run(frame, out) {
                    Ok(()) => ok.push(Ok(())),
                    Err(e) => {
                        // The slot still goes through the graph with the batch; its result is dropped.
                        out.fill(0.0);
                        ok.push(Err(InspectError(e.to_string())));
                    }
                }
            }
            let (mw, mh) = (
                self.engine.manifest().input.width as u32,
                self.engine.manifest().input.height as u32,
            );
            match self.engine.run(chunk.len()) {
                Ok(outputs) => {
                    for (pre, out) in ok.into_iter().zip(outputs) {
                        results.push(pre.map(|()| Inspection {
                            score: out.score,
                            map: out.map,
                            map_width: mw,
                            map_height: mh,
                            map_roi: self.roi,
                        }));
                    }
                }
                Err(e) => results.extend(chunk.iter().map(|_| Err(InspectError(e.to_string())))),
            }
        }
        results
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
