"""ONNX file helpers: external-data aware file lists and hashes, inspection, I/O shape fixes,
and a static (no GPU) TensorRT compatibility check for the Jetson targets.

Everything here works on the ONNX protobuf only; nothing needs TensorRT or a GPU.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tokexport.errors import InputError

PathLike = Union[str, os.PathLike]

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


def _parse_graph_file(path: Path) -> onnx.ModelProto:
    """Parse the graph file only (no external data). InputError for missing / non-ONNX files."""
    if not path.exists():
        raise InputError(f"{path}: ONNX file not found; check the path (export the model first).")
    if not path.is_file():
        raise InputError(f"{path}: not a file; pass the path of the .onnx graph file.")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError, RuntimeError, ... from protobuf/onnx
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
    base = path.parent
    seen: dict[str, Path] = {}
    for tensor in _iter_tensors(model):
        loc = _external_location(tensor)
        if loc is None:
            if tensor.data_location == TensorProto.EXTERNAL:
                raise InputError(
                    f"{path}: tensor {tensor.name!r} is marked external but has no location; re-export the model."
                )
            continue
        if loc in seen:
            continue
        if os.path.isabs(loc) or ".." in Path(loc).parts:
            raise InputError(
                f"{path}: external data location {loc!r} is outside the model's folder; "
                "re-save it with onnx.save_model(..., location=<file name next to the graph>)."
            )
        seen[loc] = base / loc
    missing = [p for p in seen.values() if not p.is_file()]
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise InputError(
            f"{path}: external data file(s) missing: {names}; copy the .data file(s) next to the graph "
            "(they must travel with the .onnx)."
        )
    return [seen[k] for k in sorted(seen)]


def onnx_files(path: PathLike) -> list[Path]:
    """The graph file followed by every external-data file it references (sorted by location).

    Raises InputError if the graph is missing/not ONNX or a referenced data file is missing.
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
    """Load an ONNX model. InputError if missing / not ONNX / external data missing."""
    p = Path(path)
    model = _parse_graph_file(p)
    _external_files(model, p)  # validates that every referenced data file exists
    if load_external:
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except Exception as exc:
            raise InputError(
                f"{p}: could not read its external data ({type(exc).__name__}: {exc}); "
                "re-export the model or copy the complete .data file."
            ) from None
    return model


# --------------------------------------------------------------------------------------------
# Inspection
# --------------------------------------------------------------------------------------------


def _dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
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
        except Exception:
            return None
    try:
        return numpy_helper.to_array(tensor)
    except Exception:
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
                raise ValueError(f"set_io_shapes: bad dim {d!r} for {name}")
            if isinstance(d, (int, np.integer)):
                if d < 0:
                    raise ValueError(f"set_io_shapes: negative dim {d} for {name}")
                dim.dim_value = int(d)
            elif isinstance(d, str) and d:
                dim.dim_param = d
            else:
                raise ValueError(f"set_io_shapes: dim {d!r} for {name} must be an int or a non-empty str")


