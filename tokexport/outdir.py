"""Output directories: never lose a user's data, never leave a half-written output behind.

Every command that writes a directory (convert, sweep, search, bundle, models fetch) goes through
:func:`claim_out_dir` and :func:`staged_dir`:

* **Checks first** (:func:`check_out_dir`, before any model is loaded): the output may not be ``/``, the
  home directory (or above it), the current directory or one of its parents, a path given with ``..``
  or passing through a symbolic link, a directory that holds a file the run reads (recipe, model,
  ``--from``), anything under /proc or /sys, something that is not a directory, or a name the
  file system cannot hold; its parent must be creatable and writable. Each refusal is one line
  (:class:`~tokexport.errors.InputError`, exit 2) naming the path.
* **Marker**: every output directory carries ``.tokexport-output`` (tool, version, kind, created);
  ``--force`` replaces only a directory that has it.
* **Exclusive claim**: ``flock`` on the sibling ``.NAME.lock`` for the whole run (released by the
  kernel when a process dies); a second run into the same output fails at once.
* **Atomic replacement**: the output is built in ``.NAME.tmp-XXXX/NAME`` (the container also holds
  ``.tokexport-owner``: pid, host, process start); when complete the old output is renamed aside into
  ``.NAME.old-XXXX/``, the new one renamed into place, and only then is the old one deleted (restored
  if the second rename fails). Errors and Ctrl-C remove the container.
* **Stale leftovers** of dead runs (containers whose owner record names a process that no longer
  exists) are removed by the next run into that output once it holds the lock; containers without an
  owner record are only named in a warning.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, write_error

MARKER = ".tokexport-output"
OWNER = ".tokexport-owner"
LOCK_SUFFIX = ".lock"
TMP_TAG = ".tmp-"
OLD_TAG = ".old-"
# ".NAME.tmp-XXXXXXXX" is the longest sibling name derived from an output's NAME
_RESERVE = len(".") + len(TMP_TAG) + 8
_SPECIAL = ("/proc", "/sys")
# force of the last check_out_dir per absolute path, for callers that check first and stage later
# without a claim (staged_dir then claims with the same force)
_CHECKED: dict[str, bool] = {}
# files this process writes for the whole run (the --log-file): no output may hold them
_WRITTEN: dict[str, str] = {}

log = logging.getLogger("tokexport")


def protect_written(path: str | os.PathLike | None, why: str = "") -> None:
    """Refuse, from now on, any output that is or holds ``path`` (a file written for the whole run,
    such as the --log-file); None forgets every such file."""
    if path is None:
        _WRITTEN.clear()
    else:
        _WRITTEN[os.path.abspath(os.fspath(path))] = why


# ------------------------------------------------------------------------------------------ markers


def marker_record(kind: str) -> dict:
    from . import __version__

    return {"tool": "tokexport", "version": __version__, "kind": kind,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_marker(directory: Path, kind: str) -> None:
    (Path(directory) / MARKER).write_text(json.dumps(marker_record(kind), indent=2) + "\n")


def _read_json_nofollow(path: Path) -> dict | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = json.loads(f.read(65536).decode("utf-8"))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) and data.get("tool") == "tokexport" else None


def read_marker(directory: str | os.PathLike) -> dict | None:
    """The marker of a directory tokexport wrote, else None."""
    return _read_json_nofollow(Path(directory) / MARKER)


def is_tokexport_output(directory: str | os.PathLike) -> bool:
    return read_marker(directory) is not None


def is_bundle_archive(path: str | os.PathLike, name: str) -> bool:
    """True when ``path`` is a .tar.gz written by ``tokexport bundle`` for a bundle called ``name``:
    its first members are ``name/`` and ``name/.tokexport-output`` (tarfile adds directory entries
    sorted, and the marker sorts first)."""
    import tarfile

    try:
        with tarfile.open(path, "r:gz") as tar:
            for _ in range(8):
                member = tar.next()
                if member is None:
                    return False
                if member.name == f"{name}/{MARKER}" and member.isfile():
                    f = tar.extractfile(member)
                    data = json.loads(f.read(65536).decode("utf-8")) if f is not None else None
                    return isinstance(data, dict) and data.get("tool") == "tokexport"
    except (OSError, ValueError, EOFError, tarfile.TarError):
        return False
    return False


# ------------------------------------------------------------------------------------------- checks


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


def check_out_dir(out: str | os.PathLike, force: bool, *, protect: Iterable[str | os.PathLike] = (),
                  what: str = "--out", recognise: Callable[[Path], bool] | None = None) -> Path:
    """Refuse (InputError, one line naming the path) every output location tokexport must not write;
    returns the absolute path. Writes nothing. ``protect``: files/directories the run reads (the output
    may not be one of them or hold one); ``what``: how the user names the output, for the hints;
    ``recognise``: what counts as a directory tokexport wrote (default: it has ``.tokexport-output``)."""
    raw = os.fspath(out) or "."
    shown = raw
    other = f"choose another {what}"
    if raw.startswith("~"):  # the command line and the library entry points expand it; never a folder named ~
        raise InputError(f"{shown}: starts with '~', which was not expanded; give the full path "
                         f"(e.g. {os.path.expanduser(raw)})")
    if ".." in Path(raw).parts:
        raise InputError(f"{shown}: the path has a '..' component; give the output directory without '..' "
                         f"(e.g. {os.path.abspath(raw)})")
    absolute = Path(os.path.abspath(raw))
    for special in _SPECIAL:
        for p in (absolute, _real(absolute)):
            if _holds(Path(special), p):
                raise InputError(f"{shown}: is under {special}, which holds no ordinary files; {other}")
    name_max = _name_max(absolute)
    for part in absolute.parts[1:]:
        n = len(os.fsencode(part))
        if n > name_max:
            raise InputError(f"{shown}: a path component is too long ({n} bytes, the file system allows "
                             f"{name_max}); {other}")
    n = len(os.fsencode(absolute.name))
    if absolute.name and n > name_max - _RESERVE:
        raise InputError(f"{shown}: the name is too long ({n} bytes; an output directory's name may have at "
                         f"most {name_max - _RESERVE}, tokexport adds a suffix for its temporary sibling); {other}")
    if len(os.fsencode(str(absolute))) + _RESERVE + 64 > 4096:
        raise InputError(f"{shown}: the path is too long; {other}")
    # below a regular file?
    anc = absolute
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if anc != absolute and not os.path.isdir(anc):
        raise InputError(f"{shown}: {anc} is a file, not a directory; {other}")
    resolved = _real(absolute)
    if resolved != absolute:
        raise InputError(f"{shown}: the path goes through a symbolic link (it resolves to {resolved}); "
                         f"give the real path or {other}")
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
    if os.path.lexists(absolute):
        if not os.path.isdir(absolute):
            raise InputError(f"{shown}: exists and is not a directory; {other}")
        ours = (recognise or is_tokexport_output)(absolute)
        if not force:
            if ours:
                raise InputError(f"{shown}: output directory already exists; pass --force to replace it or {other}")
            raise InputError(f"{shown}: already exists and was not written by tokexport (no {MARKER} in it); "
                             f"{other} (--force replaces only directories tokexport wrote)")
        if not ours:
            raise InputError(f"{shown}: was not written by tokexport (no {MARKER} in it), so --force will not "
                             f"replace it; move it away yourself or {other}")
        if not os.access(absolute.parent, os.W_OK | os.X_OK):
            raise InputError(f"{shown}: cannot be replaced, {absolute.parent} is not writable; {other}")
    elif not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(f"{shown}: cannot be created, {anc} is not writable; {other}")
    _CHECKED[str(absolute)] = force
    return absolute


def check_archive(path: str | os.PathLike, name: str, force: bool, *, protect: Iterable[str | os.PathLike] = (),
                  what: str = "OUT_DIR") -> None:
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
        raise InputError(f"{shown}: already exists; pass --force to replace it or choose another {what}")
    if not is_bundle_archive(path, name):
        raise InputError(f"{shown}: is not an archive tokexport bundle wrote, so --force will not replace it; "
                         f"move it away yourself or choose another {what}")


# ----------------------------------------------------------------------------------- owner records


def _proc_start(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
        return data[data.rindex(")") + 2:].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def _write_owner(container: Path, output: str) -> None:
    rec = {"tool": "tokexport", "output": output, "pid": os.getpid(), "host": socket.gethostname(),
           "start": _proc_start(os.getpid()), "created": time.time()}
    (container / OWNER).write_text(json.dumps(rec) + "\n")


def _alive(rec: dict) -> bool:
    """Whether the process an owner record names may still be running (unknown counts as alive)."""
    pid = rec.get("pid")
    if rec.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    start = rec.get("start")
    now = _proc_start(pid)
    return not (start and now and start != now)  # the pid was reused by another process


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove ``.NAME.tmp-*`` / ``.NAME.old-*`` containers of dead tokexport runs next to ``out_dir``
    (call it holding the output's lock); warn about matching directories without an owner record.
    Returns the removed paths."""
    parent, name = out_dir.parent, out_dir.name
    prefixes = (f".{name}{TMP_TAG}", f".{name}{OLD_TAG}")
    removed = []
    try:
        entries = sorted(os.scandir(parent), key=lambda e: e.name)
    except OSError:
        return removed
    for e in entries:
        if not e.name.startswith(prefixes):
            continue
        try:
            is_dir = e.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if not is_dir:
            continue
        rec = _read_json_nofollow(Path(e.path) / OWNER)
        if rec is None:
            log.warning("%s: left next to the output by an earlier run but it carries no tokexport owner record; "
                        "not deleting it (remove it yourself if it is not needed)", e.path)
            continue
        if rec.get("output") != name:
            continue  # the temporary sibling of another output whose name starts like this one
        if _alive(rec):
            log.warning("%s: belongs to tokexport process %s, still running; leaving it", e.path, rec.get("pid"))
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        if os.path.lexists(e.path):
            log.warning("%s: left behind by a dead tokexport run (pid %s) and could not be removed",
                        e.path, rec.get("pid"))
        else:
            log.debug("removed %s, left behind by a dead tokexport run (pid %s)", e.path, rec.get("pid"))
            removed.append(Path(e.path))
    return removed


