"""ONNX file helpers: external-data aware file lists and hashes, inspection, I/O shape fixes,
and the static (no GPU) check of a graph against a deployment target (tokexport.targets).

The package: :mod:`.graph_files` (the graph file and its external data: files, hashes, loading),
:mod:`.inspection` (what a graph holds), :mod:`.shapes` (declared I/O shapes), :mod:`.target_check`
(the static check against a target), :mod:`.findings` (what it reports) and :mod:`.lint` (polygraphy lint).

Everything here works on the ONNX protobuf only; nothing needs TensorRT or a GPU.
"""

from __future__ import annotations

from .findings import Finding, TargetCheck
from .graph_files import PathLike, load, onnx_files, sha256_file, sha256_onnx
from .inspection import default_opset, inspect_model
from .lint import polygraphy_lint
from .shapes import check_shapes, set_io_shapes
from .target_check import check_target

__all__ = [
    "Finding",
    "PathLike",
    "TargetCheck",
    "check_shapes",
    "check_target",
    "default_opset",
    "inspect_model",
    "load",
    "onnx_files",
    "polygraphy_lint",
    "set_io_shapes",
    "sha256_file",
    "sha256_onnx",
]
