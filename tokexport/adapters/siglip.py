"""SigLIP vision tower (google/siglip-*): no CLS token, so no prefix token (``n_prefix() == 0``).

transformers 5 flattened ``SiglipVisionModel``: blocks at ``encoder.layers`` (4.x:
``vision_model.encoder.layers``); q/k at ``self_attn.q_proj/k_proj``. ``last_hidden_state`` is
post-LayerNormed; ``pooler_output`` comes from the attention-pooling head ``head`` (MAP: one learned
probe attends over *all* output tokens), so after pruning it pools the kept tokens only.

Methods that read a CLS row (``topk-cls``, and Zero-TPrune's ``init="cls"`` start) have no CLS here:
position 0 is an ordinary patch token.
"""

from __future__ import annotations

from torch import nn

from .base import ADAPTERS, Adapter, BlockLayout


@ADAPTERS.register
class SiglipVisionAdapter(Adapter):
    family = "siglip"
    model_types = ("siglip_vision_model",)
    layer_paths = ("encoder.layers", "vision_model.encoder.layers")
    qk_paths = (("self_attn.q_proj", "self_attn.k_proj"),)
    block_layouts = (BlockLayout("layer_norm1", "self_attn", (), "layer_norm2", "mlp", ()),)
    needs_pos_interpolation_flag = True

    def n_prefix(self) -> int:
        return 0

    def head_macs(self, model: nn.Module, n_tokens: int | None = None) -> int:
        """The Linear layers outside the blocks (as the base counts them) plus what the MAP head's
        ``nn.MultiheadAttention`` hides in ``in_proj_weight``: the probe's query (D²), keys and values
        of the ``n_tokens`` pooled tokens (2·N·D²) and the probe's scores and weighted sum (2·N·D).

        ``n_tokens`` is the number of tokens leaving the last block; by default the unreduced count at
        the default image size (an upper bound for a pruned model: the head is ~1/6 of one block)."""
        total = super().head_macs(model)
        head = getattr(model, "head", None)
        if head is None and hasattr(model, "vision_model"):
            head = getattr(model.vision_model, "head", None)
        if head is None or not isinstance(getattr(head, "attention", None), nn.MultiheadAttention):
            return total
        d = int(self.config.hidden_size)
        n = self.n_tokens(self.default_image_size()) if n_tokens is None else int(n_tokens)
        return int(total + d * d + 2 * n * d * d + 2 * n * d)
