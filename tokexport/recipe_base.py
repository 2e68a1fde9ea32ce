"""What every recipe kind shares, below both recipe modules (``tokexport.recipe`` for ViT and
visual-token recipes, ``tokexport.vocab.recipe`` for ``task: vocab-trim``) so that neither imports the
other for it: the strict base model, the export/parity/deploy sections and metric thresholds, the
YAML reader with its limits, and the error formatter that turns a pydantic ``ValidationError`` into
one line per error (``recipe.yaml: reduction.keep_rate[1]: ...``), in document order.

Imports neither recipe module (nor the method registries): the layering is
``recipe_base`` <- ``vocab.recipe`` <- ``recipe``.
"""

from __future__ import annotations

import difflib
import logging
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from . import targets as _targets
from .bounds import Batch, Count, Real
from .errors import InputError


class Strict(BaseModel):
    """A recipe section: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")


def allow_pickle_field() -> Any:
    """The recipe's ``allow_pickle`` (next to ``model``): a pickle-based checkpoint is loaded only with it."""
    return Field(
        False,
        description="Load the model from pickle-based weights (pytorch_model.bin) when it has no "
        "safetensors weights. Unpickling a file can run code: set true only for a "
        "checkpoint you trust; default false (safetensors only, anything else refused).",
    )


class TargetedExport(Strict):
    """Export settings every task shares: the deployment target, the opset it implies, the batch axis."""

    target: _targets.TargetName = Field(
        _targets.DEFAULT_TARGET,
        description="Where the graph runs: onnxruntime | tensorrt-8.5 | tensorrt-8.6 | tensorrt-10 | the Jetson's JetPack "
        "(jetpack-5.1 = TensorRT 8.5.2, jetpack-6.0 = 8.6.2, jetpack-6.1 = 10.3). Fixes the default opset "
        "and the operator checks run by convert and check-target.",
    )
    opset: Count(13, 21) | None = Field(
        None,
        description="ONNX opset, 13..21; default: the target's (16 for TensorRT 8.5, 17 otherwise). Must not exceed what the target reads faithfully.",
    )
    batch: Batch(1024) = Field(
        "dynamic",
        description="Fixed batch size, 1..1024, or 'dynamic' (the only dynamic axis; token counts are always static).",
    )
    fold: bool = Field(
        True,
        description="Fold what is constant for the static shapes after export (shape arithmetic, the position-embedding Resize; onnxruntime basic-level optimizer + symbolic shape inference, tokexport.fold); parity is checked on the folded graph. false ships the exporter's graph as is.",
    )
    precision: Literal["fp32", "fp16"] = Field(
        "fp32",
        description="fp16: weights and activations in float16 (LayerNorm, Softmax, TopK and index arithmetic kept in float32), float32 inputs/outputs; parity then uses verify.parity.fp16_atol / fp16_mean_atol / fp16_tie_margin. About half the file size.",
    )

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
            raise ValueError(
                f"export.trt_target {legacy!r} is not a TensorRT version tokexport knows (8.5, 8.6, 10.3); "
                f"write export.target: one of {', '.join(_targets.TARGET_NAMES)}"
            )
        data["target"] = "onnxruntime" if legacy is None else _targets.LEGACY_TRT[str(legacy)]
        logging.getLogger("tokexport").warning(
            "warning: export.trt_target is deprecated; write `export.target: %s`", data["target"]
        )
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


