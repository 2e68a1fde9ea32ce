"""CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token
Pruning in MLLMs", NeurIPS 2025, arXiv 2506.10967): keep the K visual tokens that are diverse AND
relevant to the instruction — the greedy MAP of a determinantal point process whose kernel is the
tokens' cosine similarity weighted by their relevance to the instruction.

What the official code does (LLaVA; ``llava_arch.py: encode_images``), per image (per crop for
LLaVA-NeXT):
1. X = the projected visual tokens; S = cosine similarity of X (float32);
2. relevance: the tower's patch features through CLIP's ``post_layernorm`` and ``visual_projection``
   (ê), the instruction through CLIP's text tower with projection (t̂, one embedding per 77-token
   segment), both L2-normalised; r_raw = mean over segments of −ê·t̂ (the code NEGATES the similarity,
   an observation of the authors for CLIP's penultimate features); r = (r_raw − min + 1e-6)/(max − min),
   min and max over the whole batch (all crops of an image);
3. kernel L = diag(r)·S·diag(r);
4. greedy MAP (Chen et al. 2018) for T steps: d = diag(L); j = argmax d; e = (L[j] − Σ_t c_t[j]·c_t) /
   sqrt(d_j); d −= e²; d_j = −inf; the T picks sorted.

tokexport's static form (docs/methods/cdpruner.md): the same arithmetic, the T greedy steps unrolled
(ArgMax, GatherElements, MatMul-free sums over the stacked c's, Sqrt, Where; no Loop, no scatter). The
instruction embedding is a SECOND GRAPH INPUT, ``instruction_embeds [B, E]``: the CLIP text tower's
projected embedding of the instruction, computed outside the graph (by the runtime, once per request —
tokenisation cannot live in a static TensorRT graph); the relevance head (post_layernorm +
visual_projection of the CLIP checkpoint named by ``clip_model``) is inside the graph. Differences: one
77-token text segment (longer instructions are truncated; the official code averages over segments);
relevance normalised over each image's V·P tokens (= the official batch-wide min/max for one image);
K split over the views like every method (the official T is per crop); the selection runs on the
tokens the graph outputs (after the projector, as the official code does); a non-positive d_j is
clamped at 1e-12 under the square root (a rank-deficient kernel; the official code would divide by 0).

Only for CLIP towers: the relevance compares tokens with the instruction in CLIP's joint image-text
space, so the tower must be the vision tower of ``clip_model``. A bare DINOv2 (or SigLIP) tower has no
text tower aligned with its features, and a recipe asking for it is refused (``prepare``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from tokexport.lazy import torch

from ..reduce.common import gather_tokens, sort_positions
from .diversity import MASKED, gather_row, one_hot, unit_rows
from .select import VISUAL_METHODS, VisualLayout, VisualReductionConfig, VisualSelector, split_evenly

INSTRUCTION_INPUT = "instruction_embeds"
TEXT_CONTEXT = 77  # CLIP's text context: one segment


class CDPrunerConfig(VisualReductionConfig):
    """CDPruner: instruction-conditioned DPP selection (greedy MAP) of K visual tokens, per view, on the
    tokens the graph outputs; relevance from CLIP's joint image-text space."""

    method: Literal["cdpruner"] = Field(default="cdpruner", description="Method name.")
    clip_model: str = Field(
        description="CLIP checkpoint (Hugging Face directory relative to the recipe, bundled/generated name, or Hub id) "
        "whose vision tower is the VLM's and which has the text tower and both projections; LLaVA-1.5/NeXT: "
        "openai/clip-vit-large-patch14-336. Its post_layernorm + visual_projection go into the graph; its text "
        "tower embeds the instruction outside the graph."
    )
    instruction: str = Field(
        default="Describe the image.",
        min_length=1,
        max_length=4096,
        description="Instruction the convert's evaluation conditions on (parity, accuracy, bench, bundle inputs; the "
        "generation check uses each prompt's own). At run time the graph takes any instruction's embedding.",
    )


