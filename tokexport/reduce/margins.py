"""Decision margins: how close a discrete selection came to choosing differently.

Every reduction makes discrete choices (TopK boundaries, ToMe's best-partner argmax). Two float32
runtimes (PyTorch and ONNX Runtime, or TensorRT) sum in different orders, so when the last kept and
the first dropped score differ by less than the rounding noise the two can keep different tokens;
both are correct, and the outputs then differ by far more than any parity tolerance. To tell such
near-ties from a wrong graph, the parity check runs the PyTorch reference once more under
:func:`recording`, and every selection reports, per sample, the relative gap at each boundary it
decided (:func:`note_boundary`). Outside :func:`recording` (and during ONNX export) this is a no-op.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from tokexport.lazy import torch

_RECORDER: contextvars.ContextVar[list[torch.Tensor] | None] = contextvars.ContextVar("margins", default=None)
_TINY = 1e-12


@contextlib.contextmanager
def recording() -> Iterator[list[torch.Tensor]]:
    """Collect the margins noted inside the block: a list of [B] tensors (one per decision)."""
    token = _RECORDER.set([])
    try:
        yield _RECORDER.get()
    finally:
        _RECORDER.reset(token)


def _active() -> list[torch.Tensor] | None:
    rec = _RECORDER.get()
    if rec is None or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return None
    return rec


def note_boundary(scores: torch.Tensor, k: int, rows: torch.Tensor | None = None) -> None:
    """A top-``k`` choice along the last axis of ``scores`` ([B, ..., N]): note, per sample, the
    smallest relative gap between the k-th and the (k+1)-th largest score (over every leading row,
    or only the rows selected by the boolean/index tensor ``rows`` of shape [B, R])."""
    rec = _active()
    if rec is None or not 0 < k < scores.shape[-1]:
        return
    v = torch.topk(scores.detach().double(), k + 1, dim=-1, largest=True, sorted=True).values
    gap = (v[..., k - 1] - v[..., k]) / v[..., k - 1 : k + 1].abs().amax(dim=-1).clamp_min(_TINY)
    if rows is not None:
        gap = torch.gather(gap, 1, rows)
    rec.append(gap.reshape(scores.shape[0], -1).amin(dim=-1))


def sample_margins(recorded: list[torch.Tensor], n: int) -> list[float]:
    """Smallest margin of each of ``n`` samples over every recorded decision (inf: no decision)."""
    if not recorded:
        return [float("inf")] * n
    return torch.stack([r.reshape(-1)[:n] for r in recorded]).amin(dim=0).tolist()


def note_order(scores: torch.Tensor, k: int) -> None:
    """A choice that depends on the ORDER of the ``k`` largest scores along the last axis (not only on which
    k are largest: an alternating split by rank, an output order): note, per sample, the smallest relative
    gap between consecutive scores among the k + 1 largest (all of them when k >= N)."""
    rec = _active()
    if rec is None or scores.shape[-1] < 2 or k < 1:
        return
    kk = min(k + 1, int(scores.shape[-1]))
    v = torch.topk(scores.detach().double(), kk, dim=-1, largest=True, sorted=True).values
    gap = (v[..., :-1] - v[..., 1:]) / torch.maximum(v[..., :-1].abs(), v[..., 1:].abs()).clamp_min(_TINY)
    rec.append(gap.reshape(scores.shape[0], -1).amin(dim=-1))
