"""One step of a reduction schedule (:class:`Stage`) and a per-block removal rule (:data:`Removal`): the
types the schedule (:mod:`tokexport.reduce.schedule`) produces and every method reads. Their own module, so
that the method contract (:mod:`tokexport.reduce.base`) and the schedule that plans from it need not
import each other."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Stage:
    layer: int  # pruning happens after this 0-indexed block
    tokens_in: int  # tokens entering the pruning step (prefix included)
    tokens_out: int  # tokens leaving it (prefix included)
    n_keep: int  # non-prefix tokens kept
    # "prune": tokens are dropped after the block. "merge": tokens are merged between the block's attention
    # and its MLP (ToMe), so that block's MLP already runs on tokens_out.
    kind: str = "prune"
    # Merge stages only: from the next block on, attention adds log(token size) to its logits (ToMe's
    # proportional attention), so a merged token weighs as much as the patches it stands for.
    prop_attn: bool = False
    # Hybrid schedules only (reduce/hybrid.py): the method of this stage and its step in ``reduction.steps``;
    # None for a single-method schedule (its method is the recipe's). ``Method.for_stage`` resolves it.
    method: str | None = None
    step: int | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        for key in ("method", "step"):  # single-method reports keep their schedule entries as they were
            if d[key] is None:
                del d[key]
        return d


Removal = int | Callable[[int], int]  # tokens removed, or a rule: non-prefix tokens entering the block -> removed
