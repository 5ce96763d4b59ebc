//! Where verdicts and events go: the reject pins, the supervisor stream, MQTT, the archive and
//! the operator's page and the OPC UA server (on the network sinks' async runtime).

pub mod archive;
pub mod heatmap;
pub mod mqtt;
pub mod netrt;
pub mod opcua;
pub mod pins;
pub mod reject;
pub mod supervisor;
pub mod tls;
pub mod web;
