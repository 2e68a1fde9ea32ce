"""Export a (possibly reduced) model to a static-keep ONNX graph.

Opset <= 17 uses torch's TorchScript exporter: torch 2.13's dynamo exporter only implements opset
>= 18 and its down-conversion fails on these graphs, and opset 18's ``axes`` inputs of Reduce* ops
are silently ignored by TensorRT 8.6's parser (static-export.md). The graph is written as a single
file (no external data) when it fits in 2 GB. After export, the declared input/output shapes are
pinned to the shapes PyTorch produced (batch symbolic when dynamic), checked by strict shape
inference, and the outputs are compared with PyTorch by the caller (verify.parity).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from .errors import TokexportError
from .onnx_tools import check_shapes, set_io_shapes

INPUT_NAME = "pixel_values"


class ExportError(TokexportError):
    exit_code = 1


class _Named(nn.Module):
    """Wraps a function returning named tensors as a module returning a tuple (fixed order)."""

    def __init__(self, model: nn.Module, fn: Callable[[torch.Tensor], dict[str, torch.Tensor]], names: list[str]):
        super().__init__()
        self.model = model  # registers parameters for the exporter
        self.fn = fn
        self.names = names

    def forward(self, pixel_values, *extra):
        out = self.fn(pixel_values, *extra)
        return tuple(out[n] for n in self.names)


@dataclass
class ExportInfo:
    path: Path
    exporter: str
    opset: int
    output_names: list[str]
    output_shapes: dict[str, list]


def choose_exporter(opset: int, exporter: str) -> str:
    if exporter == "auto":
        return "torchscript" if opset <= 17 else "dynamo"
    if exporter == "dynamo" and opset < 18:
        raise ExportError(
            f"export.exporter: dynamo emits opset >= 18 only, but export.opset is {opset}; use exporter: auto"
        )
    return exporter


def run_exporter(
    module: nn.Module,
    args: tuple,
    path: Path,
    opset: int,
    exporter: str,
    input_names: list[str],
    output_names: list[str],
    dynamic_batch: bool,
) -> onnx.ModelProto:
    """torch.onnx.export with the chosen exporter (quiet; batch the only dynamic axis when asked), then
    load the graph back and check it carries the requested opset. ExportError on any failure."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            if exporter == "torchscript":
                axes = {n: {0: "batch"} for n in (*input_names, *output_names)} if dynamic_batch else None
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=False,
                    input_names=input_names,
                    output_names=output_names,
                    opset_version=opset,
                    dynamic_axes=axes,
                    do_constant_folding=True,
                )
            else:
                batch = torch.export.Dim("batch", min=1, max=1024)
                shapes = tuple({0: batch} for _ in args) if dynamic_batch else None
                prog = torch.onnx.export(
                    module,
                    args,
                    dynamo=True,
                    dynamic_shapes=shapes,
                    input_names=input_names,
                    output_names=output_names,
                    opset_version=opset,
                    external_data=False,
                )
                prog.save(str(path), external_data=False)
        except Exception as e:
            raise ExportError(f"ONNX export failed ({exporter}, opset {opset}): {str(e).splitlines()[0][:300]}") from e
    m = onnx.load(str(path))
    got = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    if got != opset:
        raise ExportError(f"the {exporter} exporter wrote opset {got}, not the requested {opset}")
    return m


def pin_shapes(m: onnx.ModelProto, path: Path, shapes: dict[str, list], check: bool = True) -> None:
    """Declare the inputs/outputs with the shapes PyTorch produced, check them by strict shape inference
    (unless ``check`` is False: :func:`finish_graph` checks the folded / fp16 graph anyway), save."""
    set_io_shapes(m, shapes)
    if check:
        try:
            check_shapes(m)
        except ValueError as e:
            raise ExportError(f"exported graph failed shape checks: {e}") from e
    onnx.save(m, str(path))


