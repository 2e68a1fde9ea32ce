"""What a graph holds, read from the protobuf without its external data: the summary `tokexport inspect`
prints (:func:`inspect_model`), and the readers the target checks share (declared shapes, node attributes,
constant values, TopK nodes)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph_files import PathLike, iter_graphs, onnx_files, parse_graph_file


def _dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # noqa: BLE001
        return TensorProto.DataType.Name(elem_type).lower()


def value_shape(vi: onnx.ValueInfoProto) -> list[int | str] | None:
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
    return {"name": vi.name, "dtype": _dtype_name(vi.type.tensor_type.elem_type), "shape": value_shape(vi)}


def default_opset(model: onnx.ModelProto) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def node_attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def constant_values(model: onnx.ModelProto) -> dict[str, TensorProto]:
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


def const_array(tensor: TensorProto, base_dir: Path | None = None) -> np.ndarray | None:
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


def topk_info(model: onnx.ModelProto, base_dir: Path | None = None) -> list[dict]:
    consts = constant_values(model)
    opset = default_opset(model) or 0
    out = []
    for i, node in enumerate(model.graph.node):
        if node.op_type != "TopK" or node.domain not in ("", "ai.onnx"):
            continue
        k: int | None = None
        k_const = False
        if opset < 10 or len(node.input) < 2:
            kv = node_attr(node, "k")
            if kv is not None:
                k, k_const = int(kv), True
        else:
            t = consts.get(node.input[1])
            if t is not None:
                k_const = True
                arr = const_array(t, base_dir)
                if arr is not None and arr.size == 1:
                    k = int(arr.reshape(-1)[0])
        out.append(
            {
                "node": node.name or f"TopK_{i}",
                "k": k,
                "k_constant": k_const,
                "largest": bool(node_attr(node, "largest", 1)),
                "sorted": bool(node_attr(node, "sorted", 1)),
                "axis": int(node_attr(node, "axis", -1)),
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
    model = parse_graph_file(p)
    hist = Counter(n.op_type for g in iter_graphs(model.graph) for n in g.node)
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
        "topk": topk_info(model, p.parent),
        "params": params,
        "file_bytes": sum(f.stat().st_size for f in files),
        "files": [str(f) for f in files],
    }
