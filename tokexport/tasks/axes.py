"""What a sweep varies for each task, and how its points read: one :class:`SweepAxis` per recipe kind (the
recipe union's tag: ``vit``, ``visual-tokens``, ``vocab-trim``). :mod:`tokexport.sweep` and
:mod:`tokexport.fanout` ask the recipe's axis (:func:`axis_for`, :func:`axis_of_report`) and name no task.

Light on purpose (no torch): the sweep checks its arguments against these before anything loads. The task
modules (:mod:`.vit_tokens`, :mod:`.visual_tokens`, :mod:`.vocab_trim`) import torch at their top.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ValidationError

from ..errors import InputError, option
from ..recipe import METRICS, recipe_kind
from ..registry import Registry

AXES: Registry = Registry("sweep axis", key="recipe_kind")


@dataclass(frozen=True)
class Point:
    """One conversion of the sweep: a (method, keep rate), or a vocab trim's target vocabulary size."""

    method: str
    keep_rate: float | None = None
    vocab_size: int | None = None

    @property
    def label(self) -> str:
        return f"v{self.vocab_size}" if self.vocab_size is not None else f"{self.method}-k{self.keep_rate:g}"

    def fields(self) -> dict:
        if self.vocab_size is not None:
            return {"method": self.method, "target_vocab_size": self.vocab_size}
        return {"method": self.method, "keep_rate": self.keep_rate}


def axis_for(recipe) -> SweepAxis:
    """The sweep axis of a validated recipe."""
    return AXES[recipe_kind(recipe)]()


def is_vocab(recipe) -> bool:
    """A vocabulary trim (tokexport.search's bisection over ``trim.target_vocab_size``)."""
    return recipe_kind(recipe) == VocabTrimAxis.recipe_kind


def axis_of_report(kind: str) -> SweepAxis:
    """The sweep axis of a report's ``kind``."""
    for cls in AXES.values():
        if cls.report_kind == kind:
            return cls()
    raise KeyError(f"no sweep axis for reports of kind {kind!r}")


