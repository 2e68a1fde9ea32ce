"""recipe → load → reduce → export → verify → bench → report, as one library call.

Everything is written into a temporary sibling of the output directory and renamed into place only
when complete; an existing output directory is replaced only with ``force``.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import verify as V
from .bench import compare_latency
from .data import Preprocess, image_folder, instance_recognition_set, natural_images
from .errors import AccuracyError, InputError, ParityError
from .export import export_onnx
from .flops import encoder_flops
from .load import LoadedModel, load_model
from .onnx_tools import onnx_files, sha256_onnx
from .outdir import claim_out_dir, staged_dir
from .recipe import Recipe, load_recipe
from .reduce import METHODS
from .reduce.patch import reduced
from .reduce.schedule import plan
from .report import render_markdown, report_header, write_json
from .runners import OrtRunner, TorchRunner, run_batched


def _deploy(recipe, tmp: Path, model_path: Path, base_path: Path, x: np.ndarray, stages) -> dict | None:
    """TensorRT engines (built, timed, compared with ONNX Runtime) where TensorRT and a GPU exist;
    otherwise deploy/, a bundle that verifies itself on the device (tokexport.deploy)."""
    from .deploy import build_and_compare, tensorrt_available, write_bundle
    from .onnx_tools import inspect_model

    d = recipe.deploy
    batch = 1 if recipe.export.batch == "dynamic" else recipe.export.batch
    sample = np.ascontiguousarray(x[:batch]) if len(x) >= batch else np.repeat(x[:1], batch, axis=0)
    feed = {inspect_model(model_path)["inputs"][0]["name"]: sample}
    if d.engines and tensorrt_available():
        results = {}
        with stages.stage("tensorrt engines", total=2) as advance:
            for name, p in (("model", model_path), ("baseline", base_path)):
                results[name] = build_and_compare(p, tmp / f"{name}.engine", feed, d.tolerances(), d.fp16, d.max_batch)
                advance()
        return {"kind": "engines", "fp16": d.fp16, "engines": ["model.engine", "baseline.engine"], "results": results,
                "note": "TensorRT engines built here (model.engine, baseline.engine), timed and compared with ONNX "
                        "Runtime: " + ", ".join(f"{n} {'PASS' if r['passed'] else 'FAIL'} {r['median_ms']:.2f} ms"
                                                for n, r in results.items())}
    if not d.bundle:
        return None
    with stages.stage("deploy bundle"):
        bundle = write_bundle(tmp / "deploy", {"model": model_path, "baseline": base_path}, recipe.export.target, feed,
                              d.tolerances(), fp16=d.fp16, max_batch=d.max_batch, archive=False)
    return {"kind": "bundle", "path": "deploy", "target": bundle.manifest["target"], "fp16": d.fp16,
            "tolerances": d.tolerances(),
            "note": "TensorRT is not available here: deploy/ holds model.onnx and baseline.onnx, build_engine.sh "
                    "(trtexec) and verify_on_device.py (sha256, then TensorRT or ONNX Runtime against ONNX Runtime's "
                    "expected outputs); run both on the device, or `tokexport bundle` for a .tar.gz"}


def selection_margins(fn: Callable[[torch.Tensor], dict], x: np.ndarray) -> list[float]:
    """Per sample, the smallest relative score gap of any token selection the PyTorch reference made
    (:mod:`tokexport.reduce.margins`), for telling near-ties from a wrong graph in the parity check."""
    from .reduce.margins import recording, sample_margins

    out = []
    with torch.inference_mode():
        for i in range(len(x)):
            with recording() as rec:
                fn(torch.from_numpy(np.ascontiguousarray(x[i:i + 1])))
            out += sample_margins(rec, 1)
    return out


def trt_section(model_path: Path, target: str) -> dict:
    """Static checks of the reduced graph against the recipe's target (plus polygraphy lint), for the report."""
    from .onnx_tools import check_target

    return check_target(model_path, target).to_dict()


def artifacts_section(model_path: Path, base_path: Path) -> dict:
    return {"onnx": model_path.name, "onnx_sha256": sha256_onnx(model_path),
            "onnx_bytes": sum(p.stat().st_size for p in onnx_files(model_path)),
            "baseline_onnx": base_path.name, "baseline_onnx_sha256": sha256_onnx(base_path),
            "baseline_onnx_bytes": sum(p.stat().st_size for p in onnx_files(base_path))}


