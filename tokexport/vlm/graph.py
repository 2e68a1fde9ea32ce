"""The exported visual-token graph: image(s) in → exactly K visual tokens (+ their positions) out.

    pixel_values [B, V, 3, S, S]  (V = 1 + rows·cols views for an anyres grid; [B, 3, S, S] when V = 1)
      → vision tower, run only up to the feature layer (LLaVA's ``vision_feature_layer``, default -2)
      → feature select ("default" drops the prefix tokens, "full" keeps them, first)
      → significance from the tower's own attention at the selection (and allocation) block,
        recomputed from that block's q/k projections (and that block's keys, for methods that need them)
      → method (``VisualSelector.reduce``): K tokens and their positions in the flattened V·P patch
        sequence, ascending (raster order). A selector gathers K tokens; a merging method (VisionZip)
        returns its own tokens, each at one position
      → projector (per-token MLP, so projecting only the K outputs is exact for a selection). Methods
        with ``on = "projected"`` (DivPrune, DART) get the projected tokens of all V·P positions instead
      → tokens [B, K, D], positions [B, K] int64

The tower's own forward runs (patched reversibly for each call): its blocks list is truncated to the
feature layer's depth, the last kept block's output is captured, and q/k of the scoring blocks are
captured. The unreduced twin (``selector=None``) returns all V·P tokens in order: baseline.onnx.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..adapters.base import Adapter
from ..reduce.patch import capture_qk, captured_attention, without_mask
from .select import VisualLayout, VisualSelector, significance


class _Output(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.last = None

    def forward(self, hidden_states, *args, **kwargs):
        args, kwargs = without_mask(args, kwargs)
        out = self.inner(hidden_states, *args, **kwargs)
        self.last = out[0] if isinstance(out, tuple) else out
        return out


def feature_depth(feature_layer: int, num_layers: int) -> int:
    """Blocks that run to produce ``hidden_states[feature_layer]`` (LLaVA's convention: index 0 is the
    embeddings, index i the output of block i-1; negative counts from the end)."""
    depth = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
    if not 1 <= depth <= num_layers:
        raise ValueError(f"feature_layer {feature_layer} is out of range for a {num_layers}-block tower")
    return depth


def block_index(layer: int, num_layers: int) -> int:
    """A block index where negative counts from the end (-2 → the block producing hidden_states[-2])."""
    if not -num_layers <= layer < num_layers:
        raise ValueError(f"layer {layer} is out of range for a {num_layers}-block tower")
    return layer % num_layers


class VisualTokenGraph(nn.Module):
    def __init__(
        self,
        tower: nn.Module,
        adapter: Adapter,
        layout: VisualLayout,
        image_size: int,
        feature_layer: int = -2,
        feature_select: str = "default",
        projector: nn.Module | None = None,
        selector: VisualSelector | None = None,
        k: int | None = None,
    ):
        super().__init__()
        self.tower = tower
        self.projector = projector
        self.adapter = adapter
        self.layout = layout
        self.image_size = image_size
        self.selector = selector
        self.feature_select = feature_select
        if feature_select not in ("default", "full"):
            raise ValueError(f"feature_select must be 'default' or 'full', got {feature_select!r}")
        n_layers = adapter.num_layers
        self.depth = feature_depth(feature_layer, n_layers)
        self.n_prefix = adapter.n_prefix()
        p = adapter.n_tokens(image_size) - self.n_prefix
        if p != layout.patches:
            raise ValueError(
                f"the tower makes {p} patch tokens per view at {image_size}px, layout expects {layout.patches}"
            )
        self.k = layout.total if selector is None else int(k)
        self.score_blocks: dict[str, int] = {}
        self.keys_block: int | None = None  # the block whose head-averaged keys the method reads ("keys")
        if selector is not None:
            cfg = selector.config
            for kind, attr in (("select", "select_layer"), ("alloc", "alloc_layer")):
                if kind in selector.needs or (kind == "select" and "keys" in selector.needs):
                    b = block_index(int(getattr(cfg, attr)), n_layers)
                    if b >= self.depth:
                        raise ValueError(
                            f"{attr} {getattr(cfg, attr)} is deeper than the feature layer; "
                            "scoring blocks must run before the features are taken"
                        )
                    self.score_blocks[kind] = b
            if "keys" in selector.needs:
                self.keys_block = self.score_blocks["select"]
        self.source = getattr(selector.config, "source", "cls") if selector is not None else "cls"
        # weights the method runs inside the graph (registered so that the exporter writes them)
        self.method_modules = nn.ModuleDict(selector.graph_modules() if selector is not None else {})

    @contextlib.contextmanager
    def _patched(self):
        layers = self.adapter.layers(self.tower)
        originals = list(layers)
        last = _Output(originals[self.depth - 1])
        try:
            with capture_qk(self.tower, self.adapter, set(self.score_blocks.values())) as caps:
                kept = originals[: self.depth - 1] + [last]
                # truncate: only the blocks up to the feature layer run
                while len(layers) > len(kept):
                    del layers[len(layers) - 1]
                for i, m in enumerate(kept):
                    layers[i] = m
                yield last, caps
        finally:
            while len(layers):
                del layers[len(layers) - 1]
            for m in originals:
                layers.append(m)

    def tower_features(self, pixel_values: torch.Tensor, also: tuple[str, ...] = ()):
        """(features [B·V, N, D] at the feature layer, {kind: significance [B·V, P]}; with a keys block
        also "keys": that block's patch keys averaged over heads [B·V, P, dh]). ``also``: further
        significance sources computed from the same attention, keyed "kind/source" (one tower pass for
        several methods' signals: scripts/bench_visual_frontier.py)."""
        kwargs = self.adapter.forward_kwargs(self.image_size)
        with self._patched() as (last, caps):
            self.tower(pixel_values=pixel_values, **kwargs)
            feats = last.last
            sig = {}
            computed = {}
            for kind, b in self.score_blocks.items():
                if b not in computed:  # select and alloc may share a block: captured once
                    computed[b] = captured_attention(caps[b], self.adapter.num_heads, self.adapter.head_dim)
                attn, keys = computed[b]
                sig[kind] = significance(attn, self.n_prefix, self.source, heads="sum")
                for src in also:
                    sig[f"{kind}/{src}"] = significance(attn, self.n_prefix, src, heads="sum")
                if b == self.keys_block and kind == "select":
                    sig["keys"] = keys.mean(dim=1)[:, self.n_prefix :]
        return feats, sig

    def forward(self, pixel_values: torch.Tensor, *extra: torch.Tensor):
        """``extra``: the selector's further graph inputs (``VisualSelector.graph_inputs``), in order."""
        lay = self.layout
        if pixel_values.dim() == 4:
            pixel_values = pixel_values.unsqueeze(1)
        s = self.image_size
        x = pixel_values.reshape(-1, 3, s, s)
        feats, sig = self.tower_features(x)
        d = feats.shape[-1]
        prefix = feats[:, : self.n_prefix].reshape(-1, lay.views * self.n_prefix, d) if self.n_prefix else None
        patches = feats[:, self.n_prefix :].reshape(-1, lay.total, d)  # batch stays symbolic when traced
        projected = False
        if self.selector is None:
            idx = torch.arange(lay.total, device=x.device).unsqueeze(0).expand(patches.shape[0], -1)
            tokens = patches
        else:
            signals = {kind: s.reshape(-1, lay.views, lay.patches, *s.shape[2:]) for kind, s in sig.items()}
            names = list(self.selector.graph_inputs())
            if len(extra) != len(names):
                raise ValueError(
                    f"{self.selector.name} takes the graph inputs {names}, got {len(extra)} extra tensor(s)"
                )
            signals.update(zip(names, extra))
            if "features" in self.selector.needs:  # the tower's features even when the method sees projected tokens
                signals["features"] = patches
            if self.selector.on == "projected" and self.projector is not None:
                patches, projected = self.projector(patches), True
            tokens, idx = self.selector.reduce(patches, signals, lay, self.k)
        if self.feature_select == "full" and prefix is not None:
            tokens = torch.cat([self.projector(prefix) if projected else prefix, tokens], dim=1)
            idx = torch.cat([torch.full_like(idx[:, :1], -1).expand(-1, prefix.shape[1]), idx], dim=1)
        if self.projector is not None and not projected:
            tokens = self.projector(tokens)
        return tokens, idx
