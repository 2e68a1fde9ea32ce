"""Family adapters: the one place that knows where a transformers model keeps its blocks,
q/k projections and prefix tokens.

transformers moves these names between releases (4.x ``attention.attention.query`` became 5.x
``attention.q_proj``; ViT's blocks moved from ``vit.encoder.layer`` to ``vit.layers``). Each
adapter lists the attribute paths it knows, in order, and raises ``InputError`` naming the paths
it tried when a model matches none of them: a structure it does not recognise is never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from tokexport.registry import Registry

from ..bounds import BoundsError, check_count, check_real, show
from ..errors import InputError

# transformers releases the adapters were checked against (tests run on real checkpoints / tiny
# configs with the installed version; see pyproject's pin).
TESTED_TRANSFORMERS = ">=5.0,<6"


# config.json values the adapters, the FLOP count and the pipeline read: (name, lo, hi, may be a [h, w] pair).
# Wrong types or values out of range are one-line InputErrors naming the file and the field (patch_size: 0
# would divide by zero, image_size: "abc" would be a transformers traceback).
CONFIG_BOUNDS: tuple[tuple[str, int, int, bool], ...] = (
    ("patch_size", 1, 1024, True),
    ("image_size", 1, 16384, True),
    ("hidden_size", 1, 65536, False),
    ("num_attention_heads", 1, 1024, False),
    ("num_hidden_layers", 1, 1024, False),
    ("intermediate_size", 1, 1_048_576, False),
    ("num_channels", 1, 64, False),
    ("head_dim", 1, 65536, False),
    ("num_register_tokens", 0, 1024, False),
)


def check_config_values(values, source: str) -> None:
    """Check the CONFIG_BOUNDS fields of ``values`` (a config.json mapping, or a config object) that are
    present and not null; InputError ``"<source>: <field>: <problem>; fix ..."`` otherwise."""
    get = values.get if isinstance(values, dict) else (lambda name: getattr(values, name, None))
    fix = "fix it in the checkpoint's config.json (or re-save the model)"
    for name, lo, hi, pair in CONFIG_BOUNDS:
        v = get(name)
        if v is None:
            continue
        if pair and isinstance(v, (list, tuple)):
            if len(v) != 2:
                raise InputError(
                    f"{source}: {name}: expected a whole number in {lo}..{hi} or a pair of them, got {show(v)}; {fix}"
                )
            items = [(f"{name}[{i}]", x) for i, x in enumerate(v)]
        else:
            items = [(name, v)]
        for field, x in items:
            try:
                check_count(x, lo, hi)
            except BoundsError as e:
                raise InputError(f"{source}: {field}: {e}; {fix}") from None
    hidden, heads, head_dim = get("hidden_size"), get("num_attention_heads"), get("head_dim")
    if hidden is not None and heads is not None and head_dim is None and int(hidden) % int(heads):
        raise InputError(
            f"{source}: hidden_size {int(hidden)} is not a multiple of num_attention_heads {int(heads)}; {fix}"
        )
    ratio = get("mlp_ratio")
    if get("intermediate_size") is None and ratio is not None:
        try:
            check_real(ratio, 0, 64, lo_open=True)
        except BoundsError as e:
            raise InputError(f"{source}: mlp_ratio: {e}; {fix}") from None


@dataclass(frozen=True)
class Dims:
    """Sizes the analytic FLOP count needs."""

    hidden: int
    mlp: int
    heads: int
    layers: int
    patch: int
    channels: int


@dataclass(frozen=True)
class BlockLayout:
    """Where a pre-norm block keeps the modules of its two residual halves, in the order its forward applies them:
    ``x = x + post_attn(attention(norm1(x)))`` then ``x = x + post_mlp(mlp(norm2(x)))``. ``post_*`` are
    LayerScale / DropPath / Dropout modules (identities in eval mode except LayerScale)."""

    norm1: str
    attention: str
    post_attn: tuple[str, ...]
    norm2: str
    mlp: str
    post_mlp: tuple[str, ...]

    def paths(self) -> tuple[str, ...]:
        return (self.norm1, self.attention, *self.post_attn, self.norm2, self.mlp, *self.post_mlp)


class BlockHalves:
    """A block's attention half and MLP half, run with the block's own modules, so a method can act between
    them (ToMe merges there). Their composition is the block's forward: the contract tests check it against
    the host's own forward for every family."""

    def __init__(self, block: nn.Module, layout: BlockLayout):
        self.norm1 = get_path(block, layout.norm1)
        self.attn_module = get_path(block, layout.attention)
        self.post_attn = [get_path(block, p) for p in layout.post_attn]
        self.norm2 = get_path(block, layout.norm2)
        self.mlp_module = get_path(block, layout.mlp)
        self.post_mlp = [get_path(block, p) for p in layout.post_mlp]

    def attention(self, x: torch.Tensor, bias: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """``x + attention(norm1(x))``; ``bias`` ([B, 1, 1, N], float) is added to the attention logits through
        the host attention's ``attention_mask`` (transformers' eager and SDPA attention add a float mask)."""
        out = self.attn_module(self.norm1(x), attention_mask=bias, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        for m in self.post_attn:
            h = m(h)
        return h + x

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp_module(self.norm2(x))
        for m in self.post_mlp:
            h = m(h)
        return h + x


def get_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def find_path(obj, candidates: tuple[str, ...]) -> str | None:
    for path in candidates:
        try:
            get_path(obj, path)
        except AttributeError:
            continue
        return path
    return None


class Adapter:
    """Base for vision-transformer families. Subclasses set the class attributes."""

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    # Where the ModuleList of blocks lives, relative to the loaded model (base model or a head model).
    layer_paths: ClassVar[tuple[str, ...]]
    # (q, k) projection paths relative to one block.
    qk_paths: ClassVar[tuple[tuple[str, str], ...]] = (
        ("attention.q_proj", "attention.k_proj"),  # transformers 5.x
        ("attention.attention.query", "attention.attention.key"),  # transformers 4.x
    )
    # Extra keyword arguments the model's forward needs for a given input size.
    needs_pos_interpolation_flag: ClassVar[bool] = False
    # Module paths of a block's attention and MLP halves (transformers 5.x), for methods that act between them.
    block_layouts: ClassVar[tuple[BlockLayout, ...]] = ()

    def __init__(self, config):
        self.config = config

    def check_config(self, source: str = "config.json") -> None:
        """The config values this adapter reads are of the right type and in range (``check_config_values``)."""
        check_config_values(self.config, source)

    # -- structure -------------------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        path = find_path(model, self.layer_paths)
        if path is None:
            raise InputError(
                f"{type(model).__name__}: no transformer blocks at any of {', '.join(self.layer_paths)} "
                f"(the {self.family} adapter was checked with transformers {TESTED_TRANSFORMERS}; "
                "install a release in that range)"
            )
        layers = get_path(model, path)
        if not isinstance(layers, nn.ModuleList):
            raise InputError(f"{type(model).__name__}.{path} is not a list of blocks")
        return layers

    def layer_path(self, model: nn.Module) -> str:
        self.layers(model)
        return find_path(model, self.layer_paths)

    def qk(self, layer: nn.Module) -> tuple[str, str]:
        for q, k in self.qk_paths:
            try:
                qm, km = get_path(layer, q), get_path(layer, k)
            except AttributeError:
                continue
            if isinstance(qm, nn.Linear) and isinstance(km, nn.Linear):
                return q, k
        tried = ", ".join(f"{q}/{k}" for q, k in self.qk_paths)
        raise InputError(
            f"{type(layer).__name__}: no query/key projections at {tried} "
            f"(checked with transformers {TESTED_TRANSFORMERS})"
        )

    def halves(self, layer: nn.Module) -> BlockHalves:
        for layout in self.block_layouts:
            if all(find_path(layer, (p,)) is not None for p in layout.paths()):
                return BlockHalves(layer, layout)
        raise InputError(
            f"{type(layer).__name__}: cannot split the {self.family} block into its attention and MLP halves "
            f"(known layouts: {', '.join(lay.attention + '/' + lay.mlp for lay in self.block_layouts) or 'none'}; "
            f"checked with transformers {TESTED_TRANSFORMERS})"
        )

    # -- sizes ------------------------------------------------------------------------------
    @property
    def num_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def head_dim(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.config.hidden_size // self.num_heads)

    @property
    def num_layers(self) -> int:
        return int(self.config.num_hidden_layers)

    @property
    def patch_size(self) -> int:
        p = self.config.patch_size
        return int(p[0] if isinstance(p, (list, tuple)) else p)

    def n_prefix(self) -> int:
        return 1

    def n_tokens(self, image_size: int) -> int:
        if image_size % self.patch_size:
            raise InputError(f"export.image_size {image_size} is not a multiple of the patch size {self.patch_size}")
        return self.n_prefix() + (image_size // self.patch_size) ** 2

    def dims(self) -> Dims:
        c = self.config
        mlp = getattr(c, "intermediate_size", None) or int(c.hidden_size * getattr(c, "mlp_ratio", 4))
        return Dims(
            hidden=int(c.hidden_size),
            mlp=int(mlp),
            heads=self.num_heads,
            layers=self.num_layers,
            patch=self.patch_size,
            channels=int(getattr(c, "num_channels", 3)),
        )

    def head_macs(self, model: nn.Module) -> int:
        """Multiply-accumulates per image of the Linear layers outside the blocks and the embeddings
        (pooler, classifier heads): each runs once per image, on one or two pooled tokens."""
        blocks = self.layer_path(model)
        total = 0
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith(blocks) and "embeddings" not in name:
                total += module.weight.numel()
        return int(total)

    def default_image_size(self) -> int:
        s = self.config.image_size
        return int(s[0] if isinstance(s, (list, tuple)) else s)

    # -- forward ----------------------------------------------------------------------------
    def forward_kwargs(self, image_size: int) -> dict:
        if self.needs_pos_interpolation_flag and image_size != self.default_image_size():
            return {"interpolate_pos_encoding": True}
        return {}

    def outputs(self, model: nn.Module, out) -> dict[str, torch.Tensor]:
        """Named output tensors of the exported graph, from the transformers output object."""
        if getattr(out, "logits", None) is not None:
            return {"logits": out.logits}
        named = {"last_hidden_state": out.last_hidden_state}
        if getattr(out, "pooler_output", None) is not None:
            named["pooler_output"] = out.pooler_output
        return named

    @staticmethod
    def feature_output(output_names: list[str]) -> str:
        """The output compared with the original for feature cosine / instance recognition."""
        for name in ("pooler_output", "logits"):
            if name in output_names:
                return name
        return output_names[0]


ADAPTERS: Registry[type[Adapter]] = Registry("model family adapter", key="family")


def adapter_for(config, family: str | None = None, source: str = "config.json") -> Adapter:
    """The adapter of ``config``'s family, its config values checked (``source`` names the file in errors)."""
    adapter = _adapter_for(config, family)
    adapter.check_config(source)
    return adapter


def _adapter_for(config, family: str | None = None) -> Adapter:
    model_type = getattr(config, "model_type", None)
    if family is not None:
        if family not in ADAPTERS:
            raise InputError(f"family: unknown family {family!r}; known: {', '.join(sorted(ADAPTERS))}")
        cls = ADAPTERS[family]
        if model_type not in cls.model_types:
            raise InputError(
                f"family: {family!r} does not match the checkpoint's model_type {model_type!r} "
                f"(expected one of {', '.join(cls.model_types)}); remove `family` to detect it"
            )
        return cls(config)
    for cls in ADAPTERS.values():
        if model_type in cls.model_types:
            return cls(config)
    supported = sorted(t for c in ADAPTERS.values() for t in c.model_types)
    raise InputError(f"unsupported architecture: model_type {model_type!r}; supported: {', '.join(supported)}")
