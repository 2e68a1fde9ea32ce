"""Deploy bundles (``tokexport bundle``) and TensorRT engine builds (``tokexport build``).

A bundle is what goes onto the Jetson: the graph(s), sample inputs and the outputs ONNX Runtime gives
for them here, a trtexec script that builds the engine on the device, and ``verify_on_device.py``,
which checks every file's sha256, runs TensorRT when it imports (ONNX Runtime otherwise) and
compares with the expected outputs using tolerances suited to FP16 engines. The comparison is
:func:`compare_outputs`, copied verbatim into that script so the device needs only numpy and a runtime.

TensorRT cannot be installed on the development machines (no GPU; its wheels come from NVIDIA's index):
nothing here imports it at module import time, and the engine path runs only where it is present.
"""
from __future__ import annotations

import importlib.util
import inspect
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
from tokexport.errors import InputError, TensorRTUnavailable
from tokexport.targets import Target
from tokexport.targets import resolve as resolve_target

# FP16 engine vs FP32 reference: an element agrees when |a - e| <= atol + rtol*|e|; `quantile` of the
# elements must agree, the median error must stay under median_atol, every sample's cosine above
# min_cosine, and logits' top-1 (and integer outputs, e.g. kept-token positions) agree on min_agreement.
DEFAULT_TOLERANCES = {"atol": 0.05, "rtol": 0.05, "quantile": 0.99, "median_atol": 0.01, "min_cosine": 0.999,
                      "min_agreement": 0.99}

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
        raise TensorRTUnavailable(f"cannot build TensorRT engines here: {problem}; write a bundle with "
                                  "`tokexport bundle` and run its build_engine.sh on the device")


# --------------------------------------------------------------------------------------------
# Output comparison (copied into verify_on_device.py: numpy only, no tokexport imports)
# --------------------------------------------------------------------------------------------


def compare_outputs(actual, expected, tol):
    """Compare each expected output with the runtime's; one verdict dict per output.

    Float outputs pass when the median |a - e| <= median_atol, at least `quantile` of the elements
    satisfy |a - e| <= atol + rtol*|e|, every sample (first axis) has cosine >= min_cosine, and, for
    outputs named *logits*, the argmax agrees on >= min_agreement of the rows. Integer/bool outputs
    (e.g. kept-token positions) pass when >= min_agreement of the elements are equal. FP16 engines
    legitimately miss a few elements by more than atol, hence quantiles instead of a max.
    """
    rows = []
    for name, exp in expected.items():
        exp = np.asarray(exp)
        row = {"output": name, "passed": False}
        rows.append(row)
        if name not in actual:
            row["problem"] = "missing from the runtime's outputs"
            continue
        got = np.asarray(actual[name])
        if got.shape != exp.shape:
            row["problem"] = f"shape {list(got.shape)} != expected {list(exp.shape)}"
            continue
        if exp.dtype.kind in "iub":
            agree = float(np.mean(got == exp)) if exp.size else 1.0
            row.update(kind="exact", agreement=agree, passed=agree >= tol["min_agreement"])
            continue
        g, e = got.astype(np.float64), exp.astype(np.float64)
        if not np.all(np.isfinite(g)):
            row["problem"] = "non-finite values (inf/nan) in the runtime's output"
            continue
        err = np.abs(g - e)
        within = float(np.mean(err <= tol["atol"] + tol["rtol"] * np.abs(e))) if e.size else 1.0
        med = float(np.median(err)) if e.size else 0.0
        gf, ef = g.reshape(g.shape[0] if g.ndim > 1 else 1, -1), e.reshape(e.shape[0] if e.ndim > 1 else 1, -1)
        norms = np.linalg.norm(gf, axis=1) * np.linalg.norm(ef, axis=1)
        cos = np.where(norms > 0, np.sum(gf * ef, axis=1) / np.maximum(norms, 1e-300), 1.0)
        row.update(kind="float", median_abs=med, quantile_abs=float(np.quantile(err, tol["quantile"])) if e.size else 0.0,
                   max_abs=float(err.max()) if e.size else 0.0, within=within, cosine=float(cos.min()))
        ok = med <= tol["median_atol"] and within >= tol["quantile"] and row["cosine"] >= tol["min_cosine"]
        if "logits" in name.lower() and g.ndim >= 2:
            row["top1_agreement"] = float(np.mean(g.argmax(-1) == e.argmax(-1)))
            ok = ok and row["top1_agreement"] >= tol["min_agreement"]
        row["passed"] = bool(ok)
    return rows


