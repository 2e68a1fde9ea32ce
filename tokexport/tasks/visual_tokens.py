"""VLM visual tokens (recipe `task: visual-tokens`): model.onnx is the visual-token graph (vision tower up
to the feature layer + selection [+ projector] → exactly K tokens and their positions), baseline.onnx
the same graph without selection (all tokens, raster order). The model is a LLaVA-1.5 / LLaVA-NeXT
checkpoint (tower and projector from it, generation checked with the language model) or a bare vision
tower (LLM sizes from the recipe, for the prefill FLOPs).

Accuracy, on the bundled photographs: features rebuilt from the kept tokens against all tokens
(mean-pooled and attention-pooled cosine, nearest-prototype instance recognition), the retained
attention mass (information only: it is measured with the attention a selector ranks by), and for
LLaVA checkpoints greedy generation, the unmodified model's generate() vs model.onnx's tokens packed
as the model packs them (:mod:`.visual_tokens_generation`). Section ``baselines``: the same figures for
random keep drawn per image (over seeds) and the 2-D uniform lattice at the same K, on the same crops, and
the method's margin over the best one (tokexport.vlm.baselines; gate ``verify.vs_baselines``). The bench
ratio is the selection overhead; the saving is in the LLM prefill, counted analytically (section ``llm``).
The model is loaded by :mod:`.visual_tokens_model`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import metrics as M
from .. import verify as V
from ..data import Preprocess, instance_recognition_set, natural_images
from ..errors import InputError
from ..export import INPUT_NAME, export_onnx
from ..stages.metric import info
from ..stages.runners import OrtRunner, TorchRunner, run_rows
from ..vlm.baselines import COMPARED, baseline_runs, per_sample
from ..vlm.graph import VisualTokenGraph
from ..vlm.select import VISUAL_METHODS, VisualLayout
from .base import TASKS, Graphs, ParityCase, Stages, Task
from .visual_tokens_generation import generation
from .visual_tokens_model import load_visual, views, with_inputs

MEASURED = ("feature_cosine", "attn_pooled_cosine", "instance_top1", "attention_mass")
GENERATION_METRICS = ("generation_exact_match", "generation_token_agreement")
INFO_ONLY = ("attention_mass",)


class _TextDims:
    """The LLM sizes as attributes (what :func:`tokexport.vlm.llava.llm_prefill_flops` reads)."""

    def __init__(self, d: dict):
        for k, v in d.items():
            setattr(self, k, v)
        if getattr(self, "num_key_value_heads", None) is None:
            self.num_key_value_heads = self.num_attention_heads


class _Probe(nn.Module):
    """Evaluation-only significance (normalised over all V·P patches) from one block's attention."""

    def __init__(self, tower, adapter, layout, image_size, feature_layer, layer, source):
        super().__init__()
        from ..vlm.graph import block_index, feature_depth

        self.graph = VisualTokenGraph(tower, adapter, layout, image_size, feature_layer, "default", None, None)
        self.graph.score_blocks = {"select": block_index(layer, adapter.num_layers)}
        if self.graph.score_blocks["select"] >= feature_depth(feature_layer, adapter.num_layers):
            raise ValueError(f"eval_layer {layer} is deeper than the feature layer")
        self.graph.source = source
        self.layout = layout

    def forward(self, x):
        if x.dim() == 4:
            x = x.unsqueeze(1)
        s = self.graph.image_size
        _, sig = self.graph.tower_features(x.reshape(-1, 3, s, s))
        w = sig["select"].reshape(-1, self.layout.total)
        return w / w.sum(dim=-1, keepdim=True)


def _named(graph: VisualTokenGraph):
    """The graph as the exported function: named outputs (``extra``: the selector's further inputs)."""

    def f(x, *extra):
        tokens, pos = graph(x, *extra)
        return {"visual_tokens": tokens, "positions": pos}

    return f


