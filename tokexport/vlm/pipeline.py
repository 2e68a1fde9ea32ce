"""`task: visual-tokens`: export the VLM visual-token graph and check it against the original.

load (LLaVA checkpoint, or a bare vision tower) → selector → model.onnx (tower + selection
[+ projector] → K tokens) and baseline.onnx (all tokens) → parity → accuracy on the bundled photographs
(features rebuilt from the kept tokens vs all tokens, instance recognition, retained attention mass;
generation agreement for LLaVA checkpoints) → latency (selection overhead) and LLM prefill FLOPs saved.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics as M
from ..adapters import Adapter, adapter_for
from ..bench import compare_latency
from ..data import Preprocess, instance_recognition_set, natural_images
from ..errors import InputError
from ..export import export_onnx
from ..load import load_model
from ..report import report_header
from ..runners import OrtRunner, TorchRunner, run_batched
from .. import verify as V
from .graph import VisualTokenGraph
from .select import VISUAL_METHODS, VisualLayout


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
    llava: object | None = None  # LlavaParts for generation checks


def _text_dims(cfg) -> dict:
    keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "vocab_size")
    return {k: getattr(cfg, k, None) for k in keys}


def load_visual(recipe, base_dir: Path) -> VisualModel:
    from ..load import resolve_source

    vis = recipe.vision
    path, kind = resolve_source(recipe.model, base_dir)
    cfg_file = path / "config.json"
    import json

    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"model: cannot read {cfg_file}: {e}") from None
    if model_type in ("llava", "llava_next"):
        from .llava import load_llava

        parts = load_llava(path)
        tower = parts.tower
        adapter = adapter_for(tower.config)
        pre = path / "preprocessor_config.json"
        mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP
        if pre.is_file():
            d = json.loads(pre.read_text())
            mean, std = tuple(d.get("image_mean", mean)), tuple(d.get("image_std", std))
        return VisualModel(recipe.model, kind, path, parts.kind, tower, adapter, parts.projector, parts.feature_layer,
                           parts.feature_select, parts.image_size, mean, std, _text_dims(parts.text_config),
                           sum(p.numel() for p in parts.model.parameters()), parts)
    lm = load_model(recipe.model, base_dir, recipe.family, "feature-extraction", recipe.export.image_size)
    llm = vis.llm.model_dump()
    return VisualModel(recipe.model, kind, path, "tower", lm.model, lm.adapter, None, vis.feature_layer,
                       vis.feature_select, lm.image_size, lm.mean, lm.std, llm, lm.params)


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


def run_visual(recipe, label: str, base_dir: Path, tmp: Path, stages) -> dict:
    vis = recipe.vision
    with stages.stage("load"):
        vm = load_visual(recipe, base_dir)
    ad = vm.adapter
    s = vm.image_size
    gh = gw = s // ad.patch_size
    rows_cols = tuple(vis.grid) if vis.grid else None
    if vm.kind == "llava" and rows_cols:
        raise InputError("vision.grid: LLaVA-1.5 takes one view; remove grid (LLaVA-NeXT uses it)")
    layout = VisualLayout(views=1 + (rows_cols[0] * rows_cols[1] if rows_cols else 0), grid=(gh, gw), sub_grid=rows_cols)
    cfg = recipe.reduction
    selector = VISUAL_METHODS[cfg.method](cfg)
    try:
        k = cfg.resolve_k(layout)
    except ValueError as e:
        raise InputError(f"reduction: {e}") from None
    try:
        eval_block = vis.eval_layer
        red = VisualTokenGraph(vm.tower, ad, layout, s, vm.feature_layer, vm.feature_select, vm.projector, selector, k)
        base = VisualTokenGraph(vm.tower, ad, layout, s, vm.feature_layer, vm.feature_select, vm.projector, None)
        probe = _Probe(vm.tower, ad, layout, s, vm.feature_layer, eval_block, vis.eval_source)
    except ValueError as e:
        raise InputError(f"vision/reduction: {e}") from None
    if vis.eval_source == "cls" and ad.n_prefix() == 0:
        raise InputError("vision.eval_source: the tower has no CLS token; use eval_source: received")

    acc = recipe.verify.accuracy
    with stages.stage("data"):
        hi = Preprocess(s * (rows_cols[0] if rows_cols else 1), vm.mean, vm.std) if not rows_cols or rows_cols[0] == rows_cols[1] \
            else None
        if hi is None:
            raise InputError("vision.grid: only square grids (rows == cols) are evaluated on the bundled photographs")
        iset = instance_recognition_set(natural_images(include_optional=False), hi, acc.samples_per_class,
                                        acc.prototypes_per_class, tuple(acc.crop_scale), acc.seed)
        eval_x = _views(iset.eval_x, layout, s)
        proto_x = _views(iset.proto_x, layout, s)
    feed = eval_x if layout.views > 1 else eval_x[:, 0]
    proto_feed = proto_x if layout.views > 1 else proto_x[:, 0]
    parity_x = feed[np.linspace(0, len(feed) - 1, recipe.verify.parity.samples).round().astype(int)]

    def fn(graph):
        def f(x):
            tokens, pos = graph(x)
            return {"visual_tokens": tokens, "positions": pos}
        return f

    ex = recipe.export
    dynamic = ex.batch == "dynamic"
    example = torch.from_numpy(np.ascontiguousarray(parity_x[: (1 if dynamic else ex.batch)]))
    model_path, base_path = tmp / "model.onnx", tmp / "baseline.onnx"
    with stages.stage("export", total=2) as advance:
        base_info = export_onnx(base, fn(base), example, base_path, ex.opset, dynamic, ex.exporter)
        advance()
        red_info = export_onnx(red, fn(red), example, model_path, ex.opset, dynamic, ex.exporter)
        advance()
    red_ort, base_ort = OrtRunner(model_path), OrtRunner(base_path)
    par = recipe.verify.parity
    with stages.stage("verify: parity", total=2) as advance:
        parity_red = V.parity(red_ort, TorchRunner(fn(red)), parity_x, par.atol, par.mean_atol)
        advance()
        parity_base = V.parity(base_ort, TorchRunner(fn(base)), parity_x, par.atol, par.mean_atol)
        advance()

    th = acc.metrics
    with stages.stage("verify: accuracy", total=4) as advance:
        orig = run_batched(TorchRunner(fn(base)), feed)["visual_tokens"]  # all tokens, original model
        advance()
        weights = run_batched(TorchRunner(lambda x: {"w": probe(x)}), feed)["w"]  # [N, V·P], sums to 1
        advance()
        r = run_batched(red_ort, feed)  # the shipped graph
        advance()
        proto = run_batched(TorchRunner(fn(base)), proto_feed)["visual_tokens"].mean(axis=1)
        advance()
    red_tokens, pos = r["visual_tokens"], r["positions"]
    patch_pos = np.where(pos >= 0, pos, 0)
    is_patch = (pos >= 0).astype(np.float64)
    w_kept = np.take_along_axis(weights, patch_pos, axis=1) * is_patch
    orig_mean, red_mean = orig.mean(axis=1), red_tokens.mean(axis=1)
    n_orig_prefix = orig.shape[1] - layout.total
    orig_attn = (orig[:, n_orig_prefix:] * weights[:, :, None]).sum(axis=1)
    red_attn = (red_tokens * w_kept[:, :, None]).sum(axis=1) / np.maximum(w_kept.sum(axis=1, keepdims=True), 1e-12)
    protos = M.class_prototypes(proto, iset.proto_y, iset.n_classes)
    metrics = {
        "feature_cosine": V.Metric(1.0, M.mean_cosine(orig_mean, red_mean), th.get("feature_cosine")),
        "attn_pooled_cosine": V.Metric(1.0, M.mean_cosine(orig_attn, red_attn), th.get("attn_pooled_cosine")),
        "instance_top1": V.Metric(M.nearest_prototype_top1(orig_mean, iset.eval_y, protos),
                                  M.nearest_prototype_top1(red_mean, iset.eval_y, protos), th.get("instance_top1")),
        "attention_mass": V.Metric(1.0, float(w_kept.sum(axis=1).mean()), th.get("attention_mass")),
    }
    generation = None
    if recipe.verify.generation is not None:
        if vm.llava is None:
            raise InputError("verify.generation: needs a LLaVA checkpoint (model_type llava or llava_next)")
        with stages.stage("verify: generation"):
            generation, gen_metrics = _generation(recipe, vm, red, layout)
        for name, (o, rr) in gen_metrics.items():
            metrics[name] = V.Metric(o, rr, th.get(name))
    for name in th:
        if name not in metrics:
            raise InputError(f"verify.accuracy.metrics.{name}: not measured for task visual-tokens "
                             f"(measured: {', '.join(metrics)})")
    metric_dicts = {k2: v.as_dict() for k2, v in metrics.items()}
    acc_passed = all(m["passed"] is not False for m in metric_dicts.values())

    from .llava import llm_prefill_flops

    text = _TextDims(vm.llm_dims)
    n_in = layout.total + (layout.views * ad.n_prefix() if vm.feature_select == "full" else 0)
    n_out = int(red_tokens.shape[1])
    prefill_full = llm_prefill_flops(text, vis.prompt_tokens + n_in)
    prefill_red = llm_prefill_flops(text, vis.prompt_tokens + n_out)
    bench = None
    b = recipe.bench
    if b.enabled:
        rng = np.random.default_rng(0)

        def make_input(n):
            return np.ascontiguousarray(feed[rng.choice(len(feed), n, replace=len(feed) < n)])

        with stages.stage("bench", total=len(b.batch_sizes) * b.repeats) as advance:
            batches = compare_latency(base_path, model_path, make_input, b.batch_sizes, b.warmup, b.repeats, b.threads,
                                      on_step=advance)
        for v in batches.values():
            v["selection_overhead"] = v["reduced_ms"] / v["baseline_ms"] - 1.0
        bench = {"runtime": f"onnxruntime {__import__('onnxruntime').__version__} CPUExecutionProvider",
                 "threads": b.threads or os.cpu_count(), "repeats": b.repeats, "warmup": b.warmup,
                 "batches": batches,
                 "note": "baseline.onnx = tower + feature select (+ projector), all tokens; model.onnx adds the "
                         "selection: the ratio is the selection overhead (the saving is in the LLM prefill)"}
    from ..pipeline import _deploy, artifacts_section, failure_lines, trt_section

    trt = trt_section(model_path, ex.target)
    deploy = _deploy(recipe, tmp, model_path, base_path, parity_x, stages)
    failures = failure_lines(parity_red, parity_base, metric_dicts, par.atol)
    return {
        **report_header("visual-tokens", label, recipe),
        "model": {"source": vm.source, "source_kind": vm.source_kind, "path": str(vm.path), "family": ad.family,
                  "kind": vm.kind, "task": "visual-tokens", "params": vm.params, "image_size": s,
                  "tower_params": sum(p.numel() for p in vm.tower.parameters())},
        "reduction": {"method": selector.name, "params": selector.describe(), "schedule": [],
                      "layout": {"views": layout.views, "grid": list(layout.grid),
                                 "sub_grid": list(layout.sub_grid) if layout.sub_grid else None},
                      "visual_tokens_in": n_in, "visual_tokens_out": n_out,
                      "feature_layer": vm.feature_layer, "feature_select": vm.feature_select},
        "export": {"opset": ex.opset, "exporter": red_info.exporter, "batch": ex.batch, "trt_target": ex.trt_target,
                   "input_shape": [("batch" if dynamic else ex.batch), *list(feed.shape[1:])],
                   "outputs": red_info.output_shapes, "baseline_outputs": base_info.output_shapes},
        "artifacts": artifacts_section(model_path, base_path),
        "parity": parity_red, "parity_baseline": parity_base,
        "accuracy": {"dataset": "natural-images instance recognition (visual tokens)",
                     "description": (f"{iset.n_classes} classes, {len(iset.eval_y)} eval crops, {layout.views} view(s) "
                                     f"each; original = all {layout.total} tokens from PyTorch; reduced = model.onnx's "
                                     f"{n_out} tokens; pooled features are the mean (and the attention-weighted mean, "
                                     f"weights from block {vis.eval_layer} {vis.eval_source} attention) of the tokens"),
                     "classes": iset.n_classes, "samples": int(len(iset.eval_y)), "metrics": metric_dicts,
                     "passed": acc_passed, "generation": generation},
        "llm": {"dims": vm.llm_dims, "prompt_tokens": vis.prompt_tokens, "prefill_flops_full": prefill_full,
                "prefill_flops_reduced": prefill_red, "prefill_flops_saved": 1.0 - prefill_red / prefill_full},
        "bench": bench, "trt_check": trt, "deploy": deploy,
        "passed": bool(parity_red["passed"] and parity_base["passed"] and acc_passed), "failures": failures,
    }


class _TextDims:
    def __init__(self, d: dict):
        for k, v in d.items():
            setattr(self, k, v)
        if getattr(self, "num_key_value_heads", None) is None:
            self.num_key_value_heads = self.num_attention_heads


class _Probe(nn.Module):
    """Evaluation-only significance (normalised over all V·P patches) from one block's attention."""

    def __init__(self, tower, adapter, layout, image_size, feature_layer, layer, source):
        super().__init__()
        from .graph import block_index, feature_depth

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


