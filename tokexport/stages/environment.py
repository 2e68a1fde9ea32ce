"""What a report was measured on: Python, the libraries that shape the graphs and the timings, ONNX
Runtime's providers, the CPU and the OS."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = (
    "tokexport",
    "torch",
    "transformers",
    "optimum",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "polygraphy",
    "tensorrt",
)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """The environment block of every report."""
    try:
        import onnxruntime as ort

        providers = list(ort.get_available_providers())
    except ImportError:
        providers = []
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "packages": {p: v for p in PACKAGES if (v := _version(p)) is not None},
        "onnxruntime_providers": providers,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "libc": " ".join(platform.libc_ver()).strip() or None,
    }
