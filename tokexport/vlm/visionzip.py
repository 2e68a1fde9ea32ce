"""VisionZip (Yang et al., CVPR 2025, arXiv 2412.04467), training-free mode: keep the dominant tokens
the CLS query attends to most and MERGE the rest into a few contextual tokens.

What the official code does (CLIP ViT-L/14-336 in LLaVA, at the block producing hidden_states[-2]):
1. dominant: the patches with the largest CLS-query attention summed over heads (plus the CLS token
   itself), in ascending index order;
2. the remaining patches, in ascending order, are the remainder list R (length M); the keys of that
   block averaged over heads, L2-normalised, are the similarity metric;
3. C targets sit at the slots 0, step, 2·step, … of R (step = max(1, ⌊M / C⌋)): uniform over the list,
   not a spatial grid; every other remaining token is assigned to the target whose key it is most
   cosine-similar to (argmax, first index on ties);
4. contextual token = the target's hidden state + the MEAN of the hidden states assigned to it (a target
   without members stays as it is); output = dominant tokens then contextual tokens, before the projector.

tokexport's static form (docs/methods/visionzip.md): the same arithmetic with constant shapes — TopK of
the summed CLS attention for the dominant set; ordered index lists by TopK over (is_dominant·2P − index)
(no boolean mask, no NonZero); the target and member slots of R are Python constants (Gather); the
assignment is one-hot by Equal + Cast of the argmax against a constant arange, merged by MatMul and
divided by the member counts (no scatter). Differences from the official code:

- the CLS token is not a tower output here (LLaVA's ``feature_select: default`` drops it), so the K
  budget holds patches only: C = round(k·``contextual_share``) contextual tokens and D = k − C dominant
  patches; the default share 10/64 reproduces the official 54:10 split at 64 tokens with the CLS slot
  given to one more dominant patch (53 + CLS + 10 officially, 54 + 10 here);
- several views (LLaVA-NeXT anyres): per view, as the official code runs on every crop; K is split over
  the views like every other method (``split_evenly``), each view's share split into D:C;
- output order: ascending position. A contextual token carries its TARGET's position (targets and
  dominant patches are distinct, so positions stay distinct); the official code appends the
  contextual tokens after the dominant ones. The LLM sees the same token multiset, placed by the
  positions (``tokexport.vlm.packing``);
- towers without a CLS token (SigLIP): ``source: received`` (the attention each patch receives,
  averaged over queries), as FoPru does for SigLIP; the official code is CLIP-only;
- the metric normalisation divides by max(‖k‖, 1e-12) (the official code has no epsilon: identical
  unless a key vector is zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from tokexport.lazy import torch

from ..bounds import Count, Real
from ..reduce.common import sort_positions
from ..reduce.schedule import round_count
from .diversity import one_hot, positions_row, unit_rows
from .select import VISUAL_METHODS, Source, VisualLayout, VisualReductionConfig, VisualSelector, split_evenly

OFFICIAL_SHARE = 10 / 64  # the official README setting: 54 dominant (CLS included) + 10 contextual of 64


class VisionZipConfig(VisualReductionConfig):
    """VisionZip: dominant tokens by CLS attention + contextual tokens merged from the rest by key
    similarity, per view."""

    method: Literal["visionzip"] = Field(default="visionzip", description="Method name.")
    select_layer: Count(-1024, 1023) = Field(
        default=-2,
        description="Tower block whose attention ranks the dominant tokens and whose keys (averaged over "
        "heads) merge the rest, -1024..1023; negative counts from the end like LLaVA's "
        "vision_feature_layer. VisionZip: the block producing hidden_states[-2] (CLIP-L layer 22).",
    )
    source: Source = Field(
        default="cls",
        description="Dominant-token ranking: 'cls' = CLS-query attention to each patch summed over heads "
        "(VisionZip); 'received' = attention each patch receives, averaged over all queries "
        "(for towers without CLS, e.g. SigLIP; not in the official code).",
    )
    contextual_share: Real(0, 1, hi_open=True) = Field(
        default=OFFICIAL_SHARE,
        description="Share of each view's budget that is merged contextual tokens, in [0, 1): C = round(k_view·share) "
        "(at most k_view - 1), D = k_view - C dominant patches. Default 0.15625 = 10/64, the official 54:10 "
        "split at 64 tokens with the CLS slot given to one more dominant patch (CLS is not a tower output here).",
    )

    def counts(self, k_view: int) -> tuple[int, int]:
        """(D dominant, C contextual) of one view's budget."""
        if k_view <= 0:
            return 0, 0
        c = min(round_count(k_view * self.contextual_share, "round"), k_view - 1)
        return k_view - c, c


@dataclass(frozen=True)
class ViewPlan:
    """The static plan of one view: D dominant, C contextual, the remainder length M and the slots of the
    remainder list that are targets / members (Python constants)."""

    view: int
    dominant: int
    contextual: int
    remainder: int
    targets: tuple[int, ...]
    members: tuple[int, ...]


