"""An ONNX graph file and the external data it references: the list of files that travel together
(:func:`onnx_files`), one hash over all of them (:func:`sha256_onnx`) and loading (:func:`load`); every
location is checked to stay inside the graph's folder and every tensor's bytes to be there."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path, PureWindowsPath

import numpy as np
import onnx
from onnx import TensorProto, helper

from tokexport.errors import InputError
from tokexport.files import stat_regular

PathLike = str | os.PathLike


def iter_graphs(graph: onnx.GraphProto):
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_graphs(g)


def _iter_tensors(model: onnx.ModelProto):
    """Every TensorProto that may carry external data: initializers, sparse initializers,
    Constant-node / attribute tensors, in the main graph and all subgraphs."""
    for g in iter_graphs(model.graph):
        yield from g.initializer
        for sp in g.sparse_initializer:
            yield sp.values
            yield sp.indices
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    yield attr.t
                elif attr.type == onnx.AttributeProto.TENSORS:
                    yield from attr.tensors


def _external_entries(tensor: TensorProto, path: Path) -> dict[str, str]:
    """The external_data key/value pairs of ``tensor``; InputError when a key repeats (onnx's reader keeps
    the last ``location`` while a check of the first would pass) or ``location`` is absent."""
    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key in entries:
            raise InputError(
                f"{path}: tensor {tensor.name!r} repeats the external data key {entry.key!r}; re-export the model."
            )
        entries[entry.key] = entry.value
    if not entries.get("location"):
        raise InputError(f"{path}: tensor {tensor.name!r} is marked external but has no location; re-export the model.")
    return entries


def _check_location(loc: str, path: Path) -> Path:
    """``path.parent / loc`` when ``loc`` is a relative name that stays inside the graph's folder once
    resolved (``..``, absolute paths, drive letters and symlinks leading out are refused)."""
    base = path.parent
    fix = "re-save it with onnx.save_model(..., location=<file name next to the graph>)."
    win = PureWindowsPath(loc)
    if "\0" in loc or os.path.isabs(loc) or win.drive or win.root or ".." in win.parts or ".." in Path(loc).parts:
        raise InputError(f"{path}: external data location {loc!r} is outside the graph's folder; {fix}")
    target = base / loc
    try:
        resolved = target.resolve()
        inside = resolved.is_relative_to(base.resolve())
    except (OSError, RuntimeError, ValueError):  # symlink loops, unreadable parents
        resolved, inside = target, False
    if not inside:
        raise InputError(
            f"{path}: external data location {loc!r} resolves outside the graph's folder (to {resolved}); {fix}"
        )
    return target


# Bits per element of the sub-byte types (packed two or four to a byte); others use numpy's itemsize.
_SUB_BYTE_BITS = {
    getattr(TensorProto, n): b
    for n, b in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2))
    if hasattr(TensorProto, n)
}


def _tensor_nbytes(tensor: TensorProto) -> int | None:
    """Bytes of a tensor's raw data from its dims and type, or None (strings, unknown types)."""
    if any(d < 0 for d in tensor.dims):
        return None
    n = math.prod(int(d) for d in tensor.dims)  # Python ints: no int64 overflow on absurd dims
    if tensor.data_type in _SUB_BYTE_BITS:
        return (n * _SUB_BYTE_BITS[tensor.data_type] + 7) // 8
    if tensor.data_type in (TensorProto.UNDEFINED, TensorProto.STRING):
        return None
    try:
        return n * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except Exception:  # noqa: BLE001 - a type this onnx/numpy does not map
        return None


def _int_entry(entries: dict[str, str], key: str, tensor: TensorProto, path: Path) -> int | None:
    if key not in entries:
        return None
    try:
        value = int(entries[key])
    except ValueError:
        value = -1
    if value < 0:
        raise InputError(
            f"{path}: tensor {tensor.name!r} has external data {key} {entries[key]!r}, not a "
            "non-negative integer; re-export the model."
        )
    return value


