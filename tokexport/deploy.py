"""Deploy bundles (``tokexport bundle``) and TensorRT engine builds (``tokexport build``).

A bundle is what goes onto the Jetson: the graph(s), sample inputs and the outputs ONNX Runtime gives
for them here, a trtexec script that builds the engine on the device, and ``verify_on_device.py``,
which checks every file's sha256, runs TensorRT when it imports (ONNX Runtime otherwise) and
compares with the expected outputs using tolerances suited to FP16 engines. The comparison is
:func:`compare_outputs` of ``tokexport/device/verify_on_device.py`` — a real module (linted, imported by the
tests), which every bundle carries as its script, so the device needs only numpy and a runtime.

TensorRT cannot be installed on the development machines (no GPU; its wheels come from NVIDIA's index):
nothing here imports it at module import time, and the engine path runs only where it is present.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import tarfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import tokexport
from tokexport import onnx_tools
from tokexport.device.verify_on_device import compare_outputs, format_row, parse_trtexec_log  # noqa: F401  (one copy, also the device's)
from tokexport.errors import InputError, TensorRTUnavailable, option
from tokexport.targets import Target
from tokexport.targets import resolve as resolve_target

# FP16 engine vs FP32 reference: an element agrees when |a - e| <= atol + rtol*|e|; `quantile` of the
# elements must agree, the median error must stay under median_atol, every sample's cosine above
# min_cosine, and logits' top-1 (and integer outputs, e.g. kept-token positions) agree on min_agreement.
DEFAULT_TOLERANCES = {
    "atol": 0.05,
    "rtol": 0.05,
    "quantile": 0.99,
    "median_atol": 0.01,
    "min_cosine": 0.999,
    "min_agreement": 0.99,
}
# the bundle's directory in messages: write_bundle's ``dest`` (the CLI's OUT_DIR argument)
DEST = option("dest", flag="OUT_DIR")

# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def tensorrt_problem() -> str | None:
    """Why TensorRT engines cannot be built here (one sentence), or None when they can. Never raises."""
    if importlib.util.find_spec("tensorrt") is None:
        return "the `tensorrt` Python package is not installed"
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            res = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False)
            if res.returncode == 0 and "GPU" in res.stdout:
                return None
        except (OSError, subprocess.SubprocessError):
            pass
    try:  # Jetsons have no nvidia-smi on older JetPacks: a TensorRT builder needs a working CUDA device
        import tensorrt as trt

        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception:  # noqa: BLE001 - any failure here means "no usable GPU"
        builder = None
    return None if builder is not None else "`tensorrt` imports but no NVIDIA GPU is visible"


def tensorrt_available() -> bool:
    """True when `import tensorrt` works AND a CUDA GPU is visible."""
    return tensorrt_problem() is None


def require_tensorrt() -> None:
    """TensorRTUnavailable (exit 8) with one line saying what is missing and where to build instead."""
    problem = tensorrt_problem()
    if problem:
        raise TensorRTUnavailable(
            f"cannot build TensorRT engines here: {problem}; write a bundle with "
            "`tokexport bundle` and run its build_engine.sh on the device"
        )


# --------------------------------------------------------------------------------------------
# trtexec
# --------------------------------------------------------------------------------------------


def trtexec_command(
    onnx_name: str,
    engine_name: str,
    input_shapes: Mapping[str, Sequence[int | str]],
    fp16: bool = True,
    batch: tuple[int, int, int] = (1, 1, 1),
    timing_cache: str | None = None,
    trtexec: str = "trtexec",
    strongly_typed: bool = False,
) -> str:
    """One shell line building ``engine_name`` from ``onnx_name`` with trtexec.

    ``strongly_typed``: ``--stronglyTyped`` and never ``--fp16`` (TensorRT 11 removed every precision flag:
    the engine takes the graph's precision; on 10.x it is how an fp16 graph builds as written).

    A symbolic axis 0 (batch) gets --minShapes/--optShapes/--maxShapes from ``batch`` = (min, opt, max);
    a symbolic non-batch dim is an InputError (token counts are static). ``trtexec`` is written
    unquoted (it may be "$TRTEXEC").
    """
    bmin, bopt, bmax = (int(b) for b in batch)
    if not 1 <= bmin <= bopt <= bmax:
        raise InputError(f"batch range {batch!r} must satisfy 1 <= min <= opt <= max")
    parts = [trtexec, shlex.quote(f"--onnx={onnx_name}"), shlex.quote(f"--saveEngine={engine_name}")]
    if timing_cache:
        parts.append(shlex.quote(f"--timingCacheFile={timing_cache}"))
    ranges: list[list[str]] = [[], [], []]
    dynamic = False
    for name, shape in input_shapes.items():
        shape = list(shape)
        for ax, d in enumerate(shape):
            if ax > 0 and not isinstance(d, (int, np.integer)):
                raise InputError(
                    f"input {name!r} has symbolic dim {d!r} at axis {ax}; only the batch axis may be "
                    "dynamic (re-export with static token counts)"
                )
        rest = "x".join(str(int(d)) for d in shape[1:])
        if shape and not isinstance(shape[0], (int, np.integer)):
            dynamic = True
            for i, b in enumerate((bmin, bopt, bmax)):
                ranges[i].append(f"{name}:{b}" + (f"x{rest}" if rest else ""))
        else:
            for r in ranges:
                r.append(f"{name}:" + "x".join(str(int(d)) for d in shape))
    if dynamic:
        parts += [shlex.quote(f"--{k}Shapes=" + ",".join(r)) for k, r in zip(("min", "opt", "max"), ranges)]
    if strongly_typed:
        parts.append("--stronglyTyped")
    elif fp16:
        parts.append("--fp16")
    return " ".join(parts)


def graph_precision(path: str | os.PathLike) -> str:
    """ "fp16" when the graph computes in float16 anywhere (a float16 weight, or a Cast to float16: what
    `export.precision: fp16` writes, with LayerNorm/Softmax kept in float32), else "fp32". External data
    is not read."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    half = onnx.TensorProto.FLOAT16
    if any(t.data_type == half for t in model.graph.initializer):
        return "fp16"
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == half for a in node.attribute):
            return "fp16"
    return "fp32"