def plan_views(cfg: VisionZipConfig, layout: VisualLayout, k: int) -> list[ViewPlan]:
    out = []
    for v, kv in enumerate(split_evenly(k, layout.views)):
        d, c = cfg.counts(kv)
        if kv == 0:
            continue
        m = layout.patches - d
        step = max(1, m // c) if c else 1
        targets = tuple(range(0, m, step))[:c]
        chosen = set(targets)
        out.append(ViewPlan(v, d, c, m, targets, tuple(s for s in range(m) if s not in chosen)))
    return out


def take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x [B, N, ...] at idx [B, m] → [B, m, ...] (GatherElements)."""
    index = idx.reshape(*idx.shape, *([1] * (x.dim() - 2))).expand(*idx.shape, *x.shape[2:])
    return torch.gather(x, 1, index)


def dominant_and_remainder(score: torch.Tensor, d: int, with_rest: bool):
    """(dominant positions [B, d] ascending, remainder positions [B, P - d] ascending or None) of one
    view's score [B, P]: TopK for the dominant set, then TopK over (not_dominant·2P − index), which
    lists the others in ascending order without a boolean mask."""
    p = int(score.shape[-1])
    dom = torch.topk(score, d, dim=-1, largest=True, sorted=True).indices
    if not with_rest:
        return sort_positions(dom), None
    rest_score = (1.0 - one_hot(dom, p)) * float(2 * p) - positions_row(p, score)
    rest = torch.topk(rest_score, p - d, dim=-1, largest=True, sorted=True).indices
    return sort_positions(dom), rest


def merge_contextual(hidden: torch.Tensor, keys: torch.Tensor, rest: torch.Tensor, plan: ViewPlan):
    """(target positions [B, C], contextual tokens [B, C, D]): each member of the remainder goes to the
    target with the most similar (cosine) key; contextual = target + mean of its members."""
    slots = torch.tensor(plan.targets, dtype=torch.int64, device=rest.device)
    targets = rest[:, slots]
    target_tokens = take(hidden, targets)
    if not plan.members:  # every remaining token is a target
        return targets, target_tokens
    members = rest[:, torch.tensor(plan.members, dtype=torch.int64, device=rest.device)]
    kn = unit_rows(keys)
    sim = torch.matmul(take(kn, members), take(kn, targets).transpose(1, 2))  # [B, |O|, C]
    assign = torch.argmax(sim, dim=-1)  # first index on ties, as torch and ONNX ArgMax do
    c = plan.contextual
    onehot = (assign.to(torch.float32).unsqueeze(-1) == positions_row(c, assign).unsqueeze(0)).to(hidden.dtype)
    counts = onehot.sum(dim=1).clamp_min(1.0).unsqueeze(-1)  # [B, C, 1]
    merged = torch.matmul(onehot.transpose(1, 2), take(hidden, members)) / counts
    return targets, target_tokens + merged


@VISUAL_METHODS.register
class VisionZip(VisualSelector):
    """Static VisionZip (module docstring). ``select`` gives the positions from the significance alone
    (dominant patches and the targets: both depend on the attention ranking only); ``reduce`` also
    merges, and needs the selection block's keys."""

    name = "visionzip"
    config_cls = VisionZipConfig
    needs = frozenset({"select", "keys"})
    config: VisionZipConfig

    def _select(self, sig, sig_alloc, layout, k):
        pos = []
        for pl in plan_views(self.config, layout, k):
            dom, rest = dominant_and_remainder(sig[:, pl.view], pl.dominant, pl.contextual > 0)
            pos.append(dom + pl.view * layout.patches)
            if pl.contextual:
                slots = torch.tensor(pl.targets, dtype=torch.int64, device=sig.device)
                pos.append(rest[:, slots] + pl.view * layout.patches)
        return sort_positions(torch.cat(pos, dim=1))

    def reduce(self, tokens, signals, layout, k):
        k = self.check_budget(layout, k)
        sig, keys = signals.get("select"), signals.get("keys")
        if sig is None or keys is None:
            raise ValueError("visionzip needs the 'select' significance and the selection block's 'keys'")
        p = layout.patches
        out_tokens, out_pos = [], []
        for pl in plan_views(self.config, layout, k):
            hidden = tokens[:, pl.view * p : (pl.view + 1) * p]
            dom, rest = dominant_and_remainder(sig[:, pl.view], pl.dominant, pl.contextual > 0)
            out_tokens.append(take(hidden, dom))
            out_pos.append(dom + pl.view * p)
            if pl.contextual:
                targets, ctx = merge_contextual(hidden, keys[:, pl.view], rest, pl)
                out_tokens.append(ctx)
                out_pos.append(targets + pl.view * p)
        pos = torch.cat(out_pos, dim=1)
        order = torch.topk(pos.to(torch.float32), k, dim=-1, largest=False, sorted=True).indices  # ascending
        return take(torch.cat(out_tokens, dim=1), order), take(pos, order)

    def resolved(self, layout, k):
        plans = plan_views(self.config, layout, k)
        return {
            "per_view": [[pl.dominant, pl.contextual] for pl in plans],
            "per_view_fields": ["dominant", "contextual"],
            "contextual_position": "the target token's position",
            "merge": "target + mean of the tokens assigned to it by argmax key cosine (head-averaged keys of select_layer)",
        }


__all__ = [
    "OFFICIAL_SHARE",
    "ViewPlan",
    "VisionZip",
    "VisionZipConfig",
    "dominant_and_remainder",
    "merge_contextual",
    "plan_views",
]
