//! diffad-edge: inspect parts on a conveyor with a one-step diffusion anomaly-detection model.
//!
//! Data flows one way: sources (`camera`) → stages (`preprocess`, `engine`, `decide`) →
//! sinks (`reject`, `supervisor`, `archive`).

pub mod archive;
pub mod camera;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dataset;
pub mod decide;
pub mod doctor;
pub mod engine;
pub mod events;
pub mod frame;
pub mod heatmap;
pub mod imagefile;
pub mod inspect;
pub mod manifest;
pub mod metrics;
pub mod mqtt;
pub mod ortlib;
pub mod pins;
pub mod pipeline;
pub mod preprocess;
pub mod reject;
pub mod report;
pub mod selftest;
pub mod setup;
pub mod supervisor;
pub mod sweep;
pub mod tally;
pub mod testkit;
pub mod tiling;
pub mod tls;
pub mod triage;
pub mod watch;
pub mod watchdog;