def relevance(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """[B, N]: CDPruner's relevance of every token to the instruction. image_embeds [B, N, E] (CLIP
    joint space), text_embeds [B, E]; −cosine, min–max normalised over the N tokens of each image
    (+1e-6 so the least relevant token keeps a tiny weight)."""
    e = unit_rows(image_embeds)
    t = unit_rows(text_embeds).unsqueeze(-1)  # [B, E, 1]
    raw = -torch.matmul(e, t)[..., 0]
    lo = raw.min(dim=-1, keepdim=True).values
    hi = raw.max(dim=-1, keepdim=True).values
    return (raw - lo + 1e-6) / (hi - lo).clamp_min(1e-12)


def dpp_kernel(tokens: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
    """[B, N, N]: L = diag(r)·S·diag(r), S the cosine similarity of the tokens (float32)."""
    x = unit_rows(tokens)
    sim = torch.matmul(x, x.transpose(1, 2))
    return rel.unsqueeze(2) * sim * rel.unsqueeze(1)


def dpp_greedy(kernel: torch.Tensor, k: int, choose=None) -> torch.Tensor:
    """int64 [B, k]: the greedy MAP picks of the DPP with kernel [B, N, N], ascending; the k steps
    unrolled. ``choose`` is the per-step pick (the negative control in tests swaps it)."""
    n = int(kernel.shape[-1])
    d = kernel.reshape(kernel.shape[0], n * n)[:, :: n + 1]  # the diagonal, a strided Slice (exact)
    cs = None  # [B, i, N]: the c vectors of the steps so far
    picks = []
    for _ in range(k):
        j = (choose or torch.argmax)(d, dim=-1)  # default: argmax (looked up when called: lazy torch)
        picks.append(j)
        row = gather_row(kernel, j)  # [B, N]
        dj = gather_row(d.unsqueeze(-1), j)[:, 0].clamp_min(1e-12)  # [B]
        if cs is not None:
            cj = torch.gather(cs, 2, j.reshape(-1, 1, 1).expand(-1, cs.shape[1], 1))  # [B, i, 1]
            row = row - (cj * cs).sum(dim=1)
        e = row / torch.sqrt(dj).unsqueeze(-1)
        cs = e.unsqueeze(1) if cs is None else torch.cat([cs, e.unsqueeze(1)], dim=1)
        d = torch.where(one_hot(j, n) > 0, torch.full_like(d, MASKED), d - e * e)
    return sort_positions(torch.stack(picks, dim=1))


def cdpruner_positions(
    tokens: torch.Tensor, image_embeds: torch.Tensor, text_embeds: torch.Tensor, layout: VisualLayout, k: int
) -> torch.Tensor:
    """int64 [B, k] ascending: relevance over the image's V·P tokens, then the greedy MAP per view (K split
    over the views as evenly as possible)."""
    rel = relevance(image_embeds, text_embeds)
    p = layout.patches
    out = []
    for v, kv in enumerate(split_evenly(k, layout.views)):
        if kv == 0:
            continue
        sl = slice(v * p, (v + 1) * p)
        out.append(dpp_greedy(dpp_kernel(tokens[:, sl], rel[:, sl]), kv) + v * p)
    return torch.cat(out, dim=1)


def relevance_head(post_layernorm, visual_projection):
    """CLIP's post_layernorm + visual_projection: tower features → CLIP's joint image-text space (a module
    with those two named children, built when a recipe asks for cdpruner: no torch import before that)."""
    from collections import OrderedDict

    return torch.nn.Sequential(OrderedDict(post_layernorm=post_layernorm, visual_projection=visual_projection))


def _config_of(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"clip_model: cannot read {path / 'config.json'}: {e}") from None


@VISUAL_METHODS.register
class CDPruner(VisualSelector):
    name = "cdpruner"
    config_cls = CDPrunerConfig
    needs = frozenset({"tokens", "features", "instruction"})
    on = "projected"
    config: CDPrunerConfig

    def __init__(self, config):
        super().__init__(config)
        self.head = None  # relevance_head(...), loaded by prepare()
        self._text = None  # (CLIPTextModelWithProjection, tokenizer or None)

    # ---- what the graph and the task need beyond the tower
    def graph_inputs(self) -> dict[str, tuple[int, ...]]:
        if self.head is None:
            raise RuntimeError("cdpruner: prepare() has not loaded the CLIP checkpoint")
        return {INSTRUCTION_INPUT: (int(self.head.visual_projection.out_features),)}

    def graph_modules(self) -> dict:
        return {"relevance_head": self.head} if self.head is not None else {}

    def prepare(self, tower_config, base_dir: Path) -> None:
        """Load the relevance head and the text tower from ``clip_model``; ValueError (naming the recipe
        field) when the tower is not that checkpoint's CLIP vision tower."""
        kind = getattr(tower_config, "model_type", None)
        if kind != "clip_vision_model":
            raise ValueError(
                f"method: cdpruner measures each token's relevance to the instruction in CLIP's joint image-text space "
                f"(post_layernorm + visual_projection of the tower's features against CLIP's text tower), so the vision "
                f"tower must be a CLIP tower; this tower is {kind or 'unknown'}, which has no text tower aligned with "
                "its features (use another method for it)"
            )
        from transformers import CLIPModel

        from ..load import resolve_source

        try:
            path, _ = resolve_source(self.config.clip_model, Path(base_dir))
        except Exception as e:  # noqa: BLE001  (InputError names `model`, a hub failure any type: reword for this field)
            raise ValueError(f"clip_model: {str(e).removeprefix('model: ')}") from None
        cfg = _config_of(path)
        vis = cfg.get("vision_config", {})
        if cfg.get("model_type") != "clip" or not cfg.get("text_config"):
            raise ValueError(
                f"clip_model: {path} is not a CLIP checkpoint with a text tower (model_type "
                f"{cfg.get('model_type')!r}); CDPruner needs both towers and their projections"
            )
        for key in ("hidden_size", "num_hidden_layers", "patch_size"):
            if vis.get(key) != getattr(tower_config, key, None):
                raise ValueError(
                    f"clip_model: its vision tower's {key} is {vis.get(key)}, the VLM's tower has "
                    f"{getattr(tower_config, key, None)}: it must be the CLIP checkpoint the VLM's tower "
                    "comes from"
                )
        clip = CLIPModel.from_pretrained(path).eval()
        self.head = relevance_head(clip.vision_model.post_layernorm, clip.visual_projection).eval()
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(path)
        except Exception:  # noqa: BLE001  (generated tiny checkpoints ship no tokenizer, any of several error types: see embed_instruction)
            tok = None
        self._text = (clip, tok)

    def input_values(self, prompt: str | None = None) -> dict[str, np.ndarray]:
        """The instruction embedding of ``prompt`` (the recipe's ``instruction`` when None)."""
        return {INSTRUCTION_INPUT: self.embed_instruction(self.config.instruction if prompt is None else prompt)}

    def embed_instruction(self, text: str) -> np.ndarray:
        """float32 [E]: CLIP's projected text embedding of ``text`` (one 77-token segment; longer text is
        truncated). Without a tokenizer (generated test checkpoints), a fixed id sequence derived from the
        text's bytes stands in for the tokens."""
        if self._text is None:
            raise RuntimeError("cdpruner: prepare() has not loaded the CLIP checkpoint")
        clip, tok = self._text
        if tok is not None:
            ids = tok(text, truncation=True, max_length=TEXT_CONTEXT, return_tensors="pt").input_ids
        else:
            vocab = int(clip.config.text_config.vocab_size)
            ids = torch.tensor([[b % vocab for b in text.encode()[:TEXT_CONTEXT]]], dtype=torch.int64)
        with torch.inference_mode():
            out = clip.get_text_features(input_ids=ids)
        out = getattr(out, "pooler_output", out)  # transformers 5 may return a model output
        return out[0].to(torch.float32).numpy()

    # ---- the selection
    def reduce(self, tokens, signals, layout: VisualLayout, k: int):
        k = self.check_budget(layout, k)
        if self.head is None:
            raise RuntimeError("cdpruner: prepare() has not loaded the CLIP checkpoint")
        feats, text = signals.get("features"), signals.get(INSTRUCTION_INPUT)
        if feats is None or text is None:
            raise ValueError("cdpruner needs the tower features and the instruction embedding")
        idx = cdpruner_positions(tokens, self.head(feats), text, layout, k)
        return gather_tokens(tokens, idx, 0), idx

    def resolved(self, layout, k):
        return {
            "per_view": split_evenly(k, layout.views),
            "graph_input": INSTRUCTION_INPUT,
            "text": "CLIP text tower outside the graph, one 77-token segment",
        }


__all__ = [
    "CDPruner",
    "CDPrunerConfig",
    "INSTRUCTION_INPUT",
    "relevance_head",
    "cdpruner_positions",
    "dpp_greedy",
    "dpp_kernel",
    "relevance",
]
