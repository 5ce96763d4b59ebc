//! What happens to a frame: preprocess, queue by deadline, run the engine (whole or tiled), decide;
//! and the watch on the scores as a whole (`drift`).

pub mod decide;
pub mod drift;
pub mod engine;
pub mod inspect;
pub mod preprocess;
pub mod tiling;
pub mod triage;
