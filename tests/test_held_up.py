"""What the probe found to hold up, kept: pickled weights are never unpickled, `auto_map` remote code is
never run, re-exports are byte-identical, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
from pathlib import Path

import cli_runner
import yaml
from conftest import REPO
from test_cli_bad_input import recipe

from tokexport.tasks.run import HOLD_ENV


class _Evil:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):  # unpickling this runs a shell command
        return (os.system, (f"touch {self.path}",))


def _cli(*args, cwd=None):
    return cli_runner.run_cli(*args, cwd=cwd or REPO, env={"TRANSFORMERS_OFFLINE": "1"}, timeout=900)


def _copy_model(src: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    for f in src.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return dest


def test_pickled_weights_are_never_unpickled(tiny_models, tmp_path):
    model = _copy_model(tiny_models["vit"], tmp_path / "m")
    (model / "model.safetensors").unlink()
    sentinel = tmp_path / "pwned"
    with open(model / "pytorch_model.bin", "wb") as f:
        pickle.dump({"vit.embeddings.cls_token": _Evil(str(sentinel))}, f)
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe(model)))
    res = _cli("convert", str(p), "--out", str(tmp_path / "out"))
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert not sentinel.exists(), "a pickle in the checkpoint was executed"
    assert not (tmp_path / "out").exists()


def test_auto_map_remote_code_is_never_run(tiny_models, tmp_path):
    model = _copy_model(tiny_models["vit"], tmp_path / "m")
    sentinel = tmp_path / "pwned"
    (model / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(sentinel)!r}).touch()\nfrom transformers import ViTModel as EvilModel\n"
    )
    cfg = json.loads((model / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    (model / "config.json").write_text(json.dumps(cfg))
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe(model)))
    res = _cli("convert", str(p), "--out", str(tmp_path / "out"))
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    assert not sentinel.exists(), "remote code named by auto_map was run"


def test_reexports_are_byte_identical(tiny_models, tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe(tiny_models["dinov2"], **{"reduction.method": "zero-tprune"})))
    shas = []
    for name in ("a", "b"):
        res = _cli("convert", str(p), "--out", str(tmp_path / name))
        assert res.returncode == 0, res.stderr[-2000:]
        art = json.loads((tmp_path / name / "report.json").read_text())["artifacts"]
        shas.append((art["onnx_sha256"], art["baseline_onnx_sha256"]))
    assert shas[0] == shas[1]
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()


def test_ctrl_c_leaves_nothing_behind(tiny_models, tmp_path):
    """Ctrl-C at a known stage: the run holds once its graphs are in the staging directory
    ($TOKEXPORT_TEST_HOLD_AT, tokexport.tasks.run.hold_for_tests), the test sees the staged files and
    sends SIGINT; the output, the staging directory and the lock are all gone afterwards."""
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(recipe(tiny_models["dinov2"])))
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", HOLD_ENV: "exported"}
    # a user's Ctrl-C reaches a process whose SIGINT is at its default; a test suite started in the background
    # of a non-interactive shell (`pytest &`) inherits SIGINT ignored, and so would the run: reset it
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokexport", "convert", str(p), "--out", str(out)],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        seen = _wait_for_line(proc, "tokexport: holding at exported")
        staged = [q for q in tmp_path.iterdir() if q.name.startswith(".out.tmp-")]
        assert staged, seen
        assert list(staged[0].rglob("model.onnx")), sorted(str(f) for f in staged[0].rglob("*"))  # mid-run
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, None), err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    assert not out.exists()
    assert sorted(q.name for q in tmp_path.iterdir()) == ["r.yaml"]  # no output, no staging dir, no lock


def _wait_for_line(proc: subprocess.Popen, marker: str) -> str:
    """stderr of ``proc`` up to the line ``marker`` (the run holds there until its stdin gets a line).
    A run that never gets there is killed after 15 minutes (a hang is a failure, not a stuck suite)."""
    seen = []
    watchdog = threading.Timer(900, proc.kill)
    watchdog.start()
    try:
        for line in proc.stderr:
            seen.append(line)
            if line.strip() == marker:
                return "".join(seen)
    finally:
        watchdog.cancel()
    proc.wait(timeout=60)
    raise AssertionError(f"the run ended (exit {proc.returncode}) without reaching {marker!r}: {''.join(seen)[-3000:]}")
