"""The one runner contract: ``infer(feed) -> {output name: array}`` over named numpy inputs
(Polygraphy's runner shape), for ONNX Runtime sessions and PyTorch callables alike, plus
``run_rows`` to push N rows through either in batches.

ONNX Runtime execution providers are chosen here, in one place (:func:`provider_list`): ``cpu``,
``cuda`` or ``tensorrt`` (recipe ``bench.provider``, ``tokexport convert --provider``), with provider
options (``bench.provider_options``, e.g. ``{device_id: 0}``). Falling back to the CPU is never silent:
a provider this onnxruntime does not offer, or offers but cannot start (no GPU, missing CUDA
libraries), is an :class:`~tokexport.errors.EnvironmentProblem` (exit 5), raised by
:func:`preflight` before any model is loaded, and again by :class:`OrtRunner` should a session
come up on another provider than the one asked for."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import EnvironmentProblem, InputError

Feed = dict[str, np.ndarray]

# tokexport's provider names → ONNX Runtime's
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
PROVIDER_NAMES = tuple(PROVIDERS)
_GPU_HINT = (
    "install the gpu extra on a machine with an NVIDIA GPU and CUDA (pip install 'tokexport[gpu]': "
    "onnxruntime-gpu replaces onnxruntime; see docs/gpu.md), or use provider cpu"
)


def _option_value(v) -> str:
    """ONNX Runtime reads provider options as strings."""
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def provider_list(name: str = "cpu", options: Mapping | None = None) -> list[tuple[str, dict[str, str]]]:
    """The ``providers=`` argument of ``onnxruntime.InferenceSession`` for a tokexport provider name:
    the asked-for provider first, with ``options``, then the providers ONNX Runtime hands the nodes to
    that the first cannot run (TensorRT → CUDA → CPU, CUDA → CPU; a ``device_id`` option is passed
    down to CUDA). Pure: needs no onnxruntime. InputError for an unknown name."""
    key = str(name).strip().lower()
    if key not in PROVIDERS:
        raise InputError(f"unknown execution provider {name!r}; choose one of: {', '.join(PROVIDER_NAMES)}")
    opts = {str(k): _option_value(v) for k, v in (options or {}).items()}
    cpu = ("CPUExecutionProvider", {})
    if key == "cpu":
        return [("CPUExecutionProvider", opts)]
    if key == "cuda":
        return [("CUDAExecutionProvider", opts), cpu]
    cuda = {"device_id": opts["device_id"]} if "device_id" in opts else {}
    return [("TensorrtExecutionProvider", opts), ("CUDAExecutionProvider", cuda), cpu]


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise EnvironmentProblem(
            "onnxruntime is not installed: pip install 'tokexport[cpu]' (or 'tokexport[gpu]' "
            "for the CUDA and TensorRT providers; docs/gpu.md)"
        ) from None
    return ort


def check_provider(
    name: str = "cpu", options: Mapping | None = None, available: Sequence[str] | None = None
) -> list[tuple[str, dict[str, str]]]:
    """:func:`provider_list`, after checking that this onnxruntime offers every provider in it
    (``available``: default ``onnxruntime.get_available_providers()``); EnvironmentProblem (exit 5, one
    line) naming the missing provider and the fix otherwise. Loads no model."""
    plist = provider_list(name, options)
    if available is None:
        ort = _ort()
        available, version = list(ort.get_available_providers()), ort.__version__
    else:
        version = "here"
    missing = [p for p, _ in plist if p not in available]
    if missing:
        raise EnvironmentProblem(
            f"execution provider {name!r} needs {missing[0]}, which onnxruntime {version} does "
            f"not offer (it has: {', '.join(available) or 'none'}); {_GPU_HINT}"
        )
    return plist


def _tiny_graph() -> bytes:
    """A one-node float graph (Relu on [1, 4]) to start a provider on, without any user model."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "provider_probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 8)
    return model.SerializeToString()