def format_row(row):
    """One line per compared output, for people."""
    head = f"  {'ok  ' if row['passed'] else 'FAIL'} {row['output']}: "
    if "problem" in row:
        return head + row["problem"]
    if row.get("kind") == "exact":
        return head + f"exact agreement {row['agreement']:.4f}"
    text = (f"median |err| {row['median_abs']:.3g}, q-quantile {row['quantile_abs']:.3g}, max {row['max_abs']:.3g}, "
            f"within tol {row['within']:.4f}, min cosine {row['cosine']:.6f}")
    return head + text + (f", top-1 agreement {row['top1_agreement']:.4f}" if "top1_agreement" in row else "")


# --------------------------------------------------------------------------------------------
# trtexec
# --------------------------------------------------------------------------------------------


def trtexec_command(onnx_name: str, engine_name: str, input_shapes: Mapping[str, Sequence[int | str]],
                    fp16: bool = True, batch: tuple[int, int, int] = (1, 1, 1), timing_cache: str | None = None,
                    trtexec: str = "trtexec", strongly_typed: bool = False) -> str:
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
                raise InputError(f"input {name!r} has symbolic dim {d!r} at axis {ax}; only the batch axis may be "
                                 "dynamic (re-export with static token counts)")
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
    """"fp16" when the graph computes in float16 anywhere (a float16 weight, or a Cast to float16: what
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
# trtexec logs (copied into verify_on_device.py: standard library only)
# --------------------------------------------------------------------------------------------


def parse_trtexec_log(text):
    """trtexec's "Performance summary" of a log, as numbers; None when the log holds none.

    Reads the lines trtexec prints after "=== Performance summary ===" (the "[date] [I] " prefix of
    each line is optional): "Throughput: X qps", "Latency: min = a ms, max = b ms, mean = c ms,
    median = d ms, percentile(90%) = e ms, ...", the same for "GPU Compute Time" (and "Enqueue
    Time", "H2D Latency", "D2H Latency"), and the TensorRT version from the "&&&& PASSED
    TensorRT.trtexec [TensorRT v100300]" line or "TensorRT version: 10.3.0".
    """
    import re

    marker = text.rfind("Performance summary")
    if marker < 0:
        return None
    body = text[marker:]
    out = {"throughput_qps": None}
    m = re.search(r"Throughput:\s*([0-9.eE+-]+)\s*qps", body)
    if m:
        out["throughput_qps"] = float(m.group(1))
    keys = {"Latency": "latency_ms", "GPU Compute Time": "gpu_compute_ms", "Enqueue Time": "enqueue_ms",
            "H2D Latency": "h2d_ms", "D2H Latency": "d2h_ms"}
    for line in body.splitlines():
        line = re.sub(r"^(\[[^\]]*\]\s*)+", "", line.strip())
        head, sep, rest = line.partition(":")
        if not sep or head.strip() not in keys:
            continue
        stats = {}
        for k, v in re.findall(r"(min|max|mean|median|percentile\((?:[0-9.]+)%\))\s*=\s*([0-9.eE+-]+)\s*ms", rest):
            pm = re.match(r"percentile\(([0-9.]+)%\)", k)
            stats[("p%g" % float(pm.group(1))) if pm else k] = float(v)
        if stats:
            out[keys[head.strip()]] = stats
    version = re.search(r"TensorRT\.trtexec \[TensorRT v(\d+)\]", text)
    if version:
        v = version.group(1)  # 8.x: major*1000 + minor*100 + patch; 10.x on: major*10000 + minor*100 + patch
        cut = 3 if len(v) <= 4 else 4
        out["tensorrt_version"] = "%d.%d.%d" % (int(v[:-cut] or 0), int(v[-cut:-2]), int(v[-2:]))
    else:
        version = re.search(r"TensorRT version:\s*([0-9][0-9.]*)", text)
        if version:
            out["tensorrt_version"] = version.group(1)
    lat = out.get("latency_ms") or {}
    if out["throughput_qps"] is None and not lat:
        return None
    return out


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

_VERIFY_MAIN = '''

HERE = Path(__file__).resolve().parent


class BundleError(Exception):
    """manifest.json is unreadable or names something outside this bundle, a graph's external data lies
    outside it, an array holds pickled objects: exit 2, one line, nothing outside the bundle is read."""


class WriteFailed(Exception):
    """device_results.json cannot be written (disk full, read-only, no permission): exit 10, nothing partial."""


MAX_MANIFEST_BYTES = 64 * 2**20
MAX_LOG_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 64
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def one_line(text):
    return (str(text).strip().splitlines() or [""])[0][:300]


def plain_name(name, what):
    """A name manifest.json uses inside a file name (a model's): letters, digits, _ and -, nothing else."""
    if not isinstance(name, str) or not name or len(name) > 64 or not set(name) <= NAME_CHARS:
        raise BundleError("manifest.json: %s %r is not a plain name (letters, digits, _ and -; no separators or "
                          "'..'); refusing the bundle (copy it again)" % (what, name))
    return name


def bad_relative(rel):
    """True unless ``rel`` is a relative path of plain parts: no '..', '.', empty part, backslash or NUL."""
    return (not isinstance(rel, str) or not rel or chr(0) in rel or chr(92) in rel or rel.startswith("/")
            or any(part in ("", ".", "..") for part in rel.split("/")))


def bundle_file(rel, what="file"):
    """The bundle file manifest.json calls ``rel``, resolved; BundleError unless it is a relative path
    without '..' (or a backslash) that stays inside the bundle."""
    if bad_relative(rel):
        raise BundleError("manifest.json: %s path %r may lead outside the bundle (not a plain relative path: an "
                          "absolute path, a '..' or '.' part, a backslash); refusing to read it (copy the bundle "
                          "again)" % (what, rel))
    try:
        path = (HERE / rel).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        path = HERE
    if HERE not in path.parents:
        raise BundleError("manifest.json lists a %s outside the bundle: %r; refusing to read it "
                          "(copy the bundle again)" % (what, rel))
    return path


def regular_file(path, what, limit=None):
    """``path`` when it is a regular file (not a FIFO or a device) within ``limit`` bytes; BundleError."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise BundleError("%s %s cannot be read (%s); copy the bundle again" % (what, path.name, exc.strerror))
    if not stat.S_ISREG(st.st_mode):
        raise BundleError("%s %s is not a regular file; copy the bundle again" % (what, path.name))
    if limit is not None and st.st_size > limit:
        raise BundleError("%s %s has %d bytes, more than %d; copy the bundle again"
                          % (what, path.name, st.st_size, limit))
    return path


def _unique_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError("key %r appears twice in one object" % key)
        out[key] = value
    return out


def _too_deep(data):
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                return True
            stack.extend((c, depth + 1) for c in (node.values() if isinstance(node, dict) else node))
    return False


def read_manifest():
    """manifest.json, after checking that every model name is a plain name and every path it lists
    stays inside this bundle."""
    try:
        path = regular_file(HERE / "manifest.json", "manifest.json", MAX_MANIFEST_BYTES)
        manifest = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_unique_keys)
        if _too_deep(manifest):
            raise ValueError("nested more than %d levels" % MAX_JSON_DEPTH)
    except (OSError, ValueError, RecursionError) as exc:
        raise BundleError("manifest.json is unreadable (%s); copy the bundle again" % one_line(exc))
    try:
        for entry in manifest["files"]:
            bundle_file(entry["path"])
            if not isinstance(entry["bytes"], int) or not isinstance(entry["sha256"], str):
                raise TypeError("files entry %r" % entry["path"])
        for i in manifest["inputs"].values():
            bundle_file(i["file"], "input file")
        for name, entry in manifest["models"].items():
            plain_name(name, "model name")
            bundle_file(entry["onnx"], "graph")
            bundle_file(entry["engine"], "engine")
            for f in entry["expected"].values():
                bundle_file(f["file"], "expected output file")
        manifest["tolerances"].items()
    except (KeyError, TypeError, AttributeError) as exc:
        raise BundleError("manifest.json lacks a field or has a malformed one (%s: %s); copy the bundle again"
                          % (type(exc).__name__, one_line(exc)))
    return manifest


def load_array(rel, what):
    """A bundled .npy array, never unpickled (an object array is refused)."""
    path = regular_file(bundle_file(rel, what), what)
    try:
        with open(path, "rb") as f:
            return np.load(f, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise BundleError("%s %s holds pickled Python objects, which are never loaded; copy the bundle again"
                              % (what, rel))
        raise BundleError("%s %s is not a readable .npy file (%s); copy the bundle again" % (what, rel, one_line(exc)))
    except OSError as exc:
        raise BundleError("%s %s cannot be read (%s); copy the bundle again" % (what, rel, one_line(exc)))


# ONNX messages that can hold tensors, by field number (onnx.proto): where external data may be named
_ONNX_FIELDS = {
    "model": {7: "graph", 25: "function"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}


def _varint(buf, i):
    value, shift = 0, 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated or malformed protobuf")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf):
    """(field number, length-delimited bytes or None) of one protobuf message."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            _, i = _varint(buf, i)
            yield key >> 3, None
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise ValueError("truncated protobuf")
            yield key >> 3, buf[i:i + length]
            i += length
        else:
            raise ValueError("unsupported protobuf wire type %d" % wire)


def external_locations(data):
    """Every external-data location a serialized ONNX model names (graph, subgraphs, functions,
    attributes, sparse tensors), read with a small protobuf walker: nothing of it is loaded."""
    out, stack = [], [("model", memoryview(data), 0)]
    while stack:
        kind, msg, depth = stack.pop()
        if depth > 64:
            raise ValueError("graph nested too deeply")
        for number, value in _fields(msg):
            child = _ONNX_FIELDS[kind].get(number)
            if child is None or value is None:
                continue
            if child == "entry":
                kv = {k: bytes(v).decode("utf-8", "replace") for k, v in _fields(value) if v is not None}
                if kv.get(1) == "location":
                    out.append(kv.get(2, ""))
            else:
                stack.append((child, value, depth + 1))
    return out


def check_external_data(graph):
    """BundleError unless every external-data file ``graph`` names is a relative path without '..' that
    resolves to a regular file inside this bundle (checked before a runtime opens the graph)."""
    regular_file(graph, "graph")
    try:
        with open(graph, "rb") as f:
            locations = external_locations(f.read())
    except (OSError, ValueError) as exc:
        raise BundleError("graph %s is not a readable ONNX file (%s); copy the bundle again" % (graph.name, one_line(exc)))
    for loc in sorted(set(locations)):
        target = None if bad_relative(loc) else (graph.parent / loc).resolve()
        if target is None or HERE not in target.parents:
            raise BundleError("graph %s names external data %r outside the bundle; refusing to run it (copy the "
                              "bundle again)" % (graph.name, loc))
        regular_file(target, "external data of %s:" % graph.name)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def damaged_files(manifest):
    out = []
    for entry in manifest["files"]:
        p = bundle_file(entry["path"])
        if not p.is_file():
            out.append(f"{entry['path']}: missing")
        elif p.stat().st_size != entry["bytes"] or sha256(p) != entry["sha256"]:
            out.append(f"{entry['path']}: sha256 differs from manifest.json")
    return out


def importable(name):
    return importlib.util.find_spec(name) is not None


ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def ort_providers(choice):
    """ONNX Runtime providers for --provider (auto: CUDA when this onnxruntime offers it, else the CPU)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if choice == "auto":
        choice = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    order = {"cpu": ["cpu"], "cuda": ["cuda", "cpu"], "tensorrt": ["tensorrt", "cuda", "cpu"]}[choice]
    missing = [ORT_PROVIDERS[p] for p in order if ORT_PROVIDERS[p] not in available]
    if missing:
        raise RuntimeError("--provider %s needs %s, which this onnxruntime does not offer (it has: %s)"
                           % (choice, missing[0], ", ".join(available)))
    return [ORT_PROVIDERS[p] for p in order]


def run_onnxruntime(entry, feed, providers, used):
    import onnxruntime as ort

    graph = bundle_file(entry["onnx"], "graph")
    check_external_data(graph)
    sess = ort.InferenceSession(str(graph), providers=providers)
    used[:] = sess.get_providers()
    if used[0] != providers[0]:  # onnxruntime fell back with a warning only: say so, and record it
        print("note: asked for %s, onnxruntime runs on %s" % (providers[0], used[0]))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})))


def run_tensorrt(entry, feed, manifest):
    from polygraphy.backend.trt import CreateConfig, EngineFromBytes, EngineFromNetwork, NetworkFromOnnxPath
    from polygraphy.backend.trt import Profile, TrtRunner

    engine = bundle_file(entry["engine"], "engine")
    if os.path.lexists(engine):  # built by build_engine.sh
        loader = EngineFromBytes(regular_file(engine, "engine").read_bytes())
    else:
        profile = Profile()
        for i in entry["inputs"]:
            if not isinstance(i["shape"][0], int):
                rest = list(feed[i["name"]].shape[1:])
                b = feed[i["name"]].shape[0]
                profile.add(i["name"], [1] + rest, [b] + rest, [max(b, manifest["max_batch"])] + rest)
        import tensorrt as trt

        # TensorRT >= 11 builds strongly typed only (no fp16 flag): the engine takes the graph's precision
        strong = bool(entry.get("strongly_typed")) or int(trt.__version__.split(".")[0]) >= 11
        config = CreateConfig(fp16=bool(manifest["fp16"]) and not strong, profiles=[profile] if len(profile) else None)
        graph = bundle_file(entry["onnx"], "graph")
        check_external_data(graph)
        network = NetworkFromOnnxPath(str(graph), strongly_typed=True if strong else None)
        loader = EngineFromNetwork(network, config=config)
    with TrtRunner(loader) as runner:
        return {k: np.array(v) for k, v in runner.infer({n: feed[n] for n in feed}).items()}


def versions(runtime):
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("onnxruntime", "tensorrt", "polygraphy"):
        if importable(mod):
            try:
                out[mod] = __import__(mod).__version__
            except Exception as exc:  # noqa: BLE001 - a broken install: record why
                out[mod] = "unimportable (%s)" % one_line(exc)
    return out


def finite(value):
    """JSON-safe copy: NaN/inf become null (device_results.json is strict JSON)."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_results(path, results):
    """device_results.json, written whole: a new temporary file (created exclusively, so never through a
    name or a symbolic link someone left there) renamed over ``path`` (which replaces a link, never
    writes through it). WriteFailed when the disk is full, read-only or not writable; nothing is left."""
    text = json.dumps(finite(results), indent=2, allow_nan=False) + "\\n"
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise WriteFailed("cannot write %s (%s); nothing was written" % (path, exc.strerror or exc))
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    print("wrote %s" % path)


def trtexec_summaries(manifest):
    """The Performance summary of each build_<name>.log that build_engine.sh left here."""
    out = {}
    for name in manifest["models"]:
        log = HERE / ("build_%s.log" % plain_name(name, "model name"))
        if log.is_file():
            summary = parse_trtexec_log(regular_file(log, "build log", MAX_LOG_BYTES).read_text(errors="replace"))
            if summary is not None:
                out[name] = dict(summary, log=log.name)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="Check this bundle's files and compare the runtime's outputs with "
                                             "the expected ones; write device_results.json. Exit 0 PASS, 1 FAIL, "
                                             "2 damaged bundle, 5 no runtime, 10 the results cannot be written.")
    ap.add_argument("--runtime", choices=["auto", "tensorrt", "onnxruntime"], default="auto",
                    help="auto: TensorRT when `tensorrt` and `polygraphy` import, else ONNX Runtime")
    ap.add_argument("--provider", choices=["auto", "cpu", "cuda", "tensorrt"], default="auto",
                    help="ONNX Runtime execution provider (auto: CUDA when offered, else CPU)")
    ap.add_argument("--results", default="device_results.json",
                    help="where the results go (default: device_results.json in this bundle); "
                         "bring it back: tokexport check device_results.json --baseline report.json")
    args = ap.parse_args(argv)
    try:
        return verify(args)
    except BundleError as exc:
        print("error: %s" % one_line(exc), file=sys.stderr)
        return 2
    except WriteFailed as exc:
        print("error: %s" % one_line(exc), file=sys.stderr)
        return 10