def strongly_typed_build(tgt: Target, precision: str) -> bool:
    """Build strongly typed (precision from the graph, no --fp16): always on TensorRT >= 11, and for an
    fp16 graph on TensorRT 10 (weak typing is deprecated there since 10.12)."""
    major = int(str(tgt.tensorrt or "0").split(".")[0] or 0)
    return bool(tgt.strongly_typed or major >= 11 or (precision == "fp16" and major >= 10))


def _trt_major() -> int:
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


# --------------------------------------------------------------------------------------------
# Bundle
# --------------------------------------------------------------------------------------------

_BUILD_SCRIPT = """#!/usr/bin/env bash
# Build the TensorRT engine(s) of this bundle ON THE DEVICE: {label}.
# trtexec ships with TensorRT (JetPack: /usr/src/tensorrt/bin/trtexec). Engines are specific to the
# GPU and TensorRT version: build them where they run. timing.cache makes rebuilds fast.
# Exit: 0 built, 5 trtexec missing, other: trtexec's own failure (see build_<name>.log).
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$TRTEXEC" ]; then
  echo "trtexec not found (set TRTEXEC=/path/to/trtexec; it ships with TensorRT in JetPack)" >&2
  exit 5
fi
echo "bundle target: {label}; trtexec reports: $("$TRTEXEC" 2>&1 | grep -m1 -o 'TensorRT.v[0-9]*' || echo unknown)"
"""


def verify_script() -> str:
    """Source of verify_on_device.py (tokexport/device/verify_on_device.py, stdlib + numpy), stamped with
    this tokexport's version."""
    from importlib.resources import files

    text = files("tokexport.device").joinpath("verify_on_device.py").read_text(encoding="utf-8")
    marker = 'TOKEXPORT_VERSION = "source"'
    assert text.count(marker) == 1, "verify_on_device.py lost its version line"
    return text.replace(marker, f"TOKEXPORT_VERSION = {tokexport.__version__!r}")


