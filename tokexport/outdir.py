"""Output directories: never overwrite silently, never leave a half-written one behind.

Every command that writes a directory (convert, sweep, search) fills a private temporary sibling and
renames it into place only when everything in it is complete; on any error (or Ctrl-C) the sibling is
removed and an existing output is left as it was."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError


def check_out_dir(out: Path, force: bool) -> None:
    """InputError (one line) when ``out`` exists and ``force`` is off, or exists and is not a directory."""
    if out.exists() and not force:
        raise InputError(f"{out}: output directory already exists; pass --force to replace it or choose another --out")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")


@contextlib.contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``out_dir``; on a clean exit replace ``out_dir`` with it."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the output is an ordinary directory
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
