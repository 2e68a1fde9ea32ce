"""The greedy-generation check of a visual-tokens run on a LLaVA checkpoint (``verify.generation``): the
unmodified model's ``generate()`` against the tokens model.onnx produced, packed as the model packs them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import Preprocess, natural_images
from ..errors import InputError
from ..export import INPUT_NAME
from ..stages.runners import OrtRunner, run_rows
from ..vlm.select import VisualLayout
from .visual_tokens_model import VisualModel, views, with_inputs


def _prompt_ids(tok, prompt: str, parts) -> torch.Tensor:
    if tok is None:
        return torch.tensor([[1, parts.image_token_id, 5, 6, 7]])
    text = prompt if "<image>" in prompt else "USER: <image>\n" + prompt + " ASSISTANT:"
    return tok(text, return_tensors="pt").input_ids


def _tokenizer(vm: VisualModel):
    """The checkpoint's tokenizer, or None for a tiny random twin that ships none (fixed ids around the
    placeholder)."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(vm.path)
    except Exception:  # noqa: BLE001  (tiny random twins ship no tokenizer, which raises any of several types: fixed ids around the placeholder)
        return None


def _image_size(vm: VisualModel, layout: VisualLayout) -> tuple[int, tuple[int, int] | None]:
    """(the side of the square image the views are cut from, LLaVA-NeXT's image size: None for LLaVA-1.5),
    the tile grid checked against the one the model picks for that size."""
    parts = vm.llava
    side = vm.image_size * (layout.sub_grid[0] if layout.sub_grid else 1)
    hw = (side, side) if parts.kind == "llava_next" else None
    if hw is not None and parts.anyres_grid(hw) != layout.sub_grid:
        raise InputError(
            f"vision.grid: {list(layout.sub_grid)} is not the tile grid the model picks for a "
            f"{side}×{side} image ({list(parts.anyres_grid(hw))}, from its image_grid_pinpoints "
            f"{[list(p) for p in parts.grid_pinpoints]}); use that grid"
        )
    return side, hw


def _generate_both(
    parts, runner: OrtRunner, ids: torch.Tensor, x: np.ndarray, hw, n_full: int, inputs: dict, max_new_tokens: int
) -> tuple[list, list, int]:
    """(the unmodified model's new tokens, the reduced run's, how many visual tokens the reduced run gave the
    LLM) for one prompt and one image."""
    from ..vlm.llava import embed_with_visual_tokens, expand_image_tokens, pack_visual_tokens

    extra = {"image_sizes": torch.tensor([hw])} if hw is not None else {}
    ids_full = expand_image_tokens(ids, parts.image_token_id, n_full)
    with torch.inference_mode():
        out = parts.model.generate(
            input_ids=ids_full,
            pixel_values=torch.from_numpy(x),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            **extra,
        )
    a = out[0, ids_full.shape[1] :].tolist()
    r = run_rows(runner, with_inputs({INPUT_NAME: x}, inputs))
    packed = pack_visual_tokens(parts, torch.from_numpy(r["visual_tokens"][0]), r["positions"][0], hw)
    ids_red = expand_image_tokens(ids, parts.image_token_id, int(packed.shape[0]))
    with torch.inference_mode():
        emb = embed_with_visual_tokens(parts, ids_red, packed)
        out = parts.model.generate(
            inputs_embeds=emb, attention_mask=torch.ones_like(ids_red), max_new_tokens=max_new_tokens, do_sample=False
        )
    b = out[0].tolist()  # generate from inputs_embeds alone returns the new tokens only
    return a, b, int(packed.shape[0])


def generation(recipe, vm: VisualModel, model_path: Path, layout: VisualLayout, inputs_for=lambda prompt: {}):
    """Greedy generation on the recipe's prompts and the bundled photographs, the unmodified model
    against the tokens model.onnx produced.

    - full: the checkpoint's own ``generate(input_ids, pixel_values[, image_sizes])``, nothing patched
      (the prompt holds as many image placeholders as the model fills: LLaVA-NeXT's newlines included);
    - reduced: model.onnx run by ONNX Runtime on the same pixel values; its ``visual_tokens`` are packed
      by their ``positions`` the way the model packs (``pack_visual_tokens``: LLaVA-NeXT's base view,
      then the stitched tile grid row-major with ``image_newline`` after every row) and scattered into
      the placeholders of the prompt's embeddings, then ``generate(inputs_embeds=...)``. A method with
      further graph inputs (CDPruner's instruction embedding) gets the prompt's own (``inputs_for``).
    With every token kept the two agree token for token (tests/test_llava_packing.py)."""
    from ..vlm.llava import num_llm_visual_tokens

    g = recipe.verify.generation
    parts = vm.llava
    tok = _tokenizer(vm)
    runner = OrtRunner(model_path)
    side, hw = _image_size(vm, layout)
    n_full = num_llm_visual_tokens(parts, hw)
    pre = Preprocess(side, vm.mean, vm.std)
    rows, exact, agree, total = [], 0, 0, 0
    for prompt in g.prompts:
        ids = _prompt_ids(tok, prompt, parts)
        for name, img in natural_images(include_optional=False)[: g.images]:
            x = views(pre.center(img)[None], layout, vm.image_size)
            x = np.ascontiguousarray(x if layout.views > 1 else x[:, 0])
            a, b, n_red = _generate_both(parts, runner, ids, x, hw, n_full, inputs_for(prompt), g.max_new_tokens)
            same = sum(1 for i in range(min(len(a), len(b))) if a[i] == b[i])
            exact += int(a == b)
            agree += same
            total += max(len(a), len(b))
            rows.append(
                {
                    "prompt": prompt,
                    "image": name,
                    "exact": a == b,
                    "full": tok.decode(a) if tok else a,
                    "reduced": tok.decode(b) if tok else b,
                    "llm_visual_tokens": [n_full, n_red],
                }
            )
    return (
        {
            "samples": rows,
            "max_new_tokens": g.max_new_tokens,
            "decoding": "greedy",
            "reference_run": "the unmodified checkpoint's generate() on the pixel values",
            "reduced_run": "model.onnx (ONNX Runtime) tokens, packed by their positions as the model packs "
            "(LLaVA-NeXT: base view, stitched tile rows, image_newline after every row), fed as "
            "inputs_embeds",
        },
        {
            "generation_exact_match": (1.0, exact / len(rows)),
            "generation_token_agreement": (1.0, agree / max(total, 1)),
        },
    )
