"""DeiT (facebook/deit-*): CLS + distillation token (two prefix tokens, never pruned)."""

from __future__ import annotations

from .base import ADAPTERS, Adapter, BlockLayout


@ADAPTERS.register
class DeiTAdapter(Adapter):
    family = "deit"
    model_types = ("deit",)
    layer_paths = ("deit.layers", "layers", "deit.encoder.layer", "encoder.layer")
    needs_pos_interpolation_flag = True
    # ViTLayer / DeiTLayer (transformers 5): dropout after each half, no LayerScale.
    block_layouts = (
        BlockLayout("layernorm_before", "attention", ("dropout",), "layernorm_after", "mlp", ("dropout",)),
    )

    def n_prefix(self) -> int:
        return 2
