"""TensorRT engines where TensorRT and a GPU are available, otherwise a deploy bundle to run on
the Jetson: ONNX files (with external data), polygraphy-format inputs and expected outputs,
trtexec build lines, a polygraphy verify script and a manifest with hashes.

TensorRT is optional (not installable on the development machines); nothing here imports it at
module import time.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from collections import OrderedDict
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np

import tokexport
from tokexport import onnx_tools
from tokexport.errors import EnvironmentProblem, InputError

PathLike = Union[str, os.PathLike]

DEFAULT_ATOL = 1e-3
DEFAULT_RTOL = 1e-3
REFERENCE_RUNNER = "tokexport-reference"  # runner name stored in expected_<name>.json

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def _gpu_visible_nvidia_smi() -> bool:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return False
    try:
        res = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return res.returncode == 0 and "GPU" in res.stdout


def _gpu_visible_tensorrt(trt) -> bool:
    # Jetson (L4T) has no nvidia-smi on older JetPacks: ask TensorRT's builder instead. Creating a
    # builder needs a working CUDA device; it returns None / raises without one.
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception:
        return False
    return builder is not None


def tensorrt_available() -> bool:
    """True when `import tensorrt` works AND a CUDA GPU is visible. Never raises."""
    try:
        if importlib.util.find_spec("tensorrt") is None:
            return False
        trt = importlib.import_module("tensorrt")
    except Exception:
        return False
    try:
        return _gpu_visible_nvidia_smi() or _gpu_visible_tensorrt(trt)
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# trtexec
# --------------------------------------------------------------------------------------------


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


def trtexec_command(
    onnx_name: str,
    engine_name: str,
    input_shapes: Mapping[str, Sequence[int | str]],
    fp16: bool = True,
    batch: tuple[int, int, int] = (1, 1, 1),
    trtexec: str = "trtexec",
) -> str:
    """One plain shell line that builds `engine_name` from `onnx_name` with trtexec.

    `input_shapes` are the model's declared input shapes. All-static shapes need no shape flags.
    If axis 0 (batch) of an input is symbolic (a str), --minShapes/--optShapes/--maxShapes are
    emitted with `batch` = (min, opt, max) for that axis. A symbolic non-batch dim is an
    InputError (token counts must be static). `trtexec` is written unquoted (it may be "$TRTEXEC").
    """
    bmin, bopt, bmax = (int(b) for b in batch)
    if not (1 <= bmin <= bopt <= bmax):
        raise InputError(f"batch range {batch!r} must satisfy 1 <= min <= opt <= max.")
    parts = [trtexec, shlex.quote(f"--onnx={onnx_name}"), shlex.quote(f"--saveEngine={engine_name}")]
    mins, opts, maxs = [], [], []
    dynamic = False
    for name, shape in input_shapes.items():
        shape = list(shape)
        for ax, d in enumerate(shape):
            if not isinstance(d, (int, np.integer)) and ax > 0:
                raise InputError(
                    f"input {name!r} has symbolic dim {d!r} at axis {ax}; only the batch axis may be dynamic "
                    "(re-export with static token counts)."
                )
        rest = [int(d) for d in shape[1:]]
        if shape and not isinstance(shape[0], (int, np.integer)):
            dynamic = True
            mins.append(f"{name}:{_dims([bmin] + rest)}")
            opts.append(f"{name}:{_dims([bopt] + rest)}")
            maxs.append(f"{name}:{_dims([bmax] + rest)}")
        else:
            fixed = _dims(shape)
            mins.append(f"{name}:{fixed}")
            opts.append(f"{name}:{fixed}")
            maxs.append(f"{name}:{fixed}")
    if dynamic:
        parts += [
            shlex.quote("--minShapes=" + ",".join(mins)),
            shlex.quote("--optShapes=" + ",".join(opts)),
            shlex.quote("--maxShapes=" + ",".join(maxs)),
        ]
    if fp16:
        parts.append("--fp16")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------
# Bundle
# --------------------------------------------------------------------------------------------


def _tol_for(tolerances: Mapping, name: str) -> tuple[float, float]:
    tolerances = tolerances or {}
    per = tolerances.get(name, {}) if isinstance(tolerances.get(name), Mapping) else {}
    atol = per.get("atol", tolerances.get("atol", DEFAULT_ATOL))
    rtol = per.get("rtol", tolerances.get("rtol", DEFAULT_RTOL))
    try:
        atol, rtol = float(atol), float(rtol)
    except (TypeError, ValueError):
        raise InputError(f"tolerances for {name!r} must be numbers (got atol={atol!r}, rtol={rtol!r}).") from None
    if atol < 0 or rtol < 0:
        raise InputError(f"tolerances for {name!r} must be >= 0 (got atol={atol}, rtol={rtol}).")
    return atol, rtol


def _copy_onnx(src: Path, dest_dir: Path) -> list[Path]:
    """Copy the graph and its external data files (same relative locations) into dest_dir."""
    files = onnx_tools.onnx_files(src)
    dest_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for i, f in enumerate(files):
        rel = Path(src.name) if i == 0 else f.relative_to(src.parent)
        target = dest_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, target)
        out.append(target)
    return out


def _file_entry(path: Path, root: Path) -> dict:
    return {"path": path.relative_to(root).as_posix(), "sha256": onnx_tools.sha256_file(path), "bytes": path.stat().st_size}


def _shape_ok(declared, actual) -> bool:
    if declared is None:
        return True
    if len(declared) != len(actual):
        return False
    return all(not isinstance(d, int) or d == a for d, a in zip(declared, actual))


_BUILD_HEADER = """#!/usr/bin/env bash
# Build TensorRT engines from the bundled ONNX files (run on the Jetson).
# trtexec ships with TensorRT; on JetPack it lives in /usr/src/tensorrt/bin (not on PATH).
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$TRTEXEC" ]; then
  echo "trtexec not found (set TRTEXEC=/path/to/trtexec; it ships with TensorRT in JetPack)" >&2
  exit 5
