"""Visual-token selectors for VLMs: pick exactly K of the V·P patch tokens the LLM would see.

Layout. The vision tower turns each view into P = gh·gw patch tokens. LLaVA-1.5 has one view;
LLaVA-NeXT "anyres" has V = 1 + rows·cols: view 0 is the full image resized, views 1.. are the
sub-images of a fixed rows×cols grid in raster order. Positions index the flattened V·P sequence
(view-major, raster order inside a view); every selector returns them ascending. That is LLaVA-1.5's
order; LLaVA-NeXT reads the base view, then the tiles stitched into one grid row-major with
``image_newline`` after each row: ``tokexport.vlm.packing`` puts the kept tokens in that order from
their positions.

Static export (docs/methods/static-export.md): K and every count are Python ints fixed at
export time; selection uses TopK with constant K (< 3840) and ``sort_positions`` (never
``torch.sort``); no boolean indexing, NonZero, ``.item()``, data-dependent shapes or Python loops
over data (loops whose trip count is a static layout count, e.g. the sub-image count, are unrolled
into the graph and are fine). Batch may stay a dynamic axis.

Significance (``significance``) is computed from one tower block's softmax attention, summed over
heads in the exported graph (``VisualTokenGraph`` passes ``heads="sum"``; the sum and the mean rank
tokens identically and give identical HiRED shares, so the choice does not change any selection).

Methods, one module each: ``fopru-rank`` and ``fopru-row`` (:mod:`.fopru`; FoPru, arXiv 2411.14164, no
public code, details [unverified]), ``hired`` (:mod:`.hired`; HiRED, arXiv 2408.10945, with the reference
code's defects fixed); here, the two constant ones: ``uniform-spatial`` (a 2-D lattice per view) and ``random-visual`` (a *fixed* random subset, the same
for every image) — both deployable constant methods. The honest baselines every report carries (random
keep drawn per image over several seeds, the 2-D lattice) are evaluated in PyTorch by
:mod:`tokexport.vlm.baselines`, not exported.

Methods that read more than a significance map live in their own modules and override
``VisualSelector.reduce`` (what the graph calls): ``visionzip`` (merges: returns its own tokens),
``divprune`` and ``dart`` (select from the tokens themselves), ``cdpruner`` (also takes the instruction
embedding as a further graph input). ``tokexport.vlm`` imports them all, so they register here.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokexport.lazy import np, torch
from tokexport.registry import Registry

from ..bounds import Count, Real
from ..reduce.common import gather_tokens
from ..reduce.schedule import round_count
from ..reduce.uniform_keep import uniform_positions

TOPK_LIMIT = 3840  # TensorRT: TopK K must be < 3840 on every version

Source = Literal["cls", "received"]


def floor_count(x: float) -> int:
    return round_count(x, "floor")


# --------------------------------------------------------------------------------------------------
# layout and significance


@dataclass(frozen=True)
class VisualLayout:
    """Static token layout: ``views`` views of ``grid`` = (gh, gw) patches each.

    ``sub_grid`` = (rows, cols) of the anyres sub-images when ``views == 1 + rows * cols`` (view 0 is
    the full image, views 1.. the sub-images in raster order: row-major over (rows, cols)); None for a
    single view.
    """

    views: int
    grid: tuple[int, int]
    sub_grid: tuple[int, int] | None = None

    def __post_init__(self):
        grid = tuple(int(g) for g in self.grid)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f"grid must be two positive ints (gh, gw), got {self.grid!r}")
        object.__setattr__(self, "grid", grid)
        if int(self.views) != self.views or self.views < 1:
            raise ValueError(f"views must be a positive int, got {self.views!r}")
        object.__setattr__(self, "views", int(self.views))
        if self.sub_grid is None:
            if self.views != 1:
                raise ValueError(
                    f"views={self.views} needs sub_grid=(rows, cols) with views == 1 + rows*cols; "
                    "sub_grid=None means a single view"
                )
            return
        sub = tuple(int(s) for s in self.sub_grid)
        if len(sub) != 2 or min(sub) < 1:
            raise ValueError(f"sub_grid must be two positive ints (rows, cols), got {self.sub_grid!r}")
        object.__setattr__(self, "sub_grid", sub)
        if self.views != 1 + sub[0] * sub[1]:
            raise ValueError(
                f"views={self.views} does not match sub_grid={sub}: expected 1 + {sub[0]}*{sub[1]} = "
                f"{1 + sub[0] * sub[1]}"
            )

    @property
    def patches(self) -> int:
        """P: patch tokens per view."""
        return self.grid[0] * self.grid[1]

    @property
    def total(self) -> int:
        """V·P: patch tokens over all views."""
        return self.views * self.patches

    @property
    def n_sub(self) -> int:
        """Number of sub-images (views - 1 with a sub_grid, 0 for one view)."""
        return 0 if self.sub_grid is None else self.sub_grid[0] * self.sub_grid[1]


def significance(attn: torch.Tensor, n_prefix: int, source: str, heads: str = "sum") -> torch.Tensor:
    """Per-patch significance [B, N - n_prefix] from one block's attention probabilities.

    attn: [B, H, N, N] softmax probabilities (rows = queries sum to 1); the first ``n_prefix`` tokens
    are CLS/registers and are not candidates.

    - ``"cls"``: attention of the CLS query (row 0) to each patch (FoPru/HiRED for CLIP towers). Needs
      a CLS token (n_prefix >= 1).
    - ``"received"``: attention each patch receives, averaged over ALL N queries (prefix queries
      included), i.e. the column mean of the attention matrix. The definition used for towers without
      CLS (SigLIP).

    Heads are then summed (``heads="sum"``, HiRED) or averaged (``"mean"``).
    """
    if attn.dim() != 4:
        raise ValueError(f"attn must be [B, H, N, N], got shape {tuple(attn.shape)}")
    if heads not in ("sum", "mean"):
        raise ValueError(f"heads must be 'sum' or 'mean', got {heads!r}")
    if source == "cls":
        if n_prefix < 1:
            raise ValueError(
                "significance source 'cls' needs a CLS token (n_prefix >= 1), but this tower has no "
                "prefix tokens (e.g. SigLIP); use source 'received'"
            )
        a = attn[:, :, 0, n_prefix:]
    elif source == "received":
        a = attn[:, :, :, n_prefix:].mean(dim=2)
    else:
        raise ValueError(f"significance source must be 'cls' or 'received', got {source!r}")
    return a.sum(dim=1) if heads == "sum" else a.mean(dim=1)


# --------------------------------------------------------------------------------------------------
# config, registry, base class


class VisualReductionConfig(BaseModel):
    """Fields shared by every visual-token selector: the budget K, absolute or as a rate."""

    model_config = ConfigDict(extra="forbid")

    method: str
    keep: Count(1, TOPK_LIMIT - 1) | None = Field(
        default=None,
        description="Absolute number K of visual tokens kept (of all V·P), 1..3839 (TensorRT's TopK needs K < 3840).",
    )
    keep_rate: Real(0, 1, lo_open=True) | None = Field(
        default=None,
        description="Fraction in (0, 1] of all V·P visual tokens kept: K = max(1, floor(V·P·keep_rate)).",
    )

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.keep is None) == (self.keep_rate is None):
            raise ValueError("give exactly one of keep (absolute K) or keep_rate (fraction of all visual tokens)")
        return self

    def budget_field(self) -> str:
        return "keep" if self.keep is not None else "keep_rate"

    def summary(self) -> str:
        """The budget in a few words (`tokexport recipes list`)."""
        return f"visual tokens keep {self.keep if self.keep is not None else self.keep_rate}"

    def resolve_k(self, layout: VisualLayout) -> int:
        """K for ``layout``: ``keep``, or floor(total·keep_rate) (at least 1). ValueError naming the field
        when K exceeds the token count, reaches TensorRT's TopK limit, or does not suit the method."""
        total = layout.total
        if self.keep is not None:
            k, field, given = self.keep, "keep", f"keep={self.keep}"
        else:
            k = max(1, floor_count(total * self.keep_rate))
            field, given = "keep_rate", f"keep_rate={self.keep_rate:g} (K={k} of {total})"
        if k > total:
            raise ValueError(
                f"{field}: {given} exceeds the {total} visual tokens ({layout.views} view(s) of "
                f"{layout.grid[0]}x{layout.grid[1]})"
            )
        if k >= TOPK_LIMIT:
            raise ValueError(f"{field}: {given} keeps {k} tokens; TensorRT's TopK needs K < {TOPK_LIMIT}")
        self.check_k(layout, k, field)
        return k

    def check_k(self, layout: VisualLayout, k: int, field: str = "k") -> None:
        """Method-specific constraints on K (override); raise ValueError naming ``field``."""


