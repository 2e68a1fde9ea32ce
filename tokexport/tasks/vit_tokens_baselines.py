"""The report's ``baselines`` section of a ViT token-pruning run (:meth:`~.vit_tokens.VitTokens.metrics`):
the method (model.onnx) against per-image random keep over seeds and the 2-D uniform lattice at the same
schedule, on the same eval crops (:mod:`tokexport.reduce.baselines_vit`), or the draws of an earlier run
(``baselines_from``) once checked to be computed on what this run evaluates. Each function reads the
loaded task (``task``: a :class:`~.vit_tokens.VitTokens`)."""

from __future__ import annotations

import tempfile

import numpy as np

from ..errors import InputError
from ..flops import encoder_flops
from .base import Stages


def report_baselines(
    task, orig_eval: dict, red_eval: dict, orig_proto: np.ndarray, feat: str, stages: Stages
) -> dict | None:
    """The report's ``baselines`` section: the method (model.onnx) against per-image random keep over
    seeds and the 2-D uniform lattice (PyTorch), same schedule, same eval crops."""
    import time

    from .. import metrics as M
    from ..reduce.baselines_vit import BETTER, COMPARED, baseline_runs, per_sample
    from ..stages.baselines import baselines_section

    v, lm, iset = task.recipe.verify, task.lm, task.iset
    if not v.baselines.enabled or not task.schedule:
        return None
    wanted = set(v.accuracy.metrics) | set((v.vs_baselines.metrics or []) if v.vs_baselines else [])
    gated = [m for m in COMPARED if m in wanted and (m != "top1_agreement" or "logits" in red_eval)]
    names = gated or ["feature_cosine", "instance_top1"]
    protos = M.class_prototypes(orig_proto, iset.proto_y, iset.n_classes)

    def figures(out: dict) -> dict:
        return per_sample(names, orig_eval, out, feat, protos, iset.eval_y)

    seeds = list(range(v.baselines.random_seeds))
    replayed = bool(getattr(task, "recorded_block", None))
    t0 = time.perf_counter()
    engine: dict = {}
    reused = None
    with (
        stages.stage("verify: baselines", total=len(seeds) + 1) as advance,
        tempfile.TemporaryDirectory(prefix="tokexport-baselines-") as work,
    ):
        if task.baselines_from is not None:
            runs, reused = reused_baselines(task, names)
        else:
            runs = baseline_runs(
                lm.model,
                lm.adapter,
                task.original_fn,
                task.schedule,
                iset.eval_x,
                figures,
                seeds,
                on_step=advance,
                recorded=getattr(task, "recorded_block", None),
                engine="onnxruntime",
                workdir=work,
                info=engine,
            )
    task.recorded_block = None
    seconds = time.perf_counter() - t0
    budget = _budget(task)
    data = _provenance(task, engine, seconds, replayed, reused)
    return baselines_section(
        task.method.name,
        figures(red_eval),
        runs,
        BETTER,
        budget,
        data,
        gate=v.vs_baselines,
        resamples=v.baselines.resamples,
        seed=0,
    )


def _budget(task) -> dict:
    """What the method and the baselines share (the schedule: blocks and tokens per stage) and the FLOPs
    each spends per image."""
    from ..reduce.baselines_vit import pruning_stages

    lm, schedule = task.lm, task.schedule
    base, red = task.flops()
    dims, head = lm.adapter.dims(), lm.adapter.head_macs(lm.model)
    bl = encoder_flops(dims, task.n_tokens, task.n_prefix, pruning_stages(schedule), head)
    return {
        "held_equal": "the method's schedule: the same blocks and the same number of tokens after each "
        "stage, on the same eval crops",
        "tokens_per_stage": [
            {"layer": s.layer, "tokens_in": s.tokens_in, "tokens_out": s.tokens_out, "kind": s.kind} for s in schedule
        ],
        "flops_per_image": {"original": base["flops"], "method": red["flops"], "baselines": bl["flops"]},
        "flops_note": (
            "baselines prune after each stage's block and pay no selection overhead; "
            + (
                "the method merges inside the block (its MLP runs on fewer tokens)"
                if any(s.kind == "merge" for s in schedule)
                else "the method's FLOPs include its selection overhead"
            )
        ),
    }


