"""The contract every token-reduction method implements.

A method is plain tensor code: given what one transformer block produced (its output tokens, and
when the method asks for them, that block's attention probabilities and keys), it returns the
positions of the non-prefix tokens to keep. It never imports transformers: the family adapters
and ``tokexport.reduce.patch`` connect methods to models.

Static-keep rules (docs/methods/static-export.md): ``n_keep`` is a Python int fixed at export
time, selection uses TopK with that constant K, indices come back sorted ascending so survivors keep
their original order, prefix tokens (CLS, distillation, registers) are never candidates.

Merging methods (ToMe, PiToMe) implement ``merge`` instead of ``select``: between a block's attention and
its MLP they combine tokens into size-weighted means and return the new tokens with their sizes (how many
patches each stands for); the patch carries the sizes to later blocks.

Everything a method needs besides its tensor code lives on its class too, so that a new method is one file
and a recipe: its schedule rule (``ReductionConfig.removals``), its selection cost (``selection_macs``,
read by :func:`tokexport.flops.encoder_flops` per stage) and its budget knob (``knob``: one number that
moves its FLOPs, used to place it at a FLOPs target by :mod:`tokexport.reduce.budget`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from tokexport.lazy import torch
from tokexport.registry import Registry

from ..bounds import Count, OneOrMany, Real

if TYPE_CHECKING:  # type hints only
    from ..adapters import Dims
    from .stage import Removal, Stage

Rounding = Literal["floor", "ceil", "round"]


class ReductionConfig(BaseModel):
    """Fields shared by every method: the per-layer schedule.

    ``prune_layers`` are 0-indexed block indices; pruning happens after that block, using that
    block's own attention. Give either ``keep_rate`` (fraction of the non-prefix tokens entering
    that pruning step, one value for all layers or one per layer) or ``keep`` (absolute count of
    non-prefix tokens kept, one per layer).
    """

    model_config = ConfigDict(extra="forbid")

    method: str
    prune_layers: list[Count(0, 1023)] = Field(
        default_factory=list,
        max_length=1024,
        description="0-indexed blocks after which tokens are pruned, strictly increasing, each 0..1023.",
    )
    # Booleans, nan and inf are refused here; the range (0, 1] is checked by schedule.plan (before any weights
    # load), which names the element. A single keep_rate stands for every prune layer: its errors are at [0].
    keep_rate: OneOrMany(Real(0, 1, lo_open=True, enforce=False), scalar_index=True) | None = Field(
        default=None,
        description="Fraction in (0, 1] of the non-prefix tokens entering each pruning step to keep: "
        "one value for every prune layer, or a non-empty list with one per layer.",
    )
    keep: list[Count(1, 3839)] | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Absolute number of non-prefix tokens kept after each pruning layer, each 1..3839 (TensorRT's "
        "TopK needs K < 3840); a non-empty list.",
    )
    rounding: Rounding = Field(
        default="floor",
        description="How keep_rate x tokens becomes a count: floor (early Zero-TPrune code), ceil (EViT) or round.",
    )

    def kept(self):
        """The keep budget as the recipe gives it: ``keep_rate``, else ``keep`` (None: neither)."""
        return self.keep_rate if self.keep_rate is not None else self.keep

    def merge_summary(self, budget: str) -> str:
        """A merging method's schedule in a few words: the blocks that merge and ``budget``."""
        return f"merge {budget} in {f'blocks {list(self.prune_layers)}' if self.prune_layers else 'every block'}"

    def summary(self) -> str:
        """The schedule in a few words (`tokexport recipes list`)."""
        where = list(self.prune_layers) if self.prune_layers else "the default blocks"
        return f"after {where} keep {self.kept()}"

    def removals(self, num_layers: int) -> list[tuple[int, Removal, str]] | None:
        """Schedules given as tokens removed per block (ToMe's ``r``, PiToMe's ``ratio``) rather than
        ``prune_layers`` + ``keep_rate``/``keep``: ``(block, tokens removed, recipe field for errors)`` per step
        — the count, or a rule from the non-prefix tokens entering the block to the count — or None to plan
        from those fields. ``num_layers`` lets a per-block list be checked against the model."""
        return None

    def at_counts(self, keep: dict[int, int]):
        """This configuration with the schedule ``keep`` (block -> non-prefix tokens kept after it, absolute
        counts) in place of its own: what ``tokexport search`` evaluates. A method with per-block fields of its
        own maps them to the new blocks (Zero-TPrune's ``iterations``)."""
        layers = sorted(keep)
        fields = self.model_dump(mode="json", exclude_none=True)
        fields.update(prune_layers=layers, keep=[keep[layer] for layer in layers])
        fields.pop("keep_rate", None)
        return type(self).model_validate(self.per_block_fields(fields, layers))

    def per_block_fields(self, fields: dict, layers: list[int]) -> dict:
        """``fields`` (this config's, at blocks ``layers``) with the method's own per-block lists mapped to
        those blocks; none for most methods."""
        return fields

    def own_plan(self, n_tokens: int, n_prefix: int, num_layers: int) -> list[Stage] | None:
        """A schedule this config plans itself (a hybrid's steps), or None for the common planning of
        :func:`tokexport.reduce.schedule.plan`."""
        return None

    def stage_options(self) -> dict:
        """Extra ``Stage`` fields for every stage of this method (``kind``, ``prop_attn``); none for pruning."""
        return {}