class ParityConfig(Strict):
    atol: Real(0, 1, lo_open=True) = Field(
        1e-3,
        description="Max absolute difference allowed between ONNX Runtime and PyTorch, any output element; finite, in (0, 1].",
    )
    mean_atol: Real(0, 1, lo_open=True) = Field(
        1e-4, description="Mean absolute difference allowed, per output; finite, in (0, 1]."
    )
    samples: Count(1, 256) = Field(8, description="Real images fed to both, 1..256.")
    tie_margin: Real(0, 0.1) = Field(
        1e-4,
        description="A sample whose outputs differ while one of its token selections was decided by a relative score gap below this (float32 rounding can pick either side) is reported as a near-tie and left out; parity fails if more than half the samples are near-ties. In [0, 0.1]; 0 disables.",
    )
    fp16_atol: Real(0, 10, lo_open=True) = Field(
        0.1,
        description="atol when export.precision is fp16 (the fp16 graph against the float32 PyTorch model); finite, in (0, 10].",
    )
    fp16_mean_atol: Real(0, 1, lo_open=True) = Field(
        0.01, description="mean_atol when export.precision is fp16; finite, in (0, 1]."
    )
    fp16_tie_margin: Real(0, 0.1) = Field(
        1e-3,
        description="tie_margin when export.precision is fp16 (float16 rounding flips selections decided by relative gaps up to ~5e-4 on DINOv2-S); in [0, 0.1]; 0 disables.",
    )

    def tolerances(self, precision: str = "fp32") -> tuple[float, float, float]:
        """(atol, mean_atol, tie_margin) for a graph of ``precision``."""
        if precision == "fp16":
            return self.fp16_atol, self.fp16_mean_atol, self.fp16_tie_margin
        return self.atol, self.mean_atol, self.tie_margin


class Threshold(Strict):
    min: Real(-2, 2) | None = Field(
        None,
        description="The reduced model's value must be at least this; finite, in [-2, 2] (cosines lie in [-1, 1], top-1, agreement and attention mass in [0, 1], so a min above 1 always fails).",
    )
    max_drop: Real(0, 2) | None = Field(None, description="original - reduced must be at most this; finite, in [0, 2].")

    @model_validator(mode="after")
    def _one(self):
        if self.min is None and self.max_drop is None:
            raise ValueError("give min and/or max_drop")
        return self


class VsBaselines(Strict):
    """Gate the method against the honest baselines measured in the same run (report section ``baselines``)."""

    min_margin: Real(-1, 1) = Field(
        0.0,
        description="Smallest margin over the best baseline (seeded random per image, 2-D uniform) allowed for each gated metric; positive = the method must beat it; in [-1, 1].",
    )
    bound: Literal["ci_low", "estimate"] = Field(
        "ci_low",
        description="ci_low: the margin's bootstrap confidence interval lower bound must clear min_margin (the method is better with that confidence); estimate: the point estimate must.",
    )
    metrics: list[str] | None = Field(
        None, min_length=1, description="Metrics gated; default: every metric the baselines are measured on."
    )


class BaselinesConfig(Strict):
    """The honest baselines every token-reduction report carries (section ``baselines``)."""

    enabled: bool = Field(
        True,
        description="Measure the baselines (random keep drawn per image over seeds, 2-D uniform lattice) at the method's budget on the same evaluation data; false only to save time in experiments (verify.vs_baselines then cannot be used).",
    )
    random_seeds: Count(5, 64) = Field(
        5, description="Seeds of the per-image random baseline, 5..64 (mean ± sd over them)."
    )
    resamples: Count(200, 100000) = Field(
        2000, description="Bootstrap resamples of the margin's confidence interval, 200..100000."
    )


class ProviderSettings(Strict):
    """Where bench (and parity) run: an ONNX Runtime execution provider, with its options. Shared by
    every task's ``bench`` section (tokexport.stages.runners.provider_list)."""

    provider: Literal["cpu", "cuda", "tensorrt"] = Field(
        "cpu",
        description="ONNX Runtime execution provider for bench and parity: cpu | cuda (onnxruntime-gpu) | tensorrt (onnxruntime-gpu with TensorRT). A provider this onnxruntime does not offer, or cannot start, is an error (exit 5) before the model is loaded; never a silent CPU fallback. `tokexport convert --provider` overrides it.",
    )
    provider_options: dict[str, bool | Count(0, 2**40) | str] = Field(
        default_factory=dict,
        max_length=32,
        description="Options of that provider (true/false, whole numbers 0..1099511627776, or text), passed to ONNX Runtime as strings, e.g. {device_id: 0} or {trt_fp16_enable: true}.",
    )