def export_onnx(
    model: nn.Module,
    fn: Callable[..., dict[str, torch.Tensor]],
    example: torch.Tensor,
    path: Path,
    opset: int,
    dynamic_batch: bool,
    exporter: str = "auto",
    check_shapes: bool = True,
    extra_inputs: dict[str, torch.Tensor] | None = None,
) -> ExportInfo:
    """Export ``fn`` (the model's forward, returning named outputs) at ``example``'s shape to ``path``, with
    the I/O shapes declared; ``check_shapes=False`` when :func:`finish_graph` will run (it checks the result).
    ``extra_inputs``: further named inputs after ``pixel_values`` (same batch axis), passed to ``fn`` in order."""
    exporter = choose_exporter(opset, exporter)
    extra = dict(extra_inputs or {})
    with torch.inference_mode():
        ref = fn(example, *extra.values())
    names = list(ref)
    module = _Named(model, fn, names).eval()
    path = Path(path)
    m = run_exporter(
        module, (example, *extra.values()), path, opset, exporter, [INPUT_NAME, *extra], names, dynamic_batch
    )
    batch = "batch" if dynamic_batch else int(example.shape[0])
    shapes = {INPUT_NAME: [batch, *example.shape[1:]], **{n: [batch, *t.shape[1:]] for n, t in extra.items()}}
    for n, t in ref.items():
        shapes[n] = [batch, *t.shape[1:]]
    pin_shapes(m, path, shapes, check_shapes)
    return ExportInfo(
        path=path, exporter=exporter, opset=opset, output_names=names, output_shapes={n: shapes[n] for n in names}
    )


# --- after export: folding and precision (every task, through the driver) -----------------------------

# Ops kept in float32 in an fp16 graph, on top of ONNX Runtime's default block list (TopK, Range, CumSum,
# Min/Max, ... : index and selection arithmetic). LayerNormalization and Softmax accumulate over a whole
# row (NVIDIA's TensorRT guidance keeps them in fp32 against overflow); on DINOv2-S they also lowered the
# baseline's mean error vs PyTorch by ~12% (docs/export.md).
FP16_KEEP_FP32 = ("LayerNormalization", "Softmax")


def to_fp16(model: onnx.ModelProto, keep_io_types: bool = True) -> onnx.ModelProto:
    """An fp16 copy of ``model`` (weights and activations), float32 inputs/outputs when ``keep_io_types``,
    :data:`FP16_KEEP_FP32` and ONNX Runtime's default block list left in float32 (onnxruntime.transformers)."""
    from onnxruntime.transformers import float16

    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        return float16.convert_float_to_float16(
            model, keep_io_types=keep_io_types, op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32]
        )


def finish_graph(path: Path, fold: bool = True, precision: str = "fp32") -> dict:
    """Fold (:mod:`tokexport.fold`) and/or convert to fp16 the exported graph at ``path``, in place; the
    result is re-checked by strict shape inference (declared I/O shapes, dynamic batch included) before it
    replaces the file. Returns the node counts: ``{"exported": n, "folded": n, "fp16": n}`` (the steps run)."""
    from .fold import FoldError, fold_graph, toposort

    path = Path(path)
    m = onnx.load(str(path))
    nodes = {"exported": len(m.graph.node)}
    if fold:
        try:
            m = fold_graph(m, path.parent)
        except FoldError as e:
            raise ExportError(f"folding {path.name} failed: {e}; set export.fold: false to ship it unfolded") from e
        nodes["folded"] = len(m.graph.node)
    if precision == "fp16":
        m = to_fp16(m)
        toposort(m)  # the converter appends the input casts at the end
        nodes["fp16"] = len(m.graph.node)
    if len(nodes) > 1:
        try:
            check_shapes(m)
        except ValueError as e:
            raise ExportError(
                f"{path.name} after {' and '.join(k for k in nodes if k != 'exported')} failed shape checks: {e}"
            ) from e
        tmp = path.with_name(path.name + ".finish")
        onnx.save(m, str(tmp))
        tmp.replace(path)
    return nodes


def finish_graphs(graphs, export_config, stages=None) -> dict:
    """:func:`finish_graph` on both exported graphs (``model.onnx``, ``baseline.onnx``) with the recipe's
    ``export.fold`` / ``export.precision``; the report's ``export`` additions (node counts, precision).
    Called by the driver right after ``task.export``, so parity and every later stage read the final graphs."""
    fold = bool(getattr(export_config, "fold", True))
    precision = getattr(export_config, "precision", "fp32")
    if not fold and precision == "fp32":
        return {"fold": False, "precision": "fp32"}
    steps = " + ".join(s for s, on in (("fold", fold), ("fp16", precision == "fp16")) if on)
    nodes = {}
    ctx = stages.stage(f"export: {steps}", total=2) if stages is not None else contextlib.nullcontext(lambda n=1: None)
    from concurrent.futures import ThreadPoolExecutor

    with ctx as advance, ThreadPoolExecutor(2) as pool:  # ONNX Runtime's passes release the GIL: both at once
        jobs = {
            name: pool.submit(finish_graph, p, fold, precision)
            for name, p in (("model", graphs.model), ("baseline", graphs.baseline))
        }
        for name, job in jobs.items():
            nodes[name] = job.result()
            advance()
    return {"fold": fold, "precision": precision, "nodes": nodes}
