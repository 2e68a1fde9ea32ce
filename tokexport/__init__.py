"""tokexport: zero-shot token reduction, static-shape ONNX export, and verification against the original."""

# The one place the version is written: pyproject.toml reads it (dynamic version), `tokexport --version` prints it.
__version__ = "0.1.0"
