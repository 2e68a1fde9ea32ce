"""Reading input files: the one bounded reader behind every file tokexport reads (docs/files.md).

Recipes, tolerance files, reports, baselines, device results, bundle manifests, model-directory JSON,
keep files, corpora and .npy/.npz arrays all come through here, so every one of them gets the same
rules:

* **regular files only**: a named pipe (FIFO), a character or block device, a socket or a folder is
  refused by what it is (``/dev/zero: is a character device, not a regular file``), before a byte is
  read; a pipe is opened without blocking, so a FIFO nobody writes to never hangs the run;
* **a size limit per kind** (:data:`KINDS`), checked on the open file and again while reading (a file
  that grows, or reports size 0 as /proc files do, is cut off at the limit plus one byte);
* **JSON**: nesting deeper than :data:`MAX_JSON_DEPTH` is an error, a key given twice in one object is
  an error, and ``finite=True`` refuses NaN and infinities, naming the field;
* **YAML** (safe loader: no Python tags): a key given twice in one mapping is an error (YAML merge keys
  ``<<`` still override, as YAML defines);
* every failure is one line naming the file, raised as the caller's error class (``InputError``,
  exit 2, by default; ``UnreadableReport``, exit 7, for ``tokexport check``); OS errors (a name too
  long, no permission) included.

Cheap to import (the standard library, yaml on first use): the command line reads recipes and reports
through it before anything heavy loads.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import InputError, TokexportError

MiB = 2**20
GiB = 2**30
MAX_JSON_DEPTH = 64


@dataclass(frozen=True)
class Kind:
    """What a file is for: its size limit and what the user should pass instead (``hint``)."""

    name: str
    limit: int
    hint: str


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("recipe", 4 * MiB, "a recipe is a YAML file (see `tokexport recipes schema`)"),
        Kind("tolerances", 4 * MiB, "a tolerance file is a small YAML mapping (docs/ci.md)"),
        Kind("report", 256 * MiB, "pass the report.json written by `tokexport convert`"),
        Kind("device results", 256 * MiB, "pass the device_results.json verify_on_device.py wrote"),
        Kind(
            "report or device results",
            256 * MiB,
            "pass a report.json written by `tokexport convert` or the device_results.json verify_on_device.py wrote",
        ),
        Kind("manifest", 64 * MiB, "a bundle's manifest.json, written by `tokexport bundle`"),
        Kind("model file", 64 * MiB, "expected a Hugging Face JSON config file"),
        Kind("tokenizer", 1 * GiB, "expected a tokenizer.json written by the tokenizers library"),
        Kind("marker", 1 * MiB, "a marker file tokexport wrote"),
        Kind("keep file", 64 * MiB, "a keep list has one token or id per line"),
        Kind("token list", 64 * MiB, "one vocabulary entry per line"),
        Kind("corpus", 2 * GiB, "a corpus file is UTF-8 text, one document per line"),
        Kind("arrays", 8 * GiB, "an .npy or .npz file of numeric arrays (np.save / np.savez)"),
        Kind("graph", 2 * GiB, "an .onnx graph file (larger graphs keep their weights in external data files)"),
    )
}

Error = Callable[[str], TokexportError]


def kind_of(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def os_problem(e: OSError) -> str:
    """An OS error in words: 'the path is too long', 'permission denied', ..."""
    if e.errno == errno.ENAMETOOLONG:
        return "the path is too long (ENAMETOOLONG)"
    if e.errno == errno.ELOOP:
        return "too many levels of symbolic links"
    return e.strerror.lower() if e.strerror else type(e).__name__


def _kind(kind: str | Kind) -> Kind:
    return kind if isinstance(kind, Kind) else KINDS[kind]


def stat_regular(
    path: str | os.PathLike,
    kind: str | Kind,
    error: Error = InputError,
    *,
    missing: str | None = None,
    label: str | None = None,
) -> os.stat_result:
    """The stat of ``path`` (symbolic links followed) when it is a regular file within the kind's size
    limit; else ``error`` with one line naming it. ``missing``: the message after ``PATH: `` for a file
    that does not exist (default ``not found; <hint>``); ``label`` prefixes the path (a recipe field)."""
    k = _kind(kind)
    where = f"{label}: {os.fspath(path)}" if label else os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{where}: {missing or 'not found; ' + k.hint}") from None
    except OSError as e:
        raise error(f"{where}: cannot read it: {os_problem(e)}; {k.hint}") from None
    what = kind_of(st.st_mode)
    if what is not None:
        raise error(f"{where}: is {what}, not a regular file; {k.hint}")
    if st.st_size > k.limit:
        raise error(f"{where}: {st.st_size:,} bytes, more than {_size(k.limit)}; {k.hint}")
    return st


def _size(n: int) -> str:
    return f"{n // GiB} GiB" if n >= GiB and n % GiB == 0 else f"{n // MiB} MiB"


def open_regular(
    path: str | os.PathLike,
    kind: str | Kind,
    error: Error = InputError,
    *,
    missing: str | None = None,
    label: str | None = None,
):
    """A binary file object of ``path``, opened only once it is known to be a regular file within the
    limit (:func:`stat_regular`); opened non-blocking and checked again on the descriptor, so a file
    swapped for a FIFO in between is refused instead of waited on."""
    k = _kind(kind)
    st = stat_regular(path, k, error, missing=missing, label=label)
    where = f"{label}: {os.fspath(path)}" if label else os.fspath(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise error(f"{where}: cannot read it: {os_problem(e)}; {k.hint}") from None
    try:
        fst = os.fstat(fd)
        what = kind_of(fst.st_mode)
        if what is not None or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise error(f"{where}: is {what or 'a different file now'}, not a regular file; {k.hint}")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(
    path: str | os.PathLike,
    kind: str | Kind,
    error: Error = InputError,
    *,
    missing: str | None = None,
    label: str | None = None,
) -> bytes:
    """The bytes of a regular file, at most the kind's limit (a longer read is an error)."""
    k = _kind(kind)
    where = f"{label}: {os.fspath(path)}" if label else os.fspath(path)
    with open_regular(path, k, error, missing=missing, label=label) as f:
        try:
            data = f.read(k.limit + 1)
        except OSError as e:
            raise error(f"{where}: cannot read it: {os_problem(e)}; {k.hint}") from None
    if len(data) > k.limit:
        raise error(f"{where}: more than {_size(k.limit)}; {k.hint}")
    return data


