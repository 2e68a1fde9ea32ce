"""tokexport: zero-shot token reduction, static-shape ONNX export, and verification against the original."""

__version__ = "0.1.0"
