"""Deployment targets: which runtime parses the exported graph, at which opset, with which operators.

A Jetson's TensorRT version is fixed by its JetPack, so a recipe names the device (``jetpack-6.0``) or
the TensorRT release (``tensorrt-8.6``) and everything else follows from this table: the opset to
export with, the highest opset the ONNX parser reads faithfully, the operator allow-list, and the
per-operator constraints :func:`tokexport.onnx_tools.check_target` enforces.

Sources (read for this table; see docs/tensorrt.md for how each row was checked):
- JetPack → TensorRT: JetPack 5.1/5.1.1 "packages CUDA 11.4, TensorRT 8.5.2, cuDNN 8.6.0"
  (https://developer.nvidia.com/embedded/jetpack-sdk-51, .../jetpack-sdk-511; 5.1.2-5.1.5 keep that
  compute stack); JetPack 6.0 (Jetson Linux 36.3) ships TensorRT 8.6.2
  (https://docs.nvidia.com/jetson/archives/jetpack-archived/jetpack-60/release-notes/index.html);
  JetPack 6.1 and 6.2 ship TensorRT 10.3 with CUDA 12.6 and cuDNN 9.3
  (https://docs.nvidia.com/jetson/archives/jetpack-archived/jetpack-61/release-notes/index.html).
- Operators and constraints: onnx-tensorrt ``docs/operators.md`` and the importers on the
  release/8.5-GA, release/8.6-GA and release/10.1-GA branches (https://github.com/onnx/onnx-tensorrt);
  10.1 is the newest 10.x table available here and is used for 10.3 (10.2/10.3 only added operators).
- Current TensorRT (docs/tensorrt.md lists every page with what it says): TensorRT 10.16.1 is the
  newest 10.x (https://docs.nvidia.com/deeplearning/tensorrt/latest/ "What's New in 10.16.1"); TensorRT
  11.x networks are always strongly typed, --fp16 and BuilderFlag.FP16 are removed and fp16 must be in
  the ONNX graph (https://docs.nvidia.com/deeplearning/tensorrt/11.4.1/api/migration/tensorrt-10x-to-11x-trtexec.html);
  the 11.x parser reads opset <= 25 from 11.5 on (ONNX Opset Guide; 11.5 release notes "Added support
  for ONNX opset 25"), so 24 is the bound for 11.0-11.4; 11.0 added Swish. JetPack 7.0/7.1 (Jetson
  Linux 38.2/38.4, Jetson Thor) ship TensorRT 10.13, and TensorRT 11.0-11.4.0 do not support JetPack:
  Jetson stays on its JetPack's TensorRT 10.x (11.4.1 supports JetPack 7.2.2+ only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from .errors import InputError

TargetName = Literal[
    "onnxruntime",
    "tensorrt-8.5",
    "tensorrt-8.6",
    "tensorrt-10",
    "tensorrt-10.16",
    "tensorrt-11",
    "jetpack-5.1",
    "jetpack-6.0",
    "jetpack-6.1",
    "jetpack-7.0",
]

# Every TensorRT version: ITopKLayer's K limit (operators.md 10.x: "K input must be less than 3840").
TOPK_MAX_K = 3840

_TRT_COMMON = frozenset(
    [
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GridSample",
        "GRU",
        "HardSwish",
        "HardSigmoid",
        "Identity",
        "If",
        "ImageScaler",
        "InstanceNormalization",
        "IsNaN",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Loop",
        "LRN",
        "LSTM",
        "LpNormalization",
        "LpPool",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "MeanVarianceNormalization",
        "Min",
        "Mod",
        "Mul",
        "Neg",
        "NonMaxSuppression",
        "NonZero",
        "Not",
        "OneHot",
        "Or",
        "Pad",
        "ParametricSoftplus",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Range",
        "Reciprocal",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "ReverseSequence",
        "RNN",
        "RoiAlign",
        "Round",
        "ScaledTanh",
        "Scan",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    ]
)
# operators.md rows marked Y, per branch (8.6 adds GroupNormalization, IsInf, LayerNormalization;
# 10.1 adds CastLike, DeformConv, Gelu, Hardmax, Mish).
TRT85_OPS = _TRT_COMMON
TRT86_OPS = _TRT_COMMON | {"GroupNormalization", "IsInf", "LayerNormalization"}
TRT10_OPS = TRT86_OPS | {"CastLike", "DeformConv", "Gelu", "Hardmax", "Mish"}
# 11.0 parser: "Added support for Swish operator" (DFT came with 11.2, through a plugin: not listed).
TRT11_OPS = TRT10_OPS | {"Swish"}

# Reductions whose `axes` moved from an attribute to an input at opset 18 (ReduceSum moved at 13).
REDUCE_AXES18_OPS = frozenset(
    {
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "ReduceProd",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceSumSquare",
    }
)
DATA_DEPENDENT_SHAPE_OPS = frozenset({"NonZero", "Unique", "Compress", "NonMaxSuppression"})
CONTROL_FLOW_OPS = frozenset({"Loop", "If", "Scan"})
RESIZE_COORD_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)


@dataclass(frozen=True)
class Target:
    """One deployment target. ``ops is None`` means every standard ONNX operator (ONNX Runtime)."""

    name: str
    runtime: Literal["onnxruntime", "tensorrt"]
    opset: int  # what tokexport exports with by default
    max_opset: int  # the highest opset the runtime reads faithfully
    tensorrt: str | None = None  # version on the device, e.g. "8.6.2"
    jetpack: str | None = None  # JetPack releases that ship this TensorRT
    ops: frozenset[str] | None = None
    # per-operator constraints (onnx-tensorrt operators.md / importers)
    topk_k_initializer: bool = False  # 8.5: "K input must be an initializer"
    topk_sorted_required: bool = False  # 10.x: "sorted must be 1"
    reduce_axes_input_ignored: bool = False  # 8.x: ReduceMean & co. drop an `axes` input: reduce ALL axes
    reduce_axes_initializer: bool = False  # `axes` input must be an initializer
    scatter_reduction_ignored: bool = False  # 8.x: addScatterLayer never reads `reduction`
    scatter_nd_reduction_rejected: bool = False  # 10.x: ScatterND "`reduction` is not supported"
    einsum_restricted: bool = False  # 8.x: no ellipsis, no diagonal, no broadcasting between inputs
    layernorm_y_only: bool = False  # 10.x: only the first LayerNormalization output
    pad_axes_initializer: bool = False  # 10.x: Pad `axes` must be an initializer
    # 11.x: every network is strongly typed (no --fp16 / BuilderFlag.FP16): engines take the graph's precision
    strongly_typed: bool = False
    note: str = ""

    @property
    def is_tensorrt(self) -> bool:
        return self.runtime == "tensorrt"

    @property
    def label(self) -> str:
        """Human name: ``jetpack-6.0 (TensorRT 8.6.2)``."""
        if not self.is_tensorrt:
            return self.name
        return f"{self.name} (TensorRT {self.tensorrt}" + (f", JetPack {self.jetpack})" if self.jetpack else ")")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "runtime": self.runtime,
            "tensorrt": self.tensorrt,
            "jetpack": self.jetpack,
            "opset": self.opset,
            "max_opset": self.max_opset,
            "strongly_typed": self.strongly_typed,
        }


_TRT8 = {
    "runtime": "tensorrt",
    "reduce_axes_input_ignored": True,
    "scatter_reduction_ignored": True,
    "einsum_restricted": True,
}

TARGETS: dict[str, Target] = {
    "onnxruntime": Target(
        "onnxruntime",
        "onnxruntime",
        opset=17,
        max_opset=21,
        note="ONNX Runtime on the device (CPU or CUDA EP); static shapes are still required by tokexport",
    ),
    "tensorrt-8.5": Target(
        "tensorrt-8.5",
        opset=16,
        max_opset=16,
        tensorrt="8.5.2",
        jetpack="5.1.x",
        ops=TRT85_OPS,
        topk_k_initializer=True,
        reduce_axes_initializer=True,
        **_TRT8,
        note="the 8.5 parser reads opset 17, but not LayerNormalization, which every opset-17 ViT export "
        "contains; tokexport exports 8.5 graphs at opset 16 (LayerNorm decomposed)",
    ),
    "tensorrt-8.6": Target(
        "tensorrt-8.6",
        opset=17,
        max_opset=17,
        tensorrt="8.6.2",
        jetpack="6.0",
        ops=TRT86_OPS,
        reduce_axes_initializer=True,
        **_TRT8,
    ),
    "tensorrt-10": Target(
        "tensorrt-10",
        "tensorrt",
        opset=17,
        max_opset=20,
        tensorrt="10.3",
        jetpack="6.1/6.2",
        ops=TRT10_OPS,
        topk_sorted_required=True,
        reduce_axes_initializer=True,
        scatter_nd_reduction_rejected=True,
        layernorm_y_only=True,
        pad_axes_initializer=True,
        note="opset 17 is the default: the dynamo exporter needed for >= 18 is not used for these graphs",
    ),
    "tensorrt-10.16": Target(
        "tensorrt-10.16",
        "tensorrt",
        opset=17,
        max_opset=20,
        tensorrt="10.16.1",
        ops=TRT10_OPS,
        topk_sorted_required=True,
        reduce_axes_initializer=True,
        scatter_nd_reduction_rejected=True,
        layernorm_y_only=True,
        pad_axes_initializer=True,
        note="the newest TensorRT 10.x; weak typing (--fp16) still works but is deprecated since 10.12: fp16 graphs "
        "are built strongly typed. Operator checks are the 10.1 table's (conservative); max opset kept at 20",
    ),
    "tensorrt-11": Target(
        "tensorrt-11",
        "tensorrt",
        opset=17,
        max_opset=24,
        tensorrt="11.5",
        ops=TRT11_OPS,
        topk_sorted_required=True,
        reduce_axes_initializer=True,
        scatter_nd_reduction_rejected=True,
        layernorm_y_only=True,
        pad_axes_initializer=True,
        strongly_typed=True,
        note="strongly typed only: no --fp16, the engine runs in the graph's precision (export.precision: fp16 for "
        "an fp16 engine); not for Jetson before JetPack 7.2.2 (NVIDIA's migration guide)",
    ),
}
# JetPack name -> (TensorRT profile, JetPack releases, TensorRT version on the device when it differs from the profile's)
JETPACK: dict[str, tuple[str, str, str | None]] = {
    "jetpack-5.1": ("tensorrt-8.5", "5.1", None),
    "jetpack-6.0": ("tensorrt-8.6", "6.0", None),
    "jetpack-6.1": ("tensorrt-10", "6.1", None),
    "jetpack-7.0": ("tensorrt-10", "7.0/7.1", "10.13"),
}
# `export.trt_target` values of recipes written before targets had names.
LEGACY_TRT = {"8.5": "tensorrt-8.5", "8.6": "tensorrt-8.6", "10.3": "tensorrt-10"}
TARGET_NAMES: tuple[str, ...] = (*TARGETS, *JETPACK)
DEFAULT_TARGET = "jetpack-6.0"


def resolve(name: str) -> Target:
    """The Target for a name (JetPack names resolve to their TensorRT profile under the JetPack name).

    InputError (one line, listing the known names) for anything else.
    """
    key = str(name).strip().lower()
    key = LEGACY_TRT.get(key, key)
    if key in TARGETS:
        return TARGETS[key]
    if key in JETPACK:
        base, jp, version = JETPACK[key]
        return dataclasses.replace(TARGETS[base], name=key, jetpack=jp, tensorrt=version or TARGETS[base].tensorrt)
    raise InputError(f"unknown target {name!r}; choose one of: {', '.join(TARGET_NAMES)}")


def opset_problem(target: Target, opset: int) -> str | None:
    """Why ``opset`` does not fit ``target`` (one sentence), or None."""
    if opset > target.max_opset:
        runtime = f"TensorRT {'.'.join(target.tensorrt.split('.')[:2])}" if target.is_tensorrt else "ONNX Runtime"
        return (
            f"opset {opset} does not fit target {target.name}: {runtime} reads opset <= {target.max_opset} "
            f"faithfully; set export.opset <= {target.max_opset} (default {target.opset}) or choose another target"
        )
    return None


# TRT_MAX_OPSET: kept for recipe sections that still key targets by TensorRT version.
TRT_MAX_OPSET = {legacy: TARGETS[name].max_opset for legacy, name in LEGACY_TRT.items()}
