"""Honest baselines of ViT token pruning (recipe ``task: auto | feature-extraction | image-classification``),
evaluated in PyTorch at the method's budget on the same evaluation crops, in the same run (report section
``baselines``, built by :func:`tokexport.stages.baselines.baselines_section`).

- ``random``: at every stage of the method's schedule (same blocks, same kept counts) keep a subset of the
  current tokens drawn uniformly **per image** — a new subset for every image, every stage and every seed
  (``torch.rand`` scores from ``torch.Generator().manual_seed(seed)``, consumed in a fixed order, so a seed
  gives the same draws every run); mean ± sd over the seeds. A baseline, not an export: the deployable
  ``random`` method is one *fixed* random subset for every image.
- ``uniform``: the 2-D lattice of :mod:`tokexport.reduce.uniform_keep` (nested coarse-to-fine square /
  quincunx lattices of the patch grid, chosen by the tokens' original 2-D positions), the same for every
  image.

Merging schedules (ToMe) are compared at the same token counts: the baselines prune after the merge
block instead of merging inside it (the block's MLP then runs on all tokens; the budget says by how many
FLOPs that differs).

Cost: the blocks before the first stage are the same in the original model and in every baseline, so
their output is recorded once while the original model runs on the eval crops (:func:`record_block`)
and every baseline run starts from it (:func:`replaying`): 5 random seeds + uniform cost about
6 × (1 − first stage's share of the encoder) forward passes, in batches under ``torch.inference_mode``.

Per-sample figures (one value per evaluation crop, what the bootstrap resamples): ``feature_cosine``
(cosine of the reduced feature to the original model's), ``instance_top1`` (1 when the reduced feature's
nearest class prototype — prototypes from the ORIGINAL model — is the crop's source photograph) and
``top1_agreement`` (classifiers: 1 when the reduced logits' argmax equals the original's). Their means are
exactly the report's ``accuracy.metrics`` values.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
import torch

from .. import metrics as M
from ..stages.baselines import BaselineRun
from .base import LayerInputs, Method, ReductionConfig
from .common import keep_topk
from .patch import reduced
from .schedule import Stage
from .uniform_keep import UniformKeep, UniformKeepConfig

COMPARED = ("feature_cosine", "instance_top1", "top1_agreement")
BETTER = {"feature_cosine": "higher", "instance_top1": "higher", "top1_agreement": "higher"}
RANDOM_DESCRIPTION = ("random keep drawn per image: at each of the method's stages a uniformly random subset of the "
                      "current tokens, new for every image and seed (torch.Generator().manual_seed(seed)); "
                      "mean ± sd over the seeds")
UNIFORM_DESCRIPTION = ("2-D uniform lattice of the patch grid (nested square/quincunx lattices, kept by original 2-D "
                       "position across stages), the same for every image")
BATCH = 24  # rows per PyTorch forward of a baseline (inference_mode)


class PerImageRandom(Method):
    """Random keep drawn per image (a baseline; never exported)."""

    name = "random-per-image"
    config_cls = ReductionConfig
    needs_attention = False

    def __init__(self, seed: int):
        super().__init__(ReductionConfig(method=self.name))
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def select(self, x: LayerInputs, n_keep: int) -> torch.Tensor:
        b, n = int(x.hidden.shape[0]), int(x.hidden.shape[1]) - x.n_prefix
        scores = torch.rand((b, n), generator=self.generator).to(x.hidden.device)
        return keep_topk(scores, n_keep, x.n_prefix)


MAX_CACHE_BYTES = 2 << 30  # record the prefix blocks' output only when it fits in 2 GiB


class _Replay(torch.nn.Module):
    """Stands in for the host's blocks 0..L during a baseline run: blocks before L hand their input on
    unchanged, block L returns the original model's recorded output for the current rows (in order)."""

    def __init__(self, recorded: torch.Tensor | None, cursor: list[int], as_tuple: bool):
        super().__init__()
        self.recorded, self.cursor, self.as_tuple = recorded, cursor, as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states
        if self.recorded is not None:
            b, start = int(hidden_states.shape[0]), self.cursor[0]
            out = self.recorded[start:start + b]
            if out.shape[0] != b:
                raise RuntimeError(f"replay: rows {start}..{start + b} beyond the {self.recorded.shape[0]} recorded")
            self.cursor[0] = start + b
        return (out,) if self.as_tuple else out


