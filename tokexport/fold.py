"""Fold what is constant in an exported graph for its static shapes (``export.fold``, on by default).

The TorchScript exporter leaves shape arithmetic in the graph (``Shape → Gather → Unsqueeze → Concat
→ Reshape`` chains, the position-embedding interpolation's ``Resize`` of a constant table, ``Where``
guards on dimensions) that is constant once the token counts are static. Folding it gives TensorRT's
parser and ONNX Runtime fewer nodes and the same numbers. Three passes, chosen by measurement against
onnxslim, onnxsim and ONNX Runtime alone on DINOv2-S (docs/export.md):

1. ONNX Runtime's offline optimizer at the *basic* level only (constant folding, redundant nodes).
   Basic-level rewrites stay in the ONNX domain; the extended level would write ``com.microsoft``
   contrib ops TensorRT cannot read, and :func:`fold_graph` refuses any such op.
2. ONNX Runtime's symbolic shape inference: integer tensors it proves static become initializers, and
   a ``Reshape`` whose computed target has exactly one symbolic dimension (the batch) gets a constant
   target with ``-1`` there; the shape arithmetic feeding them becomes dead and is dropped.
3. The basic-level optimizer again (what step 2 freed: the ``Resize`` of the position embeddings).

Inputs, outputs, their names, types and declared shapes (the dynamic batch included) are unchanged;
the caller re-checks shapes and compares the final graph with PyTorch (the driver's parity stage).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

STANDARD_DOMAINS = ("", "ai.onnx")


class FoldError(RuntimeError):
    """A folding pass produced a graph that is not a faithful, standard-domain copy of its input."""


def _io_signature(model: onnx.ModelProto) -> list:
    return [(vi.name, vi.type.SerializeToString()) for vi in (*model.graph.input, *model.graph.output)]


def _ort_basic(model: onnx.ModelProto, workdir: Path) -> onnx.ModelProto:
    """ONNX Runtime's basic-level graph optimizations, written out offline (CPU provider)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    fd, name = tempfile.mkstemp(suffix=".onnx", dir=workdir)
    os.close(fd)
    try:
        so.optimized_model_filepath = name
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        out = onnx.load(name)
    finally:
        Path(name).unlink(missing_ok=True)
    return out


def _const_inputs(model: onnx.ModelProto) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    return names


def _symbolic(model: onnx.ModelProto):
    """ONNX Runtime's symbolic shape inference over ``model``: the inference object (``out_mp_`` with
    value_info, ``sympy_data_`` with the values of shape tensors), or None when it cannot follow the
    graph. Run step by step as ``SymbolicShapeInference.infer_shapes`` does, without its debug dump of
    an incompletely inferred model into the working directory."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        ssi = SymbolicShapeInference(2**31 - 1, True, False, 0)
        ssi._preprocess(model)
        while ssi.run_:
            ssi._infer_impl()
        ssi._update_output_from_vi()
    except Exception:  # noqa: BLE001  (a graph it cannot follow is left as folded so far)
        return None
    return ssi


def _static_int(value) -> np.ndarray | None:
    """A shape tensor's symbolic value as an int array when every element is a plain integer."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for v in items:
        if isinstance(v, (bool, np.bool_)):
            return None
        if isinstance(v, (int, np.integer)):
            out.append(int(v))
            continue
        if getattr(v, "is_Integer", False):  # a sympy integer (no free symbol)
            out.append(int(v))
            continue
        return None
    arr = np.array(out, dtype=np.int64)
    return arr if isinstance(value, (list, tuple)) else arr.reshape(())


_INT_TYPES = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32}


