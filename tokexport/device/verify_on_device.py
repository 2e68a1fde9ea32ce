#!/usr/bin/env python3
"""Verify a tokexport deploy bundle on the device: sha256 of every file, then TensorRT
(when `tensorrt` and `polygraphy` import) or ONNX Runtime on the bundled inputs, compared with
the expected outputs; writes device_results.json. Usage: python3 verify_on_device.py [--runtime auto|tensorrt|onnxruntime] [--provider auto|cpu|cuda|tensorrt]
Exit: 0 PASS, 1 FAIL (outputs differ), 2 damaged bundle (a file differs, or
manifest.json is unreadable or names something outside the bundle, external data lies outside it,
an array holds pickled objects), 5 no runtime, 10 the results cannot be written.

Standard library and numpy only: it runs on the device, where tokexport is not installed.
tokexport.deploy copies this file into every bundle (with the writing tokexport's version below) and
imports its comparison functions, so the library and the device compare outputs with the same code.
"""

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import stat
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TOKEXPORT_VERSION = "source"  # replaced by the version of the tokexport that writes the bundle
HERE = Path(__file__).resolve().parent
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_LOG_BYTES = 16 * 2**20
MAX_JSON_DEPTH = 64
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
ORT_PROVIDERS = dict(cpu="CPUExecutionProvider", cuda="CUDAExecutionProvider", tensorrt="TensorrtExecutionProvider")
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
        q_abs = float(np.quantile(err, tol["quantile"])) if e.size else 0.0
        max_abs, cosine = float(err.max()) if e.size else 0.0, float(cos.min())
        row.update(kind="float", median_abs=med, quantile_abs=q_abs, max_abs=max_abs, within=within, cosine=cosine)
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
    text = f"median |err| {row['median_abs']:.3g}, q-quantile {row['quantile_abs']:.3g}, max {row['max_abs']:.3g}, "
    text += f"within tol {row['within']:.4f}, min cosine {row['cosine']:.6f}"
    return head + text + (f", top-1 agreement {row['top1_agreement']:.4f}" if "top1_agreement" in row else "")


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
    m = re.search(r"Throughput:\s*([0-9.eE+-]+)\s*qps", body)
    out = {"throughput_qps": float(m.group(1)) if m else None}
    keys = {"Latency": "latency_ms", "GPU Compute Time": "gpu_compute_ms", "Enqueue Time": "enqueue_ms"}
    keys.update({"H2D Latency": "h2d_ms", "D2H Latency": "d2h_ms"})
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
    return None if out["throughput_qps"] is None and not out.get("latency_ms") else out


class BundleError(Exception):
    """manifest.json is unreadable or names something outside this bundle, a graph's external data lies
    outside it, an array holds pickled objects: exit 2, one line, nothing outside the bundle is read."""


def damaged(text):
    """The BundleError ``<text>; copy the bundle again``."""
    return BundleError(text + "; copy the bundle again")


class WriteFailed(Exception):
    """device_results.json cannot be written (disk full, read-only, no permission): exit 10, nothing partial."""


def one_line(text):
    return (str(text).strip().splitlines() or [""])[0][:300]


def plain_name(name, what):
    """A name manifest.json uses inside a file name (a model's): letters, digits, _ and -, nothing else."""
    if not isinstance(name, str) or not name or len(name) > 64 or not set(name) <= NAME_CHARS:
        rule = "letters, digits, _ and -; no separators or '..'"
        raise BundleError(
            f"manifest.json: {what} {name!r} is not a plain name ({rule}); refusing the bundle (copy it again)"
        )
    return name


def bad_relative(rel):
    """True unless ``rel`` is a relative path of plain parts: no '..', '.', empty part, backslash or NUL."""
    if not isinstance(rel, str) or not rel or chr(0) in rel or chr(92) in rel or rel.startswith("/"):
        return True
    return any(part in ("", ".", "..") for part in rel.split("/"))


def bundle_file(rel, what="file"):
    """The bundle file manifest.json calls ``rel``, resolved; BundleError unless it is a relative path
    without '..' (or a backslash) that stays inside the bundle."""
    if bad_relative(rel):
        raise BundleError(
            f"manifest.json: {what} path {rel!r} may lead outside the bundle (not a plain relative "
            "path: an absolute path, a '..' or '.' part, a backslash); refusing to read it (copy the "
            "bundle again)"
        )
    try:
        path = (HERE / rel).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        path = HERE
    if HERE not in path.parents:
        raise BundleError(
            f"manifest.json lists a {what} outside the bundle: {rel!r}; refusing to read it (copy the bundle again)"
        )
    return path