fi
echo "target TensorRT {target} (JetPack {jetpack}); found: $("$TRTEXEC" 2>&1 | grep -m1 -o 'TensorRT.v[0-9]*' || true)"
mkdir -p engines
"""

_VERIFY_HEADER = """#!/usr/bin/env bash
# Compare TensorRT outputs on the device with the reference outputs recorded at export time.
# Uses the engine from build_engines.sh when present, else lets polygraphy build one from the ONNX.
# Exit status: 0 all models match, 1 some mismatch, 5 polygraphy missing.
set -uo pipefail
cd "$(dirname "$0")"
POLYGRAPHY="${POLYGRAPHY:-polygraphy}"
if ! command -v "$POLYGRAPHY" >/dev/null 2>&1; then
  echo "polygraphy not found: python3 -m pip install polygraphy (TensorRT's Python bindings come with JetPack)" >&2
  exit 5
fi
failed=()
"""


def write_bundle(
    dest_dir: PathLike,
    onnx_paths: Mapping[str, PathLike],
    sample_inputs: Mapping[str, np.ndarray],
    expected_outputs: Mapping[str, Mapping[str, np.ndarray]],
    target: str,
    tolerances: Mapping | None = None,
    fp16: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a self-contained deploy bundle to `dest_dir` and return its path.

    onnx_paths: {model name: graph file} (names become file names: [A-Za-z0-9_.-]).
    sample_inputs: one feed dict {input name: array} shared by all models.
    expected_outputs: {model name: {output name: array}} (the reference, e.g. ONNX Runtime/PyTorch).
    tolerances: {"atol": a, "rtol": r} and/or per model {name: {"atol": a, "rtol": r}}.

    Layout: models/<name>/<graph>.onnx (+ its .data files), inputs.json (polygraphy: JSON list of
    feed dicts), expected_<name>.json (polygraphy RunResults), build_engines.sh, verify_on_device.sh,
    manifest.json, README.md.
    """
    from polygraphy.comparator import RunResults
    from polygraphy.json import save_json

    tname, spec = onnx_tools._target(target)
    dest = Path(dest_dir)
    if dest.exists() and not dest.is_dir():
        raise InputError(f"{dest}: exists and is not a folder; choose another bundle path.")
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise InputError(f"{dest}: folder is not empty; choose a new path or pass overwrite=True.")
    if not onnx_paths:
        raise InputError("write_bundle: no ONNX models given.")
    for name in onnx_paths:
        if not _NAME_RE.match(name):
            raise InputError(f"model name {name!r} is not usable as a file name; use letters, digits, _ . -")
    if set(expected_outputs) != set(onnx_paths):
        raise InputError(
            f"expected_outputs has models {sorted(expected_outputs)} but onnx_paths has {sorted(onnx_paths)}; "
            "give reference outputs for every model."
        )

    feed = OrderedDict((k, np.asarray(v)) for k, v in sample_inputs.items())

    # Validate everything before writing anything.
    infos = {}
    for name, src in onnx_paths.items():
        info = onnx_tools.inspect_model(src)
        in_names = [i["name"] for i in info["inputs"]]
        missing = [n for n in in_names if n not in feed]
        if missing:
            raise InputError(f"{src}: sample_inputs lacks model input(s) {missing}; add them to sample_inputs.")
        for i in info["inputs"]:
            if not _shape_ok(i["shape"], feed[i["name"]].shape):
                raise InputError(
                    f"{src}: sample input {i['name']!r} has shape {list(feed[i['name']].shape)}, "
                    f"model declares {i['shape']}; pass inputs of the exported shape."
                )
        out_names = {o["name"] for o in info["outputs"]}
        extra = [n for n in expected_outputs[name] if n not in out_names]
        if extra or not expected_outputs[name]:
            raise InputError(
                f"{src}: expected outputs {extra or '(none)'} do not match the model outputs {sorted(out_names)}."
            )
        infos[name] = info
    tols = {name: _tol_for(tolerances or {}, name) for name in onnx_paths}

    from polygraphy.logger import G_LOGGER

    # polygraphy logs "[I] Saving ..." to stdout for every file; keep library calls quiet.
    with G_LOGGER.verbosity(G_LOGGER.WARNING):
        return _write_bundle_files(dest, onnx_paths, feed, expected_outputs, tname, spec, infos, tols, fp16,
                                   RunResults, save_json)


