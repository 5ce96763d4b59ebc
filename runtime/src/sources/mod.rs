//! Where frames come from: cameras (simulated, replayed, V4L2), image files and datasets.

pub mod camera;
pub mod dataset;
pub mod imagefile;
pub mod trigger;
