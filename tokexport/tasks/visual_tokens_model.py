"""The model of a visual-tokens run (:mod:`.visual_tokens`) and its inputs: a LLaVA checkpoint or a bare
vision tower, loaded (:func:`load_visual`); a crop cut into the views the model sees (:func:`views`); a
feed with the selector's further inputs (:func:`with_inputs`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import Adapter, adapter_for
from ..errors import InputError
from ..export import INPUT_NAME
from ..vlm.select import VisualLayout


@dataclass
class VisualModel:
    """The model of a visual-tokens run: its vision tower, projector and feature settings, and the LLM's sizes."""

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
    llava: object | None = None  # LlavaParts, for the generation check


def _text_dims(cfg) -> dict:
    keys = (
        "hidden_size",
        "num_hidden_layers",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
    )
    return {k: getattr(cfg, k, None) for k in keys}


def load_visual(recipe, vis, base_dir: Path) -> VisualModel:
    """A LLaVA checkpoint (model_type llava / llava_next: its tower, projector, feature layer and select
    strategy) or a bare vision tower (the recipe's vision settings)."""
    from ..load import load_model, resolve_source

    path, kind = resolve_source(recipe.model, base_dir)
    cfg_file = path / "config.json"
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"model: cannot read {cfg_file}: {e}") from None
    if model_type in ("llava", "llava_next"):
        from ..vlm.llava import image_mean_std, load_llava

        parts = load_llava(path)
        tower = parts.tower
        mean, std = image_mean_std(path)
        return VisualModel(
            recipe.model,
            kind,
            path,
            parts.kind,
            tower,
            adapter_for(tower.config),
            parts.projector,
            parts.feature_layer,
            parts.feature_select,
            parts.image_size,
            mean,
            std,
            _text_dims(parts.text_config),
            sum(p.numel() for p in parts.model.parameters()),
            parts,
        )
    lm = load_model(recipe.model, base_dir, recipe.family, "feature-extraction", recipe.export.image_size)
    return VisualModel(
        recipe.model,
        kind,
        path,
        "tower",
        lm.model,
        lm.adapter,
        None,
        vis.feature_layer,
        vis.feature_select,
        lm.image_size,
        lm.mean,
        lm.std,
        vis.llm.model_dump(),
        lm.params,
    )


def views(x: np.ndarray, layout: VisualLayout, size: int) -> np.ndarray:
    """High-resolution crops [N, 3, rows·S, cols·S] → anyres views [N, V, 3, S, S]: the full image
    resized to S×S, then the rows×cols tiles in raster order."""
    t = torch.from_numpy(x)
    if layout.sub_grid is None:
        return (
            x[:, None]
            if t.shape[-1] == size
            else F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False).numpy()[
                :, None
            ]
        )
    rows, cols = layout.sub_grid
    full = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    tiles = [t[:, :, r * size : (r + 1) * size, c * size : (c + 1) * size] for r in range(rows) for c in range(cols)]
    return torch.stack([full, *tiles], dim=1).numpy()


def with_inputs(feed: dict, values: dict) -> dict:
    """``feed`` plus the selector's further inputs (one value per image, no batch axis) for every row."""
    n = len(feed[INPUT_NAME])
    return {**feed, **{k: np.repeat(np.asarray(v, dtype=np.float32)[None], n, axis=0) for k, v in values.items()}}
