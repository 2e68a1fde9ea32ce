"""Bounded, finite numbers: the one way every recipe number is typed (``tokexport.recipe``,
``tokexport.vocab.recipe``, the method configs of ``tokexport.reduce`` and ``tokexport.vlm.select``),
and the checks of the numbers load.py reads from a model directory.

* ``Real(lo, hi, lo_open=..., hi_open=...)``: a finite float within the interval;
* ``Count(lo, hi)``: a whole number within ``lo..hi``;
* ``OneOrMany(item)``: one value or a non-empty list of them (``keep_rate: 0.7`` or ``[0.9, 0.8]``),
  an error inside the list naming the element (``keep_rate[1]``);
* ``Batch(hi)``: a batch size or ``"dynamic"``; ``Threads``: 1 .. 4 x this machine's CPU cores.

Every one of them refuses booleans (YAML's ``true`` is not 1), nan and inf, and values outside the
range, with a message that states the range; the recipe loader prefixes the file and the field
(``r.yaml: bench.repeats: 1000000000000 is outside 1..10000``). Numbers written as strings are read as
numbers (PyYAML reads ``1e-3`` and ``1e9``, YAML 1.1 floats without a dot, as strings).

Each type carries a :class:`Range` in its metadata (``range_of``), so tests can check that every
numeric field's description states its range. Messages echo user values only through :func:`show`
(a short repr), never a whole document.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from dataclasses import dataclass
from typing import Annotated, Any, Union

import annotated_types as at
from pydantic import BeforeValidator, Field

__all__ = [
    "BoundsError",
    "Range",
    "Real",
    "Count",
    "OneOrMany",
    "Batch",
    "Threads",
    "max_threads",
    "show",
    "check_real",
    "check_count",
    "range_of",
]

_NUMBER = re.compile(r"^\s*[+-]?(\d+(_\d+)*\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")


class BoundsError(ValueError):
    """A value outside its type or range. ``index``: the element of a list it came from (the recipe
    loader appends ``[index]`` to the field), None for the field itself."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class Range:
    """The documented range of a bounded type (``text`` as it appears in messages and descriptions)."""

    text: str
    lo: float | None = None
    hi: float | None = None


def show(value: Any, limit: int = 40) -> str:
    """A short, printable rendering of a user value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true (a boolean)" if value else "false (a boolean)"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, numbers.Integral) and abs(int(value)) >= 10**18:
        text = f"an integer of about {int(value).bit_length() * 0.30103:.0f} digits"  # str() of a huge int may fail
    elif isinstance(value, numbers.Number):
        text = str(value)
    elif isinstance(value, str):
        text = repr(value)
    else:
        text = type(value).__name__
    text = text.replace("\n", " ").replace("\r", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _interval(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    return f"{'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"


def _as_number(value: Any, expected: str) -> float | int:
    """The number ``value`` stands for; booleans, containers and non-numeric strings are errors."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, tuple, dict)):
        raise BoundsError(f"expected {expected}, got {show(value)}")
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str) and _NUMBER.match(value):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            return float(text)
    raise BoundsError(f"expected {expected}, got {show(value)}")


def check_real(
    value: Any, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False, enforce: bool = True
) -> float:
    """``value`` as a finite float within the interval, or BoundsError (``enforce=False``: finite only)."""
    rng = _interval(lo, hi, lo_open, hi_open)
    n = _as_number(value, f"a number in {rng}")
    try:
        x = float(n)
    except OverflowError:  # an int beyond float range
        raise BoundsError(f"expected a finite number in {rng}, got {show(n)}") from None
    if not math.isfinite(x):
        raise BoundsError(f"expected a finite number in {rng}, got {show(x)}")
    if enforce and (x < lo or x > hi or (lo_open and x == lo) or (hi_open and x == hi)):
        raise BoundsError(f"{show(value if not isinstance(value, str) else x)} is outside {rng}")
    return x


def check_count(value: Any, lo: int, hi: int) -> int:
    """``value`` as an int within ``lo..hi``, or BoundsError (2.0 counts as 2; 2.5 does not)."""
    rng = f"{lo}..{hi}"
    x = _as_number(value, f"a whole number in {rng}")
    if isinstance(x, float):
        if not math.isfinite(x):
            raise BoundsError(f"expected a finite whole number in {rng}, got {show(x)}")
        if not x.is_integer():
            raise BoundsError(f"expected a whole number in {rng}, got {show(x)}")
        x = int(x)
    if x < lo or x > hi:
        raise BoundsError(f"{show(x)} is outside {rng}")
    return x


