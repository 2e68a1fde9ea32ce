"""Claiming an output and replacing it atomically: the exclusive claim a run holds on its output
(:class:`Claim`, :func:`claim_out_dir`), the staging directory swapped into place on success
(:meth:`Claim.staged`, :func:`staged_dir`), and :func:`write_file_atomic` for an output that is one file."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, write_error
from .checks import OUT, check_out_dir, checked_force
from .locks import release_lock, take_lock
from .markers import OLD_TAG, TMP_TAG, write_marker
from .owners import OWNER, clean_stale, write_owner

log = logging.getLogger("tokexport")


@dataclass
class Claim:
    """An output this process holds the lock of (see :func:`claim_out_dir`)."""

    path: Path  # absolute
    shown: str  # as the user gave it
    kind: str
    force: bool
    what: str
    recognise: Callable[[Path], bool] | None
    lock: Path
    fd: int
    extras: list[tuple[Path, Path]] = field(default_factory=list)
    scratch: Path | None = None

    def install_with(self, src: Path, dest: Path) -> None:
        """Move file ``src`` (inside the staging container) to ``dest`` right after the directory is in
        place (the bundle's .tar.gz); a failure here restores the old directory."""
        self.extras.append((Path(src), Path(dest)))

    @contextlib.contextmanager
    def staged(self) -> Iterator[Path]:
        """Yield ``.NAME.tmp-XXXX/NAME`` (with the marker written); on a clean exit swap it into place."""
        parent, name = self.path.parent, self.path.name
        try:
            scratch = Path(tempfile.mkdtemp(prefix=f".{name}{TMP_TAG}", dir=parent))
        except OSError as e:
            err = write_error(e, self.shown)
            if err is not None:
                raise err from None
            raise InputError(
                f"{self.shown}: cannot create a temporary directory in {parent} ({e.strerror}); "
                f"choose another {self.what}"
            ) from None
        self.scratch, self.extras = scratch, []
        try:
            write_owner(scratch, name)
            tmp = scratch / name
            tmp.mkdir()
            write_marker(tmp, self.kind)
            yield tmp
            self._swap(tmp)
        except Exception as e:
            # disk full, file too large, read-only: one line and exit 10, whatever library was writing (an
            # inner output's OutputWriteError too, renamed after this, the output the user named)
            err = write_error(e, self.shown, inside=str(scratch))
            if err is not None:
                raise err from None
            raise
        finally:
            self.scratch = None
            shutil.rmtree(scratch, ignore_errors=True)

    def _swap(self, tmp: Path) -> None:
        out, name = self.path, self.path.name
        old_box = None
        if os.path.lexists(out):
            # we hold the lock: nobody else wrote it meanwhile, but check again rather than trust
            check_out_dir(out, self.force, what=self.what, recognise=self.recognise)
            old_box = Path(tempfile.mkdtemp(prefix=f".{name}{OLD_TAG}", dir=out.parent))
            write_owner(old_box, name)
            try:
                os.rename(out, old_box / name)
            except BaseException:
                shutil.rmtree(old_box, ignore_errors=True)
                raise
        moved = False
        try:
            os.rename(tmp, out)
            moved = True
            for src, dest in self.extras:
                os.replace(src, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                if moved:
                    os.rename(out, tmp)
            if old_box is not None:
                try:
                    os.rename(old_box / name, out)
                except OSError:
                    # keep the only copy: without its owner record no later run deletes it
                    with contextlib.suppress(OSError):
                        (old_box / OWNER).unlink()
                    log.error(
                        "%s: could not be put back; the previous output is kept in %s", self.shown, old_box / name
                    )
                else:
                    shutil.rmtree(old_box, ignore_errors=True)
            raise
        if old_box is not None:
            shutil.rmtree(old_box, ignore_errors=True)


_CLAIMS: dict[str, Claim] = {}


def _make_parents(path: Path, shown: str, what: str) -> list[Path]:
    missing = []
    p = path
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    created = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue
        except OSError as e:
            _remove_created(created)
            raise InputError(f"{shown}: cannot create {d} ({e.strerror}); choose another {what}") from None
        created.append(d)
    return created


def _remove_created(created: list[Path]) -> None:
    for d in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(d)  # only if still empty


def claimed(out_dir: str | os.PathLike) -> Claim | None:
    """The claim this process holds on ``out_dir``, if any."""
    return _CLAIMS.get(os.path.abspath(os.fspath(out_dir)))


@contextlib.contextmanager
def claim_out_dir(
    out: str | os.PathLike,
    force: bool,
    *,
    kind: str,
    protect: Iterable[str | os.PathLike] = (),
    what: str = OUT,
    recognise: Callable[[Path], bool] | None = None,
    wait: bool = False,
    recheck: bool = True,
    keep_parents: bool = False,
) -> Iterator[Claim]:
    """Check ``out`` (:func:`check_out_dir`), create its parents, take the exclusive lock ``.NAME.lock``
    (``wait``: block until a running writer finishes instead of failing at once), check again under the
    lock (``recheck``), remove stale leftovers of dead runs, and yield the :class:`Claim`. On exit the
    lock is released and removed, and parents this call created are removed again when no output was
    written (unless ``keep_parents``)."""
    protect = list(protect)
    path = check_out_dir(out, force, protect=protect, what=what, recognise=recognise)
    shown = os.fspath(out) or "."
    key = str(path)
    if key in _CLAIMS:
        raise InputError(f"{shown}: this run is already writing it; choose another {what}")
    created = _make_parents(path.parent, shown, what)
    try:
        lock, fd = take_lock(path, shown, what, wait)
    except BaseException:
        _remove_created(created)
        raise
    claim = Claim(path, shown, kind, force, what, recognise, lock, fd)
    _CLAIMS[key] = claim
    try:
        if recheck:
            check_out_dir(out, force, protect=protect, what=what, recognise=recognise)
        clean_stale(path)
        yield claim
    finally:
        _CLAIMS.pop(key, None)
        release_lock(lock, fd)
        if not keep_parents and not os.path.lexists(path):
            _remove_created(created)


@contextlib.contextmanager
def staged_dir(
    out_dir: str | os.PathLike,
    *,
    force: bool | None = None,
    kind: str = "output",
    protect: Iterable[str | os.PathLike] = (),
) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``out_dir`` on a clean exit (see :meth:`Claim.staged`).
    Uses this process's claim on ``out_dir`` when there is one, else claims it for the duration, with
    ``force`` (default: what the last :func:`check_out_dir` of ``out_dir`` was given, else False).
    Claim before loading anything instead (:func:`claim_out_dir`): only a claim held for the whole run
    keeps a concurrent run from starting on the same output."""
    claim = claimed(out_dir)
    if claim is not None:
        with claim.staged() as tmp:
            yield tmp
        return
    if force is None:
        force = checked_force(out_dir)
    with claim_out_dir(out_dir, force, kind=kind, protect=protect) as claim, claim.staged() as tmp:
        yield tmp


def write_file_atomic(path: str | os.PathLike, data: bytes | str, shown: str | None = None) -> None:
    """Write ``path`` whole: a new temporary sibling (created exclusively, so never through an existing
    name or link), then renamed over ``path`` (which replaces a link, never writes through it). On any
    failure the temporary file is removed and ``path`` is as it was; a full disk, a file too large, a
    read-only file system or no permission is an OutputWriteError (exit 10)."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except Exception as e:
        err = write_error(e, shown or str(path), inside=str(path.parent))
        if err is not None:
            raise err from None
        raise
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
