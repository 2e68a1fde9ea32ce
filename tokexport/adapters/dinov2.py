"""DINOv2 (facebook/dinov2-*): CLS (+ register tokens for the with-registers variant), LayerScale.

Position embeddings are always interpolated to the input size by the model itself.
"""

from __future__ import annotations

from .base import ADAPTERS, Adapter, BlockLayout


@ADAPTERS.register
class Dinov2Adapter(Adapter):
    family = "dinov2"
    model_types = ("dinov2", "dinov2_with_registers")
    layer_paths = ("encoder.layer", "dinov2.encoder.layer", "encoder.layers", "dinov2.encoder.layers")
    # Dinov2Layer: LayerScale then DropPath on each half.
    block_layouts = (
        BlockLayout("norm1", "attention", ("layer_scale1", "drop_path"), "norm2", "mlp", ("layer_scale2", "drop_path")),
    )

    def n_prefix(self) -> int:
        return 1 + int(getattr(self.config, "num_register_tokens", 0) or 0)

    def default_image_size(self) -> int:
        # DINOv2 checkpoints declare 518 (pretraining size) but are used at 224 (preprocessor crop).
        return 224
