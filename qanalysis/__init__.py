"""qanalysis: will INT8 hurt my model? Per-layer quantization analysis for ONNX Runtime."""

__version__ = "0.1.0"
