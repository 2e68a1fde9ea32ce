"""Recipe: the YAML a user writes. Validated with pydantic; every error becomes one line naming the
file and the field (``recipe.yaml: reduction.keep_rate[1]: ...``)."""
from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import targets as _targets
from .bounds import Batch, Count, Real, Threads
from .errors import InputError
from .reduce import METHODS
from .vlm.select import VISUAL_METHODS

METRICS = ("feature_cosine", "instance_top1", "top1_agreement", "imagefolder_top1",
           # visual-token reduction (task: visual-tokens)
           "attn_pooled_cosine", "attention_mass", "generation_exact_match", "generation_token_agreement")
VISUAL_ONLY_METRICS = ("attn_pooled_cosine", "attention_mass", "generation_exact_match", "generation_token_agreement")
# Opset each TensorRT version parses faithfully, keyed by the legacy `trt_target` values (tokexport.targets).
TRT_MAX_OPSET = _targets.TRT_MAX_OPSET


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TargetedExport(_Strict):
    """Export settings every task shares: the deployment target, the opset it implies, the batch axis."""

    target: _targets.TargetName = Field(
        _targets.DEFAULT_TARGET,
        description="Where the graph runs: onnxruntime | tensorrt-8.5 | tensorrt-8.6 | tensorrt-10 | the Jetson's JetPack "
                    "(jetpack-5.1 = TensorRT 8.5.2, jetpack-6.0 = 8.6.2, jetpack-6.1 = 10.3). Fixes the default opset "
                    "and the operator checks run by convert and check-target.")
    opset: Count(13, 21) | None = Field(None, description="ONNX opset, 13..21; default: the target's (16 for TensorRT 8.5, 17 otherwise). Must not exceed what the target reads faithfully.")
    batch: Batch(1024) = Field("dynamic", description="Fixed batch size, 1..1024, or 'dynamic' (the only dynamic axis; token counts are always static).")

    @model_validator(mode="before")
    @classmethod
    def _legacy_trt_target(cls, data):
        """`trt_target: "8.6"` (recipes written before targets had names) means `target: tensorrt-8.6`."""
        if not isinstance(data, dict) or "trt_target" not in data:
            return data
        data = dict(data)
        legacy = data.pop("trt_target")
        if "target" in data:
            raise ValueError("give export.target only (export.trt_target is its deprecated old name)")
        if legacy is not None and str(legacy) not in _targets.LEGACY_TRT:
            raise ValueError(f"export.trt_target {legacy!r} is not a TensorRT version tokexport knows (8.5, 8.6, 10.3); "
                             f"write export.target: one of {', '.join(_targets.TARGET_NAMES)}")
        data["target"] = "onnxruntime" if legacy is None else _targets.LEGACY_TRT[str(legacy)]
        logging.getLogger("tokexport").warning("warning: export.trt_target is deprecated; write `export.target: %s`",
                                               data["target"])
        return data

    @model_validator(mode="after")
    def _opset_fits_target(self):
        if isinstance(self.batch, int) and self.batch < 1:
            raise ValueError("batch must be >= 1 or 'dynamic'")
        target = _targets.resolve(self.target)
        if self.opset is None:
            self.opset = target.opset
        problem = _targets.opset_problem(target, self.opset)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def trt_target(self) -> str | None:
        """TensorRT major.minor of the target (None for onnxruntime), for reports keyed by TensorRT version."""
        t = _targets.resolve(self.target)
        return ".".join(t.tensorrt.split(".")[:2]) if t.tensorrt else None


class ExportConfig(TargetedExport):
    image_size: Count(14, 4096) | None = Field(None, description="Square input size in pixels, 14..4096; default: the checkpoint's preprocessor crop size.")
    exporter: Literal["auto", "torchscript", "dynamo"] = Field(
        "auto", description="auto: TorchScript exporter for opset <= 17 (the dynamo exporter only emits opset >= 18), dynamo otherwise."
    )


