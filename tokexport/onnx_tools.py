"""ONNX file helpers: external-data aware file lists and hashes, inspection, I/O shape fixes,
and the static (no GPU) check of a graph against a deployment target (tokexport.targets).

Everything here works on the ONNX protobuf only; nothing needs TensorRT or a GPU.
"""
from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tokexport.errors import InputError
from tokexport.files import stat_regular
from tokexport.targets import (
    CONTROL_FLOW_OPS,
    DATA_DEPENDENT_SHAPE_OPS,
    REDUCE_AXES18_OPS,
    RESIZE_COORD_MODES,
    TOPK_MAX_K,
    Target,
)
from tokexport.targets import resolve as resolve_target

PathLike = str | os.PathLike

# --------------------------------------------------------------------------------------------
# Files, hashes, loading
# --------------------------------------------------------------------------------------------


def _iter_graphs(graph: onnx.GraphProto):
    """The graph and every subgraph (If/Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _iter_graphs(g)


def _iter_tensors(model: onnx.ModelProto):
    """Every TensorProto that may carry external data: initializers, sparse initializers,
    Constant-node / attribute tensors, in the main graph and all subgraphs."""
    for g in _iter_graphs(model.graph):
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


def _external_location(tensor: TensorProto) -> str | None:
    if tensor.data_location != TensorProto.EXTERNAL:
        return None
    for entry in tensor.external_data:
        if entry.key == "location":
            return entry.value
    return None


def _external_entries(tensor: TensorProto, path: Path) -> dict[str, str]:
    """The external_data key/value pairs of ``tensor``; InputError when a key repeats (onnx's reader keeps
    the last ``location`` while a check of the first would pass) or ``location`` is absent."""
    entries: dict[str, str] = {}
    for entry in tensor.external_data:
        if entry.key in entries:
            raise InputError(f"{path}: tensor {tensor.name!r} repeats the external data key {entry.key!r}; "
                             "re-export the model.")
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
        raise InputError(f"{path}: external data location {loc!r} resolves outside the graph's folder "
                         f"(to {resolved}); {fix}")
    return target


# Bits per element of the sub-byte types (packed two or four to a byte); others use numpy's itemsize.
_SUB_BYTE_BITS = {getattr(TensorProto, n): b for n, b in (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4),
                                                           ("INT2", 2), ("UINT2", 2)) if hasattr(TensorProto, n)}


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
        raise InputError(f"{path}: tensor {tensor.name!r} has external data {key} {entries[key]!r}, not a "
                         "non-negative integer; re-export the model.")
    return value


def _parse_graph_file(path: Path) -> onnx.ModelProto:
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
            raise InputError(f"{path}: tensor {tensor.name!r} declares {length} bytes of external data in {loc!r} "
                             f"but its shape needs {nbytes}; re-export the model.")
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
    model = _parse_graph_file(p)
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
    model = _parse_graph_file(p)
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


# --------------------------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------------------------


def _dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # noqa: BLE001
        return TensorProto.DataType.Name(elem_type).lower()


def _shape(vi: onnx.ValueInfoProto) -> list[int | str] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    dims: list[int | str] = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append("?")
    return dims


def _io(vi: onnx.ValueInfoProto) -> dict:
    return {"name": vi.name, "dtype": _dtype_name(vi.type.tensor_type.elem_type), "shape": _shape(vi)}


def default_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant_values(model: onnx.ModelProto) -> dict[str, TensorProto]:
    """Name -> TensorProto for initializers and Constant-node outputs of the main graph
    (values of Constant nodes given as value_int(s)/value_float(s) are converted)."""
    consts: dict[str, TensorProto] = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or not node.output:
            continue
        for a in node.attribute:
            v = helper.get_attribute_value(a)
            if a.name == "value":
                consts[node.output[0]] = v
            elif a.name in ("value_int", "value_ints"):
                consts[node.output[0]] = numpy_helper.from_array(np.asarray(v, dtype=np.int64))
            elif a.name in ("value_float", "value_floats"):
                consts[node.output[0]] = numpy_helper.from_array(np.asarray(v, dtype=np.float32))
    return consts


def _const_array(tensor: TensorProto, base_dir: Path | None = None) -> np.ndarray | None:
    """Value of a small constant tensor (read from its external file if needed), or None."""
    if tensor.data_location == TensorProto.EXTERNAL:
        if base_dir is None:
            return None
        from onnx.external_data_helper import load_external_data_for_tensor

        t = TensorProto()
        t.CopyFrom(tensor)
        try:
            load_external_data_for_tensor(t, str(base_dir))
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]
            return numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001
            return None
    try:
        return numpy_helper.to_array(tensor)
    except Exception:  # noqa: BLE001
        return None


def _topk_info(model: onnx.ModelProto, base_dir: Path | None = None) -> list[dict]:
    consts = _constant_values(model)
    opset = default_opset(model) or 0
    out = []
    for i, node in enumerate(model.graph.node):
        if node.op_type != "TopK" or node.domain not in ("", "ai.onnx"):
            continue
        k: int | None = None
        k_const = False
        if opset < 10 or len(node.input) < 2:
            kv = _attr(node, "k")
            if kv is not None:
                k, k_const = int(kv), True
        else:
            t = consts.get(node.input[1])
            if t is not None:
                k_const = True
                arr = _const_array(t, base_dir)
                if arr is not None and arr.size == 1:
                    k = int(arr.reshape(-1)[0])
        out.append(
            {
                "node": node.name or f"TopK_{i}",
                "k": k,
                "k_constant": k_const,
                "largest": bool(_attr(node, "largest", 1)),
                "sorted": bool(_attr(node, "sorted", 1)),
                "axis": int(_attr(node, "axis", -1)),
            }
        )
    return out


def inspect_model(path: PathLike) -> dict:
    """Summary of an ONNX file (external data is referenced, not read).

    Returns {inputs, outputs: [{name, dtype, shape}], opset, ir_version, producer, nodes,
    op_histogram {op: count} (count desc, then op name), topk: [{node, k, k_constant, largest,
    sorted, axis}], params (initializer elements), file_bytes (graph + external data), files}.
    """
    p = Path(path)
    files = onnx_files(p)
    model = _parse_graph_file(p)
    hist = Counter(n.op_type for g in _iter_graphs(model.graph) for n in g.node)
    params = sum(int(np.prod(t.dims, dtype=np.int64)) for t in model.graph.initializer)
    producer = model.producer_name + (f" {model.producer_version}" if model.producer_version else "")
    return {
        "inputs": [_io(vi) for vi in model.graph.input if vi.name not in {t.name for t in model.graph.initializer}],
        "outputs": [_io(vi) for vi in model.graph.output],
        "opset": default_opset(model),
        "ir_version": int(model.ir_version),
        "producer": producer,
        "nodes": sum(hist.values()),
        "op_histogram": dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
        "topk": _topk_info(model, p.parent),
        "params": params,
        "file_bytes": sum(f.stat().st_size for f in files),
        "files": [str(f) for f in files],
    }


# --------------------------------------------------------------------------------------------
# Declared I/O shapes
# --------------------------------------------------------------------------------------------


def set_io_shapes(model: onnx.ModelProto, shapes: dict[str, list[int | str]]) -> None:
    """Overwrite the declared shapes of named graph inputs/outputs in place.

    ints are static dims, strs symbolic (dim_param). Unknown names raise ValueError. Follow with
    `check_shapes(model)` so a wrong declaration is caught by strict shape inference.
    """
    by_name = {vi.name: vi for vi in list(model.graph.input) + list(model.graph.output)}
    unknown = [n for n in shapes if n not in by_name]
    if unknown:
        raise ValueError(f"set_io_shapes: no graph input/output named {unknown}; known: {sorted(by_name)}")
    for name, dims in shapes.items():
        tt = by_name[name].type.tensor_type
        tt.ClearField("shape")
        tt.shape.SetInParent()  # an explicit (possibly rank-0) shape, not "unknown rank"
        shape = tt.shape
        for d in dims:
            dim = shape.dim.add()
            if isinstance(d, (bool, np.bool_)):
                raise ValueError(f"set_io_shapes: bad dim {d!r} for {name}")  # noqa: TRY004
            if isinstance(d, (int, np.integer)):
                if d < 0:
                    raise ValueError(f"set_io_shapes: negative dim {d} for {name}")
                dim.dim_value = int(d)
            elif isinstance(d, str) and d:
                dim.dim_param = d
            else:
                raise ValueError(f"set_io_shapes: dim {d!r} for {name} must be an int or a non-empty str")


_SKELETON_BYTES = 4096  # initializers above this size are shape-only in the checked copy (check_shapes)


def _copy_fields(dst, src, skip: tuple[str, ...] = ()) -> None:
    """Copy ``src``'s set fields into ``dst`` (same message type), except those named in ``skip``."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.message_type is not None:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large initializers are graph inputs of the same dtype and dims (no bytes):
    the nodes, the declared inputs/outputs and every small tensor a shape computation may read stay as they
    are, so checking it is checking the model, without serialising the weights (a GiB for Gemma-3-270M)
    twice through protobuf."""
    g = model.graph
    big = [t for t in g.initializer if len(t.raw_data) > _SKELETON_BYTES]
    if not big:
        return model  # the checker and shape inference do not modify it
    for t in big:  # what the checker would verify of a moved tensor: its bytes fill its dims
        size = int(np.prod(t.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        if size != len(t.raw_data):
            raise ValueError(f"ONNX checker failed: initializer {t.name} holds {len(t.raw_data)} bytes, "
                             f"its dims {list(t.dims)} need {size}")
    sk = onnx.ModelProto()
    _copy_fields(sk, model, skip=("graph",))
    _copy_fields(sk.graph, g, skip=("initializer",))
    sk.graph.initializer.extend(t for t in g.initializer if len(t.raw_data) <= _SKELETON_BYTES)
    sk.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in big)
    return sk


def check_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnx.checker and strict shape inference; returns the inferred model (its large initializers
    without their bytes: use it for shapes, not to save).

    Raises ValueError (one clear message) when a declared shape/type conflicts with what the
    graph computes, or the model is invalid.
    """
    sk = _skeleton(model)
    try:
        onnx.checker.check_model(sk)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"ONNX checker failed: {exc}") from None
    try:
        return onnx.shape_inference.infer_shapes(sk, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001
        msg = str(exc).strip().splitlines()
        raise ValueError(
            "declared graph shapes conflict with shape inference: " + " ".join(m.strip() for m in msg if m.strip())
        ) from None


# --------------------------------------------------------------------------------------------
# Target checks (static, no GPU): tokexport.targets says what each target accepts
# --------------------------------------------------------------------------------------------

# How to fix an operator a TensorRT target has no importer for.
_UNSUPPORTED_FIX = {
    "LayerNormalization": "export with opset <= 16 (the exporter then decomposes LayerNorm into supported ops)",
    "Unique": "keep a constant number of elements: TopK with a constant K + Gather",
    "Compress": "keep a constant number of elements: TopK with a constant K + Gather",
}


@dataclass
class Finding:
    """One problem of one node (or of the graph when ``node`` is None) for one target."""

    level: str  # "error": the parser rejects it or builds wrong numbers; "warning": needs a look
    code: str
    node: str | None
    message: str
    fix: str = ""
    op: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        return f"{self.level.upper()} {self.code}{where}: {self.message}" + (f" (fix: {self.fix})" if self.fix else "")


@dataclass
class TargetCheck:
    """Findings of :func:`check_target` for one graph and one target, plus the polygraphy lint summary."""

    target: Target
    model: str
    opset: int | None
    findings: list[Finding]
    lint: dict | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def passed(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict:
        return {"target": self.target.name, **{k: v for k, v in self.target.to_dict().items() if k != "name"},
                "model": self.model, "model_opset": self.opset, "passed": self.passed,
                "errors": len(self.errors), "warnings": len(self.warnings),
                "findings": [f.to_dict() for f in self.findings], "lint": self.lint}


def _polygraphy_exe() -> str | None:
    import importlib.util
    import shutil
    import sys

    if importlib.util.find_spec("polygraphy") is None:
        return None
    local = Path(sys.executable).parent / "polygraphy"
    return str(local) if local.is_file() else shutil.which("polygraphy")


def _lint_in_process(path: PathLike, out: Path) -> bool:
    """``polygraphy check lint PATH -o OUT`` through polygraphy's own CLI entry point in this process (the
    subprocess spends ~2 s importing what is imported here already); True when it wrote ``out``."""
    import contextlib
    import io
    import warnings

    try:
        from polygraphy.logger import G_LOGGER
        from polygraphy.tools._main import main
    except Exception:  # noqa: BLE001 - any import problem: use the subprocess
        return False
    severity = G_LOGGER.module_severity
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            main(["check", "lint", str(path), "-o", str(out)])
    except (Exception, SystemExit):  # noqa: BLE001 - polygraphy failed in-process: the subprocess decides
        return False
    finally:
        G_LOGGER.module_severity = severity
    return out.is_file()


def polygraphy_lint(path: PathLike) -> tuple[dict, list[Finding]]:
    """Run ``polygraphy check lint`` (ONNX checker, ONNX Runtime per-node run, graph surgeon checks).

    Returns (summary for the report, findings). When polygraphy or its onnx_graphsurgeon dependency is
    missing the summary says why and there are no findings: lint is an extra, the static checks are not.
    """
    import importlib.util
    import subprocess
    import tempfile

    exe = _polygraphy_exe()
    if exe is None:
        return {"ran": False, "reason": "polygraphy is not installed"}, []
    if importlib.util.find_spec("onnx_graphsurgeon") is None:
        return {"ran": False, "reason": "polygraphy check lint needs onnx-graphsurgeon (pip install onnx-graphsurgeon)"}, []
    with tempfile.TemporaryDirectory(prefix="tokexport-lint-") as tmp:
        out = Path(tmp) / "lint.json"
        if not _lint_in_process(path, out):  # a fresh interpreter when polygraphy's own entry point fails here
            try:
                res = subprocess.run([exe, "check", "lint", str(path), "-o", str(out)], capture_output=True, text=True,
                                     check=False, timeout=900)
            except (OSError, subprocess.SubprocessError) as exc:
                return {"ran": False, "reason": f"polygraphy check lint could not run: {exc}"}, []
            if not out.is_file():
                tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
                return {"ran": False, "reason": f"polygraphy check lint wrote no report: {tail[0]}"}, []
        import json

        report = json.loads(out.read_text())
    findings = []
    for e in report.get("lint_entries", []):
        level = "error" if e.get("level") == "exception" else "warning" if e.get("level") == "warning" else None
        if level is None:
            continue
        nodes = e.get("nodes") or [None]
        for n in nodes:
            findings.append(Finding(level, f"LINT_{str(e.get('source', 'polygraphy')).upper()}", n,
                                    str(e.get("message", "")).strip().splitlines()[0][:400],
                                    "see `polygraphy check lint` output for the node"))
    summary = report.get("summary", {})
    return {"ran": True, "tool": "polygraphy check lint", "passing_nodes": len(summary.get("passing", [])),
            "failing_nodes": list(summary.get("failing", [])), "entries": len(report.get("lint_entries", []))}, findings


def _str_attr(node: onnx.NodeProto, name: str, default: str) -> str:
    v = _attr(node, name, default)
    return v.decode() if isinstance(v, bytes) else str(v)


def _einsum_problem(equation: str) -> str | None:
    """Why TensorRT 8.x's Einsum importer rejects ``equation`` (ellipsis, diagonal), or None."""
    if "..." in equation:
        return "uses an ellipsis ('...')"
    for term in equation.replace(" ", "").split("->")[0].split(","):
        repeated = sorted({c for c in term if term.count(c) > 1})
        if repeated:
            return f"takes a diagonal (subscript {repeated[0]!r} repeated in {term!r})"
    return None


def _resize_problem(node: onnx.NodeProto, consts: dict[str, TensorProto], base_dir: Path | None) -> str | None:
    """Why the TensorRT Resize importer rejects ``node``, or None. Modes and coordinate modes follow
    operators.md; the importer (not the table) also takes ``cubic``, on the 2 innermost axes only, and
    ``linear`` on the 3 innermost (checked when the scales are constant)."""
    mode = _str_attr(node, "mode", "nearest")
    coord = _str_attr(node, "coordinate_transformation_mode", "half_pixel")
    if mode not in ("nearest", "linear", "cubic"):
        return f"mode={mode!r}"
    if coord not in RESIZE_COORD_MODES:
        return f"coordinate_transformation_mode={coord!r}"
    if int(_attr(node, "antialias", 0)):
        return "antialias=1"
    inner = {"linear": 3, "cubic": 2}.get(mode)
    scales = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    arr = _const_array(scales, base_dir) if (inner and scales is not None) else None
    if arr is not None and arr.size > inner and np.any(arr.reshape(-1)[:-inner] != 1):
        return f"mode={mode!r} scaling an outer axis (scales {arr.reshape(-1).tolist()})"
    return None


def check_target(model_or_path: onnx.ModelProto | PathLike, target: str | Target, lint: bool = True) -> TargetCheck:
    """Every static reason ``target`` would reject the graph or build it into wrong numbers.

    Checks: opset against the target, declared I/O shapes static except axis 0 (batch), no
    data-dependent shapes (NonZero, Unique, Compress, NonMaxSuppression), every operator in the
    target's allow-list, and the per-operator constraints of :mod:`tokexport.targets` (TopK K constant
    and < 3840, sorted=1 on TensorRT 10, Reduce axes as an input ignored on 8.x, ScatterElements/
    ScatterND reductions, Einsum forms, Resize modes, CumSum/Pad axes). Given a path and ``lint``,
    also runs ``polygraphy check lint``. External data is never read.
    """
    tgt = target if isinstance(target, Target) else resolve_target(target)
    base_dir = None
    if isinstance(model_or_path, onnx.ModelProto):
        model, label = model_or_path, "<model>"
    else:
        model, label = load(model_or_path, load_external=False), str(model_or_path)
        base_dir = Path(model_or_path).parent
    findings: list[Finding] = []

    def add(level, code, node, message, fix="", op=None):
        findings.append(Finding(level, code, node, message, fix, op))

    trt = tgt.is_tensorrt
    who = f"TensorRT {tgt.tensorrt}" if trt else "ONNX Runtime"
    opset = default_opset(model)
    if opset is None:
        add("error", "NO_DEFAULT_OPSET", None, "the model imports no default-domain (ai.onnx) opset",
            "re-export the model with tokexport")
    elif opset > tgt.max_opset:
        add("error", "OPSET_TOO_NEW", None,
            f"opset {opset} > {tgt.max_opset}, the highest {tgt.label} reads faithfully",
            f"re-export with export.opset: {tgt.opset} (export.target: {tgt.name})")

    init_names = {t.name for t in model.graph.initializer}
    for kind, vis in (("input", model.graph.input), ("output", model.graph.output)):
        for vi in vis:
            if vi.name in init_names:
                continue
            shape = _shape(vi)
            if shape is None:
                add("error", "UNKNOWN_RANK", vi.name, f"graph {kind} {vi.name!r} has no declared shape",
                    "declare static dims (onnx_tools.set_io_shapes) and re-check with check_shapes")
                continue
            bad = [(ax, d) for ax, d in enumerate(shape) if ax > 0 and not isinstance(d, int)]
            if bad:
                desc = ", ".join(f"axis {ax}={d!r}" for ax, d in bad)
                add("error", "DYNAMIC_DIM", vi.name, f"graph {kind} {vi.name!r} has symbolic non-batch dims ({desc})",
                    "only the batch axis may be dynamic: export with constant token counts and image size")

    consts = _constant_values(model)
    topk = {t["node"]: t for t in _topk_info(model, base_dir)}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)

    for g in _iter_graphs(model.graph):
        in_subgraph = g is not model.graph
        for i, node in enumerate(g.node):
            op = node.op_type
            name = node.name or f"{op}_{i}"
            if node.domain not in ("", "ai.onnx"):
                if trt:
                    add("error", "CUSTOM_OP", name, f"{node.domain}::{op} is not an ONNX operator; {who} has no "
                        "importer for it", "export without custom-domain ops (or ship a TensorRT plugin)", op)
                elif node.domain not in ("com.microsoft", "ai.onnx.ml"):
                    add("error", "CUSTOM_OP", name, f"{node.domain}::{op} is not known to ONNX Runtime",
                        "export without custom-domain ops", op)
                continue
            if tgt.ops is not None and op not in tgt.ops:
                add("error", "UNSUPPORTED_OP", name, f"{op} is not supported by the {who} ONNX parser",
                    _UNSUPPORTED_FIX.get(op, "replace it with supported operators at export time"), op)
            elif tgt.ops is None and not onnx.defs.has(op):
                add("error", "UNSUPPORTED_OP", name, f"{op} is not a standard ONNX operator", "re-export the model", op)

            if op in DATA_DEPENDENT_SHAPE_OPS:
                add("error", "DATA_DEPENDENT_SHAPE", name, f"{op} has a data-dependent output shape",
                    "keep a constant number of tokens: TopK with a constant K + Gather", op)
            if op in CONTROL_FLOW_OPS and trt:
                add("error", "CONTROL_FLOW", name, f"{op} (control flow) in a graph whose shapes are all static: "
                    "TensorRT builds it as a conditional/loop layer (slow, restricted on DLA) where a plain op "
                    "would do", "export without it (e.g. index a size-1 axis instead of squeeze, unroll loops)", op)

            if op == "TopK" and not in_subgraph:
                info = topk.get(name) or {}
                k = info.get("k")
                if not info.get("k_constant"):
                    level = "error" if tgt.topk_k_initializer else "warning"
                    add(level, "TOPK_K_NOT_CONSTANT", name,
                        "TopK K is computed at run time" + (f"; {who} requires it as an initializer"
                                                           if level == "error" else ": the kept count is not static"),
                        "make K a Python int at export time, or fold constants "
                        "(`polygraphy surgeon sanitize --fold-constants`)", op)
                elif len(node.input) > 1 and node.input[1] in consts \
                        and consts[node.input[1]].data_location == TensorProto.EXTERNAL:
                    add("warning", "TOPK_K_EXTERNAL", name,
                        "TopK K is stored in the external data file; ONNX Runtime refuses such graphs",
                        "save with a size_threshold that keeps small tensors inline (onnx default 1024 bytes)", op)
                if trt and k is not None and k >= TOPK_MAX_K:
                    add("error", "TOPK_K_TOO_LARGE", name, f"TopK K={k} >= {TOPK_MAX_K}, TensorRT's limit",
                        f"keep fewer than {TOPK_MAX_K} tokens per TopK (split the selection)", op)
                if tgt.topk_sorted_required and not info.get("sorted", True):
                    add("error", "TOPK_UNSORTED", name, f"TopK sorted=0 is rejected by {who}",
                        "export TopK with sorted=True and sort the indices afterwards", op)

            if op in ("ScatterElements", "ScatterND", "Scatter"):
                reduction = _str_attr(node, "reduction", "none")
                if reduction != "none" and tgt.scatter_reduction_ignored:
                    add("error", "SCATTER_REDUCTION_IGNORED", name,
                        f"{op} reduction={reduction!r} is ignored by the {who} parser (plain assignment: wrong "
                        "numbers, no error)", "express merges as a one-hot matrix MatMul, divide by counts", op)
                elif reduction != "none" and op == "ScatterND" and tgt.scatter_nd_reduction_rejected:
                    add("error", "SCATTER_ND_REDUCTION", name, f"ScatterND reduction={reduction!r} is rejected "
                        f"by {who}", "express merges as a one-hot matrix MatMul, divide by counts", op)
                mean_like = False
                if not in_subgraph and node.output:
                    nxt = consumers.get(node.output[0], [])
                    mean_like = reduction == "add" and any(c.op_type == "Div" for c in nxt)  # sum then divide
                if reduction == "none" and len(node.input) > 1 and node.input[1] not in consts and not in_subgraph:
                    mean_like = True  # torch's dynamo exporter maps scatter_reduce(mean) to reduction="none"
                if mean_like:
                    add("warning", "SCATTER_MEAN_LIKE", name,
                        f"{op} (reduction={reduction!r}) with run-time indices looks like a scatter mean/merge: "
                        "duplicate indices give last-write-wins or a dropped reduction",
                        "use a one-hot assignment matrix, MatMul, divide by counts", op)

            if op.startswith("Reduce") and len(node.input) >= 2 and node.input[1]:
                if tgt.reduce_axes_input_ignored and op in REDUCE_AXES18_OPS:
                    add("error", "REDUCE_AXES_INPUT", name,
                        f"{op} takes `axes` as an input (opset 18 form); the {who} parser ignores it and "
                        "reduces over ALL axes, silently", "export with opset <= 17 (axes as an attribute)", op)
                elif tgt.reduce_axes_initializer and node.input[1] not in consts and not in_subgraph:
                    add("error", "REDUCE_AXES_NOT_CONSTANT", name, f"{op} axes come from a run-time tensor; "
                        f"{who} needs them as an initializer", "fold constants before export", op)

            if op == "Einsum" and tgt.einsum_restricted:
                problem = _einsum_problem(_str_attr(node, "equation", ""))
                if problem:
                    add("error", "EINSUM_FORM", name, f"Einsum {problem}: not supported by {who}",
                        "write the contraction as MatMul/Transpose/ReduceSum, or target tensorrt-10", op)

            if op == "Resize" and trt:
                problem = _resize_problem(node, consts, base_dir)
                if problem:
                    add("error", "RESIZE_MODE", name, f"Resize {problem}: not supported by {who}",
                        "resize with nearest/linear/cubic on the innermost axes only", op)
            if op == "CumSum" and trt and len(node.input) > 1 and node.input[1] not in consts and not in_subgraph:
                add("error", "CUMSUM_AXIS", name, f"CumSum axis must be an initializer for {who}",
                    "make the axis a constant", op)
            if op == "Pad" and tgt.pad_axes_initializer and len(node.input) > 3 and node.input[3] \
                    and node.input[3] not in consts and not in_subgraph:
                add("error", "PAD_AXES", name, f"Pad axes must be an initializer for {who}", "make them constant", op)
            if op == "LayerNormalization" and tgt.layernorm_y_only and any(node.output[1:]):
                add("error", "LAYERNORM_EXTRA_OUTPUTS", name, f"{who} supports only LayerNormalization's first "
                    "output (Y)", "do not use Mean/InvStdDev outputs", op)

    lint_summary = None
    if lint and base_dir is not None:
        lint_summary, lint_findings = polygraphy_lint(label)
        findings += lint_findings
    return TargetCheck(tgt, label, opset, findings, lint_summary)