class DeployConfig(Strict):
    bundle: bool = Field(
        True,
        description="Write deploy/ (graphs, build_engine.sh, verify_on_device.py, manifest with sha256, sample inputs, ONNX Runtime's expected outputs) when TensorRT is not available here.",
    )
    engines: bool = Field(
        True,
        description="Build TensorRT engines, time them and compare with ONNX Runtime when TensorRT and a GPU are available.",
    )
    fp16: bool = Field(True, description="Build engines in FP16 (trtexec --fp16).")
    atol: Real(0, 1, lo_open=True) = Field(
        0.05,
        description="Engine vs ONNX Runtime: an element agrees when |a - e| <= atol + rtol*|e|; finite, in (0, 1].",
    )
    rtol: Real(0, 1, lo_open=True) = Field(0.05, description="See atol; finite, in (0, 1].")
    quantile: Real(0, 1, lo_open=True) = Field(
        0.99, description="Share of each output's elements that must agree (FP16 engines miss a few); in (0, 1]."
    )
    median_atol: Real(0, 1, lo_open=True) = Field(
        0.01, description="Largest median |a - e| allowed per output; finite, in (0, 1]."
    )
    min_cosine: Real(-1, 1) = Field(
        0.999, description="Smallest cosine between engine and reference output allowed, per sample; in [-1, 1]."
    )
    min_agreement: Real(0, 1) = Field(
        0.99,
        description="Top-1 agreement of outputs named *logits*, and exact agreement of integer outputs (token positions); in [0, 1].",
    )
    max_batch: Count(1, 1024) = Field(
        8, description="Largest batch of the engine's optimization profile (dynamic-batch graphs), 1..1024."
    )

    def tolerances(self) -> dict[str, float]:
        """The comparison tolerances, as tokexport.deploy.compare_outputs and verify_on_device.py read them."""
        return {k: getattr(self, k) for k in ("atol", "rtol", "quantile", "median_atol", "min_cosine", "min_agreement")}


# --- error messages ----------------------------------------------------------------------------------


def field_key(part) -> str:
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