# ------------------------------------------------------------------------------------------ claims


@dataclass
class Claim:
    """An output this process holds the lock of (see :func:`claim_out_dir`)."""

    path: Path          # absolute
    shown: str          # as the user gave it
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
            raise InputError(f"{self.shown}: cannot create a temporary directory in {parent} ({e.strerror}); "
                             f"choose another {self.what}") from None
        self.scratch, self.extras = scratch, []
        try:
            _write_owner(scratch, name)
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
            _write_owner(old_box, name)
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
                    log.error("%s: could not be put back; the previous output is kept in %s",
                              self.shown, old_box / name)
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


LOCK_TAG = "tokexport-lock"
_LOCK_RECORD = re.compile(rb"^\d+( " + LOCK_TAG.encode() + rb")?\n?$")


def _lock_record() -> bytes:
    return f"{os.getpid()} {LOCK_TAG}\n".encode()


def _create_lock(lock: Path) -> int | None:
    """Create ``lock`` holding this process's record, only if nothing is there (the record is written
    before the name appears: a temporary file hard-linked into place). The open descriptor, or None
    when the name exists already."""
    fd, tmp = tempfile.mkstemp(prefix=f"{lock.name}.", suffix=".new", dir=lock.parent)
    try:
        os.write(fd, _lock_record())
        try:
            os.link(tmp, lock)
        except FileExistsError:
            os.close(fd)
            return None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                raise
            os.close(fd)  # no hard links on this file system: exclusive create, then the record
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                return None
            os.write(fd, _lock_record())
        return fd
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _open_existing_lock(lock: Path, shown: str, other: str) -> int | None:
    """Open a lock file someone else created, after checking it is one: a regular file (never through
    a symbolic link) holding a tokexport lock record. None when it vanished meanwhile."""
    try:
        fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputError(f"{shown}: its lock file {lock} is a symbolic link, not a tokexport lock; "
                             f"remove it yourself or {other}") from None
        raise InputError(f"{shown}: cannot open the lock file {lock} ({e.strerror}); {other}") from None
    try:
        st = os.fstat(fd)
        head = os.pread(fd, 256, 0) if stat.S_ISREG(st.st_mode) and st.st_size <= 256 else b""
    except OSError:
        head = b""
        st = None
    if st is None or not stat.S_ISREG(st.st_mode) or not _LOCK_RECORD.match(head):
        os.close(fd)
        raise InputError(f"{shown}: {lock} exists and is not a tokexport lock file (a file of yours?); it is left "
                         f"as it is: move it away or {other}")
    return fd


