"""Which checkpoint weights tokexport loads: safetensors by default, a pickle-based checkpoint
(``pytorch_model.bin``) only when the recipe opts in with ``allow_pickle: true``.

Unpickling a file can run code, and torch's ``weights_only`` guard has had escapes; safetensors holds
tensors only. So a model directory with safetensors weights is always loaded from them
(``use_safetensors=True``), and one with only ``*.bin`` weights is refused with a message that says how
to opt in, unless the recipe allows it. The driver (:func:`tokexport.tasks.run.run`) sets the recipe's
choice for the whole conversion (:func:`pickle_policy`), so every loader of every task follows it;
callers outside a conversion pass ``allow`` themselves."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

FIELD = "allow_pickle"
SAFE_SUFFIX = ".safetensors"
PICKLE_NAMES = (
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tf_model.h5",
    "model.ckpt.index",
    "flax_model.msgpack",
)

_ALLOW: contextvars.ContextVar[bool] = contextvars.ContextVar("tokexport_allow_pickle", default=False)


@contextlib.contextmanager
def pickle_policy(allow: bool) -> Iterator[None]:
    """Within this block, loaders accept a pickle-based checkpoint only when ``allow``."""
    token = _ALLOW.set(bool(allow))
    try:
        yield
    finally:
        _ALLOW.reset(token)


def _listing(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def weights_kwargs(path: str | os.PathLike, allow: bool | None = None) -> dict:
    """``from_pretrained`` keyword arguments that load the weights of the model directory ``path`` under
    the policy: safetensors when it has them; its pickle-based weights only when allowed (``allow``, or
    the recipe's ``allow_pickle`` through :func:`pickle_policy`); InputError otherwise."""
    names = _listing(Path(path))
    if any(n.endswith(SAFE_SUFFIX) or n == "model.safetensors.index.json" for n in names):
        return {"use_safetensors": True}
    pickled = sorted(n for n in names if n in PICKLE_NAMES or (n.startswith("pytorch_model") and n.endswith(".bin")))
    if not pickled:
        return {}  # nothing to choose between: from_pretrained says what is missing
    if not (_ALLOW.get() if allow is None else allow):
        raise InputError(
            f"model: {path} has only pickle-based weights ({pickled[0]}), which tokexport does not "
            f"load by default (unpickling a file can run code); convert the checkpoint to safetensors "
            f"(save_pretrained), or, for a checkpoint you trust, set `{FIELD}: true` in the recipe "
            "(next to `model:`)"
        )
    return {"use_safetensors": False}