def _provenance(task, engine: dict, seconds: float, replayed: bool, reused: dict | None) -> dict:
    """The section's ``data``: the eval split, where each side's outputs came from, how long it took."""
    first = task.schedule[0].layer
    data = {
        "split": "eval",
        "samples": int(len(task.iset.eval_y)),
        "classes": task.iset.n_classes,
        "method_from": "model.onnx (onnxruntime)",
        "original_from": task.original_from,
        "baselines_from": (
            f"onnxruntime CPU: the PyTorch model with the baselines' positions as inputs (the "
            f"patch of reduce.patch), exported from block {first}'s output; "
            f"checked against the PyTorch run on its first rows (max abs diff "
            f"{engine.get('check_max_abs_diff', float('nan')):.2g})"
            if engine.get("engine") == "onnxruntime"
            else "PyTorch (reduce.patch)" + (f"; {engine['note']}" if engine.get("note") else "")
        ),
        "seconds": round(seconds, 3),
        "note": (
            f"baselines start from the original model's output of block {first} "
            "(identical up to the first stage), recorded on these crops"
            if replayed
            else "baselines computed from the input"
        ),
    }
    if reused is not None:
        data |= {
            "baselines_from": f"reused from {reused['path']}: {reused['data'].get('baselines_from', '?')}",
            "note": f"baselines not computed in this run: the draws of {reused['path']} (same model, "
            "evaluation crops, seeds and schedule; checked)",
        }
    return data


def reused_baselines(task, names: list[str]) -> tuple[list, dict]:
    """The baseline runs of ``baselines_from``'s report, after checking that they were computed on what this
    run would compute them on: the same model, evaluation crops (verify.accuracy, image size), seeds and
    token counts per stage."""
    import json

    from ..stages.baselines import runs_from_section

    path = task.baselines_from / "report.json"
    where = f"baselines_from: {path}"
    try:
        ref = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{where}: cannot read it ({exc})") from None
    section = ref.get("baselines") if isinstance(ref, dict) else None
    if not section:
        raise InputError(f"{where}: has no baselines section (verify.baselines disabled there?)")
    mine = task.recipe.model_dump(mode="json")
    rv = (ref.get("recipe") or {}).get("verify") or {}
    theirs = {
        "model.path": (ref.get("model") or {}).get("path"),
        "model.params": (ref.get("model") or {}).get("params"),
        "export.image_size": ((ref.get("recipe") or {}).get("export") or {}).get("image_size"),
        "verify.accuracy": {k: val for k, val in (rv.get("accuracy") or {}).items() if k != "metrics"},
        "verify.baselines.random_seeds": (rv.get("baselines") or {}).get("random_seeds"),
        "tokens_per_stage": section["budget"].get("tokens_per_stage"),
        "samples": section["data"].get("samples"),
    }
    here = {
        "model.path": str(task.lm.path),
        "model.params": task.lm.params,
        "export.image_size": mine["export"]["image_size"],
        "verify.accuracy": {k: val for k, val in mine["verify"]["accuracy"].items() if k != "metrics"},
        "verify.baselines.random_seeds": mine["verify"]["baselines"]["random_seeds"],
        "tokens_per_stage": [
            {"layer": s.layer, "tokens_in": s.tokens_in, "tokens_out": s.tokens_out, "kind": s.kind}
            for s in task.schedule
        ],
        "samples": int(len(task.iset.eval_y)),
    }
    for key, val in here.items():
        if theirs[key] != val:
            raise InputError(
                f"{where}: {key} is {theirs[key]!r} there, {val!r} here: its baselines were not "
                "computed on what this run evaluates"
            )
    try:
        return runs_from_section(section, names, where), {"path": str(task.baselines_from), "data": section["data"]}
    except ValueError as exc:
        raise InputError(str(exc)) from None
