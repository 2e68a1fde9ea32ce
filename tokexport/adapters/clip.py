"""CLIP vision tower (openai/clip-vit-*, the tower of LLaVA): one CLS prefix token, pre-LayerNorm.

transformers 5 flattened ``CLIPVisionModel``: its blocks live at ``encoder.layers`` (4.x:
``vision_model.encoder.layers``; ``CLIPVisionModelWithProjection`` keeps a ``vision_model``). q/k are
``self_attn.q_proj/k_proj``. ``last_hidden_state`` is the raw output of the last block; ``pooler_output``
is the post-LayerNormed CLS token, so it survives any pruning (CLS is never a candidate).

Only the vision model is supported: a full ``CLIPModel`` checkpoint (model_type "clip") needs
``input_ids`` in its forward and keeps its sizes in ``vision_config``; save its ``vision_model``
(``CLIPVisionModel``) as its own checkpoint first.
"""

from __future__ import annotations

from .base import ADAPTERS, Adapter, BlockLayout


@ADAPTERS.register
class CLIPVisionAdapter(Adapter):
    family = "clip"
    model_types = ("clip_vision_model",)
    layer_paths = ("encoder.layers", "vision_model.encoder.layers")
    qk_paths = (("self_attn.q_proj", "self_attn.k_proj"),)
    block_layouts = (BlockLayout("layer_norm1", "self_attn", (), "layer_norm2", "mlp", ()),)
    # CLIPVisionEmbeddings raises on a size other than config.image_size without the flag.
    needs_pos_interpolation_flag = True
