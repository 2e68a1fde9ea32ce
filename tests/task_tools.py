"""Every tool accepts every task's output: the checks shared by the real-model tests of each task
(tests/test_real_model.py: ViT pruning and visual tokens; tests/test_vocab_real.py: vocab trim)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

from test_cli_bad_input import run_cli

from tokexport.stages.report_schema import validate_report


def assert_every_tool_accepts(out: Path, tmp: Path) -> None:
    """``out`` is a convert output directory. Its report conforms to the published schema; `check`
    against itself compares at least one accuracy and one speed figure and passes; a worse accuracy
    figure fails `check` (exit 6); `bundle --from` writes a bundle that verifies itself; `build` exits
    8 here (no TensorRT, no GPU) with one line."""
    rep = json.loads((out / "report.json").read_text())
    assert validate_report(rep) == [], validate_report(rep)
    res = run_cli("report", "validate", str(out / "report.json"))
    assert res.returncode == 0, res.stderr

    res = run_cli("check", str(out / "report.json"), "--baseline", str(out / "report.json"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    assert "accuracy." in res.stdout and "speedup.b" in res.stdout, res.stdout

    gated = [n for n, m in rep["accuracy"]["metrics"].items() if not m.get("info") and m.get("threshold")]
    assert gated, "the report gates nothing"
    name = gated[0]
    worse = copy.deepcopy(rep)
    m = worse["accuracy"]["metrics"][name]
    step = max(0.1, abs(m["reduced"]) * 0.5)
    m["reduced"] = m["reduced"] - step if m["better"] == "higher" else m["reduced"] + step
    m["delta"] = m["reduced"] - m["original"]
    (tmp / "worse.json").write_text(json.dumps(worse))
    res = run_cli("check", str(tmp / "worse.json"), "--baseline", str(out / "report.json"))
    assert res.returncode == 6 and f"accuracy.{name}" in res.stdout, res.stdout[-3000:] + res.stderr

    bundle = tmp / "bundle"
    res = run_cli("bundle", str(bundle), "--from", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    v = subprocess.run(
        [sys.executable, str(bundle / "verify_on_device.py")], capture_output=True, text=True, timeout=900, check=False
    )
    assert v.returncode == 0 and "PASS" in v.stdout, v.stdout[-2000:] + v.stderr[-2000:]

    res = run_cli("build", str(out))
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert res.returncode == 8 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
