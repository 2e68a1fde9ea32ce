"""The exclusive lock of an output, ``.NAME.lock`` next to it: ``flock`` held for the whole run (released
by the kernel when a process dies), the file created only if absent and holding ``PID tokexport-lock``; a
file of that name that is not a tokexport lock, or a symbolic link, is refused and left alone."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
from pathlib import Path

from ..errors import InputError

LOCK_SUFFIX = ".lock"
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
            raise InputError(
                f"{shown}: its lock file {lock} is a symbolic link, not a tokexport lock; remove it yourself or {other}"
            ) from None
        raise InputError(f"{shown}: cannot open the lock file {lock} ({e.strerror}); {other}") from None
    try:
        st = os.fstat(fd)
        head = os.pread(fd, 256, 0) if stat.S_ISREG(st.st_mode) and st.st_size <= 256 else b""
    except OSError:
        head = b""
        st = None
    if st is None or not stat.S_ISREG(st.st_mode) or not _LOCK_RECORD.match(head):
        os.close(fd)
        raise InputError(
            f"{shown}: {lock} exists and is not a tokexport lock file (a file of yours?); it is left "
            f"as it is: move it away or {other}"
        )
    return fd


def take_lock(path: Path, shown: str, what: str, wait: bool) -> tuple[Path, int]:
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
                raise InputError(
                    f"{shown}: another tokexport run{holder} is writing this output right now; "
                    f"wait for it to finish or {other}"
                ) from None
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


def release_lock(lock: Path, fd: int) -> None:
    try:
        st = os.stat(lock, follow_symlinks=False)
        fst = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino):
            os.unlink(lock)  # while still holding it: a waiter then finds the inode changed and retries
    except OSError:
        pass
    finally:
        os.close(fd)
