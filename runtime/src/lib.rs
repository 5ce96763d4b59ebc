//! diffad-edge: inspect parts on a conveyor with a one-step diffusion anomaly-detection model.
//!
//! Data flows one way: sources (`camera`) → stages (`preprocess`, `engine`, `decide`) →
//! sinks (`reject`, `supervisor`, `archive`).

pub mod config;
pub mod frame;
pub mod inspect;
pub mod ortlib;
pub mod manifest;
pub mod engine;
pub mod preprocess;
pub mod metrics;
pub mod heatmap;
pub mod imagefile;
pub mod dataset;
pub mod cli;
