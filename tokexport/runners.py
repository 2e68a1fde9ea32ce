"""Runners share one contract: ``infer(feed) -> {output name: array}`` (Polygraphy-style)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch


class OrtRunner:
    """onnxruntime CPU session."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        shape = self.session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, feed)))


class TorchRunner:
    """A PyTorch callable returning named tensors."""

    def __init__(self, fn: Callable[[torch.Tensor], dict[str, torch.Tensor]], input_name: str = "pixel_values"):
        self.fn = fn
        self.input_name = input_name
        self.fixed_batch = None

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.fn(torch.from_numpy(np.ascontiguousarray(feed[self.input_name])))
        return {k: v.detach().float().numpy() for k, v in out.items()}


def run_batched(runner, x: np.ndarray, batch: int = 8, input_name: str = "pixel_values") -> dict[str, np.ndarray]:
    """Run ``x`` [N, ...] through a runner in chunks (the runner's fixed batch when it has one)."""
    step = runner.fixed_batch or batch
    parts: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        pad = step - len(chunk) if runner.fixed_batch else 0
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        out = runner.infer({input_name: chunk})
        for k, v in out.items():
            parts.setdefault(k, []).append(v[: len(v) - pad] if pad else v)
    return {k: np.concatenate(v) for k, v in parts.items()}
