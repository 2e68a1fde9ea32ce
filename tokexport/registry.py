"""One registry type for everything tokexport looks up by name: reduction methods, composite schedules,
visual-token selectors, model-family adapters, tasks. A dict that refuses duplicate names (also across
registries that share one namespace) and answers unknown names with the known ones."""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """``name -> T``. ``@REGISTRY.register`` on a class registers it under its ``key`` attribute (``name``
    for methods, ``family`` for adapters, ``kind`` for tasks); unknown names raise KeyError listing the
    known. ``disjoint``: registries whose names this one must not repeat (a recipe names either)."""

    def __init__(self, what: str, key: str = "name", disjoint: tuple[Registry, ...] = ()):
        super().__init__()
        self.what, self.key, self.disjoint = what, key, disjoint
        for reg in disjoint:
            reg.disjoint = (*reg.disjoint, self)

    def register(self, obj: T) -> T:
        name = getattr(obj, self.key, None)
        if not isinstance(name, str) or not name:
            raise RuntimeError(f"{self.what} {obj!r}: set the class attribute {self.key!r} before registering")
        for reg in (self, *self.disjoint):
            if name in reg and reg[name] is not obj:
                raise RuntimeError(f"{self.what} {name!r} registered twice (already a {reg.what})")
        self[name] = obj
        return obj

    def __missing__(self, name: str):
        raise KeyError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self)) or 'none'}")


def import_submodules(package: str, last: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> list[str]:
    """Import every module of ``package`` except the infrastructure named in ``skip`` (sorted by name; those
    named in ``last`` after the others), so that each registers what it defines: a new method is one new
    file, with no list to extend. ``skip`` keeps what the methods do not need out of a plain import (torch
    stays unloaded until a model is: recipe validation imports the method packages)."""
    import importlib
    import pkgutil

    pkg = importlib.import_module(package)
    names = sorted(
        m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_") and m.name not in skip
    )
    order = [n for n in names if n not in last] + [n for n in last if n in names]
    for name in order:
        importlib.import_module(f"{package}.{name}")
    return order
