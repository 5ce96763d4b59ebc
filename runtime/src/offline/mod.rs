//! Commands that run without a line (`inspect`, `infer`, `eval`, `bench`, `build-engine`,
//! `check-config`, `doctor`, `watch`, `model`) and what they compute. Errors get their context here.

pub mod bench;
pub mod check;
pub mod doctor;
pub mod engine_cache;
pub mod eval;
pub mod infer;
pub mod metrics;
pub mod model;
pub mod report;
pub mod sweep;
pub mod watch;
