"""``trim.keep_file``: keep exactly a vocabulary chosen elsewhere (another tool, or the
``keep_ids.txt`` a previous run wrote), plus what the tokenizer needs to stay valid.

Format: one entry per line, UTF-8. A file whose every non-empty line is a decimal number lists
original ids; any other file lists token strings exactly as ``tokenizer.json`` spells them (no
stripping: SentencePiece and Gemma have whitespace tokens; only the line break ends an entry, so a
token containing a line break can only be given by id). Empty lines are skipped, duplicates merged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..files import read_bytes, stat_regular

FIELD = "trim.keep_file"
HINT = "give one token string (as tokenizer.json spells it) or one original id per line, e.g. keep_ids.txt of a previous run"


@dataclass
class KeepList:
    path: Path
    format: str  # "ids" | "tokens"
    entries: int  # non-empty lines
    ids: list[int]  # distinct original ids, in file order


def resolve(name: str, base_dir: Path) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


def check_keep_file(p: Path, read: bool = True) -> bytes:
    """The bytes of the keep file ``p`` (``read=False``: only check it), or InputError naming the field:
    missing, not a regular file (a folder, a FIFO, a device), larger than the limit (tokexport.files)."""
    if read:
        return read_bytes(p, "keep file", missing=f"does not exist; {HINT}", label=FIELD)
    stat_regular(p, "keep file", missing=f"does not exist; {HINT}", label=FIELD)
    return b""


def read_keep_file(name: str, base_dir: Path, lookup: dict[str, int], vocab_size: int) -> KeepList:
    """The ids of a keep file; InputError (one line naming the file and the fix) when the file is
    missing, a folder, too large, not UTF-8, empty, or names a token or id the tokenizer lacks."""
    p = resolve(name, base_dir)
    raw = check_keep_file(p)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{FIELD}: {p} is not UTF-8 text (byte {e.start}); save it as UTF-8 with {HINT[5:]}") from None
    text = text.removeprefix("\ufeff")
    lines = [(n, line.removesuffix("\r")) for n, line in enumerate(text.split("\n"), 1)]
    lines = [(n, line) for n, line in lines if line != ""]
    if not lines:
        raise InputError(f"{FIELD}: {p} lists no entries (empty file); {HINT}")
    ids: dict[int, None] = {}
    if all(line.strip().isascii() and line.strip().isdigit() for _, line in lines):
        for n, line in lines:
            i = int(line.strip())
            if i >= vocab_size:
                raise InputError(
                    f"{FIELD}: {p} line {n}: id {i} is outside the tokenizer's ids 0..{vocab_size - 1}; "
                    "list original ids of this model's tokenizer"
                )
            ids[i] = None
        return KeepList(p, "ids", len(lines), list(ids))
    for n, tok in lines:
        if tok not in lookup:
            raise InputError(
                f"{FIELD}: {p} line {n}: {tok!r} is not an entry of the tokenizer's vocabulary; list "
                "tokens exactly as tokenizer.json spells them (or original ids, one per line)"
            )
        ids[lookup[tok]] = None
    return KeepList(p, "tokens", len(lines), list(ids))


def write_keep_ids(path: Path, keep) -> None:
    """The keep list of a run: its sorted original ids, one per line (what trim.keep_file reads back)."""
    path.write_text("".join(f"{int(i)}\n" for i in keep), encoding="utf-8")