class ParityConfig(_Strict):
    atol: Real(0, 1, lo_open=True) = Field(1e-3, description="Max absolute difference allowed between ONNX Runtime and PyTorch, any output element; finite, in (0, 1].")
    mean_atol: Real(0, 1, lo_open=True) = Field(1e-4, description="Mean absolute difference allowed, per output; finite, in (0, 1].")
    samples: Count(1, 256) = Field(8, description="Real images fed to both, 1..256.")
    tie_margin: Real(0, 0.1) = Field(1e-4, description="A sample whose outputs differ while one of its token selections was decided by a relative score gap below this (float32 rounding can pick either side) is reported as a near-tie and left out; parity fails if more than half the samples are near-ties. In [0, 0.1]; 0 disables.")


class Threshold(_Strict):
    min: Real(-2, 2) | None = Field(None, description="The reduced model's value must be at least this; finite, in [-2, 2] (cosines lie in [-1, 1], top-1, agreement and attention mass in [0, 1], so a min above 1 always fails).")
    max_drop: Real(0, 2) | None = Field(None, description="original - reduced must be at most this; finite, in [0, 2].")

    @model_validator(mode="after")
    def _one(self):
        if self.min is None and self.max_drop is None:
            raise ValueError("give min and/or max_drop")
        return self


class AccuracyConfig(_Strict):
    dataset: Literal["natural-images"] = Field(
        "natural-images", description="Instance recognition on the bundled natural photographs: class = source image, samples = seeded random crops/flips."
    )
    samples_per_class: Count(1, 256) = Field(8, description="Evaluation crops per bundled photograph, 1..256.")
    prototypes_per_class: Count(1, 256) = Field(4, description="Crops per class whose ORIGINAL-model features form the class prototype, 1..256.")
    crop_scale: tuple[Real(0, 1, lo_open=True), Real(0, 1, lo_open=True)] = Field(
        (0.3, 0.7), description="[low, high] area fraction range of the random crops; each finite, in (0, 1], low <= high.")
    seed: Count(0, 2**32 - 1) = Field(0, description="Seed of the crops, 0..4294967295.")
    imagefolder: str | None = Field(None, description="ImageFolder directory (one sub-directory per class) for top-1 accuracy of classifiers; relative to the recipe file.")
    imagefolder_limit_per_class: Count(1, 100000) | None = Field(None, description="Images per class read from imagefolder, 1..100000; null: all.")
    metrics: dict[str, Threshold] = Field(
        default_factory=lambda: {"feature_cosine": Threshold(min=0.9), "instance_top1": Threshold(max_drop=0.1)},
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
                    f"metrics: unknown metric {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; known: {', '.join(METRICS)}"
                )
        if "imagefolder_top1" in self.metrics and not self.imagefolder:
            raise ValueError("metric imagefolder_top1 needs accuracy.imagefolder")
        return self


class VerifyConfig(_Strict):
    parity: ParityConfig = ParityConfig()
    accuracy: AccuracyConfig = AccuracyConfig()
    generation: GenerationConfig | None = Field(None, description="LLaVA checkpoints: generate with full and reduced visual tokens and compare.")


class BenchConfig(_Strict):
    enabled: bool = True
    batch_sizes: list[Count(1, 256)] = Field(default_factory=lambda: [1, 8], min_length=1, max_length=16,
                                             description="Batch sizes timed, 1 to 16 of them, each 1..256.")
    warmup: Count(0, 1000) = Field(3, description="Untimed runs per model and batch size first, 0..1000.")
    repeats: Count(1, 10000) = Field(20, description="Timed runs per model and batch size, 1..10000; baseline and reduced alternate.")
    threads: Threads = Field(None, description="onnxruntime intra-op threads, 1..4 x CPU cores of this machine; default (null): all cores.")