@contextlib.contextmanager
def record_block(model, adapter, layer: int | None):
    """While the ORIGINAL model runs on the eval rows (in order), record block ``layer``'s output.
    Yields a dict that holds ``{"layer", "hidden" [N, T, D], "as_tuple"}`` after the block; empty when
    ``layer`` is None."""
    got: dict = {}
    if layer is None:
        yield got
        return
    parts: list[torch.Tensor] = []
    state = {"tuple": False, "bytes": 0}

    def hook(_module, _args, out):
        h = out[0] if isinstance(out, tuple) else out
        state["tuple"] = isinstance(out, tuple)
        state["bytes"] += h.numel() * h.element_size()
        if state["bytes"] <= MAX_CACHE_BYTES:
            parts.append(h.detach().clone())

    handle = adapter.layers(model)[layer].register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()
    if parts and state["bytes"] <= MAX_CACHE_BYTES:
        got.update(layer=layer, hidden=torch.cat(parts), as_tuple=state["tuple"])


@contextlib.contextmanager
def replaying(model, adapter, recorded: dict | None):
    """Blocks 0..recorded["layer"] replaced by :class:`_Replay` (restored on exit); a no-op without a record.
    Yields the row cursor (reset it to [0] before each pass over the rows)."""
    cursor = [0]
    if not recorded:
        yield cursor
        return
    layers = adapter.layers(model)
    last = recorded["layer"]
    originals = [layers[i] for i in range(last + 1)]
    try:
        for i in range(last + 1):
            layers[i] = _Replay(recorded["hidden"] if i == last else None, cursor, recorded["as_tuple"])
        yield cursor
    finally:
        for i, block in enumerate(originals):
            layers[i] = block


def pruning_stages(schedule: Iterable[Stage]) -> list[Stage]:
    """The schedule as pruning stages (a merge stage becomes pruning to the same count after its block)."""
    return [replace(s, kind="prune", prop_attn=False) for s in schedule]


def per_sample(names: Iterable[str], orig: dict[str, np.ndarray], red: dict[str, np.ndarray], feature: str,
               prototypes: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """One value per evaluation sample of each compared metric in ``names`` (see the module doc)."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "feature_cosine":
            out[name] = M.cosine_rows(orig[feature], red[feature])
        elif name == "instance_top1":
            out[name] = (M.nearest_prototype_predict(red[feature], prototypes) == np.asarray(labels)).astype(np.float64)
        elif name == "top1_agreement" and "logits" in red:
            out[name] = (np.argmax(red["logits"], axis=1) == np.argmax(orig["logits"], axis=1)).astype(np.float64)
    return out


def baseline_runs(model, adapter, forward: Callable[[torch.Tensor], dict], schedule: list[Stage], x: np.ndarray,
                  figures: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], seeds: Iterable[int],
                  on_step: Callable[[], None] = lambda: None, recorded: dict | None = None) -> list[BaselineRun]:
    """Run the per-image random baseline (one run per seed) and the 2-D uniform baseline on ``x`` in PyTorch
    at ``schedule``'s kept counts; ``figures(outputs)`` turns a run's outputs into per-sample values.
    ``recorded`` (:func:`record_block` of the first stage's block, on the same rows ``x``): start every run
    from it instead of recomputing the unpruned prefix blocks."""
    from ..stages.runners import TorchRunner, run_rows

    stages = pruning_stages(schedule)
    if recorded and (not stages or recorded.get("layer") != stages[0].layer
                     or int(recorded["hidden"].shape[0]) != len(x)):
        recorded = None  # not the record of these rows at this schedule's first stage: compute everything

    def outputs(method: Method) -> dict[str, np.ndarray]:
        def fn(t: torch.Tensor) -> dict[str, torch.Tensor]:
            with reduced(model, adapter, stages, method):
                return forward(t)

        with replaying(model, adapter, recorded) as cursor:
            cursor[0] = 0
            out = run_rows(TorchRunner(fn), {"pixel_values": x}, batch=BATCH)  # TorchRunner: inference_mode
        on_step()
        return out

    seeds = [int(s) for s in seeds]
    random_draws: dict[str, list[np.ndarray]] = {}
    for seed in seeds:
        for name, v in figures(outputs(PerImageRandom(seed))).items():
            random_draws.setdefault(name, []).append(v)
    uniform = {name: [v] for name, v in figures(outputs(UniformKeep(UniformKeepConfig()))).items()}
    return [BaselineRun("random", RANDOM_DESCRIPTION, random_draws, seeds=seeds),
            BaselineRun("uniform", UNIFORM_DESCRIPTION, uniform)]


__all__ = ["BETTER", "COMPARED", "PerImageRandom", "baseline_runs", "per_sample", "pruning_stages", "record_block",
           "replaying"]
