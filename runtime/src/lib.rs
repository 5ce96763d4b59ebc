//! diffad-edge: inspect parts on a conveyor with a one-step diffusion anomaly-detection model.
//!
//! Data flows one way: sources (`camera`) → stages (`preprocess`, `engine`, `decide`) →
//! sinks (`reject`, `supervisor`, `archive`).

pub mod archive;
pub mod camera;
pub mod clock;
pub mod config;
pub mod decide;
pub mod events;
pub mod frame;
pub mod inspect;
pub mod mqtt;
pub mod pins;
pub mod pipeline;
pub mod reject;
pub mod setup;
pub mod supervisor;
pub mod testkit;
pub mod watchdog;