def verify(args):
    manifest = read_manifest()
    results_path = Path(args.results)
    results_path = results_path if results_path.is_absolute() else HERE / results_path
    results = {"format": "tokexport-device-results", "format_version": 1, "created_unix": int(time.time()),
               "bundle": {"tokexport_version": manifest.get("tokexport_version"), "target": manifest["target"],
                          "manifest_sha256": sha256(HERE / "manifest.json"),
                          "models": {n: {"onnx": e["onnx"], "source_sha256": e.get("source_sha256"),
                                         "precision": e.get("precision"), "strongly_typed": e.get("strongly_typed")}
                                     for n, e in manifest["models"].items()}},
               "machine": {"platform": platform.platform(), "machine": platform.machine()},
               "tolerances": manifest["tolerances"], "runtime": None, "models": {}, "trtexec": {}, "passed": False}
    bad = damaged_files(manifest)
    results["sha256"] = {"files": len(manifest["files"]), "passed": not bad, "problems": bad}
    results["trtexec"] = trtexec_summaries(manifest)
    for line in bad:
        print(f"FAIL sha256 {line}")
    if bad:
        print("FAIL: the bundle is damaged or was modified; copy it again (compare with the .tar.gz)")
        write_results(results_path, results)
        return 2
    print(f"sha256: {len(manifest['files'])} files match manifest.json")
    runtime = args.runtime
    has_trt = importable("tensorrt") and importable("polygraphy")
    if runtime == "auto":
        runtime = "tensorrt" if has_trt else "onnxruntime"
        if importable("tensorrt") and not has_trt:
            print("note: tensorrt imports but polygraphy does not (pip install polygraphy); using ONNX Runtime")
    problem = None
    if runtime == "tensorrt" and not has_trt:
        problem = "--runtime tensorrt needs the tensorrt and polygraphy Python packages"
    if runtime == "onnxruntime" and not importable("onnxruntime"):
        problem = "neither TensorRT (tensorrt + polygraphy) nor onnxruntime is importable here"
    providers = None
    if problem is None and runtime == "onnxruntime":
        try:
            providers = ort_providers(args.provider)
        except RuntimeError as exc:
            problem = str(exc)
    if problem is not None:
        print("FAIL: %s" % problem)
        results["problem"] = problem
        write_results(results_path, results)
        return 5
    used = []
    results["runtime"] = {"name": runtime, "versions": versions(runtime), "providers": used}
    tol = manifest["tolerances"]
    feed = {n: load_array(i["file"], "input file") for n, i in manifest["inputs"].items()}
    for entry in manifest["models"].values():  # before any runtime opens a graph
        check_external_data(bundle_file(entry["onnx"], "graph"))
    passed = True
    for name, entry in manifest["models"].items():
        t0 = time.perf_counter()
        out = run_tensorrt(entry, feed, manifest) if runtime == "tensorrt" else run_onnxruntime(entry, feed, providers, used)
        ms = 1000 * (time.perf_counter() - t0)
        expected = {o: load_array(f["file"], "expected output file") for o, f in entry["expected"].items()}
        rows = compare_outputs(out, expected, tol)
        where = runtime + (" " + used[0] if used else "")
        print(f"{name} ({entry['onnx']}, {where}, first run {ms:.0f} ms incl. load):")
        for row in rows:
            print(format_row(row))
        ok = all(r["passed"] for r in rows)
        results["models"][name] = {"outputs": rows, "passed": ok, "first_run_ms": ms}
        passed = passed and ok
    results["runtime"]["provider"] = used[0] if used else None
    results["passed"] = bool(passed)
    for name, summary in results["trtexec"].items():
        lat = summary.get("latency_ms") or {}
        print("trtexec %s: median %s ms, p90 %s ms, %s qps (%s)" % (name, lat.get("median"), lat.get("p90"),
                                                                    summary.get("throughput_qps"), summary["log"]))
    tol_text = ", ".join(f"{k} {v:g}" for k, v in tol.items())
    write_results(results_path, results)
    print(f"{'PASS' if passed else 'FAIL'} ({runtime}; tolerances: {tol_text})")
    return 0 if passed else 1

