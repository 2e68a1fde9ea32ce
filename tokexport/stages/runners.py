"""The one runner contract: ``infer(feed) -> {output name: array}`` over named numpy inputs
(Polygraphy's runner shape), for ONNX Runtime sessions and PyTorch callables alike, plus
``run_rows`` to push N rows through either in batches."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

Feed = dict[str, np.ndarray]


class OrtRunner:
    """An ONNX Runtime session (CPU execution provider)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.provider = self.session.get_providers()[0]
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        shape = self.session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def infer(self, feed: Mapping[str, np.ndarray]) -> Feed:
        return dict(zip(self.output_names, self.session.run(None, {k: feed[k] for k in self.input_names})))


class TorchRunner:
    """A PyTorch callable taking the named inputs as tensors, in ``input_names`` order, and returning
    a dict of named tensors (or a tuple matched to ``output_names``)."""

    def __init__(self, fn: Callable, input_names: Sequence[str] = ("pixel_values",),
                 output_names: Sequence[str] | None = None):
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
        return {k: (v.detach().float().numpy() if v.is_floating_point() else v.detach().numpy()) for k, v in out.items()}


def run_rows(runner, feed: Mapping[str, np.ndarray], batch: int = 8) -> Feed:
    """Run the N rows of ``feed`` through ``runner`` in chunks (its fixed batch when it has one: the
    last chunk is padded by repeating its last row, and the extra rows are dropped)."""
    n = len(next(iter(feed.values())))
    step = runner.fixed_batch or batch
    parts: dict[str, list[np.ndarray]] = {}
    for s in range(0, n, step):
        chunk = {k: v[s:s + step] for k, v in feed.items()}
        real = len(next(iter(chunk.values())))
        if runner.fixed_batch and real < step:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], step - real, axis=0)]) for k, v in chunk.items()}
        for k, v in runner.infer(chunk).items():
            parts.setdefault(k, []).append(v[:real])
    return {k: np.concatenate(v) for k, v in parts.items()}