# ---- the task ------------------------------------------------------------------------------------
@TASKS.register
class VisualTokens(Task):
    kind = "visual-tokens"
    recipe_tasks = ("visual-tokens",)

    # ---- load
    def _check_metric_names(self) -> None:
        """Every recipe threshold names a figure this run measures and may gate (before loading anything)."""
        th = self.recipe.verify.accuracy.metrics
        for name in INFO_ONLY:
            if name in th:
                raise InputError(
                    f"verify.accuracy.metrics.{name}: cannot gate: the retained attention mass is measured with the "
                    "attention the selector itself ranks tokens by (vision.eval_layer/eval_source), so it says "
                    "nothing about accuracy and is reported for information only; remove its threshold"
                )
        vs = self.recipe.verify.vs_baselines
        for name in (vs.metrics or []) if vs is not None else []:
            if name not in COMPARED:
                raise InputError(
                    f"verify.vs_baselines.metrics: {name} is not compared with the baselines for task "
                    f"visual-tokens (compared: {', '.join(COMPARED)})"
                )

    def load(self, stages: Stages) -> None:
        from ..recipe import VisionConfig

        recipe = self.recipe
        vis = self.vision = recipe.vision or VisionConfig()
        self._check_metric_names()
        with stages.stage("load"):
            vm = self.vm = load_visual(recipe, vis, self.base_dir)
        s = vm.image_size
        gh = gw = s // vm.adapter.patch_size
        rows_cols = self._tile_grid()
        layout = self.layout = VisualLayout(
            views=1 + (rows_cols[0] * rows_cols[1] if rows_cols else 0), grid=(gh, gw), sub_grid=rows_cols
        )
        self._graphs()
        if vis.eval_source == "cls" and vm.adapter.n_prefix() == 0:
            raise InputError("vision.eval_source: the tower has no CLS token; use eval_source: received")
        if rows_cols and rows_cols[0] != rows_cols[1]:
            raise InputError("vision.grid: only square grids (rows == cols) are evaluated on the bundled photographs")
        self._check_measured()

        acc = recipe.verify.accuracy
        with stages.stage("data"):
            hi = Preprocess(s * (rows_cols[0] if rows_cols else 1), vm.mean, vm.std)
            self.iset = instance_recognition_set(
                natural_images(include_optional=False),
                hi,
                acc.samples_per_class,
                acc.prototypes_per_class,
                tuple(acc.crop_scale),
                acc.seed,
            )
            eval_x, proto_x = views(self.iset.eval_x, layout, s), views(self.iset.proto_x, layout, s)
        # one view: [N, 3, S, S] (LLaVA-1.5's pixel_values); anyres: [N, V, 3, S, S]
        self.eval_x = eval_x if layout.views > 1 else eval_x[:, 0]
        self.proto_x = proto_x if layout.views > 1 else proto_x[:, 0]
        ev = self.eval_x
        self.parity_x = ev[np.linspace(0, len(ev) - 1, recipe.verify.parity.samples).round().astype(int)]
        self.generation = None
        self._rng = np.random.default_rng(0)

    def _tile_grid(self) -> tuple[int, int] | None:
        """vision.grid (rows, cols of the anyres tiles; None: one view), checked against the model: LLaVA-1.5
        takes one view, LLaVA-NeXT the tiles it cuts itself (its packing depends on them)."""
        vm, vis, s = self.vm, self.vision, self.vm.image_size
        rows_cols = tuple(vis.grid) if vis.grid else None
        if vm.kind == "llava" and rows_cols:
            raise InputError("vision.grid: LLaVA-1.5 takes one view; remove grid (LLaVA-NeXT uses it)")
        if vm.kind == "llava_next":  # the tiles must be the ones the model cuts itself: its packing depends on them
            pins = [list(p) for p in vm.llava.grid_pinpoints]
            if not rows_cols:
                raise InputError(
                    "vision.grid: LLaVA-NeXT takes the full view plus anyres tiles; set grid: [rows, cols], "
                    f"one of its image_grid_pinpoints {pins} divided by the view size {s}"
                )
            want = vm.llava.anyres_grid((s * rows_cols[0], s * rows_cols[1]))
            if want != rows_cols:
                raise InputError(
                    f"vision.grid: LLaVA-NeXT cuts a {s * rows_cols[0]}×{s * rows_cols[1]} image into "
                    f"{list(want)} tiles, not {list(rows_cols)} (image_grid_pinpoints {pins}); "
                    f"set grid: {list(want)}"
                )
        return rows_cols

    def _graphs(self) -> None:
        """The selector (prepared: what it needs beyond the tower), its further graph inputs, the reduced and
        the baseline visual-token graphs, and the evaluation probe."""
        vm, vis, layout, cfg = self.vm, self.vision, self.layout, self.recipe.reduction
        ad, s = vm.adapter, vm.image_size
        self.selector = VISUAL_METHODS[cfg.method](cfg)
        try:
            k = cfg.resolve_k(layout)
        except ValueError as e:
            raise InputError(f"reduction: {e}") from None
        try:  # what the method needs beyond the tower (CDPruner: a CLIP checkpoint matching it)
            self.selector.prepare(vm.tower.config, self.base_dir)
        except ValueError as e:
            raise InputError(f"reduction.{e}") from None
        self.inputs = self.selector.input_values()  # further graph inputs for the evaluation, per image
        try:
            self.red = VisualTokenGraph(
                vm.tower, ad, layout, s, vm.feature_layer, vm.feature_select, vm.projector, self.selector, k
            )
            self.base = VisualTokenGraph(
                vm.tower, ad, layout, s, vm.feature_layer, vm.feature_select, vm.projector, None
            )
            self.probe = _Probe(vm.tower, ad, layout, s, vm.feature_layer, vis.eval_layer, vis.eval_source)
        except ValueError as e:
            raise InputError(f"vision/reduction: {e}") from None

    def _check_measured(self) -> None:
        """Every verify.accuracy threshold names a figure this run measures (the generation figures: LLaVA only)."""
        recipe, measured = self.recipe, list(MEASURED)
        if recipe.verify.generation is not None:
            if self.vm.llava is None:
                raise InputError("verify.generation: needs a LLaVA checkpoint (model_type llava or llava_next)")
            measured += GENERATION_METRICS
        for name in recipe.verify.accuracy.metrics:
            if name not in measured:
                raise InputError(
                    f"verify.accuracy.metrics.{name}: not measured for task visual-tokens "
                    f"(measured: {', '.join(measured)})"
                )

    def _at_export_batch(self) -> np.ndarray:
        """Real inputs at the export batch (1 for a dynamic batch), repeated when parity has fewer samples."""
        ex = self.recipe.export
        n = 1 if ex.batch == "dynamic" else ex.batch
        return np.ascontiguousarray(np.resize(self.parity_x, (n, *self.parity_x.shape[1:])))

    # ---- export
    def export(self, tmp: Path, stages: Stages) -> Graphs:
        ex = self.recipe.export
        dynamic = ex.batch == "dynamic"
        example = torch.from_numpy(self._at_export_batch())
        model_path, base_path = tmp / "model.onnx", tmp / "baseline.onnx"
        with stages.stage("export", total=2) as advance:
            base_info = export_onnx(self.base, _named(self.base), example, base_path, ex.opset, dynamic, ex.exporter)
            advance()
            extra = {
                k: torch.from_numpy(v)
                for k, v in with_inputs({INPUT_NAME: example.numpy()}, self.inputs).items()
                if k != INPUT_NAME
            }
            red_info = export_onnx(
                self.red, _named(self.red), example, model_path, ex.opset, dynamic, ex.exporter, extra_inputs=extra
            )
            advance()
        return Graphs(model_path, base_path, red_info, base_info)

    def parity_cases(self, graphs: Graphs) -> dict[str, ParityCase]:
        # visual selectors record no decision margins: no near-tie exemption (as before the driver)
        feed = {INPUT_NAME: self.parity_x}
        red_feed = with_inputs(feed, self.inputs)
        return {
            "parity": ParityCase(graphs.model, TorchRunner(_named(self.red), list(red_feed)), red_feed),
            "parity_baseline": ParityCase(graphs.baseline, TorchRunner(_named(self.base)), feed),
        }

    # ---- metrics
    def metrics(self, graphs: Graphs, stages: Stages) -> dict[str, dict]:
        th, iset, layout = self.recipe.verify.accuracy.metrics, self.iset, self.layout
        feed = {INPUT_NAME: self.eval_x}
        base_runner = TorchRunner(_named(self.base))
        orig = run_rows(base_runner, feed)["visual_tokens"]  # all tokens, original model
        weights = run_rows(TorchRunner(lambda x: {"w": self.probe(x)}), feed)["w"]  # [N, V·P], sums to 1
        r = run_rows(OrtRunner(graphs.model), with_inputs(feed, self.inputs))  # the shipped graph
        proto = run_rows(base_runner, {INPUT_NAME: self.proto_x})["visual_tokens"].mean(axis=1)
        red_tokens, pos = r["visual_tokens"], r["positions"]
        n_orig_prefix = orig.shape[1] - layout.total
        protos = M.class_prototypes(proto, iset.proto_y, iset.n_classes)
        ps = per_sample(orig, red_tokens, pos, weights, n_orig_prefix, protos, iset.eval_y)
        orig_top1 = M.nearest_prototype_top1(orig.mean(axis=1), iset.eval_y, protos)
        vis = self.vision
        metrics = {
            "feature_cosine": V.Metric(1.0, float(ps["feature_cosine"].mean()), th.get("feature_cosine")).as_dict(),
            "attn_pooled_cosine": V.Metric(
                1.0, float(ps["attn_pooled_cosine"].mean()), th.get("attn_pooled_cosine")
            ).as_dict(),
            "instance_top1": V.Metric(orig_top1, float(ps["instance_top1"].mean()), th.get("instance_top1")).as_dict(),
            # share of the eval block's attention the kept tokens hold (all tokens: 1.0); information only
            "attention_mass": info(
                float(ps["attention_mass"].mean()), eval_layer=vis.eval_layer, eval_source=vis.eval_source
            ),
        }
        self.baselines = None
        bl = self.recipe.verify.baselines
        if bl.enabled:
            with stages.stage("verify: baselines"):
                self.baselines = self._baselines(ps, orig, weights, n_orig_prefix, protos)
        if self.recipe.verify.generation is not None:
            with stages.stage("verify: generation"):
                self.generation, gen = generation(
                    self.recipe, self.vm, graphs.model, layout, lambda prompt: self.selector.input_values(prompt)
                )
            for name, (o, rr) in gen.items():
                metrics[name] = V.Metric(o, rr, th.get(name)).as_dict()
        return metrics

    def _baselines(
        self, ps: dict, orig: np.ndarray, weights: np.ndarray, n_orig_prefix: int, protos: np.ndarray
    ) -> dict:
        """The report's ``baselines`` section: random keep per image over seeds and the 2-D uniform
        lattice at the method's K, on the same crops (tokexport.vlm.baselines)."""
        from ..stages.baselines import baselines_section

        recipe, lay, k = self.recipe, self.layout, self.red.k
        bl, acc = recipe.verify.baselines, recipe.verify.accuracy
        seeds = [acc.seed * 1000 + i for i in range(bl.random_seeds)]
        runs = baseline_runs(orig, weights, n_orig_prefix, protos, self.iset.eval_y, lay, k, seeds)
        budget = {
            "visual_tokens_kept": k,
            "of": lay.total,
            "views": lay.views,
            "held_equal": "kept visual tokens K (hence the LLM prefill FLOPs)",
        }
        data = {
            "split": "eval",
            "samples": int(len(self.iset.eval_y)),
            "classes": self.iset.n_classes,
            "what": "seeded random crops of the bundled photographs (instance recognition set)",
        }
        return baselines_section(
            self.selector.name,
            {m: ps[m] for m in COMPARED},
            runs,
            {m: "higher" for m in COMPARED},
            budget,
            data,
            recipe.verify.vs_baselines,
            resamples=bl.resamples,
            seed=acc.seed,
        )

    # ---- bench and deploy
    def bench_feed(self, batch: int) -> dict[str, np.ndarray]:
        pool = self.eval_x
        feed = {INPUT_NAME: np.ascontiguousarray(pool[self._rng.choice(len(pool), batch, replace=len(pool) < batch)])}
        return with_inputs(feed, self.inputs)  # baseline.onnx reads pixel_values only

    def bench_extra(self, batches: dict) -> dict:
        return {
            "batches": {
                b: {**v, "selection_overhead": v["reduced_ms"] / v["baseline_ms"] - 1.0} for b, v in batches.items()
            },
            "note": "baseline.onnx = tower + feature select (+ projector), all tokens; model.onnx adds the "
            "selection: the ratio is the selection overhead (the saving is in the LLM prefill)",
        }

    def deploy_feed(self) -> dict[str, np.ndarray]:
        return with_inputs({INPUT_NAME: self._at_export_batch()}, self.inputs)

    # ---- report
    def _token_counts(self, graphs: Graphs) -> tuple[int, int]:
        lay, vm = self.layout, self.vm
        n_in = lay.total + (lay.views * vm.adapter.n_prefix() if vm.feature_select == "full" else 0)
        return n_in, int(graphs.model_info.output_shapes["visual_tokens"][1])

    def sections(self, graphs: Graphs) -> dict:
        from ..vlm.llava import llm_prefill_flops

        vm, vis, lay, ex, iset = self.vm, self.vision, self.layout, self.recipe.export, self.iset
        dynamic = ex.batch == "dynamic"
        n_in, n_out = self._token_counts(graphs)
        text = _TextDims(vm.llm_dims)
        prefill_full = llm_prefill_flops(text, vis.prompt_tokens + n_in)
        prefill_red = llm_prefill_flops(text, vis.prompt_tokens + n_out)
        input_shape = [("batch" if dynamic else ex.batch), *list(self.eval_x.shape[1:])]
        return {
            **({"baselines": self.baselines} if getattr(self, "baselines", None) else {}),
            "model": {
                "source": vm.source,
                "source_kind": vm.source_kind,
                "path": str(vm.path),
                "family": vm.adapter.family,
                "kind": vm.kind,
                "task": "visual-tokens",
                "params": vm.params,
                "image_size": vm.image_size,
                "tower_params": sum(p.numel() for p in vm.tower.parameters()),
            },
            "reduction": {
                "method": self.selector.name,
                "params": self.selector.describe(),
                "schedule": [],
                "layout": {
                    "views": lay.views,
                    "grid": list(lay.grid),
                    "sub_grid": list(lay.sub_grid) if lay.sub_grid else None,
                },
                "visual_tokens_in": n_in,
                "visual_tokens_out": n_out,
                "feature_layer": vm.feature_layer,
                "feature_select": vm.feature_select,
            },
            "export": {
                "opset": ex.opset,
                "exporter": graphs.model_info.exporter,
                "batch": ex.batch,
                "target": ex.target,
                "trt_target": ex.trt_target,
                "inputs": {
                    INPUT_NAME: input_shape,
                    **{k: [input_shape[0], *shape] for k, shape in self.selector.graph_inputs().items()},
                },
                "input_shape": input_shape,
                "outputs": graphs.model_info.output_shapes,
                "baseline_outputs": graphs.baseline_info.output_shapes,
            },
            "llm": {
                "dims": vm.llm_dims,
                "prompt_tokens": vis.prompt_tokens,
                "prefill_flops_full": prefill_full,
                "prefill_flops_reduced": prefill_red,
                "prefill_flops_saved": 1.0 - prefill_red / prefill_full,
            },
            "accuracy_extra": {
                "dataset": "natural-images instance recognition (visual tokens)",
                "description": (
                    f"{iset.n_classes} classes, {len(iset.eval_y)} eval crops, {lay.views} view(s) each; "
                    f"original = all {lay.total} tokens from PyTorch; reduced = model.onnx's {n_out} "
                    f"tokens; pooled features are the mean (and the attention-weighted mean, weights from "
                    f"block {vis.eval_layer} {vis.eval_source} attention) of the tokens; attention_mass "
                    "(information only) is the share of that attention the kept tokens hold"
                ),
                "classes": iset.n_classes,
                "samples": int(len(iset.eval_y)),
                "generation": self.generation,
            },
        }

    @classmethod
    def _lines(cls, report: dict) -> list[str]:
        red, llm = report["reduction"], report["llm"]
        lay = red["layout"]
        return [
            f"- Selector: `{red['method']}`, parameters `{json.dumps(red['params'])}`",
            f"- Layout: {lay['views']} view(s) of {lay['grid'][0]}×{lay['grid'][1]} patches"
            + (f" (full image + {lay['sub_grid'][0]}×{lay['sub_grid'][1]} sub-images)" if lay["sub_grid"] else ""),
            f"- Visual tokens to the LLM: {red['visual_tokens_in']} → {red['visual_tokens_out']} "
            f"(feature layer {red['feature_layer']}, select {red['feature_select']})",
            f"- LLM prefill ({llm['prompt_tokens']} text tokens): {llm['prefill_flops_full'] / 1e9:.2f} → "
            f"{llm['prefill_flops_reduced'] / 1e9:.2f} GFLOPs ({100 * llm['prefill_flops_saved']:.1f}% saved)",
        ]

    @classmethod
    def markdown(cls, report: dict) -> list[str]:
        return ["## Visual tokens", *cls._lines(report)]

    @classmethod
    def console_lines(cls, report: dict) -> list[str]:
        return [line.removeprefix("- ") for line in cls._lines(report)]
