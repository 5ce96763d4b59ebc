"""diffad-edge exporter: DiffusionAD training, one-step ONNX export, calibration."""

__version__ = "0.1.0"
