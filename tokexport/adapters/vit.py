"""ViT (google/vit-*): one CLS token; blocks at ``vit.layers`` (transformers 5) or ``vit.encoder.layer`` (4.x)."""

from __future__ import annotations

from .base import ADAPTERS, Adapter, BlockLayout


@ADAPTERS.register
class ViTAdapter(Adapter):
    family = "vit"
    model_types = ("vit",)
    layer_paths = ("vit.layers", "layers", "vit.encoder.layer", "encoder.layer")
    needs_pos_interpolation_flag = True
    # ViTLayer / DeiTLayer (transformers 5): dropout after each half, no LayerScale.
    block_layouts = (
        BlockLayout("layernorm_before", "attention", ("dropout",), "layernorm_after", "mlp", ("dropout",)),
    )