def preflight(name: str = "cpu", options: Mapping | None = None) -> list[tuple[str, dict[str, str]]]:
    """Before any model is loaded: :func:`check_provider`, then (GPU providers) start the provider on a
    one-node graph and make sure the session really runs on it: onnxruntime-gpu on a machine without a
    usable GPU offers CUDA but falls back to the CPU with a warning only. EnvironmentProblem (exit 5)."""
    plist = check_provider(name, options)
    if plist[0][0] == "CPUExecutionProvider":
        return plist
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        sess = ort.InferenceSession(_tiny_graph(), opts, providers=plist)
        got = sess.get_providers()
        sess.run(None, {"x": np.ones((1, 4), np.float32)})
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise EnvironmentProblem(
            f"execution provider {name!r}: onnxruntime could not start {plist[0][0]} ({why}); {_GPU_HINT}"
        ) from None
    if not got or got[0] != plist[0][0]:
        raise EnvironmentProblem(
            f"execution provider {name!r}: onnxruntime {ort.__version__} offers {plist[0][0]} "
            f"but started {got[0] if got else 'nothing'} instead (no usable NVIDIA GPU or CUDA "
            f"libraries here); {_GPU_HINT}"
        )
    return plist


def default_threads() -> int:
    """Threads of a session (and of a benchmark) whose recipe sets none: ``$OMP_NUM_THREADS`` when it is set
    (a CI worker, a job sharing the machine, a container's CPU quota say so), otherwise the CPUs this
    process may run on. The old default, every CPU of the machine, made each of two processes on two
    cores start two spinning ONNX Runtime threads."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class OrtRunner:
    """An ONNX Runtime session on the asked-for execution provider (CPU by default). ``provider`` is
    the provider the session runs on, ``providers`` every provider it may hand nodes to, in order."""

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        provider: str = "cpu",
        provider_options: Mapping | None = None,
    ):
        ort = _ort()
        plist = check_provider(provider, provider_options)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=plist)
        self.providers = list(self.session.get_providers())
        self.provider = self.providers[0]
        if self.provider != plist[0][0]:  # onnxruntime fell back (with a warning only): never silently
            raise EnvironmentProblem(
                f"{path}: asked for {plist[0][0]}, onnxruntime started {self.provider} instead; {_GPU_HINT}"
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        shape = self.session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def infer(self, feed: Mapping[str, np.ndarray]) -> Feed:
        return dict(zip(self.output_names, self.session.run(None, {k: feed[k] for k in self.input_names})))


class TorchRunner:
    """A PyTorch callable taking the named inputs as tensors, in ``input_names`` order, and returning
    a dict of named tensors (or a tuple matched to ``output_names``)."""

    def __init__(
        self, fn: Callable, input_names: Sequence[str] = ("pixel_values",), output_names: Sequence[str] | None = None
    ):
        self.fn = fn
        self.input_names = list(input_names)
        self.output_names = list(output_names) if output_names is not None else None
        self.fixed_batch = None

    def infer(self, feed: Mapping[str, np.ndarray]) -> Feed:
        import torch

        with torch.inference_mode():
            out = self.fn(*[torch.from_numpy(np.ascontiguousarray(feed[k])) for k in self.input_names])
        if not isinstance(out, Mapping):
            out = dict(zip(self.output_names, out))
        return {
            k: (v.detach().float().numpy() if v.is_floating_point() else v.detach().numpy()) for k, v in out.items()
        }


def run_rows(runner, feed: Mapping[str, np.ndarray], batch: int = 8) -> Feed:
    """Run the N rows of ``feed`` through ``runner`` in chunks (its fixed batch when it has one: the
    last chunk is padded by repeating its last row, and the extra rows are dropped)."""
    n = len(next(iter(feed.values())))
    step = runner.fixed_batch or batch
    parts: dict[str, list[np.ndarray]] = {}
    for s in range(0, n, step):
        chunk = {k: v[s : s + step] for k, v in feed.items()}
        real = len(next(iter(chunk.values())))
        if runner.fixed_batch and real < step:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], step - real, axis=0)]) for k, v in chunk.items()}
        for k, v in runner.infer(chunk).items():
            parts.setdefault(k, []).append(v[:real])
    return {k: np.concatenate(v) for k, v in parts.items()}