def _write_bundle_files(dest, onnx_paths, feed, expected_outputs, tname, spec, infos, tols, fp16,
                        RunResults, save_json) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    save_json([feed], dest / "inputs.json", description="input data")

    build_lines = [_BUILD_HEADER.format(target=tname, jetpack=spec["jetpack"])]
    verify_lines = [_VERIFY_HEADER]
    models_manifest = {}
    for name, src in onnx_paths.items():
        src = Path(src)
        info = infos[name]
        copied = _copy_onnx(src, dest / "models" / name)
        graph_rel = copied[0].relative_to(dest).as_posix()

        in_names = [i["name"] for i in info["inputs"]]
        if set(in_names) == set(feed):
            inputs_file = "inputs.json"
        else:  # TensorRT runners reject feed dicts with extra names
            inputs_file = f"inputs_{name}.json"
            save_json([OrderedDict((n, feed[n]) for n in in_names)], dest / inputs_file, description="input data")

        expected_file = f"expected_{name}.json"
        results = RunResults()
        results.add([OrderedDict((k, np.asarray(v)) for k, v in expected_outputs[name].items())],
                    runner_name=REFERENCE_RUNNER)
        results.save(str(dest / expected_file))

        engine_rel = f"engines/{name}.engine"
        build_lines.append(f'echo "== {name}"')
        build_lines.append(
            trtexec_command(graph_rel, engine_rel, {i["name"]: i["shape"] for i in info["inputs"]},
                            fp16=fp16, trtexec='"$TRTEXEC"')
        )

        atol, rtol = tols[name]
        q = shlex.quote
        common = f"--trt --load-inputs {q(inputs_file)} --load-outputs {q(expected_file)} --atol {atol:g} --rtol {rtol:g}"
        verify_lines += [
            f'echo "== {name}"',
            f"if [ -f {q(engine_rel)} ]; then",
            f'  "$POLYGRAPHY" run {q(engine_rel)} --model-type engine {common} || failed+=({q(name)})',
            "else",
            f'  "$POLYGRAPHY" run {q(graph_rel)} {common}{" --fp16" if fp16 else ""} || failed+=({q(name)})',
            "fi",
        ]

        models_manifest[name] = {
            "onnx": graph_rel,
            "sha256_onnx": onnx_tools.sha256_onnx(copied[0]),
            "files": [_file_entry(p, dest) for p in copied],
            "file_bytes": info["file_bytes"],
            "inputs": info["inputs"],
            "outputs": info["outputs"],
            "opset": info["opset"],
            "inputs_file": inputs_file,
            "expected_file": expected_file,
            "engine": engine_rel,
            "tolerances": {"atol": atol, "rtol": rtol},
            "trt_findings": [f.to_dict() for f in onnx_tools.trt_check(copied[0], tname)],
        }

    verify_lines += [
        'if [ ${#failed[@]} -ne 0 ]; then',
        '  echo "MISMATCH: ${failed[*]}" >&2',
        "  exit 1",
        "fi",
        'echo "all models match the reference"',
    ]
    for fname, lines in (("build_engines.sh", build_lines), ("verify_on_device.sh", verify_lines)):
        p = dest / fname
        p.write_text("\n".join(lines) + "\n")
        p.chmod(0o755)

    (dest / "README.md").write_text(_readme(tname, spec, list(onnx_paths), fp16, tols))

    manifest = {
        "tokexport_version": tokexport.__version__,
        "target_tensorrt": tname,
        "jetpack": spec["jetpack"],
        "recommended_opset": spec["recommended_opset"],
        "fp16": fp16,
        "tolerances": {n: {"atol": a, "rtol": r} for n, (a, r) in tols.items()},
        "sample_inputs": {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in feed.items()},
        "models": models_manifest,
        "files": [
            _file_entry(p, dest)
            for p in sorted(dest.rglob("*"))
            if p.is_file() and p.name != "manifest.json" and "engines" not in p.relative_to(dest).parts
        ],
    }
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return dest


