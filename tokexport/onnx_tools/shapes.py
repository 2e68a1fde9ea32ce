"""Declared input/output shapes: set them (:func:`set_io_shapes`) and check them against what the graph
computes (:func:`check_shapes`: onnx.checker and strict shape inference, on a copy without the weights)."""

from __future__ import annotations

import numpy as np
import onnx


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
            raise ValueError(
                f"ONNX checker failed: initializer {t.name} holds {len(t.raw_data)} bytes, "
                f"its dims {list(t.dims)} need {size}"
            )
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
