"""Sentinel trees: prove that a command changed nothing outside the output it was given.

``snapshot(root)`` hashes every file below ``root`` (path, mode, size, sha256 of the content, symlink
targets); ``assert_unchanged(before, root, allow=...)`` compares a later snapshot with it, ignoring only
the paths the command was told to write."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple]:
    root = Path(root)
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", p.stat().st_mode & 0o777, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def make_tree(root: Path) -> Path:
    """A small tree of user files (text, nested, a symlink) to stand beside an output."""
    root = Path(root)
    (root / "docs" / "nested").mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("my notes\n")
    (root / "docs" / "paper.md").write_text("# draft\n")
    (root / "docs" / "nested" / "data.bin").write_bytes(bytes(range(256)))
    if not (root / "link-to-notes").exists():
        (root / "link-to-notes").symlink_to("notes.txt")
    return root


def assert_unchanged(before: dict[str, tuple], root: Path, allow: tuple[str, ...] = ()) -> None:
    """Every path of ``before`` is still there, unchanged; new paths only under ``allow`` prefixes."""
    after = snapshot(root)

    def allowed(rel: str) -> bool:
        return any(rel == a or rel.startswith(a.rstrip("/") + "/") for a in allow)

    changed = sorted(k for k in before if not allowed(k) and after.get(k) != before[k])
    added = sorted(k for k in after if k not in before and not allowed(k))
    assert not changed and not added, f"changed/removed outside the output: {changed[:10]}; added: {added[:10]}"
