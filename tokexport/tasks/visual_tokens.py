"""VLM visual tokens (recipe `task: visual-tokens`): model.onnx is the visual-token graph (vision tower up
to the feature layer + selection [+ projector] → exactly K tokens and their positions), baseline.onnx
the same graph without selection (all tokens, raster order). The model is a LLaVA-1.5 / LLaVA-NeXT
checkpoint (tower and projector from it, generation checked with the language model) or a bare vision
tower (LLM sizes from the recipe, for the prefill FLOPs).

Accuracy, on the bundled photographs: features rebuilt from the kept tokens against all tokens
(mean-pooled and attention-pooled cosine, nearest-prototype instance recognition), the retained
attention mass (information only: it is measured with the attention a selector ranks by), and for
LLaVA checkpoints greedy generation, the unmodified model's generate() vs model.onnx's tokens packed
as the model packs them (``_generation``). Section ``baselines``: the same figures for random keep
drawn per image (over seeds) and the 2-D uniform lattice at the same K, on the same crops, and the
method's margin over the best one (tokexport.vlm.baselines; gate ``verify.vs_baselines``). The bench
ratio is the selection
overhead; the saving is in the LLM prefill, counted analytically (section ``llm``)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics as M
from .. import verify as V
from ..adapters import Adapter, adapter_for
from ..data import Preprocess, instance_recognition_set, natural_images
from ..errors import InputError
from ..export import INPUT_NAME, export_onnx
from ..stages.metric import info
from ..stages.runners import OrtRunner, TorchRunner, run_rows
from ..vlm.baselines import COMPARED, baseline_runs, per_sample
from ..vlm.graph import VisualTokenGraph
from ..vlm.select import VISUAL_METHODS, VisualLayout
from .base import TASKS, Graphs, ParityCase, Stages, Task

MEASURED = ("feature_cosine", "attn_pooled_cosine", "instance_top1", "attention_mass")
GENERATION_METRICS = ("generation_exact_match", "generation_token_agreement")
INFO_ONLY = ("attention_mass",)


# ---- loading -------------------------------------------------------------------------------------
@dataclass
class VisualModel:
    source: str
    source_kind: str
    path: Path
    kind: str  # llava | llava_next | tower
    tower: nn.Module
    adapter: Adapter
    projector: nn.Module | None
    feature_layer: int
    feature_select: str
    image_size: int
    mean: tuple
    std: tuple
    llm_dims: dict
    params: int
    llava: object | None = None  # LlavaParts, for the generation check


def _text_dims(cfg) -> dict:
    keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "vocab_size")
    return {k: getattr(cfg, k, None) for k in keys}


def load_visual(recipe, vis, base_dir: Path) -> VisualModel:
    """A LLaVA checkpoint (model_type llava / llava_next: its tower, projector, feature layer and select
    strategy) or a bare vision tower (the recipe's vision settings)."""
    from ..load import load_model, resolve_source

    path, kind = resolve_source(recipe.model, base_dir)
    cfg_file = path / "config.json"
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"model: cannot read {cfg_file}: {e}") from None
    if model_type in ("llava", "llava_next"):
        from ..vlm.llava import image_mean_std, load_llava

        parts = load_llava(path)
        tower = parts.tower
        mean, std = image_mean_std(path)
        return VisualModel(recipe.model, kind, path, parts.kind, tower, adapter_for(tower.config), parts.projector,
                           parts.feature_layer, parts.feature_select, parts.image_size, mean, std,
                           _text_dims(parts.text_config), sum(p.numel() for p in parts.model.parameters()), parts)
    lm = load_model(recipe.model, base_dir, recipe.family, "feature-extraction", recipe.export.image_size)
    return VisualModel(recipe.model, kind, path, "tower", lm.model, lm.adapter, None, vis.feature_layer,
                       vis.feature_select, lm.image_size, lm.mean, lm.std, vis.llm.model_dump(), lm.params)


# ---- helpers -------------------------------------------------------------------------------------
def _views(x: np.ndarray, layout: VisualLayout, size: int) -> np.ndarray:
    """High-resolution crops [N, 3, rows·S, cols·S] → anyres views [N, V, 3, S, S]: the full image
    resized to S×S, then the rows×cols tiles in raster order."""
    t = torch.from_numpy(x)
    if layout.sub_grid is None:
        return x[:, None] if t.shape[-1] == size else F.interpolate(t, size=(size, size), mode="bilinear",
                                                                     antialias=True, align_corners=False).numpy()[:, None]
    rows, cols = layout.sub_grid
    full = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    tiles = [t[:, :, r * size:(r + 1) * size, c * size:(c + 1) * size] for r in range(rows) for c in range(cols)]
    return torch.stack([full, *tiles], dim=1).numpy()


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


