//! What happens to a frame: preprocess, queue by deadline, run the engine (whole or tiled), decide.

pub mod decide;
pub mod engine;
pub mod inspect;
pub mod preprocess;
pub mod tiling;
pub mod triage;