def fold_static_shapes(model: onnx.ModelProto) -> tuple[int, int]:
    """Replace what symbolic shape inference proves constant: integer shape tensors with static values
    become initializers (their producing nodes dropped), and each Reshape whose computed target shape
    has exactly one symbolic dimension (the batch) gets a constant target with ``-1`` there. In place;
    returns (tensors made constant, reshapes rewritten). Follow with :func:`drop_dead`."""
    ssi = _symbolic(model)
    if ssi is None:
        return 0, 0
    vis = {vi.name: vi for vi in (*ssi.out_mp_.graph.value_info, *ssi.out_mp_.graph.output)}
    consts = _const_inputs(model)
    graph_outputs = {o.name for o in model.graph.output}
    keep, folded = [], 0
    for node in model.graph.node:
        out = node.output[0] if len(node.output) == 1 else None
        vi = vis.get(out) if out else None
        value = ssi.sympy_data_.get(out) if out else None
        if (
            value is not None
            and vi is not None
            and out not in graph_outputs
            and node.op_type != "Constant"
            and vi.type.tensor_type.elem_type in _INT_TYPES
        ):
            arr = _static_int(value)
            rank = len(vi.type.tensor_type.shape.dim) if vi.type.tensor_type.HasField("shape") else None
            if arr is not None and rank == arr.ndim:
                model.graph.initializer.append(
                    numpy_helper.from_array(arr.astype(_INT_TYPES[vi.type.tensor_type.elem_type]), out)
                )
                folded += 1
                continue
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    consts = _const_inputs(model)
    taken = consts | {o for n in model.graph.node for o in n.output}
    reshaped = 0
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] in consts:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue
        vi = vis.get(node.output[0])
        if vi is None or not vi.type.tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
        if not dims or sum(d is None for d in dims) != 1 or any(d == 0 for d in dims):
            continue
        name = f"{node.name or node.output[0]}__shape"
        while name in taken:
            name += "_"
        taken.add(name)
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([-1 if d is None else d for d in dims], dtype=np.int64), name)
        )
        node.input[1] = name
        reshaped += 1
    return folded, reshaped


def drop_dead(model: onnx.ModelProto) -> None:
    """Remove nodes none of whose outputs reach a graph output, then unused initializers. In place."""
    needed = {o.name for o in model.graph.output}
    keep = []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
            for a in node.attribute:  # subgraphs read outer names
                for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    needed.update(i for n in g.node for i in n.input)
    keep.reverse()
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = [t for t in model.graph.initializer if t.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(used)
    vis = [vi for vi in model.graph.value_info if vi.name in needed]
    del model.graph.value_info[:]
    model.graph.value_info.extend(vis)


def fold_graph(model: onnx.ModelProto, workdir: Path) -> onnx.ModelProto:
    """The folded copy of ``model`` (see the module doc). ``workdir``: where ONNX Runtime may write its
    temporary optimized file (the export's own staging directory). FoldError when a pass changed the
    graph's inputs/outputs or wrote an operator outside the ONNX domain."""
    before = _io_signature(model)
    opsets = {o.domain: o.version for o in model.opset_import}
    out = _ort_basic(model, Path(workdir))
    if any(fold_static_shapes(out)):
        drop_dead(out)
        out = _ort_basic(out, Path(workdir))  # folds what the constant shapes freed (the Resize of a constant table)
    foreign = sorted({n.domain for n in out.graph.node if n.domain not in STANDARD_DOMAINS})
    if foreign:
        raise FoldError(f"folding wrote operators of domain(s) {foreign}; only the ONNX domain is allowed")
    if _io_signature(out) != before:
        raise FoldError("folding changed the graph's inputs or outputs")
    got = {o.domain: o.version for o in out.opset_import if o.domain in STANDARD_DOMAINS}
    want = {d: v for d, v in opsets.items() if d in STANDARD_DOMAINS}
    if set(got.values()) != set(want.values()):
        raise FoldError(f"folding changed the opset from {want} to {got}")
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    return out


def toposort(model: onnx.ModelProto) -> None:
    """Order the main graph's nodes so each comes after the producers of its inputs (stable: the
    existing order where it already is one). In place; converters that append nodes need it."""
    known = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending = list(model.graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            needs = set(node.input)
            for a in node.attribute:
                for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    inner = (
                        {o for n in g.node for o in n.output}
                        | {i.name for i in g.input}
                        | {t.name for t in g.initializer}
                    )
                    needs |= {i for n in g.node for i in n.input if i not in inner}
            if needs <= known:
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise FoldError(f"graph has a cycle or an undefined input near node {rest[0].name or rest[0].op_type}")
        pending = rest
    del model.graph.node[:]
    model.graph.node.extend(ordered)