def check_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnx.checker and strict shape inference; returns the inferred model.

    Raises ValueError (one clear message) when a declared shape/type conflicts with what the
    graph computes, or the model is invalid.
    """
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ValueError(f"ONNX checker failed: {exc}") from None
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:
        msg = str(exc).strip().splitlines()
        raise ValueError(
            "declared graph shapes conflict with shape inference: " + " ".join(m.strip() for m in msg if m.strip())
        ) from None


# --------------------------------------------------------------------------------------------
# TensorRT compatibility (static, no GPU)
# --------------------------------------------------------------------------------------------

# JetPack <-> TensorRT mapping (from NVIDIA's JetPack release notes, as far as known here):
#   JetPack 5.1 / 5.1.1 / 5.1.2 / 5.1.3  -> TensorRT 8.5.2   (L4T r35.2-r35.5)  -- confident
#   JetPack 6.0 (GA)                    -> TensorRT 8.6.2   (L4T r36.3)        -- confident
#   JetPack 6.1 / 6.2 (6.2.1)           -> TensorRT 10.3.0  (L4T r36.4.x)      -- confident
# ONNX opset limits are the onnx-tensorrt parser's supported ranges: 8.5 is treated as opset <= 16
# here (project rule: no LayerNormalization op; the 8.5 parser has no native LayerNorm importer),
# 8.6 -> 17, 10.0-10.8 -> 9..20 (fairly confident). Not checked against a device in this repo.
TRT_TARGETS: dict[str, dict[str, Any]] = {
    "8.5": {
        "jetpack": "5.1.x",
        "max_opset": 16,
        "recommended_opset": 16,
        "topk_k_must_be_constant": True,
        "reduce_axes_input_ignored": True,
        "scatter_reduction_ignored": True,
        "topk_wants_sorted": False,
        "layernorm_op": False,
    },
    "8.6": {
        "jetpack": "6.0",
        "max_opset": 17,
        "recommended_opset": 17,
        "topk_k_must_be_constant": True,
        "reduce_axes_input_ignored": True,
        "scatter_reduction_ignored": True,
        "topk_wants_sorted": False,
        "layernorm_op": True,
    },
    "10.3": {
        "jetpack": "6.1/6.2",
        "max_opset": 20,
        "recommended_opset": 17,
        "topk_k_must_be_constant": False,
        "reduce_axes_input_ignored": False,
        "scatter_reduction_ignored": False,
        "topk_wants_sorted": True,
        "layernorm_op": True,
    },
}

TOPK_MAX_K = 3840  # K must be < 3840 on every TensorRT version

DATA_DEPENDENT_SHAPE_OPS = ("NonZero", "Unique", "NonMaxSuppression", "Compress")
CONTROL_FLOW_OPS = ("Loop", "If", "Scan")
SCATTER_OPS = ("ScatterElements", "ScatterND", "Scatter")
# Reductions whose `axes` became an input at opset 18 (ReduceSum moved at opset 13 and the 8.x
# parsers do read its constant axes input).
REDUCE_OPS_AXES18 = (
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
)


@dataclass
class Finding:
    level: str  # "error" | "warning"
    code: str
    node: str | None
    message: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        where = f" [{self.node}]" if self.node else ""
        return f"{self.level.upper()} {self.code}{where}: {self.message}"


def _target(target: str) -> tuple[str, dict]:
    t = str(target).strip()
    if t not in TRT_TARGETS:
        # Accept full versions ("8.5.2", "10.3.0.30") for the known major.minor.
        parts = t.split(".")
        if len(parts) >= 2 and ".".join(parts[:2]) in TRT_TARGETS:
            t = ".".join(parts[:2])
        else:
            known = ", ".join(f"{k} (JetPack {v['jetpack']})" for k, v in TRT_TARGETS.items())
            raise InputError(f"unknown TensorRT target {target!r}; known targets: {known}.")
    return t, TRT_TARGETS[t]


def recommended_opset(target: str) -> int:
    """The opset to export with for a TensorRT target (InputError for unknown targets)."""
    return int(_target(target)[1]["recommended_opset"])


def trt_check(model_or_path: onnx.ModelProto | PathLike, target: str) -> list[Finding]:
    """Static TensorRT compatibility findings for `target` (a TRT_TARGETS key, e.g. "8.6").

    Errors are things the parser rejects or, worse, silently mis-builds; warnings need a look.
    External data is not read.
    """
    tname, spec = _target(target)
    base_dir = None
    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
    else:
        model = load(model_or_path, load_external=False)
        base_dir = Path(model_or_path).parent

    findings: list[Finding] = []

    def add(level, code, node, message):
        findings.append(Finding(level, code, node, message))

    opset = default_opset(model)
    if opset is None:
        add("error", "NO_DEFAULT_OPSET", None, "the model imports no default-domain (ai.onnx) opset")
    elif opset > spec["max_opset"]:
        add(
            "error", "OPSET_TOO_NEW", None,
            f"opset {opset} > {spec['max_opset']}, the highest TensorRT {tname} (JetPack {spec['jetpack']}) "
            f"parses; re-export with opset {spec['recommended_opset']}",
        )

    # Declared I/O shapes: only axis 0 (batch) may be symbolic.
    init_names = {t.name for t in model.graph.initializer}
    for kind, vis in (("input", model.graph.input), ("output", model.graph.output)):
        for vi in vis:
            if vi.name in init_names:
                continue
            shape = _shape(vi)
            if shape is None:
                add("error", "UNKNOWN_RANK", vi.name,
                    f"graph {kind} {vi.name!r} has no declared shape; declare static dims (set_io_shapes)")
                continue
            bad = [(ax, d) for ax, d in enumerate(shape) if ax > 0 and not isinstance(d, int)]
            if bad:
                desc = ", ".join(f"axis {ax}={d!r}" for ax, d in bad)
                add("error", "DYNAMIC_DIM", vi.name,
                    f"graph {kind} {vi.name!r} has symbolic non-batch dims ({desc}); token counts must be static")

    consts = _constant_values(model)
    topk = {t["node"]: t for t in _topk_info(model, base_dir)}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for inp in node.input:
            consumers.setdefault(inp, []).append(node)

    for g in _iter_graphs(model.graph):
        in_subgraph = g is not model.graph
        for i, node in enumerate(g.node):
            if node.domain not in ("", "ai.onnx"):
                continue
            op = node.op_type
            name = node.name or f"{op}_{i}"

            if op in DATA_DEPENDENT_SHAPE_OPS:
                add("error", "DATA_DEPENDENT_SHAPE", name,
                    f"{op} has a data-dependent output shape; use TopK with a constant K + Gather instead")
            if op in CONTROL_FLOW_OPS:
                add("warning", "CONTROL_FLOW", name,
                    f"{op} (control flow) is slow or unsupported in TensorRT; unroll it at export time")
            if op == "LayerNormalization" and not spec["layernorm_op"]:
                add("error", "LAYERNORM_OP", name,
                    f"LayerNormalization (opset 17) is not parsed by TensorRT {tname}; export with opset <= 16")

            if op == "TopK" and not in_subgraph:
                info = topk.get(name) or {}
                k = info.get("k")
                if not info.get("k_constant"):
                    level = "error" if spec["topk_k_must_be_constant"] else "warning"
                    add(level, "TOPK_K_NOT_CONSTANT", name,
                        f"TopK K is computed at run time; TensorRT {tname} "
                        + ("requires it as an initializer" if level == "error" else "builds it as a dynamic K")
                        + " (fold constants: `polygraphy surgeon sanitize --fold-constants`)")
                elif (
                    len(node.input) > 1
                    and node.input[1] in consts
                    and consts[node.input[1]].data_location == TensorProto.EXTERNAL
                ):
                    add("warning", "TOPK_K_EXTERNAL", name,
                        "TopK K is stored in the external data file; ONNX Runtime refuses to load such "
                        "graphs (shape inference cannot read it) — save with a size_threshold that keeps "
                        "small tensors inline (onnx default 1024 bytes)")
                if k is not None and k >= TOPK_MAX_K:
                    add("error", "TOPK_K_TOO_LARGE", name, f"TopK K={k} >= {TOPK_MAX_K}, TensorRT's limit")
                if spec["topk_wants_sorted"] and not info.get("sorted", True):
                    add("error", "TOPK_UNSORTED", name,
                        f"TopK sorted=0 is rejected by TensorRT {tname}; export with sorted=True "
                        "(sort the indices afterwards)")

            if op in SCATTER_OPS:
                reduction = _attr(node, "reduction", b"none")
                if isinstance(reduction, bytes):
                    reduction = reduction.decode()
                if reduction != "none" and spec["scatter_reduction_ignored"]:
                    add("error", "SCATTER_REDUCTION_IGNORED", name,
                        f"{op} reduction={reduction!r} is ignored by the TensorRT {tname} parser (plain "
                        "assignment, wrong numbers); express merges as a one-hot matrix MatMul")
                mean_like = False
                if not in_subgraph and node.output:
                    nxt = consumers.get(node.output[0], [])
                    if reduction == "add" and any(c.op_type == "Div" for c in nxt):
                        mean_like = True  # sum-then-divide: a scatter mean
                if reduction == "none" and len(node.input) > 1 and node.input[1] not in consts:
                    mean_like = True  # dynamo maps scatter_reduce(mean) to reduction="none"
                if mean_like:
                    add("warning", "SCATTER_MEAN_LIKE", name,
                        f"{op} (reduction={reduction!r}) with run-time indices looks like a scatter "
                        "mean/merge; duplicate indices give last-write-wins or ignored reductions on "
                        "TensorRT — use a one-hot assignment matrix, MatMul, divide by counts")

            if op.startswith("Reduce") and len(node.input) >= 2 and node.input[1]:
                axes_name = node.input[1]
                if spec["reduce_axes_input_ignored"] and op in REDUCE_OPS_AXES18:
                    add("error", "REDUCE_AXES_INPUT", name,
                        f"{op} takes `axes` as an input (opset 18 form); the TensorRT {tname} parser "
                        "ignores it and reduces over ALL axes silently; export with opset <= 17")
                elif axes_name not in consts:
                    add("error" if spec["reduce_axes_input_ignored"] else "warning",
                        "REDUCE_AXES_NOT_CONSTANT", name,
                        f"{op} axes come from a run-time tensor; TensorRT needs constant axes")

    return findings
