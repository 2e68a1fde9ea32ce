"""The Task interface: a task declares, the driver (:mod:`tokexport.tasks.run`) runs.

A task is constructed from a validated recipe and then called by the driver in this order:
``load`` (model, data; every bad-input error before anything heavy) → ``export`` (the reduced graph
``model.onnx`` and the unreduced ``baseline.onnx`` into the staging directory) → ``parity_cases``
(each graph with its PyTorch reference on real named inputs) → ``metrics`` (reduced vs original, in
the :mod:`tokexport.stages.metric` contract) → ``bench_feed`` (named inputs of a batch, for the
side-by-side latency) → ``deploy_feed`` (the sample feed of the deploy bundle) → ``sections``
(task-specific report sections) → ``markdown`` (their human-readable form)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..registry import Registry

Feed = dict[str, np.ndarray]


@dataclass
class Graphs:
    """The exported pair, as written into the staging directory."""

    model: Path
    baseline: Path
    model_info: Any  # tokexport.export.ExportInfo (exporter, opset, output names and shapes)
    baseline_info: Any


@dataclass
class ParityCase:
    """One ONNX graph against its PyTorch twin on the same named inputs."""

    graph: Path
    reference: Any  # a runner: infer(feed) -> {name: array}
    feed: Feed
    mask: np.ndarray | None = None  # text: padding mask [N, seq]; padded positions are not compared
    margins: list[float] | None = None  # selections: per-sample decision margins (near-ties)
    tie_margin: float = 0.0
    unmasked: tuple[str, ...] = ()  # outputs compared in full even when a mask is given
    threads: int | None = None


class Stages:
    """Progress hooks; the CLI supplies a rich implementation, the library default does nothing."""

    def stage(self, name: str, total: int | None = None):
        import contextlib

        @contextlib.contextmanager
        def _noop():
            yield lambda n=1: None

        return _noop()

    def log(self, message: str) -> None:
        pass


class Task(ABC):
    """One kind of conversion. Subclasses register themselves in :data:`TASKS` under ``kind``."""

    kind: ClassVar[str]  # the report's `kind`
    recipe_tasks: ClassVar[tuple[str, ...]]  # the recipe `task:` values this task runs
    extra_outputs: ClassVar[str] = ""  # what else the task writes into the output directory (for the CLI line)
    # set by the driver after the parity stage, before ``metrics``: {"parity": {...}, "parity_baseline": {...}}
    parity_results: dict | None = None

    def __init__(self, recipe, base_dir: Path, label: str):
        self.recipe = recipe
        self.base_dir = Path(base_dir)
        self.label = label

    @abstractmethod
    def load(self, stages: Stages) -> None:
        """Load the model and the evaluation data; raise InputError for anything the recipe got wrong."""

    @abstractmethod
    def export(self, tmp: Path, stages: Stages) -> Graphs:
        """Write ``tmp/model.onnx`` and ``tmp/baseline.onnx`` (plus any task files into ``tmp``)."""

    @abstractmethod
    def parity_cases(self, graphs: Graphs) -> dict[str, ParityCase]:
        """``{"parity": reduced graph case, "parity_baseline": baseline graph case}``."""

    @abstractmethod
    def metrics(self, graphs: Graphs, stages: Stages) -> dict[str, dict]:
        """Reduced vs original on the task's evaluation data, each in the metric contract."""

    @abstractmethod
    def bench_feed(self, batch: int) -> Feed:
        """Named inputs of one batch, shared by both graphs. Text tasks feed each graph its own ids:
        return ``{"baseline": feed, "model": feed}`` from :meth:`bench_feeds` instead."""

    def bench_feeds(self, batch: int) -> dict[str, Feed]:
        """The feed of each graph for one batch (the same feed by default)."""
        f = self.bench_feed(batch)
        return {"baseline": f, "model": f}

    def bench_batches(self) -> list[int]:
        return list(self.recipe.bench.batch_sizes)

    def bench_extra(self, batches: dict) -> dict:
        """Task figures added to the bench section (FLOPs, efficiency, load times, notes)."""
        return {}

    @abstractmethod
    def deploy_feed(self) -> Feed:
        """The sample feed a deploy bundle carries (real evaluation data), at the export batch."""

    @abstractmethod
    def sections(self, graphs: Graphs) -> dict:
        """Task sections of the report: at least ``model``, ``reduction`` and ``export``; may extend
        ``accuracy`` (under key ``accuracy_extra``) and ``artifacts`` (under ``artifacts_extra``)."""

    @classmethod
    def markdown(cls, report: dict) -> list[str]:
        """Task-specific lines of report.md, placed after the header."""
        return []

    @classmethod
    def console_lines(cls, report: dict) -> list[str]:
        """Task-specific lines of the console summary."""
        return []


TASKS: Registry[type[Task]] = Registry("task", key="kind")


def task_for(recipe) -> type[Task]:
    """The task class that runs ``recipe`` (by its ``task:`` field)."""
    name = getattr(recipe, "task", None) or "auto"
    for cls in TASKS.values():
        if name in cls.recipe_tasks:
            return cls
    raise KeyError(name)
