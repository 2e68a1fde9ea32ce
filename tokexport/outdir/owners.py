"""Owner records and stale leftovers: every temporary container next to an output holds
``.tokexport-owner`` (pid, host, process start), so the next run into that output removes the containers
of dead runs (:func:`clean_stale`) and leaves those of running ones, or of unknown owners, alone."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path

from .markers import OLD_TAG, TMP_TAG, read_json_nofollow

OWNER = ".tokexport-owner"

log = logging.getLogger("tokexport")


def _proc_start(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
        return data[data.rindex(")") + 2 :].split()[19]
    except (OSError, ValueError, IndexError):
        return None


def write_owner(container: Path, output: str) -> None:
    rec = {
        "tool": "tokexport",
        "output": output,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": _proc_start(os.getpid()),
        "created": time.time(),
    }
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
        rec = read_json_nofollow(Path(e.path) / OWNER)
        if rec is None:
            log.warning(
                "%s: left next to the output by an earlier run but it carries no tokexport owner record; "
                "not deleting it (remove it yourself if it is not needed)",
                e.path,
            )
            continue
        if rec.get("output") != name:
            continue  # the temporary sibling of another output whose name starts like this one
        if _alive(rec):
            log.warning("%s: belongs to tokexport process %s, still running; leaving it", e.path, rec.get("pid"))
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        if os.path.lexists(e.path):
            log.warning(
                "%s: left behind by a dead tokexport run (pid %s) and could not be removed", e.path, rec.get("pid")
            )
        else:
            log.debug("removed %s, left behind by a dead tokexport run (pid %s)", e.path, rec.get("pid"))
            removed.append(Path(e.path))
    return removed