def _lock(path: Path, shown: str, what: str, wait: bool) -> tuple[Path, int]:
    """Take ``.NAME.lock``: created only if absent (holding ``PID tokexport-lock``); an existing one is
    used only when it is a tokexport lock (a dead run's is taken over once flock succeeds); a user's
    file of that name, or a symbolic link, is refused and left alone."""
    lock = path.with_name(f".{path.name}{LOCK_SUFFIX}")
    other = f"choose another {what}"
    for _ in range(100):
        try:
            fd = _create_lock(lock)
            if fd is None:
                fd = _open_existing_lock(lock, shown, other)
                if fd is None:
                    continue  # removed between our two looks: create it again
        except InputError:
            raise
        except OSError as e:
            raise InputError(f"{shown}: cannot create the lock file {lock} ({e.strerror}); {other}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as e:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (pid {int(os.pread(fd, 32, 0).split()[0])})"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise InputError(f"{shown}: another tokexport run{holder} is writing this output right now; "
                                 f"wait for it to finish or {other}") from None
            raise InputError(f"{shown}: cannot lock {lock} ({e.strerror}); {other}") from None
        try:
            st = os.stat(lock, follow_symlinks=False)
        except OSError:
            st = None
        fst = os.fstat(fd)
        if st is not None and (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino):
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, _lock_record(), 0)
            return lock, fd
        os.close(fd)  # the holder unlinked it between our open and flock: take the new one
    raise InputError(f"{shown}: could not take the lock {lock}; try again")


