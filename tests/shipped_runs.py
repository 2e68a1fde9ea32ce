"""Shipped recipes converted once per test run, as a user runs them: ``tokexport convert NAME --out ROOT/NAME``.

conftest's ``shipped(NAME)`` fixture reads them through :func:`convert_shipped_once`; .ci/run converts the
default recipe with the same function BEFORE the suite, on a quiet machine, gates it with ``tokexport check``,
and hands the folder to the suite (``$TOKEXPORT_TEST_SHIPPED_ROOT``), whose tests then read that conversion
instead of converting the recipe a second time:

    python tests/shipped_runs.py ROOT NAME [NAME ...]

exits with the first non-zero exit code of a conversion (3 parity, 4 accuracy, ...), else 0.

No pytest here: the script runs outside a test session.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOT_ENV = "TOKEXPORT_TEST_SHIPPED_ROOT"


@dataclass
class Conversion:
    """`tokexport convert NAME --out OUT` of a shipped recipe, as a user runs it."""

    name: str
    out_dir: Path
    exit_code: int
    stdout: str
    stderr: str

    @functools.cached_property
    def report(self) -> dict:
        path = self.out_dir / "report.json"
        assert path.is_file(), f"{self.name}: no report.json (exit {self.exit_code}): {self.stderr[-3000:]}"
        return json.loads(path.read_text())


def convert_shipped_once(name: str, root: Path) -> Conversion:
    """`tokexport convert NAME --out ROOT/NAME`, run once per ROOT whichever process asks first: the others
    wait on the lock and read the recorded result (one conversion even where two workers read it)."""
    root.mkdir(parents=True, exist_ok=True)
    out, record = root / name, root / f"{name}.conversion.json"
    with open(root / f"{name}.testlock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not record.is_file():
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
            res = subprocess.run(
                [sys.executable, "-m", "tokexport", "convert", name, "--out", str(out), "--force"],
                capture_output=True,
                text=True,
                cwd=REPO,
                env=env,
                timeout=3600,
                check=False,
            )
            tmp = record.with_suffix(".part")
            tmp.write_text(json.dumps({"exit_code": res.returncode, "stdout": res.stdout, "stderr": res.stderr}))
            tmp.replace(record)
        done = json.loads(record.read_text())
    return Conversion(name, out, done["exit_code"], done["stdout"], done["stderr"])


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python tests/shipped_runs.py ROOT NAME [NAME ...]", file=sys.stderr)
        return 2
    root, code = Path(argv[0]).resolve(), 0
    for name in argv[1:]:
        conv = convert_shipped_once(name, root)
        print(f"{name}: exit {conv.exit_code} -> {conv.out_dir}")
        if conv.exit_code:
            print(conv.stderr[-3000:], file=sys.stderr)
            code = code or conv.exit_code
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