def Real(
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,  # noqa: N802 (a type)
    enforce: bool = True,
) -> Any:
    """Finite float in the interval (open ends with ``lo_open``/``hi_open``).

    ``enforce=False`` documents the range (JSON Schema, Range) but only refuses booleans, nan and inf:
    for a value whose range is checked later, where the message can say more (``reduction.keep_rate``:
    ``tokexport.reduce.schedule.plan`` checks every rate, before any weights load, naming the element)."""
    text = _interval(lo, hi, lo_open, hi_open)
    if enforce:
        bound = at.Interval(
            gt=lo if lo_open else None,
            ge=None if lo_open else lo,
            lt=hi if hi_open else None,
            le=None if hi_open else hi,
        )
    else:
        bound = Field(
            json_schema_extra={
                ("exclusiveMinimum" if lo_open else "minimum"): lo,
                ("exclusiveMaximum" if hi_open else "maximum"): hi,
            }
        )
    return Annotated[
        float, bound, Range(text, lo, hi), BeforeValidator(lambda v: check_real(v, lo, hi, lo_open, hi_open, enforce))
    ]


def Count(lo: int, hi: int) -> Any:  # noqa: N802 (a type)
    """Whole number in ``lo..hi``."""
    return Annotated[
        int, at.Interval(ge=lo, le=hi), Range(f"{lo}..{hi}", lo, hi), BeforeValidator(lambda v: check_count(v, lo, hi))
    ]


def range_of(tp: Any) -> Range | None:
    """The Range a bounded type carries (None for other types)."""
    for m in getattr(tp, "__metadata__", ()):
        if isinstance(m, Range):
            return m
    return None


def _checker(tp: Any):
    for m in getattr(tp, "__metadata__", ()):
        if isinstance(m, BeforeValidator):
            return m.func
    raise TypeError(f"{tp} is not a bounded type")


def OneOrMany(item: Any, *, max_length: int = 1024, scalar_index: bool = False) -> Any:  # noqa: N802 (a type)
    """One ``item`` or a non-empty list of them. Errors in a list carry the element's index;
    ``scalar_index`` reports an error in a single value at ``[0]`` too (a single value that stands for
    every element, as ``reduction.keep_rate`` always reported it)."""
    check, rng = _checker(item), range_of(item)

    def validate(v):
        if isinstance(v, (list, tuple)):
            if not v:
                raise BoundsError("must not be empty; give one value, or one per element")
            if len(v) > max_length:
                raise BoundsError(f"{len(v)} values; at most {max_length}")
            out = []
            for i, x in enumerate(v):
                try:
                    out.append(check(x))
                except BoundsError as e:
                    raise BoundsError(str(e), index=i) from None
            return out
        try:
            return check(v)
        except BoundsError as e:
            raise BoundsError(str(e), index=0 if scalar_index else None) from None

    return Annotated[Union[item, list[item]], rng, BeforeValidator(validate)]  # noqa: UP007


def Batch(hi: int = 1024) -> Any:  # noqa: N802 (a type)
    """A fixed batch size in ``1..hi``, or ``"dynamic"``."""
    from typing import Literal

    def validate(v):
        if isinstance(v, str) and v == "dynamic":
            return v
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise BoundsError(f"expected 'dynamic' or a whole number in 1..{hi}, got {show(v)}")
        return check_count(v, 1, hi)

    return Annotated[
        Union[Annotated[int, at.Interval(ge=1, le=hi)], Literal["dynamic"]],  # noqa: UP007
        Range(f"1..{hi}", 1, hi),
        BeforeValidator(validate),
    ]


def max_threads() -> int:
    """Most onnxruntime threads a recipe may ask for: 4 x the CPU cores of this machine."""
    return 4 * (os.cpu_count() or 1)


def _threads(v):
    if v is None:
        return None
    hi = max_threads()
    try:
        return check_count(v, 1, hi)
    except BoundsError as e:
        raise BoundsError(f"{e} (4 x the {hi // 4} CPU cores here); or null for all cores") from None


_ThreadCount = Union[Annotated[int, at.Ge(1)], None]  # noqa: UP007
Threads = Annotated[_ThreadCount, Range("1..4 x CPU cores"), BeforeValidator(_threads)]
