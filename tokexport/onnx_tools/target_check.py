"""The static (no GPU) check of a graph against a deployment target (:func:`check_target`):
:mod:`tokexport.targets` says what each target accepts (opset, operators, per-operator constraints); this
module finds every node, declared shape or opset that target would reject or build into wrong numbers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from tokexport.targets import (
    CONTROL_FLOW_OPS,
    DATA_DEPENDENT_SHAPE_OPS,
    REDUCE_AXES18_OPS,
    RESIZE_COORD_MODES,
    TOPK_MAX_K,
    Target,
)
from tokexport.targets import resolve as resolve_target

from .findings import Finding, TargetCheck
from .graph_files import PathLike, iter_graphs, load
from .inspection import const_array, constant_values, default_opset, node_attr, topk_info, value_shape
from .lint import polygraphy_lint

# How to fix an operator a TensorRT target has no importer for.
_UNSUPPORTED_FIX = {
    "LayerNormalization": "export with opset <= 16 (the exporter then decomposes LayerNorm into supported ops)",
    "Unique": "keep a constant number of elements: TopK with a constant K + Gather",
    "Compress": "keep a constant number of elements: TopK with a constant K + Gather",
}


def _str_attr(node: onnx.NodeProto, name: str, default: str) -> str:
    v = node_attr(node, name, default)
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
    if int(node_attr(node, "antialias", 0)):
        return "antialias=1"
    inner = {"linear": 3, "cubic": 2}.get(mode)
    scales = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    arr = const_array(scales, base_dir) if (inner and scales is not None) else None
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

    opset = default_opset(model)
    _check_opset(opset, tgt, add)
    _check_io_shapes(model, add)
    _check_nodes(model, _NodeContext.of(model, tgt, base_dir), add)

    lint_summary = None
    if lint and base_dir is not None:
        lint_summary, lint_findings = polygraphy_lint(label)
        findings += lint_findings
    return TargetCheck(tgt, label, opset, findings, lint_summary)


Add = Callable[..., None]  # add(level, code, node, message, fix="", op=None): one Finding


def _check_opset(opset: int | None, tgt: Target, add: Add) -> None:
    if opset is None:
        add(
            "error",
            "NO_DEFAULT_OPSET",
            None,
            "the model imports no default-domain (ai.onnx) opset",
            "re-export the model with tokexport",
        )
    elif opset > tgt.max_opset:
        add(
            "error",
            "OPSET_TOO_NEW",
            None,
            f"opset {opset} > {tgt.max_opset}, the highest {tgt.label} reads faithfully",
            f"re-export with export.opset: {tgt.opset} (export.target: {tgt.name})",
        )


def _check_io_shapes(model: onnx.ModelProto, add: Add) -> None:
    """Declared graph inputs and outputs: a known rank, every axis but the batch static."""
    init_names = {t.name for t in model.graph.initializer}
    for kind, vis in (("input", model.graph.input), ("output", model.graph.output)):
        for vi in vis:
            if vi.name in init_names:
                continue
            shape = value_shape(vi)
            if shape is None:
                add(
                    "error",
                    "UNKNOWN_RANK",
                    vi.name,
                    f"graph {kind} {vi.name!r} has no declared shape",
                    "declare static dims (onnx_tools.set_io_shapes) and re-check with check_shapes",
                )
                continue
            bad = [(ax, d) for ax, d in enumerate(shape) if ax > 0 and not isinstance(d, int)]
            if bad:
                desc = ", ".join(f"axis {ax}={d!r}" for ax, d in bad)
                add(
                    "error",
                    "DYNAMIC_DIM",
                    vi.name,
                    f"graph {kind} {vi.name!r} has symbolic non-batch dims ({desc})",
                    "only the batch axis may be dynamic: export with constant token counts and image size",
                )


@dataclass
class _NodeContext:
    """What the per-node checks read besides the node: the target, the main graph's constants, its TopK
    nodes and the consumers of each value."""

    tgt: Target
    who: str
    consts: dict[str, TensorProto]
    topk: dict[str, dict]
    consumers: dict[str, list[onnx.NodeProto]]
    base_dir: Path | None

    @classmethod
    def of(cls, model: onnx.ModelProto, tgt: Target, base_dir: Path | None) -> _NodeContext:
        who = f"TensorRT {tgt.tensorrt}" if tgt.is_tensorrt else "ONNX Runtime"
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for inp in node.input:
                consumers.setdefault(inp, []).append(node)
        return cls(
            tgt, who, constant_values(model), {t["node"]: t for t in topk_info(model, base_dir)}, consumers, base_dir
        )


def _check_nodes(model: onnx.ModelProto, c: _NodeContext, add: Add) -> None:
    """Every node of the graph and its subgraphs, in order: the operator, then its own constraints."""
    for g in iter_graphs(model.graph):
        in_subgraph = g is not model.graph
        for i, node in enumerate(g.node):
            name = node.name or f"{node.op_type}_{i}"
            if node.domain not in ("", "ai.onnx"):
                _check_custom_op(node, name, c, add)
                continue
            for check in (_check_operator, _check_topk, _check_scatter, _check_reduce, _check_other_ops):
                check(node, name, in_subgraph, c, add)


def _check_custom_op(node: onnx.NodeProto, name: str, c: _NodeContext, add: Add) -> None:
    op = node.op_type
    if c.tgt.is_tensorrt:
        add(
            "error",
            "CUSTOM_OP",
            name,
            f"{node.domain}::{op} is not an ONNX operator; {c.who} has no importer for it",
            "export without custom-domain ops (or ship a TensorRT plugin)",
            op,
        )
    elif node.domain not in ("com.microsoft", "ai.onnx.ml"):
        add(
            "error",
            "CUSTOM_OP",
            name,
            f"{node.domain}::{op} is not known to ONNX Runtime",
            "export without custom-domain ops",
            op,
        )


def _check_operator(node: onnx.NodeProto, name: str, in_subgraph: bool, c: _NodeContext, add: Add) -> None:
    """The operator itself: parsed by the target, a static output shape, no control flow on TensorRT."""
    op, tgt, who = node.op_type, c.tgt, c.who
    if tgt.ops is not None and op not in tgt.ops:
        add(
            "error",
            "UNSUPPORTED_OP",
            name,
            f"{op} is not supported by the {who} ONNX parser",
            _UNSUPPORTED_FIX.get(op, "replace it with supported operators at export time"),
            op,
        )
    elif tgt.ops is None and not onnx.defs.has(op):
        add("error", "UNSUPPORTED_OP", name, f"{op} is not a standard ONNX operator", "re-export the model", op)

    if op in DATA_DEPENDENT_SHAPE_OPS:
        add(
            "error",
            "DATA_DEPENDENT_SHAPE",
            name,
            f"{op} has a data-dependent output shape",
            "keep a constant number of tokens: TopK with a constant K + Gather",
            op,
        )
    if op in CONTROL_FLOW_OPS and tgt.is_tensorrt:
        add(
            "error",
            "CONTROL_FLOW",
            name,
            f"{op} (control flow) in a graph whose shapes are all static: "
            "TensorRT builds it as a conditional/loop layer (slow, restricted on DLA) where a plain op "
            "would do",
            "export without it (e.g. index a size-1 axis instead of squeeze, unroll loops)",
            op,
        )


def _check_topk(node: onnx.NodeProto, name: str, in_subgraph: bool, c: _NodeContext, add: Add) -> None:
    """TopK of the main graph: K a constant (an initializer where the target needs one), inline, below
    TensorRT's limit; sorted where the target requires it."""
    op, tgt, who, consts = node.op_type, c.tgt, c.who, c.consts
    if op != "TopK" or in_subgraph:
        return
    info = c.topk.get(name) or {}
    k = info.get("k")
    if not info.get("k_constant"):
        level = "error" if tgt.topk_k_initializer else "warning"
        add(
            level,
            "TOPK_K_NOT_CONSTANT",
            name,
            "TopK K is computed at run time"
            + (f"; {who} requires it as an initializer" if level == "error" else ": the kept count is not static"),
            "make K a Python int at export time, or fold constants (`polygraphy surgeon sanitize --fold-constants`)",
            op,
        )
    elif (
        len(node.input) > 1 and node.input[1] in consts and consts[node.input[1]].data_location == TensorProto.EXTERNAL
    ):
        add(
            "warning",
            "TOPK_K_EXTERNAL",
            name,
            "TopK K is stored in the external data file; ONNX Runtime refuses such graphs",
            "save with a size_threshold that keeps small tensors inline (onnx default 1024 bytes)",
            op,
        )
    if tgt.is_tensorrt and k is not None and k >= TOPK_MAX_K:
        add(
            "error",
            "TOPK_K_TOO_LARGE",
            name,
            f"TopK K={k} >= {TOPK_MAX_K}, TensorRT's limit",
            f"keep fewer than {TOPK_MAX_K} tokens per TopK (split the selection)",
            op,
        )
    if tgt.topk_sorted_required and not info.get("sorted", True):
        add(
            "error",
            "TOPK_UNSORTED",
            name,
            f"TopK sorted=0 is rejected by {who}",
            "export TopK with sorted=True and sort the indices afterwards",
            op,
        )