def read_text(
    path: str | os.PathLike,
    kind: str | Kind,
    error: Error = InputError,
    *,
    missing: str | None = None,
    label: str | None = None,
) -> str:
    """The UTF-8 text of a regular file (a leading byte-order mark dropped)."""
    data = read_bytes(path, kind, error, missing=missing, label=label)
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        where = f"{label}: {os.fspath(path)}" if label else os.fspath(path)
        raise error(f"{where}: not a UTF-8 text file (byte {e.start}); {_kind(kind).hint}") from None


def check_model_dir(path: str | os.PathLike, error: Error = InputError) -> None:
    """Every entry of a model directory that the loaders may open is a regular file or a folder (links
    followed): a FIFO named tokenizer.json would hang transformers, a device would feed it forever."""
    try:
        entries = list(os.scandir(path))
    except OSError as e:
        raise error(f"model: {os.fspath(path)}: cannot list it: {os_problem(e)}") from None
    for entry in entries:
        try:
            mode = os.stat(entry.path).st_mode
        except OSError:
            continue  # a dangling link: whoever needs the file says it is missing
        what = kind_of(mode)
        if what is not None and not stat.S_ISDIR(mode):
            raise error(f"model: {entry.path}: is {what}, not a regular file; a model directory holds regular files")


# ------------------------------------------------------------------------------------------------ JSON


class DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise DuplicateKey(k)
        out[k] = v
    return out