def regular_file(path, what, limit=None):
    """``path`` when it is a regular file (not a FIFO or a device) within ``limit`` bytes; BundleError."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise damaged(f"{what} {path.name} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise damaged(f"{what} {path.name} is not a regular file")
    if limit is not None and st.st_size > limit:
        raise damaged(f"{what} {path.name} has {st.st_size:d} bytes, more than {limit:d}")
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
        raise damaged(f"manifest.json is unreadable ({one_line(exc)})") from None
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
        problem = f"{type(exc).__name__}: {one_line(exc)}"
        raise damaged(f"manifest.json lacks a field or has a malformed one ({problem})") from None
    return manifest


def load_array(rel, what):
    """A bundled .npy array, never unpickled (an object array is refused)."""
    path = regular_file(bundle_file(rel, what), what)
    try:
        with open(path, "rb") as f:
            return np.load(f, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):
            raise damaged(f"{what} {rel} holds pickled Python objects, which are never loaded") from None
        raise damaged(f"{what} {rel} is not a readable .npy file ({one_line(exc)})") from None
    except OSError as exc:
        raise damaged(f"{what} {rel} cannot be read ({one_line(exc)})") from None


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
        elif wire in (1, 5):  # fixed 64 or 32 bits
            i += 8 if wire == 1 else 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise ValueError("truncated protobuf")
            yield key >> 3, buf[i : i + length]
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
        raise damaged(f"graph {graph.name} is not a readable ONNX file ({one_line(exc)})") from None
    for loc in sorted(set(locations)):
        target = None if bad_relative(loc) else (graph.parent / loc).resolve()
        if target is None or HERE not in target.parents:
            raise BundleError(
                f"graph {graph.name} names external data {loc!r} outside the bundle; refusing to run it "
                "(copy the bundle again)"
            )
        regular_file(target, f"external data of {graph.name}:")


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


def ort_providers(choice):
    """ONNX Runtime providers for --provider (auto: CUDA when this onnxruntime offers it, else the CPU)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if choice == "auto":
        choice = "cuda" if "CUDAExecutionProvider" in available else "cpu"
    order = {"cpu": ["cpu"], "cuda": ["cuda", "cpu"], "tensorrt": ["tensorrt", "cuda", "cpu"]}[choice]
    missing = [ORT_PROVIDERS[p] for p in order if ORT_PROVIDERS[p] not in available]
    if missing:
        have = ", ".join(available)
        raise RuntimeError(
            f"--provider {choice} needs {missing[0]}, which this onnxruntime does not offer (it has: {have})"
        )
    return [ORT_PROVIDERS[p] for p in order]


def run_onnxruntime(entry, feed, providers, used):
    import onnxruntime as ort

    graph = bundle_file(entry["onnx"], "graph")  # its external data checked before any runtime opened a graph
    sess = ort.InferenceSession(str(graph), providers=providers)
    used[:] = sess.get_providers()
    if used[0] != providers[0]:  # onnxruntime fell back with a warning only: say so, and record it
        print("note: asked for %s, onnxruntime runs on %s" % (providers[0], used[0]))
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {i.name: feed[i.name] for i in sess.get_inputs()})))


def run_tensorrt(entry, feed, manifest):
    import polygraphy.backend.trt as poly

    engine = bundle_file(entry["engine"], "engine")
    if os.path.lexists(engine):  # built by build_engine.sh
        loader = poly.EngineFromBytes(regular_file(engine, "engine").read_bytes())
    else:
        profile = poly.Profile()
        for i in entry["inputs"]:
            if not isinstance(i["shape"][0], int):
                b, *rest = feed[i["name"]].shape
                profile.add(i["name"], [1] + rest, [b] + rest, [max(b, manifest["max_batch"])] + rest)
        import tensorrt as trt

        # TensorRT >= 11 builds strongly typed only (no fp16 flag): the engine takes the graph's precision
        strong = bool(entry.get("strongly_typed")) or int(trt.__version__.split(".")[0]) >= 11
        profiles = [profile] if len(profile) else None
        config = poly.CreateConfig(fp16=bool(manifest["fp16"]) and not strong, profiles=profiles)
        graph = bundle_file(entry["onnx"], "graph")  # its external data checked before any runtime opened a graph
        network = poly.NetworkFromOnnxPath(str(graph), strongly_typed=True if strong else None)
        loader = poly.EngineFromNetwork(network, config=config)
    with poly.TrtRunner(loader) as runner:
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
    text = json.dumps(finite(results), indent=2, allow_nan=False) + "\n"
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise WriteFailed("cannot write %s (%s); nothing was written" % (path, exc.strerror or exc)) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
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
    about = "Check this bundle's files and compare the runtime's outputs with the expected ones; "
    about += "write device_results.json. Exit 0 PASS, 1 FAIL, 2 damaged bundle, 5 no runtime, "
    about += "10 the results cannot be written."
    runtime_help = "auto: TensorRT when `tensorrt` and `polygraphy` import, else ONNX Runtime"
    provider_help = "ONNX Runtime execution provider (auto: CUDA when offered, else CPU)"
    results_help = "where the results go (default: device_results.json in this bundle); "
    results_help += "bring it back: tokexport check device_results.json --baseline report.json"
    ap = argparse.ArgumentParser(description=about)
    ap.add_argument("--runtime", choices=["auto", "tensorrt", "onnxruntime"], default="auto", help=runtime_help)
    ap.add_argument("--provider", choices=["auto", "cpu", "cuda", "tensorrt"], default="auto", help=provider_help)
    ap.add_argument("--results", default="device_results.json", help=results_help)
    args = ap.parse_args(argv)
    try:
        return verify(args)
    except (BundleError, WriteFailed) as exc:
        print("error: %s" % one_line(exc), file=sys.stderr)
        return 2 if isinstance(exc, BundleError) else 10