def _readme(target: Target, names: list[str], fp16: bool, tol: dict) -> str:
    return f"""# tokexport deploy bundle

Target: {target.label}. Graphs: {", ".join(f"`{n}.onnx`" for n in names)}. Written by tokexport
{tokexport.__version__}; every file's sha256 is in `manifest.json` (`files`), with the graphs' inputs
and outputs (names, shapes, dtypes), the target, the opset and the tolerances. Array files are named by
position, `inputs/input_<i>.npy` and `expected/<graph>/output_<i>.npy`; `manifest.json` maps each input
and output name to its file (`inputs`, `models.<graph>.expected`).

On the device (copy the whole folder or unpack the `.tar.gz`):

1. `./build_engine.sh` builds `<name>.engine` with trtexec{" in FP16" if fp16 and not target.strongly_typed else ""}{
        " strongly typed (TensorRT 11 has no --fp16: the engine runs in the graph precision)"
        if target.strongly_typed
        else ""
    } (timing cache
   `timing.cache`, log `build_<name>.log`; set `TRTEXEC=/usr/src/tensorrt/bin/trtexec` if it is not on
   PATH). trtexec prints the engine's latency at the end of the log.
2. `python3 verify_on_device.py` checks every sha256, then runs the engine built in step 1 (TensorRT
   through polygraphy: `python3 -m pip install polygraphy`), or builds one from the ONNX, or falls
   back to ONNX Runtime when TensorRT is not importable, and compares with `expected/` (ONNX Runtime's
   outputs for `inputs/`, computed when the bundle was written). It prints one line per output and
   PASS or FAIL, and writes `device_results.json` (sha256 check, per-output errors, runtime and versions,
   trtexec's performance summary from `build_<name>.log`). Exit 0 PASS, 1 FAIL, 2 damaged bundle, 5 no
   runtime. Bring `device_results.json` back: `tokexport check device_results.json --baseline report.json`
   gates it, `tokexport report merge report.json device_results.json --out merged.json` adds it to the report.

Tolerances (FP16 engines against an FP32 reference): an element agrees when |a - e| <= atol + rtol*|e|;
at least `quantile` of the elements must agree, median |a - e| <= median_atol, every sample's cosine
>= min_cosine; outputs named *logits* and integer outputs must agree on >= min_agreement.
Values: {", ".join(f"{k} {v:g}" for k, v in tol.items())}.
"""


@dataclass
class Bundle:
    path: Path
    archive: Path | None
    manifest: dict