class SweepAxis:
    """A task's sweep: the argument giving the varied values, the points, each point's recipe, the metrics
    ``--metric`` may name, the x axis, and the task's columns of a point (sweep.json, sweep.html, the CLI)."""

    recipe_kind: ClassVar[str]  # the recipe union's tag
    report_kind: ClassVar[str]  # the report's ``kind``
    argument: ClassVar[str]  # the sweep's argument of the varied values (the CLI's flag: tokexport.errors.option)
    example: ClassVar[str]  # values for that argument (as the CLI takes them), in error messages
    varied: ClassVar[dict]  # sweep.json's ``varied``
    info_only: ClassVar[tuple[str, ...]] = ()  # {value, info: true} figures: never a sweep metric

    # --- arguments and points
    def metrics(self, recipe, base_dir: Path) -> tuple[tuple[str, ...], str]:
        """(the gated metrics this recipe's task measures, the default ``--metric``)."""
        raise NotImplementedError

    def task_name(self, recipe, base_dir: Path) -> str:
        return recipe.task

    def points(self, recipe, path: Path, keep_rates, methods, vocab_sizes) -> list[Point]:
        raise NotImplementedError

    def point_recipe(self, recipe, point: Point, threads: int | None = None):
        raise NotImplementedError

    def changed(self, recipe) -> dict:
        """The part of the recipe a sweep varies (sweep.json's ``recipe``)."""
        return {"reduction": recipe.reduction.model_dump(mode="json")}

    # --- a point's figures
    def row(self, report: dict) -> dict:
        """The task's own figures of one point, read from its report."""
        raise NotImplementedError

    def axis(self, rows: list[dict], batch: str | None) -> tuple[dict, dict, str]:
        """(x axis, varied parameter, what a point's conversion changes)."""
        raise NotImplementedError

    def html_columns(self, summary: dict, fmt) -> list[tuple[str, Any]]:
        """sweep.html's columns between ``method`` and the metric: (header, cell of a point)."""
        raise NotImplementedError

    def cli_columns(self, summary: dict) -> list[tuple[str, Any]]:
        """The CLI table's columns before the metric: (header, cell of a point: a string, or a value the CLI
        formats)."""
        raise NotImplementedError

    # --- `tokexport search`: one knob bisected over full conversions (None: the task searches otherwise)
    search_knob: ClassVar[str | None] = None  # the recipe field searched, as search.json names it
    search_tag: ClassVar[str] = ""  # prefix of a candidate's run folder (k64, v8000)

    def knob_recipe(self, recipe, template, value):
        """``template`` (the searched recipe, budget applied) with the knob at ``value``."""
        raise NotImplementedError

    def knob_measured(self, report: dict) -> int:
        """The knob's value a conversion used (the recipe's own may be a rate or a budget)."""
        raise NotImplementedError

    def knob_figures(self, report: dict) -> dict:
        """What a search's trace records of a candidate beyond the metric."""
        return {}

    def knob_grid(self, recipe, report: dict, ref_value: int, step: int, candidate) -> list[int]:
        """The ascending values the bisection may try, the recipe's own included."""
        raise NotImplementedError

    def method_name(self, recipe) -> str:
        return recipe.reduction.method

    def budget_verify(self, recipe, metric: str, max_drop: float):
        """(the recipe's verify section with ``metric``'s threshold tightened to the search budget, the field
        set, or None when no recipe field bounds that figure)."""
        from ..recipe import Threshold

        v = recipe.verify
        thresholds = dict(v.accuracy.metrics)
        t = thresholds.get(metric)
        thresholds[metric] = Threshold(
            min=t.min if t else None, max_drop=min(max_drop, t.max_drop) if t and t.max_drop is not None else max_drop
        )
        return v.model_copy(
            update={"accuracy": v.accuracy.model_copy(update={"metrics": thresholds})}
        ), f"verify.accuracy.metrics.{metric}.max_drop"

    # --- fan-out
    def model_cache_key(self, recipe, base_dir: str) -> tuple | None:
        """A key under which a worker may keep the loaded model between points (None: load it every time)."""
        return None

    def load_model(self, recipe, base_dir: str):
        raise NotImplementedError


def _registry(recipe) -> dict:
    if recipe_kind(recipe) == "visual-tokens":
        from ..vlm.select import VISUAL_METHODS

        return VISUAL_METHODS
    from ..reduce import METHODS

    return METHODS


class _KeepRateAxis(SweepAxis):
    """Token reduction: (method, keep rate) points; ``--keep-rates`` and ``--methods``."""

    argument = "keep_rates"
    example = "0.9,0.7,0.5"
    varied = {"key": "keep_rate", "label": "keep rate"}

    def points(self, recipe, path: Path, keep_rates, methods, vocab_sizes) -> list[Point]:
        registry = _registry(recipe)
        names = methods or [recipe.reduction.method]
        for m in names:
            if m not in registry:
                raise InputError(
                    f"{option('methods')}: unknown method {m!r} for task {recipe.task}"
                    + (f" ({path})" if methods else "")
                    + f"; known: {', '.join(sorted(registry))}"
                )
        return [Point(m, k) for m in names for k in keep_rates]

    def point_fields(self, recipe, point: Point, fields: dict) -> dict:
        return fields

    def point_recipe(self, recipe, point: Point, threads: int | None = None):
        """The loaded recipe with its reduction's keep rate (and method) replaced. Method-specific fields carry
        over when the method is the recipe's own; otherwise they take the method's defaults."""
        red = recipe.reduction
        fields = red.model_dump(mode="json", exclude_none=True) if point.method == red.method else {}
        fields.update(method=point.method, keep_rate=point.keep_rate)
        fields.pop("keep", None)
        fields = self.point_fields(recipe, point, fields)
        cls = _registry(recipe)[point.method].config_cls
        try:
            new_red = cls.model_validate(fields)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise InputError(f"sweep point {point.label}: reduction.{where}: {err['msg']}") from None
        update: dict = {"reduction": new_red, "name": f"{recipe.name or 'recipe'}-{point.label}"}
        if threads is not None and recipe.bench.threads is None:
            update["bench"] = recipe.bench.model_copy(update={"threads": threads})
        return recipe.model_copy(update=update)

    def row(self, report: dict) -> dict:
        fl = (report.get("bench") or {}).get("flops") or {}
        red = report["reduction"]
        llm = report.get("llm") or {}
        return {
            "tokens": (
                [s["tokens_out"] for s in red.get("schedule") or []]
                if red.get("schedule")
                else [red.get("visual_tokens_out")]
            ),
            "predicted_speedup": fl.get("predicted_speedup"),
            "flops_ratio": fl["reduced"] / fl["baseline"] if fl.get("baseline") else None,
            "llm_prefill_flops_saved": llm.get("prefill_flops_saved"),
        }

    def html_columns(self, summary: dict, fmt) -> list[tuple[str, Any]]:
        xk = summary["x"]["key"]
        return [
            ("keep rate", lambda p: f"{p['keep_rate']:g}"),
            ("tokens", lambda p: fmt(p["tokens"])),
            (summary["x"]["label"], lambda p: fmt(p[xk], 3)),
        ]

    def cli_columns(self, summary: dict) -> list[tuple[str, Any]]:
        xk = summary["x"]["key"]
        return [
            ("method", lambda p: p["method"]),
            ("keep rate", lambda p: f"{p['keep_rate']:g}"),
            ("tokens", lambda p: "→".join(map(str, p["tokens"]))),
            (summary["x"]["label"], lambda p: f"{p[xk]:.3f}×"),
        ]


