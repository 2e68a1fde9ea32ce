"""Hybrid schedules (method ``hybrid``): any registered methods as steps of one schedule, e.g. prune early with
a selector and merge late with ToMe or PiToMe::

    reduction:
      method: hybrid
      steps:
        - {method: divprune, prune_layers: [2], keep_rate: 0.75}
        - {method: tome, r: 8, prune_layers: [6, 7, 8, 9, 10, 11]}

Each step is that method's own configuration, validated by its own class (errors name
``reduction.steps[i].field``) and planned by its own rules; the token count leaving one step is the count
entering the next. Steps apply in block order and never share a block. Every stage of the plan carries its
step (``Stage.step``, ``Stage.method``), and :meth:`Hybrid.for_stage` hands each stage to its step's method, so
the patch, the FLOPs, the report and the baselines treat each stage as its own method would.

The step union is built from the registry once every method module has registered (:func:`finalize`, called
by ``tokexport.reduce``); a method registered later becomes a step option when ``finalize`` runs again.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from tokexport.errors import InputError

from .base import COMPOSITES, METHODS, Method, ReductionConfig
from .schedule import Stage, plan

_SCHEDULE_FIELDS = ("prune_layers", "keep_rate", "keep", "rounding")


class HybridConfig(ReductionConfig):
    """Several methods in one schedule: ``steps``, each one method's own configuration, in block order."""

    method: Literal["hybrid"] = Field(default="hybrid", description="Method name.")
    steps: list[HybridStep] = Field(
        min_length=1,
        max_length=64,
        description=(
            "The steps, in block order, 1 to 64: each is a method's own reduction config (method + its "
            "schedule and parameters). Blocks of different steps must not overlap; the tokens leaving one "
            "step enter the next."
        ),
    )

    @model_validator(mode="after")
    def _schedule_in_steps(self) -> HybridConfig:
        defaults = {f: type(self).model_fields[f].get_default(call_default_factory=True) for f in _SCHEDULE_FIELDS}
        given = [f for f in _SCHEDULE_FIELDS if getattr(self, f) != defaults[f]]  # a dump's defaults round-trip
        if given:
            raise ValueError(
                f"{given[0]}: a hybrid's schedule is given in each step (steps[i].{given[0]}), not at the top level"
            )
        for i, step in enumerate(self.steps):
            if getattr(step, "method", None) == "hybrid":
                raise ValueError(f"steps[{i}]: a step cannot itself be a hybrid; list its steps here instead")
        return self

    def summary(self) -> str:
        return "; then ".join(f"{step.method} {step.summary()}" for step in self.steps)

    def own_plan(self, n_tokens: int, n_prefix: int, num_layers: int) -> list[Stage]:
        stages: list[Stage] = []
        n, last = n_tokens, None
        for i, step in enumerate(self.steps):
            try:
                got = plan(step, n, n_prefix, num_layers)
            except InputError as e:
                raise InputError(_in_step(str(e), i)) from None
            if not got:
                raise InputError(
                    f"reduction.steps[{i}]: the {step.method} step reduces nothing at this size; give it "
                    "blocks and a budget, or remove it"
                )
            blocks = [s.layer for s in got]
            if last is not None and blocks[0] <= last:
                raise InputError(
                    f"reduction.steps[{i}]: its blocks {blocks} do not all come after step {i - 1}'s "
                    f"last block ({last}); steps apply in block order and never share a block"
                )
            stages += [replace(s, method=step.method, step=i) for s in got]
            n, last = got[-1].tokens_out, blocks[-1]
        return stages


def _in_step(message: str, i: int) -> str:
    """An error of step ``i``'s own planning, naming ``reduction.steps[i]``."""
    if message.startswith("reduction."):
        return f"reduction.steps[{i}]." + message[len("reduction.") :]
    if message.startswith("reduction:"):
        return f"reduction.steps[{i}]:" + message[len("reduction:") :]
    return f"reduction.steps[{i}]: {message}"


@COMPOSITES.register
class Hybrid(Method):
    """Runs each stage with the method of its step."""

    name = "hybrid"
    config_cls = HybridConfig
    needs_attention = False
    config: HybridConfig

    def __init__(self, config: HybridConfig):
        super().__init__(config)
        self.steps: list[Method] = [METHODS[s.method](s) for s in config.steps]

    def for_stage(self, stage: Stage) -> Method:
        if stage.step is None:
            raise RuntimeError(f"hybrid: the stage after block {stage.layer} names no step")
        return self.steps[stage.step]

    def check(self, n_prefix: int) -> None:
        for i, m in enumerate(self.steps):
            try:
                m.check(n_prefix)
            except InputError as e:
                raise InputError(_in_step(str(e), i)) from None

    def select(self, x, n_keep):
        raise RuntimeError("hybrid: each stage runs with its step's method (Method.for_stage)")

    @classmethod
    def knob_bounds(cls, template: HybridConfig | None) -> tuple[float, float]:
        """v with every step's own knob at v^(1/blocks) inside that knob's bounds."""
        template = _needs_template(template)
        lows = [METHODS[s.method].knob_bounds(s)[0] ** len(_blocks(s, i)) for i, s in enumerate(template.steps)]
        return max(lows), 1.0

    @classmethod
    def knob(cls, template: HybridConfig | None, value: float, num_layers: int) -> HybridConfig:
        """Each step keeps about the same share ``value`` of the tokens entering it: a step acting on b blocks
        gets its own method's knob at value^(1/b) (a pruning step with one block keeps ``value``; a merging step
        over nine blocks keeps value^(1/9) in each). The steps' methods and blocks are the template's."""
        template = _needs_template(template)
        steps = []
        for i, s in enumerate(template.steps):
            b = len(_blocks(s, i))
            steps.append(METHODS[s.method].knob(s, float(value) ** (1.0 / b), num_layers))
        return HybridConfig(steps=steps)

    def describe(self) -> dict:
        return {
            "steps": [
                {"method": m.name, "prune_layers": list(m.config.prune_layers), **m.describe()} for m in self.steps
            ]
        }


def _needs_template(template: HybridConfig | None) -> HybridConfig:
    if template is None:
        raise InputError("hybrid: its budget knob needs the steps (a template recipe)")
    return template


def _blocks(step: ReductionConfig, i: int) -> list[int]:
    if not step.prune_layers:
        raise InputError(f"hybrid: steps[{i}] lists no prune_layers; the budget knob needs each step's blocks")
    return list(step.prune_layers)


HybridStep = ReductionConfig  # replaced by the union of every registered method's config in finalize()


def finalize() -> None:
    """Make every method registered so far a step option (composites are not): the steps' discriminated union."""
    configs = tuple(cls.config_cls for cls in METHODS.values())
    step = Annotated[Union[configs], Field(discriminator="method")]  # noqa: UP007
    HybridConfig.model_rebuild(force=True, _types_namespace={"HybridStep": step})
