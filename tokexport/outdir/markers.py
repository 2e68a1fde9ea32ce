"""How tokexport recognises its own outputs: the marker every output directory carries
(``.tokexport-output``: tool, version, kind, created), the marker inside a bundle's .tar.gz, and the tags
of the temporary siblings an output is staged in (``.NAME.tmp-XXXX``) and moved aside to (``.NAME.old-XXXX``)."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

MARKER = ".tokexport-output"
TMP_TAG = ".tmp-"
OLD_TAG = ".old-"


def marker_record(kind: str) -> dict:
    from .. import __version__

    return {
        "tool": "tokexport",
        "version": __version__,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_marker(directory: Path, kind: str) -> None:
    (Path(directory) / MARKER).write_text(json.dumps(marker_record(kind), indent=2) + "\n")


def read_json_nofollow(path: Path) -> dict | None:
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
    return read_json_nofollow(Path(directory) / MARKER)


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