VIT_METRICS = ("feature_cosine", "instance_top1", "top1_agreement", "imagefolder_top1")


@AXES.register
class ViTAxis(_KeepRateAxis):
    """ViT token pruning: the keep rate at every pruning step of the recipe's schedule; x = the measured
    speed-up at the largest bench batch (the FLOP prediction when bench is off)."""

    recipe_kind = "vit"
    report_kind = "vit-token-pruning"

    def metrics(self, recipe, base_dir: Path) -> tuple[tuple[str, ...], str]:
        return VIT_METRICS, "instance_top1"

    def point_fields(self, recipe, point: Point, fields: dict) -> dict:
        red = recipe.reduction
        if not red.prune_layers:
            raise InputError(
                "reduction.prune_layers: empty; a ViT sweep keeps the recipe's prune layers and "
                "varies the keep rate, so list the blocks to prune after"
            )
        return {**fields, "prune_layers": list(red.prune_layers), "rounding": red.rounding}

    def axis(self, rows: list[dict], batch: str | None) -> tuple[dict, dict, str]:
        what = "keep rate applied at every pruning step of the recipe's schedule"
        if not rows:
            return {"key": "speedup", "label": "measured speed-up", "batch": None}, dict(self.varied), what
        if batch:
            x = {"key": "speedup", "label": f"measured speed-up at batch {batch}", "batch": int(batch)}
        else:
            x = {"key": "predicted_speedup", "label": "FLOP-predicted speed-up (bench disabled)", "batch": None}
            if any(r[x["key"]] is None for r in rows):
                raise InputError("bench.enabled: false and no FLOP prediction in the reports; enable bench to sweep")
        return x, dict(self.varied), (f"{what}; speed-up = baseline.onnx ÷ model.onnx latency measured in the same run")

    def html_columns(self, summary: dict, fmt) -> list[tuple[str, Any]]:
        return super().html_columns(summary, fmt) + [
            ("predicted speed-up", lambda p: fmt(p["predicted_speedup"], 3)),
            ("FLOPs ratio", lambda p: fmt(p["flops_ratio"], 3)),
        ]

    def cli_columns(self, summary: dict) -> list[tuple[str, Any]]:
        return super().cli_columns(summary) + [("FLOPs ratio", lambda p: p["flops_ratio"])]

    def model_cache_key(self, recipe, base_dir: str) -> tuple | None:
        return (recipe.model, base_dir, recipe.family, recipe.task, recipe.export.image_size)

    def load_model(self, recipe, base_dir: str):
        from ..load import load_model

        return load_model(
            recipe.model,
            Path(base_dir),
            recipe.family,
            recipe.task,
            recipe.export.image_size,
            allow_pickle=recipe.allow_pickle,
        )


