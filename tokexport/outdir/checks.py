"""The checks before anything is written (:func:`check_out_dir`, :func:`check_archive`,
:func:`check_out_file`): every output location tokexport must not write is refused with one line naming
the path (:class:`~tokexport.errors.InputError`, exit 2); and the files this process writes for the whole
run, which no output may hold (:func:`protect_written`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import InputError, option
from .markers import MARKER, TMP_TAG, is_bundle_archive, is_tokexport_output

# how the messages name the arguments (``force=True``, ``out``; the CLI prints ``--force``, ``--out``)
FORCE = option("force", "force=True")
OUT = option("out")

# ".NAME.tmp-XXXXXXXX" is the longest sibling name derived from an output's NAME
_RESERVE = len(".") + len(TMP_TAG) + 8
_SPECIAL = ("/proc", "/sys")
# force of the last check_out_dir per absolute path, for callers that check first and stage later
# without a claim (staged_dir then claims with the same force)
_CHECKED: dict[str, bool] = {}
# files this process writes for the whole run (the --log-file): no output may hold them
_WRITTEN: dict[str, str] = {}


def protect_written(path: str | os.PathLike | None, why: str = "") -> None:
    """Refuse, from now on, any output that is or holds ``path`` (a file written for the whole run,
    such as the --log-file); None forgets every such file."""
    if path is None:
        _WRITTEN.clear()
    else:
        _WRITTEN[os.path.abspath(os.fspath(path))] = why


def checked_force(out_dir: str | os.PathLike) -> bool:
    """The ``force`` the last :func:`check_out_dir` of ``out_dir`` was given (False when never checked)."""
    return _CHECKED.get(os.path.abspath(os.fspath(out_dir)), False)


def _real(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _holds(outer: Path, inner: Path) -> bool:
    """``outer`` is ``inner`` or one of its ancestors."""
    return outer == inner or outer in inner.parents


def _name_max(path: Path) -> int:
    p = path
    while not os.path.isdir(p) and p != p.parent:
        p = p.parent
    try:
        return os.pathconf(p, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_out_dir(
    out: str | os.PathLike,
    force: bool,
    *,
    protect: Iterable[str | os.PathLike] = (),
    what: str = OUT,
    recognise: Callable[[Path], bool] | None = None,
) -> Path:
    """Refuse (InputError, one line naming the path) every output location tokexport must not write;
    returns the absolute path. Writes nothing. ``protect``: files/directories the run reads (the output
    may not be one of them or hold one); ``what``: how the user names the output, for the hints (by default
    the ``out`` argument: ``--out`` where the CLI prints it, :func:`tokexport.errors.option`);
    ``recognise``: what counts as a directory tokexport wrote (default: it has ``.tokexport-output``)."""
    raw = os.fspath(out) or "."
    shown = raw
    other = f"choose another {what}"
    absolute = _checked_path(raw, shown, other)
    # below a regular file?
    anc = absolute
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if anc != absolute and not os.path.isdir(anc):
        raise InputError(f"{shown}: {anc} is a file, not a directory; {other}")
    _check_place(absolute, protect, shown, other)
    if os.path.lexists(absolute):
        _check_replaceable(absolute, force, recognise, shown, other)
    elif not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"{shown}: cannot be created, {anc} is not writable; {other}")
    _CHECKED[str(absolute)] = force
    return absolute


def _checked_path(raw: str, shown: str, other: str) -> Path:
    """The output's absolute path, once its spelling is one tokexport writes: no unexpanded '~', no '..',
    nothing under /proc or /sys, no name or path too long for the file system (with the temporary
    sibling's suffix)."""
    if raw.startswith("~"):  # the command line and the library entry points expand it; never a folder named ~
        raise InputError(
            f"{shown}: starts with '~', which was not expanded; give the full path (e.g. {os.path.expanduser(raw)})"
        )
    if ".." in Path(raw).parts:
        raise InputError(
            f"{shown}: the path has a '..' component; give the output directory without '..' "
            f"(e.g. {os.path.abspath(raw)})"
        )
    absolute = Path(os.path.abspath(raw))
    for special in _SPECIAL:
        for p in (absolute, _real(absolute)):
            if _holds(Path(special), p):
                raise InputError(f"{shown}: is under {special}, which holds no ordinary files; {other}")
    name_max = _name_max(absolute)
    for part in absolute.parts[1:]:
        n = len(os.fsencode(part))
        if n > name_max:
            raise InputError(
                f"{shown}: a path component is too long ({n} bytes, the file system allows {name_max}); {other}"
            )
    n = len(os.fsencode(absolute.name))
    if absolute.name and n > name_max - _RESERVE:
        raise InputError(
            f"{shown}: the name is too long ({n} bytes; an output directory's name may have at "
            f"most {name_max - _RESERVE}, tokexport adds a suffix for its temporary sibling); {other}"
        )
    if len(os.fsencode(str(absolute))) + _RESERVE + 64 > 4096:
        raise InputError(f"{shown}: the path is too long; {other}")
    return absolute


def _check_place(absolute: Path, protect: Iterable[str | os.PathLike], shown: str, other: str) -> None:
    """The output is reached without a symbolic link and is not, nor holds, the root, the home or the current
    directory, a path the run reads (``protect``) or a file it writes for the whole run."""
    resolved = _real(absolute)
    if resolved != absolute:
        raise InputError(
            f"{shown}: the path goes through a symbolic link (it resolves to {resolved}); give the real path or {other}"
        )
    if resolved == Path(resolved.anchor):
        raise InputError(f"{shown}: is the root directory; {other}")
    with contextlib.suppress(RuntimeError, KeyError, OSError):
        home = _real(Path.home())
        if _holds(resolved, home):
            raise InputError(f"{shown}: is your home directory{' or holds it' if resolved != home else ''}; {other}")
    with contextlib.suppress(OSError):
        cwd = _real(Path(os.getcwd()))
        if _holds(resolved, cwd):
            rel = "the current directory" if resolved == cwd else "a parent of the current directory"
            raise InputError(f"{shown}: is {rel}; {other}")
    for p in protect:
        rp = _real(Path(os.path.abspath(os.path.expanduser(os.fspath(p)))))
        if _holds(resolved, rp):
            where = "is" if resolved == rp else "holds"
            raise InputError(f"{shown}: {where} {p}, which this run reads; {other}")
    for p, why in _WRITTEN.items():
        if _holds(resolved, _real(Path(p))):
            raise InputError(f"{shown}: holds {p}, which this run writes ({why}); {other}")


def _check_replaceable(
    absolute: Path, force: bool, recognise: Callable[[Path], bool] | None, shown: str, other: str
) -> None:
    """An existing output: a directory tokexport wrote (``recognise``), replaced only with ``force`` and
    only where its parent is writable."""
    if not os.path.isdir(absolute):
        raise InputError(f"{shown}: exists and is not a directory; {other}")
    ours = (recognise or is_tokexport_output)(absolute)
    if not force:
        if ours:
            raise InputError(f"{shown}: output directory already exists; pass {FORCE} to replace it or {other}")
        raise InputError(
            f"{shown}: already exists and was not written by tokexport (no {MARKER} in it); "
            f"{other} ({FORCE} replaces only directories tokexport wrote)"
        )
    if not ours:
        raise InputError(
            f"{shown}: was not written by tokexport (no {MARKER} in it), so {FORCE} will not "
            f"replace it; move it away yourself or {other}"
        )
    if not os.access(absolute.parent, os.W_OK | os.X_OK):
        raise InputError(f"{shown}: cannot be replaced, {absolute.parent} is not writable; {other}")


def check_archive(
    path: str | os.PathLike, name: str, force: bool, *, protect: Iterable[str | os.PathLike] = (), what: str = "OUT_DIR"
) -> None:
    """The rules of :func:`check_out_dir` for a bundle's ``NAME.tar.gz`` (a file next to the directory):
    it may not be a file the run reads, may exist only with ``force``, and is replaced only when it is
    an archive ``tokexport bundle`` wrote (:func:`is_bundle_archive`)."""
    shown = os.fspath(path)
    real = _real(Path(os.path.abspath(shown)))
    for p in protect:
        if real == _real(Path(os.path.abspath(os.path.expanduser(os.fspath(p))))):
            raise InputError(f"{shown}: is {p}, which this run reads; choose another {what}")
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isfile(path):
        raise InputError(f"{shown}: exists and is not a regular file; choose another {what}")
    if not force:
        raise InputError(f"{shown}: already exists; pass {FORCE} to replace it or choose another {what}")
    if not is_bundle_archive(path, name):
        raise InputError(
            f"{shown}: is not an archive tokexport bundle wrote, so {FORCE} will not replace it; "
            f"move it away yourself or choose another {what}"
        )


def check_out_file(
    out: str | os.PathLike,
    force: bool,
    *,
    protect: Iterable[str | os.PathLike] = (),
    what: str = OUT,
    recognise: Callable[[Path], bool] | None = None,
    kind: str = "file",
    recognised_as: str = "a file tokexport wrote",
) -> Path:
    """The rules of :func:`check_out_dir` for an output that is one file (``report merge --out``): not
    under /proc or /sys, no '..', no symbolic link on the way or at the name, a folder that exists and is
    writable, not a file the run reads (``protect``) or writes; an existing file only with ``force`` and
    only when ``recognise`` says tokexport wrote it. Returns the absolute path; writes nothing."""
    raw = os.fspath(out)
    shown = f"{what} {raw}"
    other = f"write the {kind} to another file"
    if not raw:
        raise InputError(f"{what}: empty; name the {kind} to write")
    if raw.startswith("~"):
        raise InputError(f"{shown}: starts with '~', which was not expanded; give the full path")
    if ".." in Path(raw).parts:
        raise InputError(f"{shown}: the path has a '..' component; give it without '..'")
    absolute = Path(os.path.abspath(raw))
    for special in _SPECIAL:
        for p in (absolute, _real(absolute)):
            if _holds(Path(special), p):
                raise InputError(f"{shown}: is under {special}, which holds no ordinary files; {other}")
    if len(os.fsencode(str(absolute))) + _RESERVE + 16 > 4096:
        raise InputError(f"{shown}: the path is too long; {other}")
    name_max = _name_max(absolute.parent)
    parts = absolute.parts[1:]
    for i, part in enumerate(parts):
        room = name_max - (len(".") + 9 + len(".tmp") if i == len(parts) - 1 else 0)  # the temporary sibling
        if len(os.fsencode(part)) > room:
            raise InputError(f"{shown}: a path component is too long (at most {room} bytes here); {other}")
    parent = absolute.parent
    if not os.path.isdir(parent):
        raise InputError(f"{shown}: its folder {parent} does not exist; create it first")
    if _real(parent) != parent:
        raise InputError(
            f"{shown}: the path goes through a symbolic link ({parent} resolves to {_real(parent)}); give the real path"
        )
    if os.path.islink(absolute):
        raise InputError(f"{shown}: is a symbolic link; tokexport never writes through one ({other})")
    for p in protect:
        rp = _real(Path(os.path.abspath(os.path.expanduser(os.fspath(p)))))
        if rp == _real(absolute):
            raise InputError(f"{shown}: is {p}, which this run reads; {other}")
    if str(absolute) in _WRITTEN:
        raise InputError(f"{shown}: is {absolute}, which this run writes ({_WRITTEN[str(absolute)]}); {other}")
    if os.path.lexists(absolute):
        if os.path.isdir(absolute):
            raise InputError(f"{shown}: a folder; name the {kind} file to write")
        if not os.path.isfile(absolute):
            raise InputError(f"{shown}: exists and is not a regular file; {other}")
        if not force:
            raise InputError(f"{shown}: already exists; pass {FORCE} to replace it")
        if recognise is not None and not recognise(absolute):
            raise InputError(
                f"{shown}: exists and is not {recognised_as}; refusing to replace it even with {FORCE} ({other})"
            )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{shown}: its folder {parent} is not writable; {other}")
    return absolute