class VisualSelector:
    """Base class of a visual-token method. Subclasses set ``name``, ``config_cls``, ``needs`` and
    implement ``_select`` (a selection from significance maps) or override ``reduce`` (anything else:
    a selection from the tokens themselves, or a merge).

    ``needs``: the signals consumed: "select" (significance at the config's ``select_layer``), "alloc"
    (at ``alloc_layer``), "keys" (the ``select_layer`` block's keys averaged over heads, [B, V, P, dh]),
    "tokens" (nothing from the tower's attention: the method reads the tokens ``reduce`` is given).
    Empty for constant subsets.

    ``on``: the tokens ``reduce`` is given. "features" (default): the tower's feature-layer patch tokens;
    the projector then runs on the K outputs only (exact for a selection: the projector is per token).
    "projected": the projector runs on all V·P tokens first and the method works in the LLM's embedding
    space, as DivPrune and DART do; identical to "features" for a bare tower (no projector).
    """

    name: ClassVar[str]
    config_cls: ClassVar[type[VisualReductionConfig]]
    needs: ClassVar[frozenset[str]] = frozenset()
    on: ClassVar[Literal["features", "projected"]] = "features"

    def __init__(self, config: VisualReductionConfig):
        if not isinstance(config, self.config_cls):
            config = self.config_cls.model_validate(config.model_dump() if isinstance(config, BaseModel) else config)
        self.config = config
        self._last: tuple[VisualLayout, int] | None = None

    def resolve_k(self, layout: VisualLayout) -> int:
        return self.config.resolve_k(layout)

    def select(
        self, sig: torch.Tensor | None, sig_alloc: torch.Tensor | None, layout: VisualLayout, k: int
    ) -> torch.Tensor:
        """int64 [B, k]: ascending positions in [0, V·P) of the kept visual tokens.

        sig / sig_alloc: [B, V, P] significance at the selection / allocation layer, or None when the
        method does not need it. Constant methods given neither return [1, k] (one row for every image).
        """
        k = self.check_budget(layout, k)
        for kind, t in (("select", sig), ("alloc", sig_alloc)):
            if t is None:
                if kind in self.needs and not (kind == "alloc" and layout.n_sub == 0):
                    raise ValueError(f"{self.name} needs the {kind!r} significance map")
                continue
            shape = tuple(int(s) for s in t.shape[1:])
            if t.dim() != 3 or shape != (layout.views, layout.patches):
                raise ValueError(
                    f"{kind} significance must be [B, {layout.views}, {layout.patches}], got {tuple(t.shape)}"
                )
        self._last = (layout, k)
        return self._select(sig, sig_alloc, layout, k)

    def prepare(self, tower_config, base_dir) -> None:
        """Load what the method needs beyond the tower (CDPruner: a CLIP checkpoint) and check that it
        fits ``tower_config``; ValueError whose message starts with the recipe field (``reduction.<it>``).
        Default: nothing."""

    def graph_inputs(self) -> dict[str, tuple[int, ...]]:
        """Further graph inputs after ``pixel_values`` (name → shape after the batch axis), passed to
        ``reduce`` in ``signals`` under their names. Default: none."""
        return {}

    def graph_modules(self) -> dict[str, torch.nn.Module]:
        """Modules with weights the method runs inside the graph (CDPruner: CLIP's relevance head); the
        graph registers them, so the exporter writes their weights. Default: none."""
        return {}

    def input_values(self, prompt: str | None = None) -> dict[str, np.ndarray]:
        """Values of ``graph_inputs`` for one image (no batch axis): for ``prompt``, or the recipe's own
        when None (the convert's evaluation). Default: none."""
        return {}

    def check_budget(self, layout: VisualLayout, k: int) -> int:
        """``k`` as an int after the checks every method shares (1 ≤ k ≤ V·P, k < TensorRT's TopK limit)
        and the method's own (``check_k``); remembered for ``describe``."""
        k = int(k)
        if not 1 <= k <= layout.total:
            raise ValueError(f"k={k} outside [1, {layout.total}]")
        if k >= TOPK_LIMIT:
            raise ValueError(f"k={k}: TensorRT's TopK needs K < {TOPK_LIMIT}")
        self.config.check_k(layout, k, "k")
        self._last = (layout, k)
        return k

    def _select(self, sig, sig_alloc, layout: VisualLayout, k: int) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} does not select from significance maps; use reduce()")

    def reduce(
        self, tokens: torch.Tensor, signals: dict[str, torch.Tensor], layout: VisualLayout, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens [B, k, D], positions [B, k] int64 ascending): what the graph outputs.

        tokens: [B, V·P, D] (see ``on``); signals: {"select", "alloc": [B, V, P], "keys": [B, V, P, dh]},
        those in ``needs``. Default: the positions ``select`` returns and the tokens there (one Gather).
        A merging method overrides this and returns its own tokens; each output token still carries one
        position of [0, V·P) (the method documents which), distinct and ascending, so the LLM-side packing
        (``tokexport.vlm.packing``) places it."""
        idx = self.select(signals.get("select"), signals.get("alloc"), layout, k)
        if not self.needs & {"select", "alloc"}:  # constant subsets: one row for every image
            idx = idx[:1].expand(tokens.shape[0], -1)
        return gather_tokens(tokens, idx, 0), idx

    def resolved(self, layout: VisualLayout, k: int) -> dict:
        """Layout-dependent parameters (override)."""
        return {}

    def describe(self, layout: VisualLayout | None = None, k: int | None = None) -> dict:
        """Method parameters with defaults resolved (JSON-serialisable). With a layout (given, or the
        last one ``select`` ran on) also K and the derived counts."""
        d = self.config.model_dump(mode="json", exclude={"method", "keep", "keep_rate"})
        d["needs"] = sorted(self.needs)
        if layout is None and self._last is not None:
            layout, k = self._last
        if layout is not None:
            k = self.resolve_k(layout) if k is None else int(k)
            d["k"] = k
            d.update(self.resolved(layout, k))
        return d


VISUAL_METHODS: Registry[type[VisualSelector]] = Registry("visual-token method")


def make_visual_selector(spec: dict | VisualReductionConfig) -> VisualSelector:
    """Selector from a config or a dict with ``method``."""
    method = spec.method if isinstance(spec, BaseModel) else spec.get("method")
    if method not in VISUAL_METHODS:
        raise ValueError(f"unknown visual-token method {method!r}; known: {', '.join(sorted(VISUAL_METHODS))}")
    cls = VISUAL_METHODS[method]
    return cls(
        spec
        if isinstance(spec, cls.config_cls)
        else cls.config_cls.model_validate(spec.model_dump() if isinstance(spec, BaseModel) else spec)
    )


def _batch(*tensors) -> int | torch.Tensor:
    for t in tensors:
        if t is not None:
            return t.shape[0]
    return 1


def _constant_rows(pos: list[int], *like) -> torch.Tensor:
    """[B, k] int64 constant rows (B from the first given tensor, else 1)."""
    device = next((t.device for t in like if t is not None), None)
    idx = torch.tensor(pos, dtype=torch.int64, device=device).unsqueeze(0)  # an ONNX constant
    return idx.expand(_batch(*like), len(pos))


# descriptions of the recipe fields the attention-ranked methods share (FoPru, HiRED)
SELECT_LAYER_DESC = (
    "Tower block whose attention gives the selection significance, -1024..1023; negative counts from the end "
    "like LLaVA's vision_feature_layer (-2 = the block producing hidden_states[-2], LLaVA's "
    "feature layer)."
)
SOURCE_DESC = (
    "Significance: 'cls' = CLS-query attention to each patch (needs a CLS token); 'received' = "
    "attention each patch receives, averaged over all queries (towers without CLS, e.g. SigLIP). "
    "Heads are summed."
)


# --------------------------------------------------------------------------------------------------
# constant baselines


def split_evenly(k: int, views: int) -> list[int]:
    """K over the views as evenly as possible, the remainder to the first views."""
    base, rem = divmod(k, views)
    return [base + (1 if v < rem else 0) for v in range(views)]


def spatial_positions(grid: tuple[int, int], n: int) -> list[int]:
    """Exactly n distinct raster positions spread evenly over a (gh, gw) grid, ascending.

    A near-square a×b sub-lattice with a·b ≥ n (a ≈ sqrt(n·gh/gw), b = ceil(n/a), both within the grid),
    lattice lines at the bin centres floor((2i+1)·g/(2a)); then n of its a·b points at the bin centres of
    its raster order, floor((2t+1)·a·b/(2n)). Never more than n (unlike HiRED's version).
    """
    gh, gw = grid
    if not 0 <= n <= gh * gw:
        raise ValueError(f"n={n} outside [0, {gh * gw}]")
    if n == 0:
        return []
    a = min(gh, max(1, round(math.sqrt(n * gh / gw))))
    b = min(gw, math.ceil(n / a))
    if a * b < n:
        a = math.ceil(n / b)
    lattice = [y * gw + x for y in uniform_positions(gh, a) for x in uniform_positions(gw, b)]
    return [lattice[t] for t in uniform_positions(len(lattice), n)]


class UniformSpatialConfig(VisualReductionConfig):
    """Evenly spread 2-D subset of every view, identical for every image; no significance needed."""

    method: Literal["uniform-spatial"] = Field(default="uniform-spatial", description="Method name.")


@VISUAL_METHODS.register
class UniformSpatial(VisualSelector):
    name = "uniform-spatial"
    config_cls = UniformSpatialConfig
    needs = frozenset()

    @staticmethod
    def positions(layout: VisualLayout, k: int) -> list[int]:
        out = []
        for v, n in enumerate(split_evenly(k, layout.views)):
            out += [v * layout.patches + p for p in spatial_positions(layout.grid, n)]
        return out

    def _select(self, sig, sig_alloc, layout, k):
        return _constant_rows(self.positions(layout, k), sig, sig_alloc)

    def resolved(self, layout, k):
        return {"per_view": split_evenly(k, layout.views)}


class RandomVisualConfig(VisualReductionConfig):
    """Fixed random subset: seeded random V·P positions, identical for every image (a deployable constant
    method; the per-image random *baseline* of the report is tokexport.vlm.baselines)."""

    method: Literal["random-visual"] = Field(default="random-visual", description="Method name.")
    seed: Count(0, 2**40) = Field(
        default=0,
        description="torch.Generator().manual_seed(seed), 0..1099511627776; the subset is the first K of randperm(V·P) (so a smaller "
        "K keeps a subset of a larger one), sorted.",
    )


@VISUAL_METHODS.register
class RandomVisual(VisualSelector):
    name = "random-visual"
    config_cls = RandomVisualConfig
    needs = frozenset()
    config: RandomVisualConfig

    def __init__(self, config: RandomVisualConfig):
        super().__init__(config)
        self._cache: dict[tuple[int, int], list[int]] = {}

    def positions(self, total: int, k: int) -> list[int]:
        """Drawn once per (total, k) through Python values, so a first call under the ONNX tracer records a
        constant, not a RandPerm (a torch.Generator inside a trace does not export)."""
        key = (int(total), int(k))
        if key not in self._cache:
            g = torch.Generator().manual_seed(self.config.seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                perm = torch.randperm(key[0], generator=g).tolist()
            self._cache[key] = sorted(perm[: key[1]])  # = sort_positions of the draw, done in Python
        return self._cache[key]

    def _select(self, sig, sig_alloc, layout, k):
        return _constant_rows(self.positions(layout.total, k), sig, sig_alloc)

    def resolved(self, layout, k):
        return {
            "subset": "fixed random subset: first K of torch.randperm(V·P) with the seed, sorted; identical "
            "for every image"
        }


__all__ = [
    "TOPK_LIMIT",
    "VISUAL_METHODS",
    "VisualLayout",
    "VisualReductionConfig",
    "VisualSelector",
    "floor_count",
    "make_visual_selector",
    "significance",
    "spatial_positions",
    "split_evenly",
]