def sample_inputs(info: dict, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for a graph's declared inputs: standard-normal floats (the scale of normalised
    pixels), zeros for integers; a symbolic batch axis becomes ``batch``."""
    rng = np.random.default_rng(seed)
    feed = {}
    for i in info["inputs"]:
        shape = [batch if (ax == 0 and not isinstance(d, int)) else d for ax, d in enumerate(i["shape"] or [])]
        if any(not isinstance(d, int) for d in shape):
            raise InputError(
                f"input {i['name']!r} has symbolic non-batch dims {i['shape']}: no sample input can be made for it"
            )
        dtype = np.dtype(i["dtype"])
        feed[i["name"]] = (
            rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype=dtype)
        )
    return feed


def _run_ort(path: Path, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from .stages.runners import OrtRunner

    try:
        return OrtRunner(path).infer(feed)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise InputError(
            f"{path}: ONNX Runtime cannot run it on the sample inputs ({str(exc).splitlines()[0][:200]})"
        ) from None


def _copy_graph(src: Path, dest_dir: Path, name: str) -> list[Path]:
    """``<name>.onnx`` in dest_dir; external data (if any) re-saved as ``<name>.onnx.data``."""
    files = onnx_tools.onnx_files(src)  # InputError: external data missing, truncated or outside src's folder
    graph = _inside(dest_dir, f"{name}.onnx")
    if len(files) == 1:
        shutil.copyfile(src, graph)
        return [graph]
    import onnx

    model = onnx_tools.load(src)
    data = _inside(dest_dir, f"{name}.onnx.data")
    onnx.save_model(
        model,
        str(graph),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    return [graph, data]


def _inside(root: Path, rel: str) -> Path:
    """``root / rel`` when it resolves inside ``root``; InputError otherwise. Bundle file names are built
    from indices and validated graph names only, this is the last guard before a write."""
    path = root / rel
    real, top = path.resolve(), root.resolve()
    if Path(rel).is_absolute() or real == top or not real.is_relative_to(top):
        raise InputError(f"{root}: refusing to write {rel!r}, which resolves outside the bundle")
    return path


def _check_dest(dest: Path, force: bool, archive: bool, protect: Sequence = ()) -> Path | None:
    """The archive path (None without one); InputError (the rules of :mod:`tokexport.outdir`) when ``dest``
    or the archive may not be written: it exists and ``force`` is off, it was not written by tokexport,
    it holds a graph being bundled (``protect``), it is the current or home directory, ..."""
    from tokexport.outdir import check_archive, check_out_dir

    check_out_dir(dest, force, protect=protect, what=DEST)
    archive_path = dest.with_name(dest.name + ".tar.gz") if archive else None
    if archive_path is not None:
        check_archive(archive_path, dest.name, force, protect=protect, what=DEST)
    return archive_path


def write_bundle(
    dest: str | os.PathLike,
    models: Mapping[str, str | os.PathLike],
    target: str | Target,
    inputs: Mapping[str, np.ndarray] | None = None,
    tolerances: Mapping[str, float] | None = None,
    fp16: bool = True,
    max_batch: int = 8,
    archive: bool = True,
    force: bool = False,
) -> Bundle:
    """Write a self-verifying deploy bundle to ``dest`` (and ``dest.tar.gz`` when ``archive``).

    models: {name: ONNX file}; the first is the one deployed (conventionally "model"), others (e.g.
    "baseline") ride along for on-device timing. inputs: one feed shared by all graphs (default:
    :func:`sample_inputs`, batch 1). Expected outputs come from ONNX Runtime on these inputs.
    Everything is written into a temporary sibling and renamed into place; an existing ``dest`` or
    archive is replaced only with ``force``. Bad input raises InputError before anything is written.
    File names inside the bundle never come from graph or input names: arrays are stored by position
    (``inputs/input_<i>.npy``, ``expected/<model>/output_<i>.npy``) and manifest.json maps names to files.
    """
    dest = Path(os.path.expanduser(dest))  # a leading ~: the home directory, as in the shell
    tgt = target if isinstance(target, Target) else resolve_target(target)
    archive_path = _check_dest(dest, force, archive, protect=list(models.values()))
    if not models:
        raise InputError("write_bundle: no ONNX graph given")
    for name in models:
        if not name.replace("_", "").replace("-", "").isalnum():
            raise InputError(f"model name {name!r} is not usable as a file name; use letters, digits, _ and -")
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    if max_batch < 1:
        raise InputError(f"max batch {max_batch} must be >= 1")

    infos = {n: onnx_tools.inspect_model(p) for n, p in models.items()}  # InputError for non-ONNX files
    try:
        feed = dict(inputs) if inputs is not None else sample_inputs(next(iter(infos.values())))
    except InputError as e:  # here the caller can give them (`tokexport build` cannot: it has no inputs option)
        raise InputError(f"{e.args[0]}; pass {option('inputs')}") from None
    feed = {k: np.ascontiguousarray(v) for k, v in feed.items()}
    for name, info in infos.items():
        for i in info["inputs"]:
            if i["name"] not in feed:
                raise InputError(f"{models[name]}: the sample inputs lack {i['name']!r} (have {sorted(feed)})")
            shape, got = i["shape"] or [], list(feed[i["name"]].shape)
            if len(shape) != len(got) or any(isinstance(d, int) and d != g for d, g in zip(shape, got)):
                raise InputError(
                    f"{models[name]}: sample input {i['name']!r} has shape {got}, the graph declares {shape}"
                )
    # arrays no graph takes are left out (an exporter drops unused inputs); graph order: input_<i> is the
    # first graph's i-th input. `tokexport bundle --inputs` refuses such arrays before this.
    wanted = list(dict.fromkeys(i["name"] for info in infos.values() for i in info["inputs"]))
    feed = {k: feed[k] for k in wanted}
    expected = {n: _run_ort(Path(p), feed) for n, p in models.items()}

    # claimed (lock), built in .NAME.tmp-XXXX/NAME with the .tokexport-output marker (listed in the
    # manifest), swapped into place atomically; the archive is built in the same container and moved
    # next to the directory right after it (tokexport.outdir)
    from tokexport.outdir import check_archive, claim_out_dir

    with (
        claim_out_dir(dest, force, kind="bundle", protect=list(models.values()), what=DEST) as claim,
        claim.staged() as tmp,
    ):
        if archive_path is not None:
            check_archive(archive_path, dest.name, force, protect=list(models.values()), what=DEST)  # under the lock
        os.chmod(tmp, 0o755)
        sources = {n: onnx_tools.sha256_onnx(p) for n, p in models.items()}  # = the convert report's onnx_sha256
        manifest = _fill_bundle(tmp, models, infos, feed, expected, tgt, tol, fp16, max_batch, sources)
        if archive_path is not None:
            tmp_archive = claim.scratch / archive_path.name
            with tarfile.open(tmp_archive, "w:gz", compresslevel=6) as tar:
                tar.add(tmp, arcname=dest.name)
            claim.install_with(tmp_archive, archive_path)
    return Bundle(dest, archive_path, manifest)


def _fill_bundle(
    root: Path,
    models,
    infos,
    feed,
    expected,
    tgt: Target,
    tol,
    fp16,
    max_batch,
    sources: Mapping[str, str] | None = None,
) -> dict:
    """Write the bundle's files into ``root``: the sample inputs, each model's graph, expected outputs and
    engine build lines, build_engine.sh, verify_on_device.py, README.md, then manifest.json (every file's
    sha256 and size); the manifest."""
    sources = dict(sources or {})
    inputs = _write_inputs(root, feed)
    build = [_BUILD_SCRIPT.format(label=tgt.label)]
    entries = {}
    for name, src in models.items():
        entries[name] = _write_model(
            root, name, Path(src), infos[name], feed, expected[name], tgt, fp16, max_batch, sources.get(name), build
        )
    for fname, text in (
        ("build_engine.sh", "\n".join(build) + "\n"),
        ("verify_on_device.py", verify_script()),
        ("README.md", _readme(tgt, list(models), fp16, tol)),
    ):
        _inside(root, fname).write_text(text)
        if fname.endswith((".sh", ".py")):
            (root / fname).chmod(0o755)
    files = [
        {"path": p.relative_to(root).as_posix(), "sha256": onnx_tools.sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    manifest = {
        "format": "tokexport-bundle",
        "format_version": 2,
        "tokexport_version": tokexport.__version__,
        "created_unix": int(time.time()),
        "target": tgt.to_dict(),
        "fp16": fp16,
        "max_batch": max_batch,
        "tolerances": tol,
        "inputs": inputs,
        "models": entries,
        "files": files,
    }
    _inside(root, "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _write_inputs(root: Path, feed: Mapping[str, np.ndarray]) -> dict:
    """inputs/input_<i>.npy, one per graph input; the manifest's ``inputs``."""
    (root / "inputs").mkdir()
    inputs = {}
    for idx, (k, v) in enumerate(feed.items()):  # names are graph data, never file names: files by position
        rel = f"inputs/input_{idx}.npy"
        np.save(_inside(root, rel), v)
        inputs[k] = {"index": idx, "file": rel, "dtype": v.dtype.name, "shape": list(v.shape)}
    return inputs