class DeployConfig(_Strict):
    bundle: bool = Field(True, description="Write deploy/ (graphs, build_engine.sh, verify_on_device.py, manifest with sha256, sample inputs, ONNX Runtime's expected outputs) when TensorRT is not available here.")
    engines: bool = Field(True, description="Build TensorRT engines, time them and compare with ONNX Runtime when TensorRT and a GPU are available.")
    fp16: bool = Field(True, description="Build engines in FP16 (trtexec --fp16).")
    atol: Real(0, 1, lo_open=True) = Field(0.05, description="Engine vs ONNX Runtime: an element agrees when |a - e| <= atol + rtol*|e|; finite, in (0, 1].")
    rtol: Real(0, 1, lo_open=True) = Field(0.05, description="See atol; finite, in (0, 1].")
    quantile: Real(0, 1, lo_open=True) = Field(0.99, description="Share of each output's elements that must agree (FP16 engines miss a few); in (0, 1].")
    median_atol: Real(0, 1, lo_open=True) = Field(0.01, description="Largest median |a - e| allowed per output; finite, in (0, 1].")
    min_cosine: Real(-1, 1) = Field(0.999, description="Smallest cosine between engine and reference output allowed, per sample; in [-1, 1].")
    min_agreement: Real(0, 1) = Field(0.99, description="Top-1 agreement of outputs named *logits*, and exact agreement of integer outputs (token positions); in [0, 1].")
    max_batch: Count(1, 1024) = Field(8, description="Largest batch of the engine's optimization profile (dynamic-batch graphs), 1..1024.")

    def tolerances(self) -> dict[str, float]:
        """The comparison tolerances, as tokexport.deploy.compare_outputs and verify_on_device.py read them."""
        return {k: getattr(self, k) for k in ("atol", "rtol", "quantile", "median_atol", "min_cosine", "min_agreement")}


class LLMDims(_Strict):
    """Language-model sizes for the prefill FLOPs of a bare vision tower's recipe (LLaVA checkpoints
    carry their own text_config)."""

    hidden_size: Count(1, 65536) = Field(4096, description="1..65536.")
    num_hidden_layers: Count(1, 1024) = Field(32, description="1..1024.")
    intermediate_size: Count(1, 1048576) = Field(11008, description="1..1048576.")
    num_attention_heads: Count(1, 1024) = Field(32, description="1..1024.")
    num_key_value_heads: Count(1, 1024) | None = Field(None, description="1..1024; null: num_attention_heads.")
    vocab_size: Count(1, 4194304) = Field(32000, description="1..4194304.")


class VisionConfig(_Strict):
    feature_layer: Count(-1024, 1023) = Field(-2, description="LLaVA's vision_feature_layer: hidden_states index the tokens are taken from, -1024..1023 (LLaVA checkpoints: from their config).")
    feature_select: Literal["default", "full"] = Field("default", description="default drops the CLS/prefix tokens, full keeps them (LLaVA's vision_feature_select_strategy).")
    grid: tuple[Count(1, 8), Count(1, 8)] | None = Field(None, description="[rows, cols] of sub-images under an anyres layout, each 1..8: views = full image + rows x cols tiles; null = one view.")
    prompt_tokens: Count(0, 131072) = Field(64, description="Text tokens in the prompt, for the LLM prefill FLOPs, 0..131072.")
    llm: LLMDims = Field(default_factory=LLMDims, description="LLM sizes for prefill FLOPs when the model is a bare tower (default: LLaMA/Vicuna-7B as in LLaVA-1.5-7B).")
    eval_layer: Count(-1024, 1023) = Field(-2, description="Block whose attention weights the attention-pooled features and the retained attention mass, -1024..1023.")
    eval_source: Literal["cls", "received"] = Field("cls", description="Significance used for evaluation: attention from CLS, or received (towers without CLS).")

    @model_validator(mode="after")
    def _grid(self):
        if self.grid is not None and (self.grid[0] < 1 or self.grid[1] < 1):
            raise ValueError("grid: rows and cols must be >= 1")
        return self


class GenerationConfig(_Strict):
    prompts: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, max_length=256, description="Prompts (the <image> placeholder is added) generated with full and reduced visual tokens; 1 to 256 non-empty strings.")
    max_new_tokens: Count(1, 512) = Field(16, description="1..512.")
    images: Count(1, 32) = Field(2, description="Bundled photographs used per prompt, 1..32.")


