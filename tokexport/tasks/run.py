"""The one driver: recipe → task → load → export pair → parity → metrics → bench → target check →
deploy (engines or bundle) → report, staged into a temporary directory and renamed into place.

Every task (:mod:`tokexport.tasks.base`) runs through :func:`run`; what differs between tasks lives in
the task, what a conversion is lives here."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..checkpoints import pickle_policy
from ..errors import AccuracyError, ContractError, InputError, ParityError
from ..stages import metric as MC
from ..stages.compare import parity as compare_parity
from ..stages.environment import environment
from ..stages.report_schema import SCHEMA_VERSION, validate_report
from ..stages.runners import OrtRunner, run_rows
from .base import Graphs, Stages, Task


@dataclass
class Result:
    """What `tokexport convert` produced: the report (also on disk), where, and the exit code."""

    report: dict
    out_dir: Path
    exit_code: int
    extra_outputs: str = ""  # what else the task wrote into out_dir (vocab-trim: the trimmed checkpoint)

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    # the report's sections as attributes (the documented Python API)
    def __getattr__(self, name: str):
        report = self.__dict__.get("report") or {}
        if name in report:
            return report[name]
        raise AttributeError(name)


def header(kind: str, label: str, recipe) -> dict:
    """The fields every report.json starts with (what `tokexport check` reads to know the schema)."""
    import time

    from .. import __version__

    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "tokexport_version": __version__,
        "created_unix": int(time.time()),
        "recipe_path": label,
        "recipe": recipe.model_dump(mode="json"),
        "environment": environment(),
    }


def _parity(task: Task, graphs: Graphs, stages: Stages) -> dict[str, dict]:
    cases = task.parity_cases(graphs)
    out = {}
    par = task.recipe.verify.parity
    b = task.recipe.bench  # bench.provider: parity runs where bench runs
    with stages.stage("verify: parity", total=len(cases)) as advance:
        for key, case in cases.items():
            runner = OrtRunner(case.graph, case.threads, b.provider, b.provider_options)
            got = run_rows(runner, case.feed)
            ref = run_rows(case.reference, case.feed)
            precision = getattr(task.recipe.export, "precision", "fp32")  # fp16 graphs: fp16 tolerances
            atol, mean_atol, tie = par.tolerances(precision)
            tie = case.tie_margin if precision == "fp32" else tie
            out[key] = compare_parity(got, ref, atol, mean_atol, case.mask, case.margins, tie, case.unmasked)
            out[key]["provider"], out[key]["providers"] = runner.provider, runner.providers
            advance()
    return out


def _bench(task: Task, graphs: Graphs, stages: Stages) -> dict | None:
    from ..stages.bench import compare_latency

    b = task.recipe.bench
    if not b.enabled:
        return None
    sizes = task.bench_batches()
    with stages.stage("bench", total=len(sizes) * b.repeats) as advance:
        batches = compare_latency(
            graphs.baseline,
            graphs.model,
            task.bench_feeds,
            sizes,
            b.warmup,
            b.repeats,
            b.threads,
            on_step=advance,
            provider=b.provider,
            provider_options=b.provider_options,
        )
    import onnxruntime

    from ..stages.runners import PROVIDERS, default_threads

    ep = PROVIDERS[b.provider]  # OrtRunner refused any other: the provider actually used
    return {
        "runtime": f"onnxruntime {onnxruntime.__version__} {ep}",
        "provider": ep,
        "provider_options": {k: str(v) for k, v in b.provider_options.items()},
        "threads": b.threads or default_threads(),
        "repeats": b.repeats,
        "warmup": b.warmup,
        "batches": batches,
        **task.bench_extra(batches),
    }


def _deploy(task: Task, tmp: Path, graphs: Graphs, stages: Stages) -> dict | None:
    """TensorRT engines (built, timed, compared with ONNX Runtime) where TensorRT and a GPU exist;
    otherwise deploy/, a bundle that verifies itself on the device (tokexport.deploy)."""
    from ..deploy import build_and_compare, tensorrt_available, write_bundle

    d = task.recipe.deploy
    feed = {k: np.ascontiguousarray(v) for k, v in task.deploy_feed().items()}
    if d.engines and tensorrt_available():
        results = {}
        with stages.stage("tensorrt engines", total=2) as advance:
            for name, p in (("model", graphs.model), ("baseline", graphs.baseline)):
                results[name] = build_and_compare(p, tmp / f"{name}.engine", feed, d.tolerances(), d.fp16, d.max_batch)
                advance()
        return {
            "kind": "engines",
            "fp16": d.fp16,
            "engines": ["model.engine", "baseline.engine"],
            "results": results,
            "note": "TensorRT engines built here (model.engine, baseline.engine), timed and compared with ONNX "
            "Runtime: "
            + ", ".join(f"{n} {'PASS' if r['passed'] else 'FAIL'} {r['median_ms']:.2f} ms" for n, r in results.items()),
        }
    if not d.bundle:
        return None
    with stages.stage("deploy bundle"):
        bundle = write_bundle(
            tmp / "deploy",
            {"model": graphs.model, "baseline": graphs.baseline},
            task.recipe.export.target,
            feed,
            d.tolerances(),
            fp16=d.fp16,
            max_batch=d.max_batch,
            archive=False,
        )
    return {
        "kind": "bundle",
        "path": "deploy",
        "target": bundle.manifest["target"],
        "fp16": d.fp16,
        "tolerances": d.tolerances(),
        "note": "TensorRT is not available here: deploy/ holds model.onnx and baseline.onnx, build_engine.sh "
        "(trtexec) and verify_on_device.py (sha256, then TensorRT or ONNX Runtime against ONNX Runtime's "
        "expected outputs); run both on the device, or `tokexport bundle` for a .tar.gz",
    }


def _artifacts(graphs: Graphs) -> dict:
    from ..onnx_tools import load, onnx_files, sha256_onnx

    def nbytes(p: Path) -> int:
        return sum(f.stat().st_size for f in onnx_files(p))

    def nodes(p: Path) -> int:  # graph size: the reduction's selection adds nodes (external data is not read)
        return len(load(p, load_external=False).graph.node)

    return {
        "onnx": graphs.model.name,
        "onnx_sha256": sha256_onnx(graphs.model),
        "onnx_bytes": nbytes(graphs.model),
        "onnx_nodes": nodes(graphs.model),
        "baseline_onnx": graphs.baseline.name,
        "baseline_onnx_sha256": sha256_onnx(graphs.baseline),
        "baseline_onnx_bytes": nbytes(graphs.baseline),
        "baseline_onnx_nodes": nodes(graphs.baseline),
    }


def _failures(parity: dict, parity_base: dict, metrics: dict, baselines: dict | None = None) -> list[str]:
    from ..stages.baselines import gate_failures

    out = []
    if not parity["passed"]:
        out.append(f"parity: model.onnx differs from PyTorch by {parity['max_abs_diff']:.3g} (atol {parity['atol']:g})")
    if not parity_base["passed"]:
        out.append(f"parity: baseline.onnx differs from PyTorch by {parity_base['max_abs_diff']:.3g}")
    out += MC.failure_lines(metrics)
    out += gate_failures(baselines)
    if not any(m.get("passed") is True for m in metrics.values() if not MC.is_info(m)):
        out.append("accuracy: no metric has a threshold, so nothing was verified; set verify thresholds in the recipe")
    return out


HOLD_ENV = "TOKEXPORT_TEST_HOLD_AT"


def hold_for_tests(stage: str) -> None:
    """Test hook, inert unless ``$TOKEXPORT_TEST_HOLD_AT`` names ``stage``: say so on stderr and wait for a
    line on stdin, so that a test can act at a known point of a run (interrupt it, or race it for the
    output's lock: tests/test_held_up.py, tests/test_safe_outputs.py). Stages: ``exported`` (the graphs are
    in the staging directory, parity not run yet)."""
    if os.environ.get(HOLD_ENV) == stage:
        import sys

        print(f"tokexport: holding at {stage}", file=sys.stderr, flush=True)
        sys.stdin.readline()  # Ctrl-C (SIGINT) while waiting raises KeyboardInterrupt, as anywhere else


def produce(task: Task, tmp: Path, stages: Stages) -> dict:
    """Run the stages of a loaded task into ``tmp``; the report (validated against the contract)."""
    from ..onnx_tools import check_target

    graphs = task.export(tmp, stages)
    from ..export import finish_graphs

    finished = finish_graphs(graphs, task.recipe.export, stages)  # export.fold / export.precision, in place
    hold_for_tests("exported")
    par = _parity(task, graphs, stages)
    task.parity_results = par  # a task may use a graph that passed parity as the original's stand-in
    with stages.stage("verify: accuracy"):
        metrics = task.metrics(graphs, stages)
    acc_passed = MC.accuracy_passed(metrics)
    bench = _bench(task, graphs, stages)
    trt = check_target(graphs.model, task.recipe.export.target).to_dict()
    deploy = _deploy(task, tmp, graphs, stages)
    sections = task.sections(graphs)
    if isinstance(sections.get("export"), dict):
        sections["export"].update(finished)
    baselines = sections.pop("baselines", None)  # the honest baselines at the same budget (stages.baselines)
    gate = (baselines or {}).get("gate")
    acc_passed = acc_passed and (gate is None or bool(gate["passed"]))
    accuracy = {**sections.pop("accuracy_extra", {}), "metrics": metrics, "passed": acc_passed}
    if baselines is not None:
        sections["baselines"] = baselines
    artifacts = {**_artifacts(graphs), **sections.pop("artifacts_extra", {})}
    report = {
        **header(task.kind, task.label, task.recipe),
        **sections,
        "artifacts": artifacts,
        "parity": par["parity"],
        "parity_baseline": par["parity_baseline"],
        "accuracy": accuracy,
        "bench": bench,
        "trt_check": trt,
        "deploy": deploy,
        "passed": bool(par["parity"]["passed"] and par["parity_baseline"]["passed"] and acc_passed),
        "failures": _failures(par["parity"], par["parity_baseline"], metrics, baselines),
    }
    problems = validate_report(report)
    if problems:  # a bug of the task, not of the user's input: say exactly what broke the contract
        raise ContractError(
            f"{task.kind} report breaks the report contract (a tokexport bug, please report it): "
            + "; ".join(problems[:10])
        )
    return report


@contextlib.contextmanager
def naming_the_recipe(recipe, label: str):
    """Errors about a recipe field found once the model is known (``reduction.prune_layers[1]: block 9 is
    out of range; the model has 4 blocks``) name the recipe file first, as the recipe's schema errors do:
    ``r.yaml: reduction.prune_layers[1]: ...``."""
    try:
        yield
    except InputError as e:
        msg = str(e)
        field = re.split(r"[.:\[ ]", msg, maxsplit=1)[0]
        fields = getattr(type(recipe), "model_fields", {})
        if (
            type(e) is InputError
            and label
            and not label.startswith("<")
            and not msg.startswith(f"{label}:")
            and field in fields
        ):
            raise InputError(f"{label}: {msg}") from None
        raise


def final_paths(report, staging: Path, final: Path):
    """``report`` with every path into the staging directory (``trt_check.model``, ...) naming the final
    output instead: the staging directory is gone once the output is in place."""
    old, new = str(staging), str(final)
    if isinstance(report, dict):
        return {k: final_paths(v, staging, final) for k, v in report.items()}
    if isinstance(report, list):
        return [final_paths(v, staging, final) for v in report]
    if isinstance(report, str) and (report == old or report.startswith(old + os.sep)):
        return new + report[len(old) :]
    return report


def exit_code(report: dict) -> int:
    if not report["parity"]["passed"] or not report["parity_baseline"]["passed"]:
        return ParityError.exit_code
    if not report["accuracy"]["passed"]:
        return AccuracyError.exit_code
    return 0


def make_task(recipe, base_dir: Path, label: str, **kwargs) -> Task:
    """The registered task that runs ``recipe``."""
    from . import registered  # noqa: F401  (imports every task module, which registers it)
    from .base import task_for

    return task_for(recipe)(recipe, base_dir, label, **kwargs)


def write_reports(task: Task, report: dict, out: Path) -> None:
    from ..report import write_json
    from ..stages.render import render_markdown

    write_json(report, out / "report.json")
    (out / "report.md").write_text(render_markdown(report, task.markdown(report)), encoding="utf-8")


def model_paths(model: str, base_dir: Path) -> list[Path]:
    """Where a recipe's ``model`` lives on this machine, found without loading or downloading anything
    (a bundled model's folder, or an existing local path); an output may never be one of them or hold one."""
    from ..zoo import BUNDLED, GENERATED, models_dir

    if model in BUNDLED or model in GENERATED:
        return [models_dir() / model]
    p = Path(model).expanduser()
    p = p if p.is_absolute() else Path(base_dir) / p
    return [p] if os.path.lexists(p) else []


def run(
    recipe,
    base_dir: Path,
    out_dir: Path,
    force: bool = False,
    stages: Stages | None = None,
    label: str = "<recipe>",
    protect: tuple = (),
    **task_kwargs,
) -> Result:
    """Run a validated recipe into ``out_dir``. The output is checked and claimed (:mod:`tokexport.outdir`)
    before the model is loaded, built in a staging directory and renamed into place when complete;
    ``protect`` adds paths it may not replace (the recipe's directory and the model's always are).
    ``task_kwargs`` go to the task (the ViT task takes ``loaded``: a model already loaded, for sweeps)."""
    from ..outdir import claim_out_dir

    stages = stages or Stages()
    out_dir, base_dir = Path(os.path.expanduser(out_dir)), Path(base_dir)  # a leading ~: the home directory
    task = make_task(recipe, base_dir, label, **task_kwargs)
    from ..stages.runners import preflight

    preflight(recipe.bench.provider, recipe.bench.provider_options)  # exit 5 before any model is loaded
    protect = (*protect, base_dir, *model_paths(recipe.model, base_dir))
    with (
        claim_out_dir(out_dir, force, kind="convert", protect=protect) as claim,
        naming_the_recipe(recipe, label),
        pickle_policy(getattr(recipe, "allow_pickle", False)),
    ):
        task.load(stages)
        with claim.staged() as tmp:
            report = final_paths(produce(task, tmp, stages), tmp, claim.path)
            write_reports(task, report, tmp)
    return Result(report=report, out_dir=out_dir, exit_code=exit_code(report), extra_outputs=task.extra_outputs)
