//! The model file: its manifest, the ONNX Runtime library that runs it, and its golden self-test.

pub mod manifest;
pub mod onnxfile;
pub mod ortlib;
pub mod selftest;
pub mod signature;