def _short(key: str, limit: int = 60) -> str:
    text = repr(key)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def json_depth_problem(data: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``data`` nests deeper than ``limit`` (iterative: never recurses)."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return True
            stack.extend((c, depth + 1) for c in (node.values() if isinstance(node, dict) else node))
    return False


def first_non_finite(data: Any) -> tuple[str, float] | None:
    """(dotted field path, value) of the first NaN or infinity in ``data``, or None."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return where or "(top level)", node
        if isinstance(node, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in reversed(list(node.items())))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(node))))
    return None


def loads_json(
    text: str | bytes, where: str, kind: str | Kind, error: Error = InputError, *, finite: bool = False
) -> Any:
    """Parse JSON text read from ``where``: a key twice in one object, nesting deeper than
    :data:`MAX_JSON_DEPTH` and (``finite``) NaN/Infinity are errors, each one line."""
    k = _kind(kind)
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except DuplicateKey as e:
        raise error(
            f"{where}: key {_short(e.key)} appears twice in one object; give each key once ({k.hint})"
        ) from None
    except RecursionError:
        raise error(f"{where}: nested too deeply (more than {MAX_JSON_DEPTH} levels); {k.hint}") from None
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno}); {k.hint}") from None
    except (ValueError, UnicodeDecodeError) as e:  # an int too long to convert, bytes that are not UTF-8
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise error(f"{where}: not valid JSON ({first}); {k.hint}") from None
    if json_depth_problem(data):
        raise error(f"{where}: nested too deeply (more than {MAX_JSON_DEPTH} levels); {k.hint}")
    if finite:
        bad = first_non_finite(data)
        if bad is not None:
            shown = "NaN" if math.isnan(bad[1]) else ("Infinity" if bad[1] > 0 else "-Infinity")
            raise error(f"{where}: {bad[0]}: {shown} is not a finite number; fix it in that file")
    return data


def read_json(
    path: str | os.PathLike,
    kind: str | Kind,
    error: Error = InputError,
    *,
    finite: bool = False,
    missing: str | None = None,
    label: str | None = None,
) -> Any:
    """A regular file's JSON (:func:`read_bytes` then :func:`loads_json`)."""
    data = read_bytes(path, kind, error, missing=missing, label=label)
    where = f"{label}: {os.fspath(path)}" if label else os.fspath(path)
    return loads_json(data, where, kind, error, finite=finite)


# ------------------------------------------------------------------------------------------------ YAML


def yaml_loader():
    """PyYAML's SafeLoader, refusing a key given twice in one mapping (merge keys ``<<`` still override)."""
    import yaml

    global _LOADER
    if _LOADER is not None:
        return _LOADER

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: dict = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        hash(key)
                    except TypeError:
                        continue  # SafeLoader reports an unhashable key itself
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping",
                            node.start_mark,
                            f"key {_short(str(key))} appears twice in one mapping; give each key once",
                            key_node.start_mark,
                        )
                    seen[key] = None
            return super().construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, StrictLoader.construct_mapping)
    _LOADER = StrictLoader
    return _LOADER


_LOADER = None


def loads_yaml(text: str):
    """YAML text through :func:`yaml_loader` (the caller turns ``yaml.YAMLError`` into its message)."""
    import yaml

    return yaml.load(text, Loader=yaml_loader())  # noqa: S506 (a SafeLoader subclass)


def read_yaml(
    path: str | os.PathLike, kind: str | Kind, error: Error = InputError, *, missing: str | None = None
) -> Any:
    """A regular file's YAML; a syntax error, a refused tag, a duplicate key: one line with the line
    and column."""
    import yaml

    text = read_text(path, kind, error, missing=missing)
    try:
        return loads_yaml(text)
    except yaml.YAMLError as e:
        raise error(yaml_message(os.fspath(path), e)) from None
    except RecursionError:
        raise error(f"{os.fspath(path)}: YAML nested too deeply; {_kind(kind).hint}") from None


def yaml_message(where: str, e) -> str:
    """One line for a ``yaml.YAMLError``: ``FILE: line L, column C: problem``."""
    import yaml

    mark = getattr(e, "problem_mark", None)
    at = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
    problem = getattr(e, "problem", None) or (str(e).splitlines() or [type(e).__name__])[0]
    if isinstance(e, yaml.constructor.ConstructorError) and "appears twice" not in str(problem):
        return one_line(f"{where}:{at} YAML tag refused: {problem}; plain mappings, lists, strings and numbers only")
    if "appears twice" in str(problem):
        return one_line(f"{where}:{at} {problem}")
    return one_line(f"{where}:{at} YAML syntax error: {problem}")


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


# ---------------------------------------------------------------------------------------------- arrays


def load_array(path: str | os.PathLike, error: Error = InputError, *, label: str | None = None):
    """An .npy array or an .npz archive (``np.load``) from a regular file, never unpickling: an object
    array is refused with one line."""
    import numpy as np

    where = f"{label}: {os.fspath(path)}" if label else os.fspath(path)
    f = open_regular(path, "arrays", error, label=label)
    try:
        out = np.load(f, allow_pickle=False)
        if isinstance(out, np.ndarray):
            f.close()
        return out  # an NpzFile keeps the file open until closed (use it as a context manager)
    except ValueError as e:
        f.close()
        if "allow_pickle" in str(e) or "pickle" in str(e).lower():
            raise error(
                f"{where}: holds pickled Python objects, which tokexport never loads; save numeric "
                "arrays (np.save / np.savez)"
            ) from None
        raise error(f"{where}: not a readable .npz or .npy file ({one_line(str(e))[:160]})") from None
    except Exception as e:  # noqa: BLE001 - OSError, BadZipFile, EOFError ...: unreadable all the same
        f.close()
        raise error(
            f"{where}: not a readable .npz or .npy file ({type(e).__name__}: {one_line(str(e))[:160]})"
        ) from None