def field_path(parts: Iterable) -> str:
    """``verify.accuracy.metrics.x`` / ``bench.batch_sizes[1]`` from path parts; ``(top level)`` for none."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + field_key(part)
    return out or "(top level)"


def _strip(tp):
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _members(tp) -> list:
    """The alternatives a value of type ``tp`` may take (one for a non-union), None left out."""
    tp = _strip(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [m for a in typing.get_args(tp) if (m := _strip(a)) is not type(None)]
    return [tp]


def _is_model(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tagged(model: type[BaseModel], tag: str) -> bool:
    """Whether ``tag`` is the discriminator value of ``model`` (a field typed ``Literal[tag]``)."""
    for f in model.model_fields.values():
        ann = _strip(f.annotation)
        if typing.get_origin(ann) is Literal and typing.get_args(ann) == (tag,):
            return True
    return False


def _item(members: list, index: int):
    for m in members:
        origin, args = typing.get_origin(m), typing.get_args(m)
        if origin in (list, set, frozenset) and args:
            return args[0]
        if origin is tuple and args:
            return args[0] if len(args) == 2 and args[1] is Ellipsis else args[min(index, len(args) - 1)]
    return None


def resolve_loc(root: type[BaseModel], loc: tuple) -> tuple[tuple, list[str], tuple | None]:
    """A pydantic error location, as the recipe's author sees it: ``(parts, allowed, union)``.

    ``parts``: the keys and list indices written in the recipe (discriminated-union tags such as
    ``reduction``'s method and pydantic's labels of union alternatives left out); ``allowed``: the
    field names valid next to the last part (for did-you-mean hints); ``union``: the parts of a
    non-discriminated union field the error passed through (each alternative reports its own error
    there: one is enough), else None."""
    parts: list = []
    allowed = list(root.model_fields)
    union = None
    tp: Any = root
    for part in loc:
        members = _members(tp) if tp is not None else []
        if isinstance(part, int):
            parts.append(part)
            tp = _item(members, part)
            continue
        models = [m for m in members if _is_model(m)]
        owner = next((m for m in models if part in m.model_fields), None)
        if owner is not None:
            allowed = list(owner.model_fields)
            parts.append(part)
            tp = owner.model_fields[part].annotation
            continue
        if len(models) > 1:
            chosen = next((m for m in models if _tagged(m, part)), None)
            if chosen is not None:  # a discriminated union's tag
                tp = chosen
                continue
        mapping = next((m for m in members if typing.get_origin(m) is dict), None)
        if mapping is not None:
            args = typing.get_args(mapping)
            parts.append(part)
            tp = args[1] if len(args) == 2 else None
            allowed = []
            continue
        if len(members) > 1:  # the label of one alternative of a plain union (`str`, `list[str]`)
            union = union or tuple(parts)
            continue
        if models:
            allowed = list(models[0].model_fields)
        parts.append(part)
        tp = None
    return tuple(parts), allowed, union


def document_order(data, parts: tuple) -> tuple:
    """Sort key of a field path in the recipe as written: positions of its keys and elements (YAML
    mappings keep their order); a field the recipe lacks sorts after its written siblings."""
    key: list[int] = []
    node = data
    for part in parts:
        if isinstance(node, dict):
            keys = list(node)
            i = next((i for i, k in enumerate(keys) if k == part or str(k) == str(part)), None)
            if i is None:
                key.append(len(keys))
                break
            key.append(i)
            node = node[keys[i]]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            key.append(part)
            node = node[part]
        else:
            break
    return tuple(key)


# special(e, parts) -> message without the file prefix, for errors a recipe kind words itself
Special = Callable[[dict, tuple], "str | None"]


def format_errors(
    path: str, errors: Iterable[dict], data, root: type[BaseModel], special: Special | None = None
) -> str:
    """Every error of one validation against ``root``, one line each (``FILE: field.path: message``),
    in document order; an unknown field gets a did-you-mean hint. ``errors``: pydantic's error dicts,
    their ``loc`` relative to ``root``."""
    rows: list[tuple[tuple, int, str]] = []
    seen_unions: set[tuple] = set()
    for n, e in enumerate(errors):
        parts, allowed, union = resolve_loc(root, tuple(e["loc"]))
        if union is not None:
            if union in seen_unions:
                continue
            seen_unions.add(union)
        where = field_path(parts)
        text = special(e, parts) if special else None
        if text is not None:
            line = f"{path}: {text}"
        elif e["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(parts[-1]) if parts else "", allowed, n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else "remove it (see `tokexport recipes schema`)"
            line = f"{path}: {where}: unknown field; {fix}"
        else:
            line = f"{path}: {error_where(e, where)}: {error_message(e)}"
        rows.append((document_order(data, parts), n, one_line(line)))
    lines: list[str] = []
    for _, _, line in sorted(rows):
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)


# --- reading a recipe file ---------------------------------------------------------------------------

# A recipe is a few levels of mappings and lists and a few hundred values; these limits are far above
# any real one and keep a hostile document (deep nesting, alias bombs, a huge file) to one line.
MAX_RECIPE_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 32
MAX_VALUES = 200_000


def check_size(p: Path, data) -> None:
    """Depth and value count of the parsed document, aliases expanded (iterative: a walk that never recurses)."""
    stack, seen = [(data, 1)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            raise InputError(
                f"{p}: more than {MAX_VALUES:,} values once YAML aliases are expanded; a recipe is a few "
                "hundred (put long token lists in trim.tokens_to_keep_file)"
            )
        if isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                raise InputError(
                    f"{p}: nested more than {MAX_DEPTH} levels deep; a recipe is a few levels of "
                    "mappings and lists (see `tokexport recipes schema`)"
                )
            children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
            stack.extend((c, depth + 1) for c in children)


def read_yaml(p: Path):
    """A recipe file's YAML (safe loader: no Python tags), or InputError naming the file: not a regular
    file, too large, not text, not YAML, a key given twice, nested too deeply, or expanding to too many
    values (the shared reader, :mod:`tokexport.files`)."""
    from .files import loads_yaml, read_text, yaml_message

    text = read_text(p, "recipe", missing="recipe file not found; list the shipped ones with `tokexport recipes list`")
    try:
        data = loads_yaml(text)
    except yaml.YAMLError as e:
        raise InputError(yaml_message(str(p), e)) from None
    except RecursionError:
        raise InputError(
            f"{p}: YAML nested too deeply; a recipe is a few levels of mappings and lists "
            "(see `tokexport recipes schema`)"
        ) from None
    except (ValueError, TypeError, OverflowError) as e:  # a scalar the constructor cannot build (an int of 5000 digits)
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise InputError(one_line(f"{p}: YAML value cannot be read: {first}")) from None
    except MemoryError:
        raise InputError(f"{p}: YAML too large to load; a recipe is a few hundred values") from None
    check_size(p, data)
    return data