if __name__ == "__main__":
    sys.exit(main())
'''


def verify_script() -> str:
    """Source of verify_on_device.py: stdlib + numpy, the comparison functions of this module, a main."""
    header = ('#!/usr/bin/env python3\n"""Verify a tokexport deploy bundle on the device: sha256 of every file, then '
              'TensorRT\n(when `tensorrt` and `polygraphy` import) or ONNX Runtime on the bundled inputs, '
              'compared with\nthe expected outputs; writes device_results.json. Usage: python3 verify_on_device.py '
              '[--runtime auto|tensorrt|onnxruntime] [--provider auto|cpu|cuda|tensorrt]\nExit: 0 PASS, 1 FAIL (outputs differ), 2 damaged bundle (a file differs, '
              'or\nmanifest.json is unreadable or names something outside the bundle, external data lies '
              'outside it,\nan array holds pickled objects), 5 no runtime, 10 the results cannot be written.\n'
              f'Written by tokexport {tokexport.__version__}."""\n'
              "import argparse\nimport hashlib\nimport importlib.util\nimport json\nimport os\nimport platform\n"
              "import stat\nimport sys\nimport tempfile\nimport time\nfrom pathlib import Path\n\nimport numpy as np\n\n\n")
    return header + "\n\n".join(inspect.getsource(f) for f in (compare_outputs, format_row, parse_trtexec_log)) \
        + _VERIFY_MAIN


def _readme(target: Target, names: list[str], fp16: bool, tol: dict) -> str:
    return f"""# tokexport deploy bundle

Target: {target.label}. Graphs: {', '.join(f'`{n}.onnx`' for n in names)}. Written by tokexport
{tokexport.__version__}; every file's sha256 is in `manifest.json` (`files`), with the graphs' inputs
and outputs (names, shapes, dtypes), the target, the opset and the tolerances. Array files are named by
position, `inputs/input_<i>.npy` and `expected/<graph>/output_<i>.npy`; `manifest.json` maps each input
and output name to its file (`inputs`, `models.<graph>.expected`).

On the device (copy the whole folder or unpack the `.tar.gz`):

1. `./build_engine.sh` builds `<name>.engine` with trtexec{' in FP16' if fp16 and not target.strongly_typed else ''}{
   ' strongly typed (TensorRT 11 has no --fp16: the engine runs in the graph precision)' if target.strongly_typed else ''} (timing cache
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
Values: {', '.join(f'{k} {v:g}' for k, v in tol.items())}.
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
            raise InputError(f"input {i['name']!r} has symbolic non-batch dims {i['shape']}; pass --inputs")
        dtype = np.dtype(i["dtype"])
        feed[i["name"]] = (rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                           else np.zeros(shape, dtype=dtype))
    return feed


def _run_ort(path: Path, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from .stages.runners import OrtRunner

    try:
        return OrtRunner(path).infer(feed)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise InputError(f"{path}: ONNX Runtime cannot run it on the sample inputs ({str(exc).splitlines()[0][:200]})") from None


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
    onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
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

    check_out_dir(dest, force, protect=protect, what="OUT_DIR")
    archive_path = dest.with_name(dest.name + ".tar.gz") if archive else None
    if archive_path is not None:
        check_archive(archive_path, dest.name, force, protect=protect)
    return archive_path


def write_bundle(dest: str | os.PathLike, models: Mapping[str, str | os.PathLike], target: str | Target,
                 inputs: Mapping[str, np.ndarray] | None = None, tolerances: Mapping[str, float] | None = None,
                 fp16: bool = True, max_batch: int = 8, archive: bool = True, force: bool = False) -> Bundle:
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
    feed = dict(inputs) if inputs is not None else sample_inputs(next(iter(infos.values())))
    feed = {k: np.ascontiguousarray(v) for k, v in feed.items()}
    for name, info in infos.items():
        for i in info["inputs"]:
            if i["name"] not in feed:
                raise InputError(f"{models[name]}: the sample inputs lack {i['name']!r} (have {sorted(feed)})")
            shape, got = i["shape"] or [], list(feed[i["name"]].shape)
            if len(shape) != len(got) or any(isinstance(d, int) and d != g for d, g in zip(shape, got)):
                raise InputError(f"{models[name]}: sample input {i['name']!r} has shape {got}, the graph declares {shape}")
    # arrays no graph takes are left out (an exporter drops unused inputs); graph order: input_<i> is the
    # first graph's i-th input. `tokexport bundle --inputs` refuses such arrays before this.
    wanted = list(dict.fromkeys(i["name"] for info in infos.values() for i in info["inputs"]))
    feed = {k: feed[k] for k in wanted}
    expected = {n: _run_ort(Path(p), feed) for n, p in models.items()}

    # claimed (lock), built in .NAME.tmp-XXXX/NAME with the .tokexport-output marker (listed in the
    # manifest), swapped into place atomically; the archive is built in the same container and moved
    # next to the directory right after it (tokexport.outdir)
    from tokexport.outdir import check_archive, claim_out_dir

    with claim_out_dir(dest, force, kind="bundle", protect=list(models.values()), what="OUT_DIR") as claim, \
            claim.staged() as tmp:
        if archive_path is not None:
            check_archive(archive_path, dest.name, force, protect=list(models.values()))  # again, under the lock
        os.chmod(tmp, 0o755)
        sources = {n: onnx_tools.sha256_onnx(p) for n, p in models.items()}  # = the convert report's onnx_sha256
        manifest = _fill_bundle(tmp, models, infos, feed, expected, tgt, tol, fp16, max_batch, sources)
        if archive_path is not None:
            tmp_archive = claim.scratch / archive_path.name
            with tarfile.open(tmp_archive, "w:gz", compresslevel=6) as tar:
                tar.add(tmp, arcname=dest.name)
            claim.install_with(tmp_archive, archive_path)
    return Bundle(dest, archive_path, manifest)


def _fill_bundle(root: Path, models, infos, feed, expected, tgt: Target, tol, fp16, max_batch,
                 sources: Mapping[str, str] | None = None) -> dict:
    sources = dict(sources or {})
    (root / "inputs").mkdir()
    inputs = {}
    for idx, (k, v) in enumerate(feed.items()):  # names are graph data, never file names: files by position
        rel = f"inputs/input_{idx}.npy"
        np.save(_inside(root, rel), v)
        inputs[k] = {"index": idx, "file": rel, "dtype": v.dtype.name, "shape": list(v.shape)}
    build = [_BUILD_SCRIPT.format(label=tgt.label)]
    entries = {}
    for name, src in models.items():
        info = infos[name]
        graph = _copy_graph(Path(src), root, name)[0]
        _inside(root, f"expected/{name}").mkdir(parents=True)
        exp = {}
        for idx, (out, arr) in enumerate(expected[name].items()):  # ONNX Runtime's output order = the graph's
            rel = f"expected/{name}/output_{idx}.npy"
            np.save(_inside(root, rel), arr)
            exp[out] = {"index": idx, "file": rel, "dtype": arr.dtype.name, "shape": list(arr.shape)}
        batch = max((feed[i["name"]].shape[0] for i in info["inputs"] if feed[i["name"]].ndim), default=1)
        precision = graph_precision(graph)
        strong = strongly_typed_build(tgt, precision)
        cmd = trtexec_command(graph.name, f"{name}.engine", {i["name"]: i["shape"] for i in info["inputs"]}, fp16=fp16,
                              batch=(1, batch, max(batch, max_batch)), timing_cache="timing.cache", trtexec='"$TRTEXEC"',
                              strongly_typed=strong)
        if strong:
            build.append(f"# {name}.onnx is an {precision} graph; built strongly typed (--stronglyTyped, no --fp16): the "
                         "engine runs in the graph's precision" + ("" if precision == "fp16" or not fp16 else
                                                                   " (fp32 here: export.precision: fp16 for an fp16 engine)"))
        build += [f'echo "== {name}: building {name}.engine (log: build_{name}.log)"', f"{cmd} 2>&1 | tee build_{name}.log",
                  f"grep -m1 -A3 'Performance summary' build_{name}.log || true"]
        check = onnx_tools.check_target(graph, tgt, lint=False)
        entries[name] = {"onnx": graph.name, "opset": info["opset"], "inputs": info["inputs"], "outputs": info["outputs"],
                         "engine": f"{name}.engine", "expected": exp, "precision": precision, "strongly_typed": strong,
                         "source_sha256": sources.get(name),
                         "target_check": {"passed": check.passed, "errors": len(check.errors),
                                          "warnings": len(check.warnings),
                                          "findings": [f.to_dict() for f in check.findings]}}
    for fname, text in (("build_engine.sh", "\n".join(build) + "\n"), ("verify_on_device.py", verify_script()),
                        ("README.md", _readme(tgt, list(models), fp16, tol))):
        _inside(root, fname).write_text(text)
        if fname.endswith((".sh", ".py")):
            (root / fname).chmod(0o755)
    files = [{"path": p.relative_to(root).as_posix(), "sha256": onnx_tools.sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(root.rglob("*")) if p.is_file()]
    manifest = {"format": "tokexport-bundle", "format_version": 2, "tokexport_version": tokexport.__version__,
                "created_unix": int(time.time()), "target": tgt.to_dict(), "fp16": fp16, "max_batch": max_batch,
                "tolerances": tol, "inputs": inputs, "models": entries, "files": files}
    _inside(root, "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


# --------------------------------------------------------------------------------------------
# Engine build + timing + comparison (TensorRT and a GPU present)
# --------------------------------------------------------------------------------------------


def build_and_compare(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, feed: Mapping[str, np.ndarray],
                      tolerances: Mapping[str, float] | None = None, fp16: bool = True, max_batch: int = 8,
                      repeats: int = 20) -> dict:
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
    return {"engine": str(engine_path), "build_s": build_s, "fp16": fp16 and not strong, "precision": precision,
            "strongly_typed": strong, "median_ms": 1000 * float(np.median(times)),
            "p90_ms": 1000 * float(np.quantile(times, 0.9)), "repeats": repeats, "tolerances": tol,
            "comparison": rows, "passed": all(r["passed"] for r in rows)}