VISUAL_METRICS = (
    "feature_cosine",
    "attn_pooled_cosine",
    "instance_top1",
    "generation_exact_match",
    "generation_token_agreement",
)


@AXES.register
class VisualTokensAxis(_KeepRateAxis):
    """VLM visual tokens: ``reduction.keep_rate`` of all visual tokens; x = the LLM prefill FLOPs ratio (the
    tower's own measured ratio is only the selection overhead, in every point)."""

    recipe_kind = "visual-tokens"
    report_kind = "visual-tokens"
    info_only = ("attention_mass",)  # the selector's own ranking signal, gates nothing

    def metrics(self, recipe, base_dir: Path) -> tuple[tuple[str, ...], str]:
        return VISUAL_METRICS, "instance_top1"

    def row(self, report: dict) -> dict:
        llm = report.get("llm") or {}
        return {
            **super().row(report),
            "visual_tokens_in": report["reduction"].get("visual_tokens_in"),
            "prefill_speedup": llm["prefill_flops_full"] / llm["prefill_flops_reduced"],
        }

    def axis(self, rows: list[dict], batch: str | None) -> tuple[dict, dict, str]:
        x = {
            "key": "prefill_speedup",
            "short": "LLM prefill FLOPs ratio",
            "label": "LLM prefill FLOPs ratio (original ÷ reduced, predicted)",
            "batch": int(batch) if batch else None,
        }
        return (
            x,
            dict(self.varied),
            (
                "reduction.keep_rate of all visual tokens replaced (K = floor(V·P·rate)); x = the LLM prefill FLOPs "
                "with all visual tokens ÷ with the K kept (the tower's measured model.onnx ÷ baseline.onnx ratio is "
                "only the selection overhead, in every point)"
            ),
        )

    def html_columns(self, summary: dict, fmt) -> list[tuple[str, Any]]:
        return super().html_columns(summary, fmt) + [
            ("tower speed-up (selection overhead)", lambda p: fmt(p["speedup"], 3))
        ]

    def cli_columns(self, summary: dict) -> list[tuple[str, Any]]:
        return super().cli_columns(summary) + [("tower speed-up", lambda p: p["speedup"])]

    search_knob = "reduction.keep"
    search_tag = "k"

    def knob_recipe(self, recipe, template, value):
        red = recipe.reduction.model_dump(mode="json", exclude_none=True)
        red.pop("keep_rate", None)
        red["keep"] = value
        return template.model_copy(update={"reduction": type(recipe.reduction).model_validate(red)})

    def knob_measured(self, report: dict) -> int:
        return report["reduction"]["visual_tokens_out"]

    def knob_figures(self, report: dict) -> dict:
        return {
            "visual_tokens_in": report["reduction"]["visual_tokens_in"],
            "prefill_flops_saved": report["llm"]["prefill_flops_saved"],
        }

    def knob_grid(self, recipe, report: dict, ref_value: int, step: int, candidate) -> list[int]:
        """Every K from 1 to min(all visual tokens, TopK's limit) on the ``step`` grid that the method accepts
        for the recipe's layout."""
        from ..vlm.select import TOPK_LIMIT, VisualLayout

        lay = report["reduction"]["layout"]
        layout = VisualLayout(
            views=lay["views"], grid=tuple(lay["grid"]), sub_grid=tuple(lay["sub_grid"]) if lay["sub_grid"] else None
        )

        def valid(k: int) -> bool:
            try:
                candidate(k).reduction.resolve_k(layout)
                return True
            except ValueError:
                return False

        top = min(layout.total, TOPK_LIMIT - 1)
        return sorted({k for k in range(1, top + 1) if (k % step == 0 or k == ref_value) and valid(k)} | {ref_value})