def _reduction_union():
    configs = tuple(cls.config_cls for cls in METHODS.values()) + tuple(c.config_cls for c in VISUAL_METHODS.values())
    return Annotated[Union[configs], Field(discriminator="method")]  # noqa: UP007


class Recipe(_Strict):
    name: str | None = Field(None, description="Free-form name shown in reports.")
    description: str | None = None
    model: str = Field(description="Bundled model name (see `tokexport models list`), a local Hugging Face directory (relative to the recipe file), or a Hub id.")
    family: str | None = Field(None, description="Model family adapter (vit, deit, dinov2); default: from config.json's model_type.")
    task: Literal["auto", "feature-extraction", "image-classification", "visual-tokens"] = Field(
        "auto", description="visual-tokens: export a VLM visual-token graph (tower + selection [+ projector]) instead of pruning inside the network.")
    reduction: _reduction_union()
    vision: VisionConfig | None = Field(None, description="Visual-token settings (task: visual-tokens).")
    export: ExportConfig = ExportConfig()
    verify: VerifyConfig = VerifyConfig()
    bench: BenchConfig = BenchConfig()
    deploy: DeployConfig = DeployConfig()

    @model_validator(mode="after")
    def _task_matches_method(self):
        visual = self.reduction.method in VISUAL_METHODS
        if visual and self.task != "visual-tokens":
            raise ValueError(f"reduction.method {self.reduction.method!r} selects visual tokens for a VLM; set task: visual-tokens")
        if self.task == "visual-tokens" and not visual:
            raise ValueError(f"task visual-tokens needs a visual-token method ({', '.join(sorted(VISUAL_METHODS))}), "
                             f"not {self.reduction.method!r}")
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


def _method_tags() -> set[str]:
    return set(METHODS) | set(VISUAL_METHODS)


def _key(part) -> str:
    """A mapping key as it appears in a field path: printable, short."""
    text = str(part)
    if not text.isprintable() or len(text) > 60:
        text = repr(text)
        text = text if len(text) <= 60 else text[:57] + "..."
    return text