def parse_graph_file(path: Path) -> onnx.ModelProto:
    """Parse the graph file only (no external data). InputError for missing / non-ONNX files."""
    stat_regular(path, "graph", missing="ONNX file not found; check the path (export the model first).")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, RuntimeError, ... from protobuf/onnx  # noqa: BLE001
        raise InputError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}); re-export it or pass the .onnx graph file."
        ) from None
    # Protobuf happily parses many non-ONNX byte strings (an empty file parses as an empty
    # ModelProto); a real model always has an IR version and an opset import.
    if model.ir_version <= 0 or not model.opset_import or not model.graph.ListFields():
        raise InputError(
            f"{path}: not an ONNX model (no IR version / opset / graph); re-export it or pass the .onnx graph file."
        )
    return model


def _external_files(model: onnx.ModelProto, path: Path) -> list[Path]:
    """The external data files ``model`` (the graph file ``path``) references, sorted by location.

    InputError (one line naming the graph) when a location is absolute or resolves outside the graph's
    folder, a file is missing, or a tensor's bytes (offset + length, or its shape's size) run past the
    end of its file. Nothing is read, only sizes.
    """
    seen: dict[str, Path] = {}
    spans: list[tuple[TensorProto, str, int, int | None]] = []
    for tensor in _iter_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = _external_entries(tensor, path)
        loc = entries["location"]
        if loc not in seen:
            seen[loc] = _check_location(loc, path)
        offset = _int_entry(entries, "offset", tensor, path) or 0
        length = _int_entry(entries, "length", tensor, path)
        nbytes = _tensor_nbytes(tensor)
        if length is not None and nbytes is not None and length < nbytes:
            raise InputError(
                f"{path}: tensor {tensor.name!r} declares {length} bytes of external data in {loc!r} "
                f"but its shape needs {nbytes}; re-export the model."
            )
        spans.append((tensor, loc, offset, length if length is not None else nbytes))
    missing = [p for p in seen.values() if not p.is_file()]
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise InputError(
            f"{path}: external data file(s) missing: {names}; copy the .data file(s) next to the graph "
            "(they must travel with the .onnx)."
        )
    sizes = {loc: p.stat().st_size for loc, p in seen.items()}
    for tensor, loc, offset, nbytes in spans:
        end = offset + (nbytes or 0)
        if end > sizes[loc]:
            raise InputError(
                f"{path}: external data file {seen[loc]} is truncated: tensor {tensor.name!r} needs bytes "
                f"{offset} to {end} but the file has {sizes[loc]}; copy the complete .data file next to the graph."
            )
    return [seen[k] for k in sorted(seen)]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]


def onnx_files(path: PathLike) -> list[Path]:
    """The graph file followed by every external-data file it references (sorted by location).

    Raises InputError if the graph is missing/not ONNX or a referenced data file is missing, truncated
    or outside the graph's folder.
    """
    p = Path(path)
    model = parse_graph_file(p)
    return [p] + _external_files(model, p)


def _sha256_file(path: Path, h=None):
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h


def sha256_file(path: PathLike) -> str:
    return _sha256_file(Path(path)).hexdigest()


def sha256_onnx(path: PathLike) -> str:
    """One SHA-256 over the graph file and its external data files.

    Stable order: graph first, then data files sorted by their location string. Each file
    contributes its location name (relative to the graph's folder; the graph itself contributes
    an empty name, so renaming the graph keeps the hash), its byte length and its bytes.
    """
    files = onnx_files(path)
    graph = files[0]
    h = hashlib.sha256()
    for i, f in enumerate(files):
        name = "" if i == 0 else f.relative_to(graph.parent).as_posix()
        h.update(name.encode() + b"\0" + str(f.stat().st_size).encode() + b"\0")
        _sha256_file(f, h)
    return h.hexdigest()


def load(path: PathLike, load_external: bool = True) -> onnx.ModelProto:
    """Load an ONNX model. InputError if missing / not ONNX / external data missing, truncated, or
    located outside the graph's folder (checked even when ``load_external`` is off)."""
    p = Path(path)
    model = parse_graph_file(p)
    _external_files(model, p)  # validates that every referenced data file exists
    if load_external:
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except Exception as exc:  # noqa: BLE001
            raise InputError(
                f"{p}: could not read its external data ({type(exc).__name__}: {_first_line(exc)}); "
                "re-export the model or copy the complete .data file."
            ) from None
    return model
