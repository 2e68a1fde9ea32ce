"""Honest baselines of the visual-token task (recipe ``task: visual-tokens``), evaluated in PyTorch at
the method's budget on the same evaluation crops, in the same run (report section ``baselines``, built by
:func:`tokexport.stages.baselines.baselines_section`).

- ``random``: K positions of all V·P patch tokens drawn uniformly **per image** (a fresh subset for every
  crop), repeated over several seeds (mean ± sd over seeds). A baseline, not an export: the deployable
  ``random-visual`` method is one *fixed* random subset for every image.
- ``uniform``: the 2-D lattice of ``uniform-spatial`` (K split evenly over the views, a near-square
  lattice per view, see :func:`tokexport.vlm.select.spatial_positions`), identical for every image.

Both keep exactly the method's K visual tokens, so the LLM prefill FLOPs are the same. The projector is a
per-token MLP and the selection a Gather, so a baseline's tokens are the all-token output
(``baseline.onnx``'s function, from PyTorch) gathered at the baseline's positions: no second tower run.

Per-sample figures (one value per evaluation crop, what the bootstrap resamples): ``feature_cosine``
(mean-pooled kept tokens vs all tokens), ``attn_pooled_cosine`` (attention-weighted pooling, weights from
the evaluation block), ``instance_top1`` (0/1: the mean-pooled kept tokens' nearest prototype is the crop's
source photograph) and ``attention_mass`` (information only, never compared).
"""

from __future__ import annotations

import numpy as np

from .. import metrics as M
from .select import UniformSpatial, VisualLayout

COMPARED = ("feature_cosine", "attn_pooled_cosine", "instance_top1")
RANDOM_DESCRIPTION = (
    "random keep drawn per image: K of all V·P patch positions uniformly without replacement, "
    "a fresh subset for every crop (numpy default_rng(seed)); mean ± sd over the seeds"
)
UNIFORM_DESCRIPTION = (
    "2-D uniform lattice (uniform-spatial): K split evenly over the views, a near-square "
    "lattice of exactly that many positions per view; the same for every crop"
)


def per_sample(
    orig: np.ndarray,
    red: np.ndarray,
    positions: np.ndarray,
    weights: np.ndarray,
    n_orig_prefix: int,
    protos: np.ndarray,
    labels: np.ndarray,
) -> dict[str, np.ndarray]:
    """One value per sample for every figure of the task.

    orig [N, n_orig_prefix + V·P, D]: all tokens (prefix tokens first with feature_select ``full``);
    red [N, K', D] and positions [N, K'] (-1 for prefix tokens): the kept tokens; weights [N, V·P]: the
    evaluation block's attention over the patches, normalised to sum 1; protos [C, D] class prototypes
    from all tokens; labels [N]."""
    positions = np.asarray(positions)
    patch_pos = np.where(positions >= 0, positions, 0)
    is_patch = (positions >= 0).astype(np.float64)
    w_kept = np.take_along_axis(weights, patch_pos, axis=1) * is_patch
    orig_mean, red_mean = orig.mean(axis=1), red.mean(axis=1)
    orig_attn = (orig[:, n_orig_prefix:] * weights[:, :, None]).sum(axis=1)
    red_attn = (red * w_kept[:, :, None]).sum(axis=1) / np.maximum(w_kept.sum(axis=1, keepdims=True), 1e-12)
    return {
        "feature_cosine": M.cosine_rows(orig_mean, red_mean),
        "attn_pooled_cosine": M.cosine_rows(orig_attn, red_attn),
        "instance_top1": (M.nearest_prototype_predict(red_mean, protos) == np.asarray(labels)).astype(np.float64),
        "attention_mass": w_kept.sum(axis=1),
    }


def random_positions(n: int, total: int, k: int, seed: int) -> np.ndarray:
    """int64 [n, k]: for each of n images its own K of ``total`` positions, uniformly without replacement,
    ascending. Deterministic in ``seed``."""
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside [1, {total}]")
    rng = np.random.default_rng(seed)
    return np.sort(np.argsort(rng.random((n, total)), axis=1)[:, :k], axis=1).astype(np.int64)


def uniform_positions(layout: VisualLayout, k: int, n: int) -> np.ndarray:
    """int64 [n, k]: the uniform-spatial 2-D lattice, the same row for every image."""
    row = np.asarray(UniformSpatial.positions(layout, k), dtype=np.int64)
    return np.broadcast_to(row, (n, k)).copy()


def gather(orig: np.ndarray, positions: np.ndarray, n_orig_prefix: int) -> tuple[np.ndarray, np.ndarray]:
    """What the visual-token graph returns for these patch positions: the all-token output gathered at
    them, behind the prefix tokens when the feature select keeps those (positions -1)."""
    idx = n_orig_prefix + positions
    tokens = np.take_along_axis(orig, idx[:, :, None], axis=1)
    if n_orig_prefix:
        n = orig.shape[0]
        tokens = np.concatenate([orig[:, :n_orig_prefix], tokens], axis=1)
        positions = np.concatenate([np.full((n, n_orig_prefix), -1, dtype=np.int64), positions], axis=1)
    return tokens, positions


def baseline_runs(
    orig: np.ndarray,
    weights: np.ndarray,
    n_orig_prefix: int,
    protos: np.ndarray,
    labels: np.ndarray,
    layout: VisualLayout,
    k: int,
    seeds: list[int],
):
    """[random (per image, one draw per seed), uniform (2-D lattice)] as
    :class:`tokexport.stages.baselines.BaselineRun`, on the compared figures."""
    from ..stages.baselines import BaselineRun

    n = orig.shape[0]

    def figures(pos):
        red, p = gather(orig, pos, n_orig_prefix)
        vals = per_sample(orig, red, p, weights, n_orig_prefix, protos, labels)
        return {m: vals[m] for m in COMPARED}

    rnd = BaselineRun("random", RANDOM_DESCRIPTION, {m: [] for m in COMPARED}, seeds=list(seeds))
    for s in seeds:
        for m, v in figures(random_positions(n, layout.total, k, s)).items():
            rnd.per_sample[m].append(v)
    uni = BaselineRun(
        "uniform", UNIFORM_DESCRIPTION, {m: [v] for m, v in figures(uniform_positions(layout, k, n)).items()}
    )
    return [rnd, uni]


__all__ = ["COMPARED", "baseline_runs", "gather", "per_sample", "random_positions", "uniform_positions"]