def _unlock(lock: Path, fd: int) -> None:
    try:
        st = os.stat(lock, follow_symlinks=False)
        fst = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino):
            os.unlink(lock)  # while still holding it: a waiter then finds the inode changed and retries
    except OSError:
        pass
    finally:
        os.close(fd)


def claimed(out_dir: str | os.PathLike) -> Claim | None:
    """The claim this process holds on ``out_dir``, if any."""
    return _CLAIMS.get(os.path.abspath(os.fspath(out_dir)))


@contextlib.contextmanager
def claim_out_dir(out: str | os.PathLike, force: bool, *, kind: str, protect: Iterable[str | os.PathLike] = (),
                  what: str = "--out", recognise: Callable[[Path], bool] | None = None, wait: bool = False,
                  recheck: bool = True, keep_parents: bool = False) -> Iterator[Claim]:
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
        lock, fd = _lock(path, shown, what, wait)
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
        _unlock(lock, fd)
        if not keep_parents and not os.path.lexists(path):
            _remove_created(created)


@contextlib.contextmanager
def staged_dir(out_dir: str | os.PathLike, *, force: bool | None = None, kind: str = "output",
               protect: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
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
        force = _CHECKED.get(os.path.abspath(os.fspath(out_dir)), False)
    with claim_out_dir(out_dir, force, kind=kind, protect=protect) as claim, claim.staged() as tmp:
        yield tmp


# ------------------------------------------------------------------------------------ single files


def check_out_file(out: str | os.PathLike, force: bool, *, protect: Iterable[str | os.PathLike] = (),
                   what: str = "--out", recognise: Callable[[Path], bool] | None = None,
                   kind: str = "file", recognised_as: str = "a file tokexport wrote") -> Path:
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
        raise InputError(f"{shown}: the path goes through a symbolic link ({parent} resolves to {_real(parent)}); "
                         "give the real path")
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
            raise InputError(f"{shown}: already exists; pass --force to replace it")
        if recognise is not None and not recognise(absolute):
            raise InputError(f"{shown}: exists and is not {recognised_as}; refusing to replace it even with "
                             f"--force ({other})")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{shown}: its folder {parent} is not writable; {other}")
    return absolute


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
