//! Where verdicts and events go: the reject pins, the supervisor stream, MQTT and the archive.

pub mod archive;
pub mod heatmap;
pub mod mqtt;
pub mod pins;
pub mod reject;
pub mod supervisor;
pub mod tls;