def _check_scatter(node: onnx.NodeProto, name: str, in_subgraph: bool, c: _NodeContext, add: Add) -> None:
    """Scatter reductions the target ignores or rejects, and scatters that look like a mean or a merge."""
    op, tgt, who, consts = node.op_type, c.tgt, c.who, c.consts
    if op not in ("ScatterElements", "ScatterND", "Scatter"):
        return
    reduction = _str_attr(node, "reduction", "none")
    if reduction != "none" and tgt.scatter_reduction_ignored:
        add(
            "error",
            "SCATTER_REDUCTION_IGNORED",
            name,
            f"{op} reduction={reduction!r} is ignored by the {who} parser (plain assignment: wrong numbers, no error)",
            "express merges as a one-hot matrix MatMul, divide by counts",
            op,
        )
    elif reduction != "none" and op == "ScatterND" and tgt.scatter_nd_reduction_rejected:
        add(
            "error",
            "SCATTER_ND_REDUCTION",
            name,
            f"ScatterND reduction={reduction!r} is rejected by {who}",
            "express merges as a one-hot matrix MatMul, divide by counts",
            op,
        )
    mean_like = False
    if not in_subgraph and node.output:
        nxt = c.consumers.get(node.output[0], [])
        mean_like = reduction == "add" and any(n.op_type == "Div" for n in nxt)  # sum then divide
    if reduction == "none" and len(node.input) > 1 and node.input[1] not in consts and not in_subgraph:
        mean_like = True  # torch's dynamo exporter maps scatter_reduce(mean) to reduction="none"
    if mean_like:
        add(
            "warning",
            "SCATTER_MEAN_LIKE",
            name,
            f"{op} (reduction={reduction!r}) with run-time indices looks like a scatter mean/merge: "
            "duplicate indices give last-write-wins or a dropped reduction",
            "use a one-hot assignment matrix, MatMul, divide by counts",
            op,
        )