def _write_model(
    root: Path,
    name: str,
    src: Path,
    info: dict,
    feed,
    expected: Mapping[str, np.ndarray],
    tgt: Target,
    fp16,
    max_batch,
    source_sha256: str | None,
    build: list[str],
) -> dict:
    """One model of the bundle: its graph copied in, ONNX Runtime's outputs as expected/<name>/output_<i>.npy,
    its engine build appended to ``build`` (the lines of build_engine.sh); its manifest entry."""
    graph = _copy_graph(src, root, name)[0]
    _inside(root, f"expected/{name}").mkdir(parents=True)
    exp = {}
    for idx, (out, arr) in enumerate(expected.items()):  # ONNX Runtime's output order = the graph's
        rel = f"expected/{name}/output_{idx}.npy"
        np.save(_inside(root, rel), arr)
        exp[out] = {"index": idx, "file": rel, "dtype": arr.dtype.name, "shape": list(arr.shape)}
    batch = max((feed[i["name"]].shape[0] for i in info["inputs"] if feed[i["name"]].ndim), default=1)
    precision = graph_precision(graph)
    strong = strongly_typed_build(tgt, precision)
    cmd = trtexec_command(
        graph.name,
        f"{name}.engine",
        {i["name"]: i["shape"] for i in info["inputs"]},
        fp16=fp16,
        batch=(1, batch, max(batch, max_batch)),
        timing_cache="timing.cache",
        trtexec='"$TRTEXEC"',
        strongly_typed=strong,
    )
    if strong:
        build.append(
            f"# {name}.onnx is an {precision} graph; built strongly typed (--stronglyTyped, no --fp16): the "
            "engine runs in the graph's precision"
            + ("" if precision == "fp16" or not fp16 else " (fp32 here: export.precision: fp16 for an fp16 engine)")
        )
    build += [
        f'echo "== {name}: building {name}.engine (log: build_{name}.log)"',
        f"{cmd} 2>&1 | tee build_{name}.log",
        f"grep -m1 -A3 'Performance summary' build_{name}.log || true",
    ]
    check = onnx_tools.check_target(graph, tgt, lint=False)
    return {
        "onnx": graph.name,
        "opset": info["opset"],
        "inputs": info["inputs"],
        "outputs": info["outputs"],
        "engine": f"{name}.engine",
        "expected": exp,
        "precision": precision,
        "strongly_typed": strong,
        "source_sha256": source_sha256,
        "target_check": {
            "passed": check.passed,
            "errors": len(check.errors),
            "warnings": len(check.warnings),
            "findings": [f.to_dict() for f in check.findings],
        },
    }


