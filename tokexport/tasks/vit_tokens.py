"""ViT token pruning (recipe `task: auto | feature-extraction | image-classification`): the host model's
forward runs unchanged under the reversible reduction patch; model.onnx is the pruned graph,
baseline.onnx the same model without reduction; accuracy is instance recognition on the bundled
photographs (plus top-1 agreement / ImageFolder top-1 for classifiers), and the report's ``baselines``
section compares the method with per-image random keep (over seeds) and a 2-D uniform lattice at the same
schedule, on the same crops (:mod:`tokexport.reduce.baselines_vit`; the section is built in
:mod:`.vit_tokens_baselines`)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import verify as V
from ..data import EVAL_STREAM, Preprocess, image_folder, instance_recognition_set, natural_images
from ..errors import InputError
from ..export import export_onnx
from ..flops import encoder_flops
from ..load import LoadedModel, load_model
from ..reduce import make_method
from ..reduce.patch import reduced
from ..reduce.schedule import plan
from ..stages.runners import TorchRunner
from .base import TASKS, Graphs, ParityCase, Stages, Task
from .vit_tokens_baselines import report_baselines


def selection_margins(fn: Callable[[torch.Tensor], dict], x: np.ndarray) -> list[float]:
    """Per sample, the smallest relative score gap of any token selection the PyTorch reference made
    (:mod:`tokexport.reduce.margins`), for telling near-ties from a wrong graph in the parity check."""
    from ..reduce.margins import recording, sample_margins

    out = []
    with torch.inference_mode():
        for i in range(0, len(x), 8):  # margins are recorded per sample ([B] per decision)
            with recording() as rec:
                fn(torch.from_numpy(np.ascontiguousarray(x[i : i + 8])))
            out += sample_margins(rec, len(x[i : i + 8]))
    return out


class MarginRecordingRunner(TorchRunner):
    """The PyTorch reference of the parity check that also records, per sample and in row order, the smallest
    relative score gap of any selection it made into ``sink`` (what :func:`selection_margins` computes, without
    a second forward)."""

    def __init__(self, fn: Callable[[torch.Tensor], dict], sink: list[float]):
        super().__init__(fn)
        self.sink = sink

    def infer(self, feed):
        from ..reduce.margins import recording, sample_margins

        with recording() as rec:
            out = super().infer(feed)
        self.sink += sample_margins(rec, len(feed[self.input_names[0]]))
        return out


def forward_fn(lm: LoadedModel) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """The host model's own forward, returning the adapter's named outputs."""
    kwargs = lm.adapter.forward_kwargs(lm.image_size)

    def fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
        return lm.adapter.outputs(lm.model, lm.model(pixel_values=x, **kwargs))

    return fn


def evaluation_set(lm: LoadedModel, accuracy, eval_stream: int = EVAL_STREAM):
    """The instance-recognition crops ``verify.accuracy`` asks for, preprocessed for ``lm``: prototypes and the
    evaluation crops (``eval_stream``: another stream of crops of the same photographs, e.g. the search split)."""
    pre = Preprocess(lm.image_size, lm.mean, lm.std)
    return instance_recognition_set(
        natural_images(include_optional=False, include_dependencies=True),
        pre,
        accuracy.samples_per_class,
        accuracy.prototypes_per_class,
        tuple(accuracy.crop_scale),
        accuracy.seed,
        eval_stream=eval_stream,
    )


SCORED = ("feature_cosine", "instance_top1", "top1_agreement")  # what instance_metrics can give


def scored_metrics(model_task: str) -> tuple[str, ...]:
    """The figures :func:`instance_metrics` gives for a model of ``model_task`` (top-1 agreement needs logits)."""
    return SCORED if model_task == "image-classification" else SCORED[:2]


def instance_metrics(lm: LoadedModel, iset, feat: str, orig: dict, red: dict, orig_proto, thresholds) -> dict:
    """The ViT task's accuracy figures of one reduced run against the original on ``iset``'s evaluation crops
    (feature cosine, instance top-1, and for a classifier top-1 agreement), judged on ``thresholds``: what a
    conversion reports and what ``tokexport search`` scores a schedule by."""
    metrics = V.feature_metrics(
        orig[feat], red[feat], orig_proto, iset.eval_y, iset.proto_y, iset.n_classes, thresholds
    )
    if "top1_agreement" in scored_metrics(lm.task):
        metrics |= V.classifier_metrics(orig["logits"], red["logits"], thresholds)
    return metrics


@TASKS.register
class VitTokens(Task):
    kind = "vit-token-pruning"
    recipe_tasks = ("auto", "feature-extraction", "image-classification")

    def __init__(
        self, recipe, base_dir: Path, label: str, loaded: LoadedModel | None = None, baselines_from: Path | None = None
    ):
        """``loaded``: a model already loaded (sweeps). ``baselines_from``: the output directory of an earlier
        conversion of the same model, evaluation data and schedule, whose honest baselines (every draw's
        per-sample values, in its report.json) this run is judged against instead of computing them again —
        one computation for several methods at one budget, and a variant (a deliberately broken selection)
        judged against exactly the draws of the recipe it varies. Checked before it is used (InputError)."""
        super().__init__(recipe, base_dir, label)
        self.lm = loaded
        self.baselines_from = Path(baselines_from) if baselines_from is not None else None

    # ---- load
    def load(self, stages: Stages) -> None:
        recipe = self.recipe
        if self.lm is None:

            def check_schedule(adapter, image_size):
                steps = plan(recipe.reduction, adapter.n_tokens(image_size), adapter.n_prefix(), adapter.num_layers)
                if steps:
                    make_method(recipe.reduction).check(adapter.n_prefix())

            with stages.stage("load"):
                self.lm = load_model(
                    recipe.model,
                    self.base_dir,
                    recipe.family,
                    recipe.task,
                    recipe.export.image_size,
                    before_weights=check_schedule,
                )
        lm = self.lm
        folder = self._imagefolder()
        self.n_tokens, self.n_prefix = lm.adapter.n_tokens(lm.image_size), lm.adapter.n_prefix()
        self.method = make_method(recipe.reduction)
        self.schedule = plan(recipe.reduction, self.n_tokens, self.n_prefix, lm.adapter.num_layers)
        acc = recipe.verify.accuracy
        with stages.stage("data"):
            self.iset = evaluation_set(lm, acc)
            pre = Preprocess(lm.image_size, lm.mean, lm.std)
            self.labelled = image_folder(folder, pre, acc.imagefolder_limit_per_class) if folder else None
        ev = self.iset.eval_x
        self.parity_x = ev[np.linspace(0, len(ev) - 1, recipe.verify.parity.samples).round().astype(int)]
        self.original_fn = forward_fn(lm)
        self._rng = np.random.default_rng(0)
        self.baseline_section: dict | None = None
        if recipe.verify.vs_baselines is not None and not self.schedule:
            raise InputError(
                "verify.vs_baselines: the reduction prunes nothing (empty schedule), so there is no "
                "budget to compare baselines at; remove vs_baselines or add prune_layers"
            )

    def _imagefolder(self) -> Path | None:
        acc, lm = self.recipe.verify.accuracy, self.lm
        if lm.task != "image-classification":
            for name in ("top1_agreement", "imagefolder_top1"):
                if name in acc.metrics:
                    raise InputError(
                        f"verify.accuracy.metrics.{name}: needs a classification head, but the model is {lm.task}"
                    )
            if acc.imagefolder:
                raise InputError(
                    "verify.accuracy.imagefolder: needs a classification head; remove it for a feature model"
                )
        if not acc.imagefolder:
            return None
        folder = Path(acc.imagefolder).expanduser()
        folder = folder if folder.is_absolute() else self.base_dir / folder
        if not folder.is_dir():
            raise InputError(f"verify.accuracy.imagefolder: {folder} is not a directory")
        return folder

    def reduced_fn(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with reduced(self.lm.model, self.lm.adapter, self.schedule, self.method):
            return self.original_fn(x)

    # ---- export
    def export(self, tmp: Path, stages: Stages) -> Graphs:
        ex, lm = self.recipe.export, self.lm
        dynamic = ex.batch == "dynamic"
        n = 1 if dynamic else ex.batch
        example = torch.from_numpy(np.resize(self.parity_x, (n, *self.parity_x.shape[1:])).copy())
        model_path, base_path = tmp / "model.onnx", tmp / "baseline.onnx"
        finished = bool(getattr(ex, "fold", True)) or getattr(ex, "precision", "fp32") != "fp32"  # checked there
        with stages.stage("export", total=2) as advance:
            base_info = export_onnx(
                lm.model,
                self.original_fn,
                example,
                base_path,
                ex.opset,
                dynamic,
                ex.exporter,
                check_shapes=not finished,
            )
            advance()
            with reduced(lm.model, lm.adapter, self.schedule, self.method):
                red_info = export_onnx(
                    lm.model,
                    self.original_fn,
                    example,
                    model_path,
                    ex.opset,
                    dynamic,
                    ex.exporter,
                    check_shapes=not finished,
                )
            advance()
        return Graphs(model_path, base_path, red_info, base_info)

    def parity_cases(self, graphs: Graphs) -> dict[str, ParityCase]:
        par = self.recipe.verify.parity
        feed = {"pixel_values": self.parity_x}
        if par.tie_margin > 0:  # the margins are recorded while the reference runs (filled before they are read)
            margins: list[float] | None = []
            reference = MarginRecordingRunner(self.reduced_fn, margins)
        else:
            margins, reference = None, TorchRunner(self.reduced_fn)
        return {
            "parity": ParityCase(graphs.model, reference, feed, margins=margins, tie_margin=par.tie_margin),
            "parity_baseline": ParityCase(graphs.baseline, TorchRunner(self.original_fn), feed),
        }

    # ---- metrics
    def metrics(self, graphs: Graphs, stages: Stages) -> dict[str, dict]:
        from ..stages.runners import OrtRunner, run_rows

        lm, iset, acc = self.lm, self.iset, self.recipe.verify.accuracy
        feat = lm.adapter.feature_output(graphs.model_info.output_names)
        from ..reduce.baselines_vit import record_block

        red_ort = OrtRunner(graphs.model)
        first = self.schedule[0].layer if self.schedule and self.recipe.verify.baselines.enabled else None
        # The original model's outputs: baseline.onnx through onnxruntime (about 2x faster than PyTorch eager on
        # CPU) when it is an fp32 graph that passed its parity check against PyTorch in this run; else PyTorch.
        par = (getattr(self, "parity_results", None) or {}).get("parity_baseline") or {}
        fp32 = getattr(self.recipe.export, "precision", "fp32") == "fp32"
        if fp32 and par.get("passed") is True:
            orig_runner = OrtRunner(graphs.baseline)
            self.original_from = "baseline.onnx (onnxruntime CPU), which passed parity against the PyTorch model above"
            orig_eval, self.recorded_block = self._original_and_record(graphs, orig_runner, first)
        else:
            orig_runner = TorchRunner(self.original_fn)
            self.original_from = "unmodified PyTorch model" + ("" if fp32 else " (the exported graphs are fp16)")
            with record_block(lm.model, lm.adapter, first) as self.recorded_block:  # the baselines start from it
                orig_eval = run_rows(orig_runner, {"pixel_values": iset.eval_x})
        orig_proto = run_rows(orig_runner, {"pixel_values": iset.proto_x})[feat]
        red_eval = run_rows(red_ort, {"pixel_values": iset.eval_x})  # the shipped graph, not the PyTorch twin
        metrics = instance_metrics(lm, iset, feat, orig_eval, red_eval, orig_proto, acc.metrics)
        self.baseline_section = report_baselines(self, orig_eval, red_eval, orig_proto, feat, stages)
        if self.labelled is not None:
            lx, ly, _ = self.labelled
            o = run_rows(orig_runner, {"pixel_values": lx})["logits"]
            r = run_rows(red_ort, {"pixel_values": lx})["logits"]
            metrics |= V.labelled_metrics(o, r, ly, acc.metrics)
        self.feature = feat
        return {k: v.as_dict() for k, v in metrics.items()}

    def _original_and_record(self, graphs: Graphs, runner, first: int | None) -> tuple[dict, dict]:
        """The original model's eval outputs through onnxruntime, and (for the baselines) block ``first``'s output
        on the same rows: read from a copy of baseline.onnx that also outputs it, when that block's output can be
        found in the graph and matches PyTorch's on the first rows; else recorded in PyTorch (blocks 0..first)."""
        from ..reduce.baselines_vit import CHECK_ROWS, record_prefix, with_block_output
        from ..stages.runners import OrtRunner, run_rows

        lm, x = self.lm, self.iset.eval_x
        if first is None:
            return run_rows(runner, {"pixel_values": x}), {}
        out = None
        with tempfile.TemporaryDirectory(prefix="tokexport-eval-") as work:
            found = with_block_output(graphs.baseline, lm.model, lm.adapter, first, work)
            if found is not None:  # the copy's other outputs are baseline.onnx's: kept whatever the check says
                out = run_rows(OrtRunner(found[0]), {"pixel_values": x})
                hidden = out.pop(found[1])
                ref = record_prefix(lm.model, lm.adapter, self.original_fn, first, x[:CHECK_ROWS])
                if (
                    ref
                    and hidden.shape[1:] == tuple(ref["hidden"].shape[1:])
                    and np.allclose(hidden[:CHECK_ROWS], ref["hidden"].numpy(), rtol=1e-4, atol=1e-3)
                ):
                    return out, {
                        "layer": first,
                        "hidden": torch.from_numpy(np.ascontiguousarray(hidden)),
                        "as_tuple": ref["as_tuple"],
                    }
        if out is None:
            out = run_rows(runner, {"pixel_values": x})
        return out, record_prefix(lm.model, lm.adapter, self.original_fn, first, x)

    # ---- bench and deploy
    def bench_feed(self, batch: int) -> dict[str, np.ndarray]:
        pool = self.iset.eval_x
        return {
            "pixel_values": np.ascontiguousarray(pool[self._rng.choice(len(pool), batch, replace=len(pool) < batch)])
        }

    def flops(self) -> tuple[dict, dict]:
        """FLOPs per image of the original model and of the reduced one (its selection overhead included)."""
        lm = self.lm
        dims, head = lm.adapter.dims(), lm.adapter.head_macs(lm.model)
        base = encoder_flops(dims, self.n_tokens, self.n_prefix, [], head)
        red = encoder_flops(dims, self.n_tokens, self.n_prefix, self.schedule, head, method=self.method)
        return base, red

    def bench_extra(self, batches: dict) -> dict:
        base, red = self.flops()
        predicted = base["flops"] / red["flops"]
        eff = max(batches, key=int)
        return {
            "flops": {
                "baseline": base["flops"],
                "reduced": red["flops"],
                "selection": red["selection_flops"],
                "predicted_speedup": predicted,
                "per": "image",
            },
            "efficiency_batch": int(eff),
            "efficiency": batches[eff]["speedup"] / predicted,
        }

    def deploy_feed(self) -> dict[str, np.ndarray]:
        ex = self.recipe.export
        n = 1 if ex.batch == "dynamic" else ex.batch
        return {"pixel_values": np.resize(self.parity_x, (n, *self.parity_x.shape[1:]))}

    # ---- report
    def sections(self, graphs: Graphs) -> dict:
        lm, ex, iset, acc = self.lm, self.recipe.export, self.iset, self.recipe.verify.accuracy
        dynamic = ex.batch == "dynamic"
        _, red = self.flops()
        out = {
            "model": {
                "source": lm.source,
                "source_kind": lm.source_kind,
                "path": str(lm.path),
                "family": lm.adapter.family,
                "model_type": lm.config.model_type,
                "architecture": type(lm.model).__name__,
                "task": lm.task,
                "params": lm.params,
                "image_size": lm.image_size,
                "tokens": self.n_tokens,
                "prefix_tokens": self.n_prefix,
            },
            "reduction": {
                "method": self.method.name,
                "rounding": self.recipe.reduction.rounding,
                "params": self.method.describe(),
                "schedule": [s.as_dict() for s in self.schedule],
                "tokens_per_block": red["tokens_per_block"],
            },
            "export": {
                "opset": ex.opset,
                "exporter": graphs.model_info.exporter,
                "batch": ex.batch,
                "target": ex.target,
                "trt_target": ex.trt_target,
                "inputs": {"pixel_values": [("batch" if dynamic else ex.batch), 3, lm.image_size, lm.image_size]},
                "input_shape": [("batch" if dynamic else ex.batch), 3, lm.image_size, lm.image_size],
                "outputs": graphs.model_info.output_shapes,
                "baseline_outputs": graphs.baseline_info.output_shapes,
            },
            "accuracy_extra": {
                "dataset": "natural-images instance recognition" + (" + imagefolder" if self.labelled else ""),
                "description": (
                    f"{iset.n_classes} classes (one per bundled photograph), {len(iset.eval_y)} eval crops "
                    f"(scale {list(acc.crop_scale)}, flips, seed {acc.seed}); class prototypes from the "
                    f"ORIGINAL model on {len(iset.proto_y)} separate crops; feature = "
                    f"`{getattr(self, 'feature', '?')}`; reduced = model.onnx (onnxruntime), original = "
                    f"{getattr(self, 'original_from', 'unmodified PyTorch model')}"
                ),
                "classes": iset.n_classes,
                "samples": len(iset.eval_y),
                "splits": {
                    "eval": {
                        "samples": len(iset.eval_y),
                        "role": "the verdict (every metric and baseline above)",
                        "crops": f"random crops, stream default_rng([{acc.seed}, 0])",
                    },
                    "prototypes": {
                        "samples": len(iset.proto_y),
                        "role": "class prototypes (original model)",
                        "crops": f"random crops, stream default_rng([{acc.seed}, 1]), disjoint from eval",
                    },
                    "photographs": iset.class_names,
                    "chosen_on_eval": "nothing: thresholds are fixed rules (docs/verdicts.md), the schedule is the "
                    "recipe's",
                },
            },
        }
        if self.baseline_section is not None:
            out["baselines"] = self.baseline_section
        return out

    @classmethod
    def markdown(cls, report: dict) -> list[str]:
        sched = report["reduction"]["schedule"]
        lines = ["## Tokens per pruning stage"]
        if sched:
            lines += ["| after block | tokens in | tokens out |", "|---|---|---|"]
            lines += [f"| {s['layer']} | {s['tokens_in']} | {s['tokens_out']} |" for s in sched]
        else:
            lines.append("(no pruning)")
        bench = report.get("bench") or {}
        if "flops" in bench:
            fl = bench["flops"]
            lines += [
                "",
                f"- FLOPs per image: baseline {fl['baseline'] / 1e9:.2f} G, reduced {fl['reduced'] / 1e9:.2f} G "
                f"(selection overhead {fl['selection'] / 1e9:.2f} G) → predicted speed-up "
                f"{fl['predicted_speedup']:.3f}×",
                f"- Efficiency (measured ÷ predicted, batch {bench['efficiency_batch']}): {bench['efficiency']:.3f}",
            ]
        return lines

    @classmethod
    def console_lines(cls, report: dict) -> list[str]:
        sched = report["reduction"]["schedule"]
        out = [
            "tokens per stage: "
            + (
                ", ".join(f"after block {s['layer']}: {s['tokens_in']}→{s['tokens_out']}" for s in sched)
                or "no pruning"
            )
        ]
        bench = report.get("bench") or {}
        if "flops" in bench:
            fl = bench["flops"]
            out.append(
                f"FLOP-predicted speed-up {fl['predicted_speedup']:.3f}× ({fl['baseline'] / 1e9:.2f} → "
                f"{fl['reduced'] / 1e9:.2f} GFLOPs/image); efficiency {bench['efficiency']:.3f}"
            )
        return out