def _check_reduce(node: onnx.NodeProto, name: str, in_subgraph: bool, c: _NodeContext, add: Add) -> None:
    """Reduce* with ``axes`` as an input (opset 18): ignored by some parsers, a constant for others."""
    op, tgt, who = node.op_type, c.tgt, c.who
    if op.startswith("Reduce") and len(node.input) >= 2 and node.input[1]:
        if tgt.reduce_axes_input_ignored and op in REDUCE_AXES18_OPS:
            add(
                "error",
                "REDUCE_AXES_INPUT",
                name,
                f"{op} takes `axes` as an input (opset 18 form); the {who} parser ignores it and "
                "reduces over ALL axes, silently",
                "export with opset <= 17 (axes as an attribute)",
                op,
            )
        elif tgt.reduce_axes_initializer and node.input[1] not in c.consts and not in_subgraph:
            add(
                "error",
                "REDUCE_AXES_NOT_CONSTANT",
                name,
                f"{op} axes come from a run-time tensor; {who} needs them as an initializer",
                "fold constants before export",
                op,
            )


def _check_other_ops(node: onnx.NodeProto, name: str, in_subgraph: bool, c: _NodeContext, add: Add) -> None:
    """Einsum forms, Resize modes, CumSum and Pad axes, LayerNormalization's extra outputs."""
    op, tgt, who, consts = node.op_type, c.tgt, c.who, c.consts
    trt = tgt.is_tensorrt
    if op == "Einsum" and tgt.einsum_restricted:
        problem = _einsum_problem(_str_attr(node, "equation", ""))
        if problem:
            add(
                "error",
                "EINSUM_FORM",
                name,
                f"Einsum {problem}: not supported by {who}",
                "write the contraction as MatMul/Transpose/ReduceSum, or target tensorrt-10",
                op,
            )

    if op == "Resize" and trt:
        problem = _resize_problem(node, consts, c.base_dir)
        if problem:
            add(
                "error",
                "RESIZE_MODE",
                name,
                f"Resize {problem}: not supported by {who}",
                "resize with nearest/linear/cubic on the innermost axes only",
                op,
            )
    if op == "CumSum" and trt and len(node.input) > 1 and node.input[1] not in consts and not in_subgraph:
        add(
            "error",
            "CUMSUM_AXIS",
            name,
            f"CumSum axis must be an initializer for {who}",
            "make the axis a constant",
            op,
        )
    if (
        op == "Pad"
        and tgt.pad_axes_initializer
        and len(node.input) > 3
        and node.input[3]
        and node.input[3] not in consts
        and not in_subgraph
    ):
        add("error", "PAD_AXES", name, f"Pad axes must be an initializer for {who}", "make them constant", op)
    if op == "LayerNormalization" and tgt.layernorm_y_only and any(node.output[1:]):
        add(
            "error",
            "LAYERNORM_EXTRA_OUTPUTS",
            name,
            f"{who} supports only LayerNormalization's first output (Y)",
            "do not use Mean/InvStdDev outputs",
            op,
        )