def choose_runtime(runtime, provider):
    """(the runtime --runtime asks for: auto is TensorRT when `tensorrt` and `polygraphy` import, else ONNX
    Runtime; ONNX Runtime's providers for --provider; why it cannot run here, None when it can)."""
    has_trt = importable("tensorrt") and importable("polygraphy")
    if runtime == "auto":
        runtime = "tensorrt" if has_trt else "onnxruntime"
        if importable("tensorrt") and not has_trt:
            print("note: tensorrt imports but polygraphy does not (pip install polygraphy); using ONNX Runtime")
    if runtime == "tensorrt":
        problem = None if has_trt else "--runtime tensorrt needs the tensorrt and polygraphy Python packages"
        return runtime, None, problem
    if not importable("onnxruntime"):
        return runtime, None, "neither TensorRT (tensorrt + polygraphy) nor onnxruntime is importable here"
    try:
        return runtime, ort_providers(provider), None
    except RuntimeError as exc:
        return runtime, None, str(exc)


def run_models(manifest, runtime, providers, results):
    """Every model of the bundle run on the bundled inputs and compared with the expected outputs, into
    ``results``; whether all passed."""
    used = []
    results["runtime"] = {"name": runtime, "versions": versions(runtime), "providers": used}
    feed = {n: load_array(i["file"], "input file") for n, i in manifest["inputs"].items()}
    for entry in manifest["models"].values():  # before any runtime opens a graph
        check_external_data(bundle_file(entry["onnx"], "graph"))
    passed = True
    for name, entry in manifest["models"].items():
        t0 = time.perf_counter()
        if runtime == "tensorrt":
            out = run_tensorrt(entry, feed, manifest)
        else:
            out = run_onnxruntime(entry, feed, providers, used)
        ms = 1000 * (time.perf_counter() - t0)
        expected = {o: load_array(f["file"], "expected output file") for o, f in entry["expected"].items()}
        rows = compare_outputs(out, expected, manifest["tolerances"])
        where = runtime + (" " + used[0] if used else "")
        print(f"{name} ({entry['onnx']}, {where}, first run {ms:.0f} ms incl. load):")
        for row in rows:
            print(format_row(row))
        ok = all(r["passed"] for r in rows)
        results["models"][name] = {"outputs": rows, "passed": ok, "first_run_ms": ms}
        passed = passed and ok
    results["runtime"]["provider"] = used[0] if used else None
    return passed


def verify(args):
    manifest = read_manifest()
    results_path = HERE / args.results  # an absolute --results stays as given
    created = int(time.time())
    keys = ("onnx", "source_sha256", "precision", "strongly_typed")
    models = {name: {k: entry.get(k) for k in keys} for name, entry in manifest["models"].items()}
    bundle = {"tokexport_version": manifest.get("tokexport_version"), "target": manifest["target"]}
    bundle.update(manifest_sha256=sha256(HERE / "manifest.json"), models=models)
    results = {"format": "tokexport-device-results", "format_version": 1, "created_unix": created, "bundle": bundle}
    results["machine"] = {"platform": platform.platform(), "machine": platform.machine()}
    results.update(tolerances=manifest["tolerances"], runtime=None, models={}, trtexec={}, passed=False)
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
    runtime, providers, problem = choose_runtime(args.runtime, args.provider)
    if problem is not None:
        print(f"FAIL: {problem}")
        results["problem"] = problem
        write_results(results_path, results)
        return 5
    passed = run_models(manifest, runtime, providers, results)
    results["passed"] = bool(passed)
    for name, summary in results["trtexec"].items():
        lat, qps = summary.get("latency_ms") or {}, summary.get("throughput_qps")
        print(f"trtexec {name}: median {lat.get('median')} ms, p90 {lat.get('p90')} ms, {qps} qps ({summary['log']})")
    tol_text = ", ".join(f"{k} {v:g}" for k, v in manifest["tolerances"].items())
    write_results(results_path, results)
    print(f"{'PASS' if passed else 'FAIL'} ({runtime}; tolerances: {tol_text})")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