def one_line(message: str, limit: int = 1000) -> str:
    """An error message as one printable line (user values may hold newlines or control characters)."""
    text = "".join(c if c.isprintable() else " " for c in message.replace("\r\n", " ").replace("\n", " "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_where(e: dict, where: str) -> str:
    """The field path of one pydantic error, plus the list element a bounded type named (``[i]``)."""
    index = getattr((e.get("ctx") or {}).get("error"), "index", None)
    return where + f"[{index}]" if isinstance(index, int) else where


def error_message(e: dict) -> str:
    """The message of one pydantic error, in the recipe's words."""
    if e["type"] == "missing":
        return "required field is missing"
    if e["type"] == "too_short":
        return "must not be empty; give at least one value"
    if e["type"] == "too_long":
        return f"too many values; at most {(e.get('ctx') or {}).get('max_length', '?')}"
    return e["msg"].removeprefix("Value error, ")


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _method_tags():
            continue  # discriminated-union branch name
        else:
            out += ("." if out else "") + _key(part)
    return out or "(top level)"


def _allowed_fields(loc: tuple, data) -> list[str]:
    """Field names valid at the parent of ``loc`` (for did-you-mean hints)."""
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part == "reduction" and model is Recipe:
            method = (data or {}).get("reduction", {}).get("method") if isinstance(data, dict) else None
            reg = {**METHODS, **VISUAL_METHODS}
            model = reg[method].config_cls if method in reg else None
            if model is None:
                return []
            continue
        if part in _method_tags():
            continue
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return []
    return list(model.model_fields)


def format_error(path: str, err: ValidationError, data) -> str:
    e = err.errors()[0]
    loc = e["loc"]
    where = error_where(e, _loc(loc))
    if e["type"] == "extra_forbidden":
        hint = difflib.get_close_matches(str(loc[-1]), _allowed_fields(loc, data), n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else "remove it (see `tokexport recipes schema`)"
        return one_line(f"{path}: {where}: unknown field; {fix}")
    if e["type"] == "union_tag_invalid":
        tag = _key((e.get("ctx") or {}).get("tag", ""))
        return one_line(f"{path}: reduction.method: unknown method {tag!r}; known: {', '.join(sorted(_method_tags()))}")
    if e["type"] == "union_tag_not_found":
        return f"{path}: reduction.method: missing; choose one of {', '.join(sorted(_method_tags()))}"
    return one_line(f"{path}: {where}: {error_message(e)}")


# A recipe is a few levels of mappings and lists and a few hundred values; these limits are far above
# any real one and keep a hostile document (deep nesting, alias bombs, a huge file) to one line.
MAX_RECIPE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 32
MAX_VALUES = 200_000


def _check_size(p: Path, data) -> None:
    """Depth and value count of the parsed document, aliases expanded (iterative: a walk that never recurses)."""
    stack, seen = [(data, 1)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise InputError(f"{p}: more than {MAX_VALUES:,} values once YAML aliases are expanded; a recipe is a few "
                             "hundred (put long token lists in trim.tokens_to_keep_file)")
        if isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                raise InputError(f"{p}: nested more than {MAX_DEPTH} levels deep; a recipe is a few levels of "
                                 "mappings and lists (see `tokexport recipes schema`)")
            children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children)


def read_yaml(p: Path):
    """A recipe file's YAML (safe loader: no Python tags), or InputError naming the file: too large, not
    text, not YAML, nested too deeply, or expanding to too many values."""
    try:
        size = p.stat().st_size
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror or type(e).__name__})") from None
    if size > MAX_RECIPE_BYTES:
        raise InputError(f"{p}: {size:,} bytes; a recipe is at most {MAX_RECIPE_BYTES // 2**20} MiB of YAML "
                         "(put long token lists in trim.tokens_to_keep_file)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{p}: not a UTF-8 text file; a recipe is YAML") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror or type(e).__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
        if isinstance(e, yaml.constructor.ConstructorError):  # !!python/... and other tags: never constructed
            raise InputError(one_line(f"{p}:{where}: YAML tag refused: {problem}; a recipe holds plain mappings, "
                                      "lists, strings and numbers")) from None
        raise InputError(one_line(f"{p}:{where}: YAML syntax error: {problem}")) from None
    except RecursionError:
        raise InputError(f"{p}: YAML nested too deeply; a recipe is a few levels of mappings and lists "
                         "(see `tokexport recipes schema`)") from None
    except (ValueError, TypeError, OverflowError) as e:  # a scalar the constructor cannot build (an int of 5000 digits)
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise InputError(one_line(f"{p}: YAML value cannot be read: {first}")) from None
    except MemoryError:
        raise InputError(f"{p}: YAML too large to load; a recipe is a few hundred values") from None
    _check_size(p, data)
    return data


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: recipe file not found; list the bundled ones with `tokexport recipes list`")
    if not p.is_file():
        raise InputError(f"{p}: not a file; pass a recipe YAML file")
    data = read_yaml(p)
    if not isinstance(data, dict):
        raise InputError(f"{p}: a recipe is a YAML mapping with at least `model` and `reduction`")
    if data.get("task") == "vocab-trim":
        from .vocab.recipe import validate_vocab_recipe

        return validate_vocab_recipe(str(p), data)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise InputError(format_error(str(p), e, data)) from None


def recipe_schema() -> dict:
    """The recipe's JSON Schema; a `task: vocab-trim` recipe follows ``$defs.VocabRecipe`` instead."""
    from .vocab.recipe import VocabRecipe

    schema = Recipe.model_json_schema()
    vocab = VocabRecipe.model_json_schema()
    defs = schema.setdefault("$defs", {})
    for name, d in vocab.pop("$defs", {}).items():
        if defs.setdefault(name, d) != d:
            raise AssertionError(f"recipe schema: two different definitions named {name}")
    defs["VocabRecipe"] = vocab
    return schema


def recipe_schema_json() -> str:
    return json.dumps(recipe_schema(), indent=2)