def _with_inputs(feed: dict, values: dict) -> dict:
    """``feed`` plus the selector's further inputs (one value per image, no batch axis) for every row."""
    n = len(feed[INPUT_NAME])
    return {**feed, **{k: np.repeat(np.asarray(v, dtype=np.float32)[None], n, axis=0) for k, v in values.items()}}


def _prompt_ids(tok, prompt: str, parts) -> torch.Tensor:
    if tok is None:
        return torch.tensor([[1, parts.image_token_id, 5, 6, 7]])
    text = prompt if "<image>" in prompt else "USER: <image>\n" + prompt + " ASSISTANT:"
    return tok(text, return_tensors="pt").input_ids


def _generation(recipe, vm: VisualModel, model_path: Path, layout: VisualLayout, inputs_for=lambda prompt: {}):
    """Greedy generation on the recipe's prompts and the bundled photographs, the unmodified model
    against the tokens model.onnx produced.

    - full: the checkpoint's own ``generate(input_ids, pixel_values[, image_sizes])``, nothing patched
      (the prompt holds as many image placeholders as the model fills: LLaVA-NeXT's newlines included);
    - reduced: model.onnx run by ONNX Runtime on the same pixel values; its ``visual_tokens`` are packed
      by their ``positions`` the way the model packs (``pack_visual_tokens``: LLaVA-NeXT's base view,
      then the stitched tile grid row-major with ``image_newline`` after every row) and scattered into
      the placeholders of the prompt's embeddings, then ``generate(inputs_embeds=...)``. A method with
      further graph inputs (CDPruner's instruction embedding) gets the prompt's own (``inputs_for``).
    With every token kept the two agree token for token (tests/test_llava_packing.py)."""
    from ..vlm.llava import (
        embed_with_visual_tokens,
        expand_image_tokens,
        num_llm_visual_tokens,
        pack_visual_tokens,
    )

    g = recipe.verify.generation
    parts = vm.llava
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(vm.path)
    except Exception:  # noqa: BLE001  (tiny random twins ship no tokenizer, which raises any of several types: fixed ids around the placeholder)
        tok = None
    runner = OrtRunner(model_path)
    side = vm.image_size * (layout.sub_grid[0] if layout.sub_grid else 1)
    hw = (side, side) if parts.kind == "llava_next" else None
    if hw is not None and parts.anyres_grid(hw) != layout.sub_grid:
        raise InputError(f"vision.grid: {list(layout.sub_grid)} is not the tile grid the model picks for a "
                         f"{side}×{side} image ({list(parts.anyres_grid(hw))}, from its image_grid_pinpoints "
                         f"{[list(p) for p in parts.grid_pinpoints]}); use that grid")
    extra = {"image_sizes": torch.tensor([hw])} if hw is not None else {}
    n_full = num_llm_visual_tokens(parts, hw)
    pre = Preprocess(side, vm.mean, vm.std)
    rows, exact, agree, total = [], 0, 0, 0
    for prompt in g.prompts:
        ids = _prompt_ids(tok, prompt, parts)
        for name, img in natural_images(include_optional=False)[: g.images]:
            x = _views(pre.center(img)[None], layout, vm.image_size)
            x = np.ascontiguousarray(x if layout.views > 1 else x[:, 0])
            ids_full = expand_image_tokens(ids, parts.image_token_id, n_full)
            with torch.inference_mode():
                out = parts.model.generate(input_ids=ids_full, pixel_values=torch.from_numpy(x),
                                           max_new_tokens=g.max_new_tokens, do_sample=False, **extra)
            a = out[0, ids_full.shape[1]:].tolist()
            r = run_rows(runner, _with_inputs({INPUT_NAME: x}, inputs_for(prompt)))
            packed = pack_visual_tokens(parts, torch.from_numpy(r["visual_tokens"][0]), r["positions"][0], hw)
            ids_red = expand_image_tokens(ids, parts.image_token_id, int(packed.shape[0]))
            with torch.inference_mode():
                emb = embed_with_visual_tokens(parts, ids_red, packed)
                out = parts.model.generate(inputs_embeds=emb, attention_mask=torch.ones_like(ids_red),
                                           max_new_tokens=g.max_new_tokens, do_sample=False)
            b = out[0].tolist()  # generate from inputs_embeds alone returns the new tokens only
            same = sum(1 for i in range(min(len(a), len(b))) if a[i] == b[i])
            exact += int(a == b)
            agree += same
            total += max(len(a), len(b))
            rows.append({"prompt": prompt, "image": name, "exact": a == b,
                         "full": tok.decode(a) if tok else a, "reduced": tok.decode(b) if tok else b,
                         "llm_visual_tokens": [n_full, int(packed.shape[0])]})
    return ({"samples": rows, "max_new_tokens": g.max_new_tokens, "decoding": "greedy",
             "reference_run": "the unmodified checkpoint's generate() on the pixel values",
             "reduced_run": "model.onnx (ONNX Runtime) tokens, packed by their positions as the model packs "
                        "(LLaVA-NeXT: base view, stitched tile rows, image_newline after every row), fed as "
                        "inputs_embeds"},
            {"generation_exact_match": (1.0, exact / len(rows)),
             "generation_token_agreement": (1.0, agree / max(total, 1))})


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
                    "nothing about accuracy and is reported for information only; remove its threshold")
        vs = self.recipe.verify.vs_baselines
        for name in (vs.metrics or []) if vs is not None else []:
            if name not in COMPARED:
                raise InputError(f"verify.vs_baselines.metrics: {name} is not compared with the baselines for task "
                                 f"visual-tokens (compared: {', '.join(COMPARED)})")

    def load(self, stages: Stages) -> None:
        from ..recipe import VisionConfig

        recipe = self.recipe
        vis = self.vision = recipe.vision or VisionConfig()
        self._check_metric_names()
        with stages.stage("load"):
            vm = self.vm = load_visual(recipe, vis, self.base_dir)
        ad, s = vm.adapter, vm.image_size
        gh = gw = s // ad.patch_size
        rows_cols = tuple(vis.grid) if vis.grid else None
        if vm.kind == "llava" and rows_cols:
            raise InputError("vision.grid: LLaVA-1.5 takes one view; remove grid (LLaVA-NeXT uses it)")
        if vm.kind == "llava_next":  # the tiles must be the ones the model cuts itself: its packing depends on them
            pins = [list(p) for p in vm.llava.grid_pinpoints]
            if not rows_cols:
                raise InputError("vision.grid: LLaVA-NeXT takes the full view plus anyres tiles; set grid: [rows, cols], "
                                 f"one of its image_grid_pinpoints {pins} divided by the view size {s}")
            want = vm.llava.anyres_grid((s * rows_cols[0], s * rows_cols[1]))
            if want != rows_cols:
                raise InputError(f"vision.grid: LLaVA-NeXT cuts a {s * rows_cols[0]}×{s * rows_cols[1]} image into "
                                 f"{list(want)} tiles, not {list(rows_cols)} (image_grid_pinpoints {pins}); "
                                 f"set grid: {list(want)}")
        layout = self.layout = VisualLayout(views=1 + (rows_cols[0] * rows_cols[1] if rows_cols else 0), grid=(gh, gw),
                                            sub_grid=rows_cols)
        cfg = recipe.reduction
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
            self.red = VisualTokenGraph(vm.tower, ad, layout, s, vm.feature_layer, vm.feature_select, vm.projector,
                                        self.selector, k)
            self.base = VisualTokenGraph(vm.tower, ad, layout, s, vm.feature_layer, vm.feature_select, vm.projector, None)
            self.probe = _Probe(vm.tower, ad, layout, s, vm.feature_layer, vis.eval_layer, vis.eval_source)
        except ValueError as e:
            raise InputError(f"vision/reduction: {e}") from None
        if vis.eval_source == "cls" and ad.n_prefix() == 0:
            raise InputError("vision.eval_source: the tower has no CLS token; use eval_source: received")
        if rows_cols and rows_cols[0] != rows_cols[1]:
            raise InputError("vision.grid: only square grids (rows == cols) are evaluated on the bundled photographs")
        measured = list(MEASURED)
        if recipe.verify.generation is not None:
            if vm.llava is None:
                raise InputError("verify.generation: needs a LLaVA checkpoint (model_type llava or llava_next)")
            measured += GENERATION_METRICS
        for name in recipe.verify.accuracy.metrics:
            if name not in measured:
                raise InputError(f"verify.accuracy.metrics.{name}: not measured for task visual-tokens "
                                 f"(measured: {', '.join(measured)})")

        acc = recipe.verify.accuracy
        with stages.stage("data"):
            hi = Preprocess(s * (rows_cols[0] if rows_cols else 1), vm.mean, vm.std)
            self.iset = instance_recognition_set(natural_images(include_optional=False), hi, acc.samples_per_class,
                                                 acc.prototypes_per_class, tuple(acc.crop_scale), acc.seed)
            eval_x, proto_x = _views(self.iset.eval_x, layout, s), _views(self.iset.proto_x, layout, s)
        # one view: [N, 3, S, S] (LLaVA-1.5's pixel_values); anyres: [N, V, 3, S, S]
        self.eval_x = eval_x if layout.views > 1 else eval_x[:, 0]
        self.proto_x = proto_x if layout.views > 1 else proto_x[:, 0]
        ev = self.eval_x
        self.parity_x = ev[np.linspace(0, len(ev) - 1, recipe.verify.parity.samples).round().astype(int)]
        self.generation = None
        self._rng = np.random.default_rng(0)

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
            extra = {k: torch.from_numpy(v) for k, v in _with_inputs({INPUT_NAME: example.numpy()}, self.inputs).items()
                     if k != INPUT_NAME}
            red_info = export_onnx(self.red, _named(self.red), example, model_path, ex.opset, dynamic, ex.exporter,
                                   extra_inputs=extra)
            advance()
        return Graphs(model_path, base_path, red_info, base_info)

    def parity_cases(self, graphs: Graphs) -> dict[str, ParityCase]:
        # visual selectors record no decision margins: no near-tie exemption (as before the driver)
        feed = {INPUT_NAME: self.parity_x}
        red_feed = _with_inputs(feed, self.inputs)
        return {"parity": ParityCase(graphs.model, TorchRunner(_named(self.red), list(red_feed)), red_feed),
                "parity_baseline": ParityCase(graphs.baseline, TorchRunner(_named(self.base)), feed)}

    # ---- metrics
    def metrics(self, graphs: Graphs, stages: Stages) -> dict[str, dict]:
        th, iset, layout = self.recipe.verify.accuracy.metrics, self.iset, self.layout
        feed = {INPUT_NAME: self.eval_x}
        base_runner = TorchRunner(_named(self.base))
        orig = run_rows(base_runner, feed)["visual_tokens"]  # all tokens, original model
        weights = run_rows(TorchRunner(lambda x: {"w": self.probe(x)}), feed)["w"]  # [N, V·P], sums to 1
        r = run_rows(OrtRunner(graphs.model), _with_inputs(feed, self.inputs))  # the shipped graph
        proto = run_rows(base_runner, {INPUT_NAME: self.proto_x})["visual_tokens"].mean(axis=1)
        red_tokens, pos = r["visual_tokens"], r["positions"]
        n_orig_prefix = orig.shape[1] - layout.total
        protos = M.class_prototypes(proto, iset.proto_y, iset.n_classes)
        ps = per_sample(orig, red_tokens, pos, weights, n_orig_prefix, protos, iset.eval_y)
        orig_top1 = M.nearest_prototype_top1(orig.mean(axis=1), iset.eval_y, protos)
        vis = self.vision
        metrics = {
            "feature_cosine": V.Metric(1.0, float(ps["feature_cosine"].mean()), th.get("feature_cosine")).as_dict(),
            "attn_pooled_cosine": V.Metric(1.0, float(ps["attn_pooled_cosine"].mean()),
                                           th.get("attn_pooled_cosine")).as_dict(),
            "instance_top1": V.Metric(orig_top1, float(ps["instance_top1"].mean()), th.get("instance_top1")).as_dict(),
            # share of the eval block's attention the kept tokens hold (all tokens: 1.0); information only
            "attention_mass": info(float(ps["attention_mass"].mean()), eval_layer=vis.eval_layer,
                                   eval_source=vis.eval_source),
        }
        self.baselines = None
        bl = self.recipe.verify.baselines
        if bl.enabled:
            with stages.stage("verify: baselines"):
                self.baselines = self._baselines(ps, orig, weights, n_orig_prefix, protos)
        if self.recipe.verify.generation is not None:
            with stages.stage("verify: generation"):
                self.generation, gen = _generation(self.recipe, self.vm, graphs.model, layout,
                                                   lambda prompt: self.selector.input_values(prompt))
            for name, (o, rr) in gen.items():
                metrics[name] = V.Metric(o, rr, th.get(name)).as_dict()
        return metrics

    def _baselines(self, ps: dict, orig: np.ndarray, weights: np.ndarray, n_orig_prefix: int,
                   protos: np.ndarray) -> dict:
        """The report's ``baselines`` section: random keep per image over seeds and the 2-D uniform
        lattice at the method's K, on the same crops (tokexport.vlm.baselines)."""
        from ..stages.baselines import baselines_section

        recipe, lay, k = self.recipe, self.layout, self.red.k
        bl, acc = recipe.verify.baselines, recipe.verify.accuracy
        seeds = [acc.seed * 1000 + i for i in range(bl.random_seeds)]
        runs = baseline_runs(orig, weights, n_orig_prefix, protos, self.iset.eval_y, lay, k, seeds)
        budget = {"visual_tokens_kept": k, "of": lay.total, "views": lay.views,
                  "held_equal": "kept visual tokens K (hence the LLM prefill FLOPs)"}
        data = {"split": "eval", "samples": int(len(self.iset.eval_y)), "classes": self.iset.n_classes,
                "what": "seeded random crops of the bundled photographs (instance recognition set)"}
        return baselines_section(self.selector.name, {m: ps[m] for m in COMPARED}, runs,
                                 {m: "higher" for m in COMPARED}, budget, data, recipe.verify.vs_baselines,
                                 resamples=bl.resamples, seed=acc.seed)

    # ---- bench and deploy
    def bench_feed(self, batch: int) -> dict[str, np.ndarray]:
        pool = self.eval_x
        feed = {INPUT_NAME: np.ascontiguousarray(pool[self._rng.choice(len(pool), batch, replace=len(pool) < batch)])}
        return _with_inputs(feed, self.inputs)  # baseline.onnx reads pixel_values only

    def bench_extra(self, batches: dict) -> dict:
        return {"batches": {b: {**v, "selection_overhead": v["reduced_ms"] / v["baseline_ms"] - 1.0}
                            for b, v in batches.items()},
                "note": "baseline.onnx = tower + feature select (+ projector), all tokens; model.onnx adds the "
                        "selection: the ratio is the selection overhead (the saving is in the LLM prefill)"}

    def deploy_feed(self) -> dict[str, np.ndarray]:
        return _with_inputs({INPUT_NAME: self._at_export_batch()}, self.inputs)

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
            "model": {"source": vm.source, "source_kind": vm.source_kind, "path": str(vm.path),
                      "family": vm.adapter.family, "kind": vm.kind, "task": "visual-tokens", "params": vm.params,
                      "image_size": vm.image_size, "tower_params": sum(p.numel() for p in vm.tower.parameters())},
            "reduction": {"method": self.selector.name, "params": self.selector.describe(), "schedule": [],
                          "layout": {"views": lay.views, "grid": list(lay.grid),
                                     "sub_grid": list(lay.sub_grid) if lay.sub_grid else None},
                          "visual_tokens_in": n_in, "visual_tokens_out": n_out,
                          "feature_layer": vm.feature_layer, "feature_select": vm.feature_select},
            "export": {"opset": ex.opset, "exporter": graphs.model_info.exporter, "batch": ex.batch,
                       "target": ex.target, "trt_target": ex.trt_target,
                       "inputs": {INPUT_NAME: input_shape, **{k: [input_shape[0], *shape] for k, shape in
                                                              self.selector.graph_inputs().items()}},
                       "input_shape": input_shape, "outputs": graphs.model_info.output_shapes,
                       "baseline_outputs": graphs.baseline_info.output_shapes},
            "llm": {"dims": vm.llm_dims, "prompt_tokens": vis.prompt_tokens, "prefill_flops_full": prefill_full,
                    "prefill_flops_reduced": prefill_red, "prefill_flops_saved": 1.0 - prefill_red / prefill_full},
            "accuracy_extra": {
                "dataset": "natural-images instance recognition (visual tokens)",
                "description": (f"{iset.n_classes} classes, {len(iset.eval_y)} eval crops, {lay.views} view(s) each; "
                                f"original = all {lay.total} tokens from PyTorch; reduced = model.onnx's {n_out} "
                                f"tokens; pooled features are the mean (and the attention-weighted mean, weights from "
                                f"block {vis.eval_layer} {vis.eval_source} attention) of the tokens; attention_mass "
                                "(information only) is the share of that attention the kept tokens hold"),
                "classes": iset.n_classes, "samples": int(len(iset.eval_y)), "generation": self.generation},
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