@dataclass
class LayerInputs:
    """What a method sees at one pruning layer. Shapes: B batch, N tokens, D width, H heads."""

    hidden: torch.Tensor  # [B, N, D] output of the block
    attn: torch.Tensor | None  # [B, H, N, N] softmax(q k^T * scale) of the block, rows sum to 1
    keys: torch.Tensor | None  # [B, H, N, dh] the block's keys
    n_prefix: int  # leading tokens never pruned (CLS, distillation token, registers)
    layer: int  # 0-indexed block
    num_layers: int  # blocks in the model
    # (rows, cols) of the ORIGINAL patch grid (non-prefix tokens entering block 0; one row when their count is
    # not a square), for methods that place tokens by their 2-D position (uniform); None outside the patch
    grid: tuple[int, int] | None = None


class Method:
    """Base class of a reduction method. Subclasses set ``name``, ``config_cls``,
    ``needs_attention`` (``needs_keys``) and implement ``select``."""

    name: ClassVar[str]
    config_cls: ClassVar[type[ReductionConfig]]
    needs_attention: ClassVar[bool] = True  # LayerInputs.attn (and keys) at its stages
    needs_keys: ClassVar[bool] = False  # LayerInputs.keys only (no attention probabilities recomputed)
    knob_range: ClassVar[tuple[float, float]] = (0.02, 1.0)  # values of ``knob`` that plan on any model

    def __init__(self, config: ReductionConfig):
        self.config = config

    def for_stage(self, stage: Stage) -> Method:
        """The method that runs ``stage`` (itself; a hybrid answers with the method of the stage's step)."""
        return self

    def check(self, n_prefix: int) -> None:
        """Raise ``InputError`` when the method cannot work on a model with ``n_prefix`` prefix tokens."""

    def selection_macs(self, stage: Stage, d: Dims, n_prefix: int) -> int:
        """Multiply-accumulates per image the method adds at ``stage`` beyond the blocks themselves: by default,
        recomputing the block's attention probabilities from its q/k (N²·D) when the method scores with them."""
        return stage.tokens_in**2 * d.hidden if self.needs_attention else 0

    @classmethod
    def knob_bounds(cls, template: ReductionConfig | None) -> tuple[float, float]:
        """The values of ``knob`` worth trying with ``template`` (default: ``knob_range``)."""
        return cls.knob_range

    @classmethod
    def knob(cls, template: ReductionConfig | None, value: float, num_layers: int) -> ReductionConfig:
        """The method's configuration at budget knob ``value`` in (0, 1] (1: reduce least; FLOPs fall as it
        falls), keeping what ``template`` (e.g. a shipped recipe's reduction) says about everything else.
        Default for pruning methods: keep the fraction ``value`` of the tokens at each of the template's
        ``prune_layers`` (none given: the Zero-TPrune code's blocks 2, 5, 8 of 12, scaled to the depth)."""
        layers = (
            list(template.prune_layers)
            if template is not None and template.prune_layers
            else default_prune_layers(num_layers)
        )
        base = template.model_dump(exclude={"keep", "keep_rate", "prune_layers"}) if template is not None else {}
        return cls.config_cls.model_validate(
            {**base, "method": cls.name, "prune_layers": layers, "keep_rate": float(value)}
        )

    def select(self, x: LayerInputs, n_keep: int) -> torch.Tensor:
        """Return int64 [B, n_keep]: absolute positions (>= n_prefix) of kept tokens, ascending."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Method parameters as recorded in the report (defaults resolved)."""
        return self.config.model_dump(exclude={"prune_layers", "keep_rate", "keep", "rounding"})


@dataclass
class MergeInputs:
    """What a merging method sees inside a block, between its attention and its MLP."""

    hidden: torch.Tensor  # [B, N, D] tokens after the attention half (residual added)
    keys: torch.Tensor  # [B, H, N, dh] the block's keys
    size: torch.Tensor | None  # [B, N, 1] patches each token stands for; None before the first merge (all 1)
    n_prefix: int  # leading tokens never merged (CLS, distillation token, registers)
    layer: int  # 0-indexed block
    num_layers: int  # blocks in the model


class MergingMethod(Method):
    """Base class of methods that merge tokens (stages of kind "merge") instead of selecting survivors."""

    needs_attention = False
    needs_keys = True
    knob_range = (0.5, 1.0)  # one bipartite merge removes at most half of the tokens

    @classmethod
    def knob(cls, template: ReductionConfig | None, value: float, num_layers: int) -> ReductionConfig:
        """Merging methods: ``value`` is the fraction of the tokens kept by the merge in each of the template's
        ``prune_layers`` (none given: every block)."""
        layers = (
            list(template.prune_layers) if template is not None and template.prune_layers else list(range(num_layers))
        )
        base = template.model_dump(exclude={"keep", "keep_rate", "prune_layers"}) if template is not None else {}
        return cls.config_cls.model_validate(
            {**base, "method": cls.name, "prune_layers": layers, "keep_rate": float(value), "rounding": "ceil"}
        )

    def merge(self, x: MergeInputs, n_keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, n_prefix + n_keep, D], sizes [B, n_prefix + n_keep, 1]), prefix tokens first and unchanged."""
        raise NotImplementedError


def default_prune_layers(num_layers: int) -> list[int]:
    """Blocks 2, 5 and 8 of a 12-block model (the early Zero-TPrune code's schedule), scaled to ``num_layers``."""
    blocks = sorted({min(num_layers - 1, round(f * num_layers / 12)) for f in (2, 5, 8)})
    return blocks


# Methods whose every stage is their own (pruning or merging): the steps any schedule is made of. The contract
# tests run over every one of them.
METHODS: Registry[type[Method]] = Registry("reduction method")
# Schedules made of METHODS (a hybrid): they plan stages and hand each to a step's method (Method.for_stage).
COMPOSITES: Registry[type[Method]] = Registry("composite reduction", disjoint=(METHODS,))


def method_classes() -> dict[str, type[Method]]:
    """Every reduction a ViT recipe may name: the methods and the composites."""
    return {**METHODS, **COMPOSITES}
