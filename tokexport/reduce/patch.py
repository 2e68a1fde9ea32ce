"""Reversible in-place patch that makes a transformers vision model drop tokens.

The host model's own forward runs unchanged (embeddings, every block, final norm, pooler, heads):
each block is wrapped, and after a pruning block the wrapper asks the method which tokens to keep
and gathers them. Blocks never see an attention mask: image encoders have no padding, and the mask
transformers materialises while tracing has the full token count, which would not match after
pruning. Query/key projections of pruning blocks are wrapped to capture their outputs, from which
the block's attention probabilities are recomputed (static-export.md: fused SDPA elsewhere is fine).

Merging methods (ToMe, PiToMe) act inside the block, between attention and MLP: a merge block runs the host
block's own modules as two halves (``Adapter.halves``) with the merge in between, and the token sizes
it produces are carried to later blocks, whose attention gets log(size) as an additive float bias
through the host attention's ``attention_mask`` (proportional attention). Blocks without a merge run
the host forward unchanged (with that bias once sizes exist). One schedule may mix both kinds (a hybrid):
a prune stage after a merge gathers the token sizes along with the tokens.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..adapters.base import Adapter, get_path
from .base import LayerInputs, MergeInputs, Method
from .common import attention_probs, gather_tokens
from .schedule import Stage


class _Capture(nn.Module):
    """Wraps a projection and keeps its last output."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.last: torch.Tensor | None = None

    def forward(self, x):
        out = self.inner(x)
        self.last = out
        return out


def without_mask(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A block's call arguments with the attention mask removed (positional, as transformers' encoder
    loops pass it, or keyword). Image encoders have no padding; the mask transformers materialises while
    tracing has the unpruned token count."""
    if args:
        args = (None, *args[1:])
    if "attention_mask" in kwargs:
        kwargs = {**kwargs, "attention_mask": None}
    return args, kwargs


def with_mask(args: tuple, kwargs: dict, mask: torch.Tensor) -> tuple[tuple, dict]:
    """A block's call arguments with ``mask`` as the attention mask, where the encoder loop put it."""
    if args:
        return (mask, *args[1:]), kwargs
    return args, {**kwargs, "attention_mask": mask}


class _Grid:
    """The original patch grid of the current forward, read at block 0 (before any pruning): pruning
    methods that place tokens by their 2-D position (uniform) need it at every later stage."""

    def __init__(self):
        self.shape: tuple[int, int] | None = None

    def see(self, n_patches: int) -> None:
        side = math.isqrt(n_patches)
        self.shape = (side, side) if side * side == n_patches else (1, n_patches)  # not square: one row


class _Sizes:
    """Token sizes (patches per token, [B, N, 1]) carried from block to block within one forward."""

    def __init__(self):
        self.size: torch.Tensor | None = None
        self.prop_attn = False

    def bias(self) -> torch.Tensor | None:
        """The proportional-attention bias log(size) as [B, 1, 1, N], once a merge with prop_attn happened."""
        if self.size is None or not self.prop_attn:
            return None
        return torch.log(self.size)[:, None, None, :, 0]


class _Block(nn.Module):
    """One host block under the patch. Whatever the stage's method:

    - once a merge with proportional attention happened, the block's attention gets log(size) as its mask;
    - at a merge stage, the block runs as two halves (``Adapter.halves``) with the merge in between;
    - at a prune stage, the block runs whole, then its method picks the tokens to keep, which are gathered
      together with their sizes (when an earlier merge made sizes).

    Blocks without a stage run the host forward unchanged."""

    def __init__(
        self,
        inner: nn.Module,
        index: int,
        stage: Stage | None,
        method: Method | None,
        capture: tuple[_Capture, _Capture] | None,
        adapter: Adapter,
        grid: _Grid,
        sizes: _Sizes,
    ):
        super().__init__()
        self.inner = inner
        self.index = index
        self.stage = stage
        self.method = method
        self.capture = capture
        self.n_prefix = adapter.n_prefix()
        self.heads = adapter.num_heads
        self.head_dim = adapter.head_dim
        self.num_layers = adapter.num_layers
        self.grid = grid
        self.sizes = sizes
        self.halves = adapter.halves(inner) if stage is not None and stage.kind == "merge" else None

    def forward(self, hidden_states, *args, **kwargs):
        args, kwargs = without_mask(args, kwargs)
        if self.index == 0:  # a new forward: every patch token is there, each one patch (static: Python ints)
            self.grid.see(int(hidden_states.shape[1]) - self.n_prefix)
            self.sizes.size, self.sizes.prop_attn = None, False
        bias = self.sizes.bias()
        if self.halves is not None:
            return self._merge(hidden_states, bias, kwargs)
        if bias is not None:
            args, kwargs = with_mask(args, kwargs, bias)
        out = self.inner(hidden_states, *args, **kwargs)
        if self.stage is None:
            return out
        h = out[0] if isinstance(out, tuple) else out
        h = self._prune(h)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def _merge(self, hidden_states, bias, kwargs):
        x = self.halves.attention(hidden_states, bias, **kwargs)
        keys = captured_keys(self.capture, self.heads, self.head_dim)
        x, size = self.method.merge(
            MergeInputs(
                hidden=x,
                keys=keys,
                size=self.sizes.size,
                n_prefix=self.n_prefix,
                layer=self.index,
                num_layers=self.num_layers,
            ),
            self.stage.n_keep,
        )
        self.sizes.size, self.sizes.prop_attn = size, self.sizes.prop_attn or self.stage.prop_attn
        return self.halves.mlp(x)

    def _prune(self, h: torch.Tensor) -> torch.Tensor:
        attn = keys = None
        if self.capture is not None and self.method.needs_attention:
            temperature = float(getattr(self.method.config, "temperature", 1.0))
            attn, keys = captured_attention(self.capture, self.heads, self.head_dim, temperature)
        elif self.capture is not None:
            keys = captured_keys(self.capture, self.heads, self.head_dim)
        idx = self.method.select(
            LayerInputs(
                hidden=h,
                attn=attn,
                keys=keys,
                n_prefix=self.n_prefix,
                layer=self.index,
                num_layers=self.num_layers,
                grid=self.grid.shape,
            ),
            self.stage.n_keep,
        )
        if self.sizes.size is not None:  # tokens that stand for several patches keep their sizes
            self.sizes.size = gather_tokens(self.sizes.size, idx, self.n_prefix)
        return gather_tokens(h, idx, self.n_prefix)