# the gated figures of a vocab trim, the default (the quality figure the recipe's thresholds bound) first
VOCAB_METRICS = {
    "encoder": (
        "heldout_embedding_cosine",
        "in_vocab_max_abs_diff",
        "heldout_token_coverage",
        "tokenizer_remap_exact",
        "checkpoint_tensors_exact",
    ),
    "decoder": (
        "next_token_top1_agreement",
        "perplexity_per_char_increase",
        "generation_exact_match",
        "generation_differences_explained",
        "top1_agreement_where_kept",
        "heldout_token_coverage",
        "tokenizer_remap_exact",
        "checkpoint_tensors_exact",
    ),
}


def vocab_architecture(recipe, base_dir: Path) -> str:
    """encoder or decoder: the recipe's ``architecture``, or what the model's config.json says (read only)."""
    from .vocab_trim_inputs import architecture_of, resolve_model_dir

    if recipe.architecture != "auto":
        return recipe.architecture
    model_dir, _ = resolve_model_dir(recipe.model, base_dir)
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir)
    except Exception as e:  # noqa: BLE001  (unreadable config: one line)
        raise InputError(f"model: cannot read {model_dir / 'config.json'} ({type(e).__name__})") from None
    return architecture_of(recipe, config)


def vocab_recipe(recipe, size: int, name: str, threads: int | None = None, **update):
    """A vocab recipe with ``trim.target_vocab_size = size`` (validated like the recipe file); the size
    replaces a budget the recipe sets instead (``max_params`` / ``max_bytes``)."""
    from ..vocab.recipe import TrimConfig

    try:
        trim = TrimConfig.model_validate(
            {**recipe.trim.model_dump(mode="json"), "target_vocab_size": size, "max_params": None, "max_bytes": None}
        )
    except ValidationError as e:
        raise InputError(f"trim.target_vocab_size: {size}: {e.errors()[0]['msg']}") from None
    update = {"trim": trim, "name": name, **update}
    if threads is not None and recipe.bench.threads is None:
        update["bench"] = recipe.bench.model_copy(update={"threads": threads})
    return recipe.model_copy(update=update)


