"""Recipe: the YAML a user writes. Validated with pydantic against one union of recipe kinds,
discriminated by ``task``: ``vocab-trim`` (:class:`~tokexport.vocab.recipe.VocabRecipe`),
``visual-tokens`` (:class:`VisualTokensRecipe`) and every other value, or none, (:class:`ViTRecipe`,
token reduction inside a ViT). Each kind's ``reduction`` is its own union of method configs, discriminated
by ``method``: ViT recipes take :data:`tokexport.reduce.METHODS`, visual-token recipes ``VISUAL_METHODS``
(a name may exist in both; a method of the other kind is an error that names the task to set). Every error
becomes one line naming the file and the field
(``recipe.yaml: reduction.keep_rate[1]: ...``); a recipe with several errors gets one line for each,
in the order the recipe is written.

Layering: :mod:`tokexport.recipe_base` (shared sections, YAML reader, error formatter) <-
:mod:`tokexport.vocab.recipe` <- this module."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from . import targets as _targets
from .bounds import Count, Real, Threads, show
from .errors import InputError, SchemaErrors
from .recipe_base import (
    BaselinesConfig,
    DeployConfig,
    ParityConfig,
    ProviderSettings,
    Strict,
    TargetedExport,
    Threshold,
    VsBaselines,
    allow_pickle_field,
    error_message,
    format_errors,
    one_line,
    read_yaml,
)
from .reduce import METHODS, method_classes
from .vlm.select import VISUAL_METHODS
from .vocab.recipe import VocabRecipe, format_vocab_errors

METRICS = (
    "feature_cosine",
    "instance_top1",
    "top1_agreement",
    "imagefolder_top1",
    # visual-token reduction (task: visual-tokens)
    "attn_pooled_cosine",
    "attention_mass",
    "generation_exact_match",
    "generation_token_agreement",
)
VISUAL_ONLY_METRICS = ("attn_pooled_cosine", "attention_mass", "generation_exact_match", "generation_token_agreement")
# Opset each TensorRT version parses faithfully, keyed by the legacy `trt_target` values (tokexport.targets).
TRT_MAX_OPSET = _targets.TRT_MAX_OPSET


class ExportConfig(TargetedExport):
    image_size: Count(14, 4096) | None = Field(
        None, description="Square input size in pixels, 14..4096; default: the checkpoint's preprocessor crop size."
    )
    exporter: Literal["auto", "torchscript", "dynamo"] = Field(
        "auto",
        description="auto: TorchScript exporter for opset <= 17 (the dynamo exporter only emits opset >= 18), dynamo otherwise.",
    )


class AccuracyConfig(Strict):
    dataset: Literal["natural-images"] = Field(
        "natural-images",
        description="Instance recognition on the bundled natural photographs: class = source image, samples = seeded random crops/flips.",
    )
    samples_per_class: Count(1, 256) = Field(8, description="Evaluation crops per bundled photograph, 1..256.")
    prototypes_per_class: Count(1, 256) = Field(
        4, description="Crops per class whose ORIGINAL-model features form the class prototype, 1..256."
    )
    crop_scale: tuple[Real(0, 1, lo_open=True), Real(0, 1, lo_open=True)] = Field(
        (0.3, 0.7),
        description="[low, high] area fraction range of the random crops; each finite, in (0, 1], low <= high.",
    )
    seed: Count(0, 2**32 - 1) = Field(0, description="Seed of the crops, 0..4294967295.")
    imagefolder: str | None = Field(
        None,
        description="ImageFolder directory (one sub-directory per class) for top-1 accuracy of classifiers; relative to the recipe file.",
    )
    imagefolder_limit_per_class: Count(1, 100000) | None = Field(
        None, description="Images per class read from imagefolder, 1..100000; null: all."
    )
    metrics: dict[str, Threshold] = Field(
        # rule V1 of docs/verdicts.md (absolute floors fixed before measuring)
        default_factory=lambda: {"feature_cosine": Threshold(min=0.9), "instance_top1": Threshold(max_drop=0.05)},
        min_length=1,
        description=f"Thresholds per metric (at least one); names: {', '.join(METRICS)}.",
    )

    @model_validator(mode="after")
    def _check(self):
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale: low {lo:g} is above high {hi:g}; give 0 < low <= high <= 1, e.g. (0.3, 0.7)")
        for name in self.metrics:
            if name not in METRICS:
                hint = difflib.get_close_matches(name, METRICS, n=1, cutoff=0.5)
                raise ValueError(
                    f"metrics: unknown metric {name!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; known: {', '.join(METRICS)}"
                )
        if "imagefolder_top1" in self.metrics and not self.imagefolder:
            raise ValueError("metric imagefolder_top1 needs accuracy.imagefolder")
        return self


class VerifyConfig(Strict):
    parity: ParityConfig = ParityConfig()
    accuracy: AccuracyConfig = AccuracyConfig()
    generation: GenerationConfig | None = Field(
        None, description="LLaVA checkpoints: generate with full and reduced visual tokens and compare."
    )
    baselines: BaselinesConfig = BaselinesConfig()
    vs_baselines: VsBaselines | None = Field(
        None,
        description="Gate on the margin over the honest baselines (random per image over seeds, 2-D uniform) at the same budget; the baselines are measured and reported either way.",
    )

    @model_validator(mode="after")
    def _gate_needs_baselines(self):
        if self.vs_baselines is not None and not self.baselines.enabled:
            raise ValueError("vs_baselines needs verify.baselines.enabled: true (the gate compares with them)")
        return self


class BenchConfig(ProviderSettings):
    enabled: bool = True
    batch_sizes: list[Count(1, 256)] = Field(
        default_factory=lambda: [1, 8],
        min_length=1,
        max_length=16,
        description="Batch sizes timed, 1 to 16 of them, each 1..256.",
    )
    warmup: Count(0, 1000) = Field(3, description="Untimed runs per model and batch size first, 0..1000.")
    repeats: Count(1, 10000) = Field(
        20, description="Timed runs per model and batch size, 1..10000; baseline and reduced alternate."
    )
    threads: Threads = Field(
        None,
        description="onnxruntime intra-op threads, 1..4 x CPU cores of this machine; default (null): $OMP_NUM_THREADS when set, else the CPUs this process may use.",
    )


class LLMDims(Strict):
    """Language-model sizes for the prefill FLOPs of a bare vision tower's recipe (LLaVA checkpoints
    carry their own text_config)."""

    hidden_size: Count(1, 65536) = Field(4096, description="1..65536.")
    num_hidden_layers: Count(1, 1024) = Field(32, description="1..1024.")
    intermediate_size: Count(1, 1048576) = Field(11008, description="1..1048576.")
    num_attention_heads: Count(1, 1024) = Field(32, description="1..1024.")
    num_key_value_heads: Count(1, 1024) | None = Field(None, description="1..1024; null: num_attention_heads.")
    vocab_size: Count(1, 4194304) = Field(32000, description="1..4194304.")


class VisionConfig(Strict):
    feature_layer: Count(-1024, 1023) = Field(
        -2,
        description="LLaVA's vision_feature_layer: hidden_states index the tokens are taken from, -1024..1023 (LLaVA checkpoints: from their config).",
    )
    feature_select: Literal["default", "full"] = Field(
        "default",
        description="default drops the CLS/prefix tokens, full keeps them (LLaVA's vision_feature_select_strategy).",
    )
    grid: tuple[Count(1, 8), Count(1, 8)] | None = Field(
        None,
        description="[rows, cols] of sub-images under an anyres layout, each 1..8: views = full image + rows x cols tiles; null = one view.",
    )
    prompt_tokens: Count(0, 131072) = Field(
        64, description="Text tokens in the prompt, for the LLM prefill FLOPs, 0..131072."
    )
    llm: LLMDims = Field(
        default_factory=LLMDims,
        description="LLM sizes for prefill FLOPs when the model is a bare tower (default: LLaMA/Vicuna-7B as in LLaVA-1.5-7B).",
    )
    eval_layer: Count(-1024, 1023) = Field(
        -2,
        description="Block whose attention weights the attention-pooled features and the retained attention mass, -1024..1023.",
    )
    eval_source: Literal["cls", "received"] = Field(
        "cls", description="Significance used for evaluation: attention from CLS, or received (towers without CLS)."
    )

    @model_validator(mode="after")
    def _grid(self):
        if self.grid is not None and (self.grid[0] < 1 or self.grid[1] < 1):
            raise ValueError("grid: rows and cols must be >= 1")
        return self


class GenerationConfig(Strict):
    prompts: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        max_length=256,
        description="Prompts (the <image> placeholder is added) generated with full and reduced visual tokens; 1 to 256 non-empty strings.",
    )
    max_new_tokens: Count(1, 512) = Field(16, description="1..512.")
    images: Count(1, 32) = Field(2, description="Bundled photographs used per prompt, 1..32.")


def _union(registry):
    """The recipe's ``reduction``: one discriminated union (on ``method``) of a registry's config classes. The ViT
    registry (:data:`tokexport.reduce.METHODS`) and the visual-token one (``VISUAL_METHODS``) are separate unions,
    so the same method name may exist in both (``divprune``: inside a ViT, or on a VLM's visual tokens)."""
    configs = tuple(cls.config_cls for cls in registry.values())
    return Annotated[Union[configs], Field(discriminator="method")]  # noqa: UP007


class Recipe(Strict):
    name: str | None = Field(None, description="Free-form name shown in reports.")
    description: str | None = None
    model: str = Field(
        description="Bundled model name (see `tokexport models list`), a local Hugging Face directory (relative to the recipe file), or a Hub id."
    )
    allow_pickle: bool = allow_pickle_field()
    family: str | None = Field(
        None, description="Model family adapter (vit, deit, dinov2); default: from config.json's model_type."
    )
    task: Literal["auto", "feature-extraction", "image-classification", "visual-tokens"] = Field(
        "auto",
        description="visual-tokens: export a VLM visual-token graph (tower + selection [+ projector]) instead of pruning inside the network.",
    )
    reduction: _union(method_classes())  # the ViT methods (+ composites); VisualTokensRecipe: the visual-token ones
    vision: VisionConfig | None = Field(None, description="Visual-token settings (task: visual-tokens).")
    export: ExportConfig = ExportConfig()
    verify: VerifyConfig = VerifyConfig()
    bench: BenchConfig = BenchConfig()
    deploy: DeployConfig = DeployConfig()

    @classmethod
    def model_validate(cls, obj, *args, **kwargs):
        """``Recipe.model_validate`` validates as the kind the mapping's ``task`` names (ViTRecipe or
        VisualTokensRecipe: their ``reduction`` unions differ); a subclass validates as itself."""
        if cls is Recipe and isinstance(obj, dict):
            kind = VisualTokensRecipe if obj.get("task") == "visual-tokens" else ViTRecipe
            return kind.model_validate(obj, *args, **kwargs)
        return super().model_validate(obj, *args, **kwargs)

    @classmethod
    def listing(cls, data: dict) -> tuple[str, str]:
        """(method, its schedule in a few words) of a recipe mapping for `tokexport recipes list`, from its
        ``reduction`` alone (the method's config says it: ``summary``); a recipe that does not validate still lists."""
        from pydantic import TypeAdapter

        red = data.get("reduction")
        method = str(red.get("method")) if isinstance(red, dict) else "?"
        try:
            cfg = TypeAdapter(cls.model_fields["reduction"].rebuild_annotation()).validate_python(red)
        except ValidationError:
            return method, "(reduction does not validate: `tokexport convert` says why)"
        return method, cfg.summary()

    @model_validator(mode="after")
    def _task_sections(self):
        if self.task != "visual-tokens":
            if self.vision is not None:
                raise ValueError("vision: only used with task: visual-tokens")
            bad = [m for m in self.verify.accuracy.metrics if m in VISUAL_ONLY_METRICS]
            if bad:
                raise ValueError(f"verify.accuracy.metrics.{bad[0]}: only measured for task: visual-tokens")
        return self

    @model_validator(mode="after")
    def _bench_fits_batch(self):
        if isinstance(self.export.batch, int) and self.bench.enabled:
            bad = [b for b in self.bench.batch_sizes if b != self.export.batch]
            if bad:
                raise ValueError(
                    f"bench.batch_sizes {bad} cannot run on a graph exported with fixed export.batch "
                    f"{self.export.batch}; use export.batch: dynamic or bench only batch {self.export.batch}"
                )
        return self


class ViTRecipe(Recipe):
    """Token reduction inside a ViT (``task`` auto, feature-extraction, image-classification, or absent)."""

    task: Literal["auto", "feature-extraction", "image-classification"] = Field(
        "auto",
        description="auto: from the checkpoint (a classification head: image-classification, else feature-extraction).",
    )


class VisualTokensRecipe(Recipe):
    """A VLM's visual-token graph: tower + token selection [+ projector] (``task: visual-tokens``)."""

    task: Literal["visual-tokens"] = Field(
        description="visual-tokens: export a VLM visual-token graph (tower + selection [+ projector]) instead of pruning inside the network."
    )
    reduction: _union(VISUAL_METHODS)


TASKS = ("auto", "feature-extraction", "image-classification", "visual-tokens", "vocab-trim")
# Union tag -> recipe class; a `task` that is neither vocab-trim nor visual-tokens (absent included) is a ViT recipe,
# whose `task` field then refuses values it does not know.
RECIPE_KINDS: dict[str, type[Strict]] = {
    "vit": ViTRecipe,
    "visual-tokens": VisualTokensRecipe,
    "vocab-trim": VocabRecipe,
}


def recipe_kind(data: Any) -> str | None:
    """The union tag of a recipe: its mapping's ``task`` (or an already validated recipe's class)."""
    if isinstance(data, dict):
        task = data.get("task")
        return task if isinstance(task, str) and task in ("visual-tokens", "vocab-trim") else "vit"
    for tag, cls in RECIPE_KINDS.items():
        if isinstance(data, cls):
            return tag
    return None


AnyRecipe = Annotated[
    Union[  # noqa: UP007
        Annotated[ViTRecipe, Tag("vit")],
        Annotated[VisualTokensRecipe, Tag("visual-tokens")],
        Annotated[VocabRecipe, Tag("vocab-trim")],
    ],
    Discriminator(
        recipe_kind,
        custom_error_type="recipe_kind",
        custom_error_message="a recipe is a YAML mapping with at least `model` and `reduction`",
    ),
    Field(
        description="A tokexport recipe. `task` picks the kind: vocab-trim -> VocabRecipe, visual-tokens -> "
        "VisualTokensRecipe, anything else (auto, feature-extraction, image-classification, or no task) "
        "-> ViTRecipe."
    ),
]
RECIPE_ADAPTER: TypeAdapter = TypeAdapter(AnyRecipe)


def _method_error(e: dict, parts: tuple, visual: bool) -> str | None:
    """``reduction.method`` missing or unknown for the recipe's task; a method of the other task says which
    task to set."""
    vit = method_classes()
    own, other = (VISUAL_METHODS, vit) if visual else (vit, VISUAL_METHODS)
    known = ", ".join(sorted(own))
    if len(parts) == 3 and parts[:2] == ("reduction", "steps") and isinstance(parts[2], int) and not visual:
        steps = ", ".join(sorted(METHODS))
        where = f"reduction.steps[{parts[2]}].method"
        if e["type"] == "union_tag_not_found":
            return f"{where}: missing; a step is one of {steps}"
        if e["type"] == "union_tag_invalid":
            tag = one_line(str((e.get("ctx") or {}).get("tag", "")), 60)
            return f"{where}: {tag!r} cannot be a step; a step is one of {steps}"
        return None
    if e["type"] == "union_tag_not_found" and parts == ("reduction",):
        return f"reduction.method: missing; choose one of {known}"
    if e["type"] != "union_tag_invalid" or parts != ("reduction",):
        return None
    tag = (e.get("ctx") or {}).get("tag", "")
    shown = one_line(str(tag), 60)
    if tag in other and visual:
        return (
            f"reduction.method: {shown} reduces tokens inside a ViT, not a VLM's visual tokens; set task: auto "
            f"(or feature-extraction / image-classification), or choose a visual-token method ({known})"
        )
    if tag in other:
        return (
            f"reduction.method: {shown} selects visual tokens for a VLM; set task: visual-tokens, or choose a "
            f"ViT method ({known})"
        )
    return f"reduction.method: unknown method {shown!r}; known for this task: {known}"


def _special(e: dict, parts: tuple, visual: bool = False) -> str | None:
    """Messages of a ViT / visual-token recipe worded here rather than by pydantic."""
    text = _method_error(e, parts, visual)
    if text is not None:
        return text
    if e["type"] == "literal_error" and parts == ("task",):
        value = e.get("input")
        hint = difflib.get_close_matches(value, TASKS, n=1, cutoff=0.5) if isinstance(value, str) else []
        return (
            f"task: unknown task {show(value)}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; known: {', '.join(TASKS)} (none: auto)"
        )
    return None


def _special_for(cls) -> Callable[[dict, tuple], str | None]:
    visual = cls is VisualTokensRecipe
    return lambda e, parts: _special(e, parts, visual)


def format_error(path: str, err: ValidationError, data) -> str:
    """The errors of ``Recipe.model_validate`` (or of a ViT / visual-token recipe class), one line each
    naming the file and the field, in document order."""
    cls = next((c for c in (ViTRecipe, VisualTokensRecipe) if c.__name__ == err.title), None)
    if cls is None:
        cls = VisualTokensRecipe if isinstance(data, dict) and data.get("task") == "visual-tokens" else ViTRecipe
    return format_errors(path, err.errors(), data, cls, _special_for(cls))


def format_recipe_errors(path: str, err: ValidationError, data) -> str:
    """The errors of one validation against the union of recipe kinds (``RECIPE_ADAPTER``), one line
    each, in document order: ``FILE: field.path: message``."""
    errors = err.errors()
    tag = recipe_kind(data)
    cls = RECIPE_KINDS.get(tag) if tag else None
    if cls is None:  # not a mapping (load_recipe says so before validating)
        return one_line(f"{path}: {error_message(errors[0]) if errors else 'not a recipe'}")
    inner = [{**e, "loc": tuple(e["loc"])[1:] if tuple(e["loc"])[:1] == (tag,) else tuple(e["loc"])} for e in errors]
    if cls is VocabRecipe:
        return format_vocab_errors(path, inner, data)
    return format_errors(path, inner, data, cls, _special_for(cls))


def validate_recipe(path: str, data) -> Recipe | VocabRecipe:
    """``data`` (a parsed recipe mapping) as the recipe kind its ``task`` names, or one InputError
    listing every error, one line each."""
    try:
        return RECIPE_ADAPTER.validate_python(data)
    except ValidationError as e:
        raise SchemaErrors(format_recipe_errors(path, e, data)) from None


def load_recipe(path: str | Path) -> Recipe | VocabRecipe:
    p = Path(path)
    data = read_yaml(p)  # a missing file, a folder, a FIFO, a device: one line (tokexport.files)
    if not isinstance(data, dict):
        raise InputError(f"{p}: a recipe is a YAML mapping with at least `model` and `reduction`")
    return validate_recipe(str(p), data)


def write_recipe(recipe: Recipe | VocabRecipe, path: Path, comment: str) -> None:
    """Write ``recipe`` as YAML (its fields in order, unset ones left out) under ``comment`` as ``#`` lines:
    what `tokexport search` writes for its winner."""
    import yaml

    data = recipe.model_dump(mode="json", exclude_none=True)
    path.write_text(
        "".join(f"# {line}\n" for line in comment.splitlines())
        + yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    )


def recipe_schema() -> dict:
    """The JSON Schema of a recipe: one of ViTRecipe, VisualTokensRecipe, VocabRecipe (``$defs``), picked by ``task``."""
    schema = RECIPE_ADAPTER.json_schema()
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "tokexport recipe", **schema}
    return schema


def recipe_schema_json() -> str:
    return json.dumps(recipe_schema(), indent=2)
