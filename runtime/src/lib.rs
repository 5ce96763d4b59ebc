//! diffad-edge: inspect parts on a conveyor with a one-step diffusion anomaly-detection model.
//!
//! Data flows one way: [`sources`] (camera, photo-eye) → [`stages`] (preprocess, engine,
//! decide) → [`sinks`] (reject pins, supervisor, MQTT, archive). [`line`] wires them into
//! threads; [`offline`] holds the commands that run without a line; [`model`] reads the ONNX
//! file and its manifest. The modules at the top are the types they all share.

pub mod clock;
pub mod config;
pub mod events;
pub mod files;
pub mod frame;
pub mod gpio;
pub mod line;
pub mod model;
pub mod offline;
pub mod priority;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod sinks;
pub mod sources;
pub mod stages;
pub mod tally;
