//! Commands that run without a line: evaluation reports, threshold sweeps, doctor, watch.

pub mod doctor;
pub mod metrics;
pub mod report;
pub mod sweep;
pub mod watch;
