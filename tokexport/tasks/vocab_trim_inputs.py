"""The vocab-trim task's inputs, read and checked before anything is written
(:meth:`~.vocab_trim.VocabTrim.load`): the model folder (bundled or local), its architecture and its
checkpoint, and the ids of the user's token lists."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..checkpoints import weights_kwargs
from ..errors import InputError
from ..files import read_text, stat_regular


def resolve_model_dir(name: str, base_dir: Path) -> tuple[Path, str]:
    """The recipe's model as a local Hugging Face directory: a bundled model, or a path (relative to
    the recipe file)."""
    from ..zoo import resolve_bundled

    bundled = resolve_bundled(name)
    if bundled is not None:
        return Path(bundled), "bundled"
    p = Path(name).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not (p / "config.json").is_file():
        raise InputError(
            f"model: {name!r} is neither a bundled model (`tokexport models list`) nor a local Hugging "
            f"Face directory with config.json ({p})"
        )
    return p, "local"


def architecture_of(recipe, config) -> str:
    if recipe.architecture != "auto":
        return recipe.architecture
    archs = getattr(config, "architectures", None) or []
    return "decoder" if any(a.endswith("ForCausalLM") for a in archs) else "encoder"


def load_checkpoint(path: Path, architecture: str):
    """The checkpoint in float32 with eager attention, and the seconds it took; InputError when it
    cannot be loaded as that architecture or lacks tensors (which would be randomly initialised)."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # length warnings of long corpus lines, init notes: the report says what matters
    cls = AutoModelForCausalLM if architecture == "decoder" else AutoModel
    t0 = time.perf_counter()
    kwargs = {
        "dtype": torch.float32,
        "attn_implementation": "eager",
        "output_loading_info": True,
        **weights_kwargs(path),
    }  # safetensors only, unless the recipe allows pickle (tokexport.checkpoints)
    try:
        model, info = cls.from_pretrained(path, **kwargs)
        missing = list(info.get("missing_keys") or [])
        if missing and all(k.startswith("pooler.") for k in missing):
            # a BERT-style encoder saved without its (unused) pooler: build it without one instead
            # of carrying a randomly initialised pooler into the trimmed checkpoint
            model, info = cls.from_pretrained(path, add_pooling_layer=False, **kwargs)
            missing = list(info.get("missing_keys") or [])
    except (ValueError, TypeError) as e:
        raise InputError(
            f"model {path}: cannot load as {'a causal LM' if architecture == 'decoder' else 'an encoder'} "
            f"({str(e).splitlines()[0][:200]})"
        ) from None
    if missing:
        raise InputError(
            f"model {path}: the checkpoint lacks {len(missing)} tensors the model needs (e.g. {missing[0]}); "
            "they would be randomly initialised"
        )
    return model.eval(), time.perf_counter() - t0


def tokens_file(recipe, base_dir: Path) -> Path:
    """trim.tokens_to_keep_file, resolved against the recipe's folder; InputError unless a regular file."""
    p = Path(recipe.trim.tokens_to_keep_file).expanduser()
    p = p if p.is_absolute() else base_dir / p
    stat_regular(p, "token list", missing="does not exist", label="trim.tokens_to_keep_file")
    return p


def tokens_to_keep(recipe, base_dir: Path, lookup: dict[str, int]) -> list[int]:
    """The ids of trim.tokens_to_keep and trim.tokens_to_keep_file (each must be a vocabulary entry)."""
    entries = [("trim.tokens_to_keep", t) for t in recipe.trim.tokens_to_keep]
    if recipe.trim.tokens_to_keep_file:
        p = tokens_file(recipe, base_dir)
        entries += [
            (f"trim.tokens_to_keep_file ({p.name})", line)
            for line in read_text(p, "token list", label="trim.tokens_to_keep_file").splitlines()
            if line.strip()
        ]
    ids = []
    for where, tok in entries:
        if tok not in lookup:
            raise InputError(f"{where}: {tok!r} is not an entry of the tokenizer's vocabulary")
        ids.append(lookup[tok])
    return ids