def failure_lines(parity_red: dict, parity_base: dict, metrics: dict, atol: float) -> list[str]:
    """One line per failed check, for the report and the console."""
    out = []
    if not parity_red["passed"]:
        out.append(f"parity: model.onnx differs from PyTorch by {parity_red['max_abs_diff']:.3g} (atol {atol:g})")
    if not parity_base["passed"]:
        out.append(f"parity: baseline.onnx differs from PyTorch by {parity_base['max_abs_diff']:.3g}")
    for name, m in metrics.items():
        if m["passed"] is False:
            out.append(f"accuracy: {name} {m['reduced']:.4f} misses {m['threshold']} (original {m['original']:.4f})")
    return out


class Stages:
    """Progress hooks; the CLI supplies a rich implementation, the library default does nothing."""

    @contextlib.contextmanager
    def stage(self, name: str, total: int | None = None):
        yield lambda n=1: None

    def log(self, message: str) -> None:
        pass


@dataclass
class Result:
    report: dict
    out_dir: Path
    exit_code: int


def _forward(lm: LoadedModel) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    kwargs = lm.adapter.forward_kwargs(lm.image_size)

    def fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return lm.adapter.outputs(lm.model, lm.model(pixel_values=x, **kwargs))

    return fn


def convert(recipe_path: str | Path, out: str | Path | None = None, force: bool = False,
            stages: Stages | None = None) -> Result:
    """`tokexport convert`: load and validate the recipe file, then run it."""
    recipe_path = Path(recipe_path)
    recipe = load_recipe(recipe_path)
    out_dir = Path(out) if out is not None else Path("out") / recipe_path.stem
    return run(recipe, recipe_path.resolve().parent, out_dir, force, stages, label=str(recipe_path),
               protect=(recipe_path,))


def model_paths(model: str, base_dir: Path) -> list[Path]:
    """Where a recipe's ``model`` lives on this machine, found without loading or downloading anything
    (a bundled model's folder, or an existing local path); an output may never be one of them or hold one."""
    from .zoo import BUNDLED, GENERATED, models_dir

    if model in BUNDLED or model in GENERATED:
        return [models_dir() / model]
    p = Path(model).expanduser()
    p = p if p.is_absolute() else Path(base_dir) / p
    return [p] if os.path.lexists(p) else []


def run(recipe: Recipe, base_dir: Path, out_dir: Path, force: bool = False, stages: Stages | None = None,
        loaded: LoadedModel | None = None, label: str = "<recipe>", protect: tuple = ()) -> Result:
    """Run a validated recipe. ``base_dir`` resolves relative paths in it; ``loaded`` reuses a model
    already loaded with the same recipe settings (benchmark sweeps). The output is checked and claimed
    (:mod:`tokexport.outdir`) before the model is loaded; ``protect`` adds paths it may not replace
    (the recipe's directory and the model's are always protected)."""
    stages = stages or Stages()
    protect = (*protect, base_dir, *model_paths(recipe.model, base_dir))
    with claim_out_dir(Path(out_dir), force, kind="convert", protect=protect):
        if recipe.task == "visual-tokens":
            from .vlm.pipeline import run_visual

            return _in_tmp(Path(out_dir), lambda tmp: run_visual(recipe, label, base_dir, tmp, stages))
        if recipe.task == "vocab-trim":
            from .vocab.pipeline import run_vocab

            return _in_tmp(Path(out_dir), lambda tmp: run_vocab(recipe, label, base_dir, tmp, stages))
        if loaded is None:
            def check_schedule(adapter, image_size):
                stages_ = plan(recipe.reduction, adapter.n_tokens(image_size), adapter.n_prefix(), adapter.num_layers)
                if stages_:
                    METHODS[recipe.reduction.method](recipe.reduction).check(adapter.n_prefix())

            with stages.stage("load"):
                loaded = load_model(recipe.model, base_dir, recipe.family, recipe.task, recipe.export.image_size,
                                    before_weights=check_schedule)
        return _run(recipe, label, base_dir, loaded, Path(out_dir), stages)


def _validate_against_model(recipe: Recipe, lm: LoadedModel, base_dir: Path) -> Path | None:
    acc = recipe.verify.accuracy
    if lm.task != "image-classification":
        for name in ("top1_agreement", "imagefolder_top1"):
            if name in acc.metrics:
                raise InputError(f"verify.accuracy.metrics.{name}: needs a classification head, but the model is {lm.task}")
        if acc.imagefolder:
            raise InputError("verify.accuracy.imagefolder: needs a classification head; remove it for a feature model")
    folder = None
    if acc.imagefolder:
        folder = Path(acc.imagefolder).expanduser()
        folder = folder if folder.is_absolute() else base_dir / folder
        if not folder.is_dir():
            raise InputError(f"verify.accuracy.imagefolder: {folder} is not a directory")
    return folder


