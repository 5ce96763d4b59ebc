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