# --------------------------------------------------------------------------------------------
# Engine build + timing + comparison (TensorRT and a GPU present)
# --------------------------------------------------------------------------------------------


def build_and_compare(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    feed: Mapping[str, np.ndarray],
    tolerances: Mapping[str, float] | None = None,
    fp16: bool = True,
    max_batch: int = 8,
    repeats: int = 20,
) -> dict:
    """Build a TensorRT engine (polygraphy loaders over the TensorRT API), time it on ``feed`` and
    compare its outputs with ONNX Runtime's using :func:`compare_outputs`.

    TensorRTUnavailable (exit 8) without TensorRT or a GPU; InputError when the parser rejects the graph.
    """
    require_tensorrt()
    from polygraphy.backend.trt import (
        CreateConfig,
        EngineFromNetwork,
        NetworkFromOnnxPath,
        Profile,
        SaveEngine,
        TrtRunner,
    )

    src = Path(onnx_path)
    info = onnx_tools.inspect_model(src)
    tol = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    profile = Profile()
    for i in info["inputs"]:
        if not isinstance(i["shape"][0], int):
            rest = list(feed[i["name"]].shape[1:])
            b = feed[i["name"]].shape[0]
            profile.add(i["name"], [1, *rest], [b, *rest], [max(b, max_batch), *rest])
    # TensorRT >= 11 (and an fp16 graph on 10.x) builds strongly typed: precision from the graph, no fp16 flag
    precision = graph_precision(src)
    strong = _trt_major() >= 11 or (precision == "fp16" and _trt_major() >= 10)
    config = CreateConfig(fp16=fp16 and not strong, profiles=[profile] if len(profile) else None)
    t0 = time.perf_counter()
    try:
        network = NetworkFromOnnxPath(str(src), strongly_typed=True if strong else None)
        engine = SaveEngine(EngineFromNetwork(network, config=config), str(engine_path))()
    except Exception as exc:  # noqa: BLE001 - polygraphy raises PolygraphyException/RuntimeError on parse failures
        raise InputError(f"{src}: TensorRT could not build an engine ({str(exc).splitlines()[0][:300]})") from None
    build_s = time.perf_counter() - t0
    reference = _run_ort(src, feed)
    times = []
    with TrtRunner(engine) as runner:
        out = runner.infer(dict(feed))
        for _ in range(repeats):
            runner.infer(dict(feed))
            times.append(runner.last_inference_time())
    rows = compare_outputs({k: np.array(v) for k, v in out.items()}, reference, tol)
    return {
        "engine": str(engine_path),
        "build_s": build_s,
        "fp16": fp16 and not strong,
        "precision": precision,
        "strongly_typed": strong,
        "median_ms": 1000 * float(np.median(times)),
        "p90_ms": 1000 * float(np.quantile(times, 0.9)),
        "repeats": repeats,
        "tolerances": tol,
        "comparison": rows,
        "passed": all(r["passed"] for r in rows),
    }
