"""torch (and numpy), imported on first use.

The reduction methods keep their recipe sections (pydantic configs) and their algorithms in one
module each; the recipe imports those modules to build its schema. Importing torch takes seconds, and
a recipe with a typo must be answered at once, so method modules write ``from tokexport.lazy import
torch`` instead of ``import torch`` (and ``from tokexport.lazy import np`` for numpy): the name is torch itself once anything touches it (a tensor op, a
``torch.Tensor`` check), and nothing of torch is loaded while only the configs are used.

Built on :class:`importlib.util.LazyLoader`: the module object is registered under ``torch`` in
``sys.modules`` and executes on its first attribute access, so every later ``import torch`` anywhere
gets the same, then fully loaded, module. When torch is already imported, this is torch itself.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType

_LOCK = threading.Lock()


def lazy_module(name: str) -> ModuleType:
    """``name`` as a module that loads on first attribute access (the module itself if already loaded)."""
    with _LOCK:
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        return module


torch = lazy_module("torch")
np = lazy_module("numpy")  # a fifth of a second more: the method modules take numpy the same way

__all__ = ["lazy_module", "np", "torch"]