def _generation(recipe, vm: VisualModel, graph: VisualTokenGraph, layout: VisualLayout):
    """Generate with all visual tokens and with the selected K, greedy, on the recipe's prompts and the
    bundled photographs. Both runs go through the same patched ``get_image_features`` (all tokens in
    raster order vs the graph's K), so the comparison isolates the selection; for LLaVA-NeXT neither
    run inserts image_newline tokens."""
    from .llava import expand_image_tokens, reduced_visual_tokens

    g = recipe.verify.generation
    parts = vm.llava
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(vm.path)
    except Exception:  # tiny random twins ship no tokenizer: fixed ids around the placeholder
        tok = None
    full = VisualTokenGraph(parts.tower, vm.adapter, layout, vm.image_size, parts.feature_layer, parts.feature_select,
                            parts.projector, None)
    side = vm.image_size * (layout.sub_grid[0] if layout.sub_grid else 1)
    pre = Preprocess(side, vm.mean, vm.std)
    rows, exact, agree, total = [], 0, 0, 0
    for prompt in g.prompts:
        ids = _prompt_ids(tok, prompt, parts)
        for name, img in natural_images(include_optional=False)[: g.images]:
            x = torch.from_numpy(_views(pre.center(img)[None], layout, vm.image_size))
            x = x if layout.views > 1 else x[:, 0]
            extra = {"image_sizes": torch.tensor([[side, side]])} if parts.kind == "llava_next" else {}
            outs = []
            for gr in (full, graph):
                ids_k = expand_image_tokens(ids, parts.image_token_id, gr.k)

                def select_fn(pixel_values, image_sizes=None, _g=gr):
                    return _g(pixel_values)[0]

                with torch.inference_mode(), reduced_visual_tokens(parts, select_fn):
                    out = parts.model.generate(input_ids=ids_k, pixel_values=x, max_new_tokens=g.max_new_tokens,
                                               do_sample=False, **extra)
                outs.append(out[0, ids_k.shape[1]:].tolist())
            a, b = outs
            same = sum(1 for i in range(min(len(a), len(b))) if a[i] == b[i])
            exact += int(a == b)
            agree += same
            total += max(len(a), len(b))
            rows.append({"prompt": prompt, "image": name, "exact": a == b,
                         "full": tok.decode(a) if tok else a, "reduced": tok.decode(b) if tok else b})
    return ({"samples": rows, "max_new_tokens": g.max_new_tokens, "decoding": "greedy"},
            {"generation_exact_match": (1.0, exact / len(rows)),
             "generation_token_agreement": (1.0, agree / max(total, 1))})


def _prompt_ids(tok, prompt: str, parts) -> torch.Tensor:
    if tok is None:
        return torch.tensor([[1, parts.image_token_id, 5, 6, 7]])
    text = prompt if "<image>" in prompt else "USER: <image>\n" + prompt + " ASSISTANT:"
    return tok(text, return_tensors="pt").input_ids