def _set_path(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(get_path(root, parent) if parent else root, name, value)


@contextlib.contextmanager
def capture_qk(model: nn.Module, adapter: Adapter, layer_indices):
    """Wrap the q/k projections of the given blocks so their outputs can be read after a forward.

    Yields {block index: (q capture, k capture)}; ``.last`` holds [B, N, H*dh]. Restored on exit.
    """
    layers = adapter.layers(model)
    captures: dict[int, tuple[_Capture, _Capture]] = {}
    restore: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for i in sorted(set(layer_indices)):
            block = layers[i]
            caps = []
            for path in adapter.qk(block):
                inner = get_path(block, path)
                cap = _Capture(inner)
                _set_path(block, path, cap)
                restore.append((block, path, inner))
                caps.append(cap)
            captures[i] = (caps[0], caps[1])
        yield captures
    finally:
        for block, path, inner in reversed(restore):
            _set_path(block, path, inner)


def captured_keys(capture: tuple[_Capture, _Capture], heads: int, head_dim: int) -> torch.Tensor:
    """Keys [B, H, N, dh] from a block's captured k projection."""
    k = capture[1].last
    if k is None:
        raise RuntimeError("no captured keys: the block did not run")
    capture[0].last = capture[1].last = None
    b, n, _ = k.shape
    return k.reshape(b, n, heads, head_dim).transpose(1, 2)


def captured_attention(capture: tuple[_Capture, _Capture], heads: int, head_dim: int, temperature: float = 1.0):
    """(attention probabilities [B, H, N, N], keys [B, H, N, dh]) from a block's captured q/k."""
    q, k = capture[0].last, capture[1].last
    if q is None or k is None:
        raise RuntimeError("no captured q/k: the block did not run")
    b, n, _ = q.shape
    q = q.reshape(b, n, heads, head_dim).transpose(1, 2)
    k = k.reshape(b, n, heads, head_dim).transpose(1, 2)
    capture[0].last = capture[1].last = None
    return attention_probs(q, k, head_dim**-0.5, temperature), k


@contextlib.contextmanager
def reduced(model: nn.Module, adapter: Adapter, stages: list[Stage], method: Method | None):
    """Patch ``model`` in place for the duration of the block; restores every module on exit. Each stage
    runs with ``method.for_stage(stage)`` (a hybrid's step methods; any other method itself)."""
    by_layer = {s.layer: s for s in stages}
    methods = {s.layer: method.for_stage(s) for s in stages} if method is not None else {}
    if method is not None and stages:
        method.check(adapter.n_prefix())
    layers = adapter.layers(model)
    originals = list(layers)
    captured = [s.layer for s in stages if s.layer in methods and _needs_qk(methods[s.layer], s)]
    try:
        with capture_qk(model, adapter, captured) as captures:
            sizes, grid = _Sizes(), _Grid()
            for i, block in enumerate(originals):
                layers[i] = _Block(
                    block,
                    i,
                    by_layer.get(i) if i in methods else None,
                    methods.get(i),
                    captures.get(i),
                    adapter,
                    grid,
                    sizes,
                )
            yield model
    finally:
        for i, block in enumerate(originals):
            layers[i] = block


def _needs_qk(method: Method, stage: Stage) -> bool:
    """Whether ``stage`` reads the block's q/k projections: merges (keys), attention scores, or keys."""
    return stage.kind == "merge" or method.needs_attention or method.needs_keys