def _run(recipe: Recipe, label: str, base_dir: Path, lm: LoadedModel, out_dir: Path, stages: Stages) -> Result:
    adapter = lm.adapter
    folder = _validate_against_model(recipe, lm, base_dir)
    n_tokens, n_prefix = adapter.n_tokens(lm.image_size), adapter.n_prefix()
    red_cfg = recipe.reduction
    method = METHODS[red_cfg.method](red_cfg)
    schedule = plan(red_cfg, n_tokens, n_prefix, adapter.num_layers)
    acc = recipe.verify.accuracy

    with stages.stage("data"):
        pre = Preprocess(lm.image_size, lm.mean, lm.std)
        images = natural_images(include_optional=False)
        iset = instance_recognition_set(images, pre, acc.samples_per_class, acc.prototypes_per_class,
                                        tuple(acc.crop_scale), acc.seed)
        labelled = image_folder(folder, pre, acc.imagefolder_limit_per_class) if folder else None
    parity_x = iset.eval_x[np.linspace(0, len(iset.eval_x) - 1, recipe.verify.parity.samples).round().astype(int)]

    original_fn = _forward(lm)

    def reduced_fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with reduced(lm.model, adapter, schedule, method):
            return original_fn(x)

    return _in_tmp(out_dir, lambda tmp: _produce(recipe, label, lm, tmp, stages, method, schedule, n_tokens, n_prefix,
                                                  original_fn, reduced_fn, iset, labelled, parity_x))


def _in_tmp(out_dir: Path, produce: Callable[[Path], dict]) -> Result:
    """Run ``produce(tmp)`` in a temporary sibling of ``out_dir``, write the reports, rename into place
    (under the claim :func:`run` holds on ``out_dir``)."""
    with staged_dir(out_dir, kind="convert") as tmp:
        report = produce(tmp)
        write_json(report, tmp / "report.json")
        (tmp / "report.md").write_text(render_markdown(report))
    code = 0
    if not report["parity"]["passed"] or not report["parity_baseline"]["passed"]:
        code = ParityError.exit_code
    elif not report["accuracy"]["passed"]:
        code = AccuracyError.exit_code
    return Result(report=report, out_dir=out_dir, exit_code=code)


