//! diffad-edge: inspect parts on a conveyor with a one-step diffusion anomaly-detection model.
//!
//! Data flows one way: sources (`camera`) → stages (`preprocess`, `engine`, `decide`) →
//! sinks (`reject`, `supervisor`, `archive`).

pub mod cli;
pub mod config;
pub mod dataset;
pub mod engine;
pub mod frame;
pub mod heatmap;
pub mod imagefile;
pub mod inspect;
pub mod manifest;
pub mod metrics;
pub mod ortlib;
pub mod preprocess;