@AXES.register
class VocabTrimAxis(SweepAxis):
    """Vocabulary trimming: ``trim.target_vocab_size`` (``--vocab-sizes``); x = the parameter reduction, what a
    trim buys (an embedding lookup costs little time: the measured speed-up is in every point)."""

    recipe_kind = "vocab-trim"
    report_kind = "vocab-trim"
    argument = "vocab_sizes"
    example = "8000,12000,16000"
    varied = {"key": "target_vocab_size", "label": "trim.target_vocab_size"}

    def metrics(self, recipe, base_dir: Path) -> tuple[tuple[str, ...], str]:
        names = VOCAB_METRICS[vocab_architecture(recipe, base_dir)]
        return names, names[0]

    def task_name(self, recipe, base_dir: Path) -> str:
        return f"vocab-trim ({vocab_architecture(recipe, base_dir)})"

    def points(self, recipe, path: Path, keep_rates, methods, vocab_sizes) -> list[Point]:
        return [Point("vocab-trim", vocab_size=n) for n in vocab_sizes]

    def point_recipe(self, recipe, point: Point, threads: int | None = None):
        return vocab_recipe(recipe, point.vocab_size, f"{recipe.name or 'recipe'}-{point.label}", threads)

    def changed(self, recipe) -> dict:
        return {"trim": recipe.trim.model_dump(mode="json")}

    def row(self, report: dict) -> dict:
        mod, tok, art = report["model"], report["tokenizer"], report["artifacts"]
        return {
            "vocab_size": tok["vocab_size"],
            "vocab_size_trimmed": tok["vocab_size_trimmed"],
            "kept": report["trim"]["kept"],
            "params": mod["params"],
            "params_trimmed": mod["params_trimmed"],
            "params_ratio": mod["params_trimmed"] / mod["params"],
            "params_reduction": mod["params"] / mod["params_trimmed"],
            "onnx_bytes_ratio": art["onnx_bytes"] / art["baseline_onnx_bytes"],
        }

    def axis(self, rows: list[dict], batch: str | None) -> tuple[dict, dict, str]:
        x = {
            "key": "params_reduction",
            "short": "parameter reduction",
            "label": "parameter reduction (original ÷ trimmed parameters)",
            "batch": int(batch) if batch else None,
        }
        return (
            x,
            dict(self.varied),
            (
                "trim.target_vocab_size replaced (mined ids kept, most frequent first; special, required and closure ids "
                "come on top); x = parameter reduction, what a trim buys (an embedding lookup costs little time: the "
                "measured baseline.onnx ÷ model.onnx speed-up at the export batch is in every point)"
            ),
        )

    def html_columns(self, summary: dict, fmt) -> list[tuple[str, Any]]:
        xk = summary["x"]["key"]
        return [
            ("target vocab size", lambda p: f"{p['target_vocab_size']:,}"),
            ("vocab kept", lambda p: f"{p['vocab_size_trimmed']:,} of {p['vocab_size']:,}"),
            ("parameters kept", lambda p: f"{p['params_trimmed']:,} ({p['params_ratio']:.3f}×)"),
            (summary["x"]["label"], lambda p: fmt(p[xk], 3)),
            ("measured speed-up", lambda p: fmt(p["speedup"], 3)),
            ("ONNX bytes ratio", lambda p: fmt(p["onnx_bytes_ratio"], 3)),
        ]

    search_knob = "trim.target_vocab_size"
    search_tag = "v"

    def knob_recipe(self, recipe, template, value):
        return vocab_recipe(template, value, template.name)

    def knob_measured(self, report: dict) -> int:
        return report["trim"]["mined"]

    def knob_figures(self, report: dict) -> dict:
        return {
            "vocab_size_trimmed": report["tokenizer"]["vocab_size_trimmed"],
            "params_ratio": report["model"]["params_trimmed"] / report["model"]["params"],
        }

    def knob_grid(self, recipe, report: dict, ref_value: int, step: int, candidate) -> list[int]:
        top = report["trim"]["eligible"]
        return sorted({*range(step, top + 1, step), ref_value, top})

    def method_name(self, recipe) -> str:
        return self.recipe_kind

    # the recipe field that bounds each figure: (section, field, min or max); the originals are fixed (1 for
    # shares and cosines, 0 for the perplexity increase)
    BOUNDED = {
        "heldout_embedding_cosine": ("accuracy", "min_cosine", "min"),
        "next_token_top1_agreement": ("accuracy", "min_top1_agreement", "min"),
        "perplexity_per_char_increase": ("accuracy", "max_perplexity_increase", "max"),
        "generation_exact_match": ("generation", "min_exact_match", "min"),
    }

    def budget_verify(self, recipe, metric: str, max_drop: float):
        v = recipe.verify
        if metric not in self.BOUNDED or (self.BOUNDED[metric][0] == "generation" and v.generation is None):
            return v, None  # no recipe field bounds this figure: the budget is the search's alone (search.json)
        part, name, kind = self.BOUNDED[metric]
        section = v.accuracy if part == "accuracy" else v.generation
        cur = getattr(section, name)
        new = max(cur, 1.0 - max_drop) if kind == "min" else min(cur, max_drop)
        return v.model_copy(update={part: section.model_copy(update={name: new})}), f"verify.{part}.{name}"

    def cli_columns(self, summary: dict) -> list[tuple[str, Any]]:
        xk = summary["x"]["key"]
        return [
            ("target vocab", lambda p: f"{p['target_vocab_size']:,}"),
            ("vocab kept", lambda p: f"{p['vocab_size_trimmed']:,}"),
            ("params kept", lambda p: f"{p['params_ratio']:.3f}×"),
            (summary["x"]["label"], lambda p: f"{p[xk]:.3f}×"),
            ("speed-up", lambda p: p["speedup"]),
        ]


# every name --metric may take for some task (the CLI's check before the recipe is read)
ALL_METRICS = tuple(dict.fromkeys((*METRICS, *VOCAB_METRICS["encoder"], *VOCAB_METRICS["decoder"])))
