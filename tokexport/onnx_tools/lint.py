"""``polygraphy check lint`` (ONNX checker, ONNX Runtime per-node run, graph surgeon checks) as findings
of a target check: in this process through polygraphy's own entry point, else in a subprocess; an extra
that reports why it did not run when polygraphy or onnx-graphsurgeon is missing."""

from __future__ import annotations

from pathlib import Path

from .findings import Finding
from .graph_files import PathLike


def _polygraphy_exe() -> str | None:
    import importlib.util
    import shutil
    import sys

    if importlib.util.find_spec("polygraphy") is None:
        return None
    local = Path(sys.executable).parent / "polygraphy"
    return str(local) if local.is_file() else shutil.which("polygraphy")


def _lint_in_process(path: PathLike, out: Path) -> bool:
    """``polygraphy check lint PATH -o OUT`` through polygraphy's own CLI entry point in this process (the
    subprocess spends ~2 s importing what is imported here already); True when it wrote ``out``."""
    import contextlib
    import io
    import warnings

    try:
        from polygraphy.logger import G_LOGGER
        from polygraphy.tools._main import main
    except Exception:  # noqa: BLE001 - any import problem: use the subprocess
        return False
    severity = G_LOGGER.module_severity
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            main(["check", "lint", str(path), "-o", str(out)])
    except (Exception, SystemExit):  # noqa: BLE001 - polygraphy failed in-process: the subprocess decides
        return False
    finally:
        G_LOGGER.module_severity = severity
    return out.is_file()


def polygraphy_lint(path: PathLike) -> tuple[dict, list[Finding]]:
    """Run ``polygraphy check lint`` (ONNX checker, ONNX Runtime per-node run, graph surgeon checks).

    Returns (summary for the report, findings). When polygraphy or its onnx_graphsurgeon dependency is
    missing the summary says why and there are no findings: lint is an extra, the static checks are not.
    """
    import importlib.util
    import subprocess
    import tempfile

    exe = _polygraphy_exe()
    if exe is None:
        return {"ran": False, "reason": "polygraphy is not installed"}, []
    if importlib.util.find_spec("onnx_graphsurgeon") is None:
        return {
            "ran": False,
            "reason": "polygraphy check lint needs onnx-graphsurgeon (pip install onnx-graphsurgeon)",
        }, []
    with tempfile.TemporaryDirectory(prefix="tokexport-lint-") as tmp:
        out = Path(tmp) / "lint.json"
        if not _lint_in_process(path, out):  # a fresh interpreter when polygraphy's own entry point fails here
            try:
                res = subprocess.run(
                    [exe, "check", "lint", str(path), "-o", str(out)],
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=900,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                return {"ran": False, "reason": f"polygraphy check lint could not run: {exc}"}, []
            if not out.is_file():
                tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
                return {"ran": False, "reason": f"polygraphy check lint wrote no report: {tail[0]}"}, []
        import json

        report = json.loads(out.read_text())
    findings = []
    for e in report.get("lint_entries", []):
        level = "error" if e.get("level") == "exception" else "warning" if e.get("level") == "warning" else None
        if level is None:
            continue
        nodes = e.get("nodes") or [None]
        for n in nodes:
            findings.append(
                Finding(
                    level,
                    f"LINT_{str(e.get('source', 'polygraphy')).upper()}",
                    n,
                    str(e.get("message", "")).strip().splitlines()[0][:400],
                    "see `polygraphy check lint` output for the node",
                )
            )
    summary = report.get("summary", {})
    return {
        "ran": True,
        "tool": "polygraphy check lint",
        "passing_nodes": len(summary.get("passing", [])),
        "failing_nodes": list(summary.get("failing", [])),
        "entries": len(report.get("lint_entries", [])),
    }, findings