def _produce(recipe, label, lm, tmp: Path, stages, method, schedule, n_tokens, n_prefix,
             original_fn, reduced_fn, iset, labelled, parity_x) -> dict:
    ex = recipe.export
    dynamic = ex.batch == "dynamic"
    example = torch.from_numpy(parity_x[: (1 if dynamic else ex.batch)].copy())
    if len(example) < (1 if dynamic else ex.batch):
        example = example.repeat(ex.batch, 1, 1, 1)[: ex.batch]
    model_path, base_path = tmp / "model.onnx", tmp / "baseline.onnx"

    with stages.stage("export", total=2) as advance:
        base_info = export_onnx(lm.model, original_fn, example, base_path, ex.opset, dynamic, ex.exporter)
        advance()
        with reduced(lm.model, lm.adapter, schedule, method):
            red_info = export_onnx(lm.model, original_fn, example, model_path, ex.opset, dynamic, ex.exporter)
        advance()

    base_ort, red_ort = OrtRunner(base_path), OrtRunner(model_path)
    par = recipe.verify.parity
    with stages.stage("verify: parity", total=2) as advance:
        margins = selection_margins(reduced_fn, parity_x) if par.tie_margin > 0 else None
        parity_red = V.parity(red_ort, TorchRunner(reduced_fn), parity_x, par.atol, par.mean_atol, margins,
                              par.tie_margin)
        advance()
        parity_base = V.parity(base_ort, TorchRunner(original_fn), parity_x, par.atol, par.mean_atol)
        advance()

    feat = lm.adapter.feature_output(red_info.output_names)
    acc = recipe.verify.accuracy
    with stages.stage("verify: accuracy", total=3 + (2 if labelled else 0)) as advance:
        orig_runner = TorchRunner(original_fn)
        orig_eval = run_batched(orig_runner, iset.eval_x)
        advance()
        orig_proto = run_batched(orig_runner, iset.proto_x)[feat]
        advance()
        red_eval = run_batched(red_ort, iset.eval_x)  # the shipped graph, not the PyTorch twin
        advance()
        metrics = V.feature_metrics(orig_eval[feat], red_eval[feat], orig_proto, iset.eval_y, iset.proto_y,
                                    iset.n_classes, acc.metrics)
        if lm.task == "image-classification":
            metrics |= V.classifier_metrics(orig_eval["logits"], red_eval["logits"], acc.metrics)
        if labelled is not None:
            lx, ly, _ = labelled
            o = run_batched(orig_runner, lx)["logits"]
            advance()
            r = run_batched(red_ort, lx)["logits"]
            advance()
            metrics |= V.labelled_metrics(o, r, ly, acc.metrics)
    metric_dicts = {k: v.as_dict() for k, v in metrics.items()}
    acc_passed = all(m["passed"] is not False for m in metric_dicts.values())

    trt = trt_section(model_path, ex.target)

    dims = lm.adapter.dims()
    head = lm.adapter.head_macs(lm.model)
    desc = method.describe()
    by_layer = desc.get("iterations_by_layer") or {}
    iters = [int(by_layer.get(s.layer, 0)) for s in schedule] if by_layer else None
    fl_base = encoder_flops(dims, n_tokens, n_prefix, [], head)
    fl_red = encoder_flops(dims, n_tokens, n_prefix, schedule, head, method.needs_attention, iters)
    predicted = fl_base["flops"] / fl_red["flops"]

    bench = None
    b = recipe.bench
    if b.enabled:
        rng = np.random.default_rng(0)
        pool = iset.eval_x

        def make_input(n):
            return np.ascontiguousarray(pool[rng.choice(len(pool), n, replace=len(pool) < n)])

        with stages.stage("bench", total=len(b.batch_sizes) * b.repeats) as advance:
            batches = compare_latency(base_path, model_path, make_input, b.batch_sizes, b.warmup, b.repeats, b.threads,
                                      on_step=advance)
        eff_batch = str(max(b.batch_sizes))
        bench = {
            "runtime": f"onnxruntime {__import__('onnxruntime').__version__} CPUExecutionProvider",
            "threads": b.threads or os.cpu_count(), "repeats": b.repeats, "warmup": b.warmup,
            "batches": batches,
            "flops": {"baseline": fl_base["flops"], "reduced": fl_red["flops"], "selection": fl_red["selection_flops"],
                      "predicted_speedup": predicted, "per": "image"},
            "efficiency_batch": int(eff_batch),
            "efficiency": batches[eff_batch]["speedup"] / predicted,
        }

    deploy = _deploy(recipe, tmp, model_path, base_path, parity_x, stages)

    failures = failure_lines(parity_red, parity_base, metric_dicts, par.atol)

    report = {
        **report_header("vit-token-pruning", label, recipe),
        "model": {"source": lm.source, "source_kind": lm.source_kind, "path": str(lm.path), "family": lm.adapter.family,
                  "model_type": lm.config.model_type, "architecture": type(lm.model).__name__, "task": lm.task,
                  "params": lm.params, "image_size": lm.image_size, "tokens": n_tokens, "prefix_tokens": n_prefix},
        "reduction": {"method": method.name, "rounding": recipe.reduction.rounding, "params": desc,
                      "schedule": [s.as_dict() for s in schedule],
                      "tokens_per_block": fl_red["tokens_per_block"]},
        "export": {"opset": ex.opset, "exporter": red_info.exporter, "batch": ex.batch, "trt_target": ex.trt_target,
                   "input_shape": [("batch" if dynamic else ex.batch), 3, lm.image_size, lm.image_size],
                   "outputs": red_info.output_shapes, "baseline_outputs": base_info.output_shapes},
        "artifacts": artifacts_section(model_path, base_path),
        "parity": parity_red,
        "parity_baseline": parity_base,
        "accuracy": {
            "dataset": "natural-images instance recognition" + (" + imagefolder" if labelled else ""),
            "description": (f"{iset.n_classes} classes (one per bundled photograph), {len(iset.eval_y)} eval crops "
                            f"(scale {list(acc.crop_scale)}, flips, seed {acc.seed}); class prototypes from the ORIGINAL "
                            f"model on {len(iset.proto_y)} separate crops; feature = `{feat}`; reduced = model.onnx "
                            "(onnxruntime), original = unmodified PyTorch model"),
            "classes": iset.n_classes, "samples": len(iset.eval_y),
            "metrics": metric_dicts, "passed": acc_passed,
        },
        "bench": bench,
        "trt_check": trt,
        "deploy": deploy,
        "passed": bool(parity_red["passed"] and parity_base["passed"] and acc_passed),
        "failures": failures,
    }
    return report
