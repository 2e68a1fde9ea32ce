"""One registry type for everything tokexport looks up by name: reduction methods, visual-token
selectors, model-family adapters, tasks. A dict that refuses duplicate names and answers unknown
names with the known ones."""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """``name -> T``; ``register(name)`` as a decorator; unknown names raise KeyError listing the known."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self and self[name] is not obj:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self[name] = obj
            return obj

        return deco

    def __missing__(self, name: str):
        raise KeyError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self)) or 'none'}")