def _readme(tname: str, spec: dict, names: list[str], fp16: bool, tols: dict) -> str:
    tol_lines = "\n".join(f"- `{n}`: atol {a:g}, rtol {r:g}" for n, (a, r) in tols.items())
    return f"""# tokexport deploy bundle

Target: TensorRT {tname} (JetPack {spec['jetpack']}). Models: {', '.join(f'`{n}`' for n in names)}.
Built with `tokexport` {tokexport.__version__}; file hashes are in `manifest.json`.

## On the Jetson

1. Copy this whole folder (the `.onnx.data` files next to each graph are required).
2. Check the copy: `sha256sum` of each file against `manifest.json` (`files`).
3. Build engines: `./build_engines.sh` (uses `trtexec`; set `TRTEXEC=/usr/src/tensorrt/bin/trtexec`
   if it is not on PATH). Engines land in `engines/`{' (FP16)' if fp16 else ''}. Engines are specific
   to the device and TensorRT version: build them on the target, do not copy them between devices.
4. Verify: `python3 -m pip install polygraphy` once, then `./verify_on_device.sh`. It runs
   `polygraphy run ... --trt --load-inputs <inputs> --load-outputs expected_<name>.json` for every
   model and exits non-zero if any output differs beyond tolerance.

Tolerances (polygraphy elementwise check: an element fails only if it exceeds both atol and rtol):
{tol_lines}

`inputs.json` is polygraphy's JSON list of feed dicts; `expected_<name>.json` is a polygraphy
`RunResults` (runner `{REFERENCE_RUNNER}`). Read them with `polygraphy.json.load_json`.
"""


# --------------------------------------------------------------------------------------------
# Engine build (TensorRT Python API)
# --------------------------------------------------------------------------------------------


def build_engine(onnx_path: PathLike, engine_path: PathLike, fp16: bool = True) -> Path:
    """Build a serialized TensorRT engine with the tensorrt Python API.

    EnvironmentProblem when TensorRT or a GPU is missing; InputError for a bad ONNX file or a
    graph TensorRT cannot parse.
    """
    if not tensorrt_available():
        raise EnvironmentProblem(
            "TensorRT is not installed or no NVIDIA GPU is visible; install the `tensorrt` extra on a "
            "machine with an NVIDIA GPU, or run the deploy bundle's build_engines.sh on the device."
        )
    import tensorrt as trt  # noqa: PLC0415

    src = Path(onnx_path)
    onnx_tools.onnx_files(src)  # InputError if the graph or its external data is missing
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt, "NetworkDefinitionCreationFlag") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # parse_from_file resolves external data relative to the graph's folder.
    if not parser.parse_from_file(str(src)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise InputError(f"{src}: TensorRT could not parse the ONNX graph: {errs}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(d < 0 for d in network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for t in dynamic:
            shape = list(t.shape)
            if any(d < 0 for d in shape[1:]):
                raise InputError(f"{src}: input {t.name!r} has dynamic non-batch dims {shape}; token counts must be static.")
            one = [1] + shape[1:]
            profile.set_shape(t.name, one, one, one)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InputError(f"{src}: TensorRT failed to build an engine (see the TensorRT log above).")
    out = Path(engine_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bytes(serialized))
    return out
