"""LLaVA-1.5 / LLaVA-NeXT through transformers: load the parts, count the language model's prefill,
and generate with a reduced set of visual tokens (PyTorch, reversible patch).

Checked against transformers 5.24 (``LlavaModel`` / ``LlavaNextModel``). What matters here:

* ``LlavaForConditionalGeneration.model`` (the base model) owns ``vision_tower`` (a ``CLIPVisionModel``),
  ``multi_modal_projector`` (a per-token MLP) and ``language_model``; ``get_image_features`` returns a
  ``BaseModelOutputWithPooling`` whose ``pooler_output`` is a *list* of per-image ``[T, D_llm]`` tensors.
  ``forward`` concatenates that list and scatters it into the ``image_token_id`` placeholder positions of
  the prompt, so the prompt must hold exactly as many placeholders as there are visual tokens.
* ``generate`` encodes images once, before prefill, by calling ``base_model.get_image_features`` with the
  model kwargs named in *that function's signature* (``pixel_values``, ``image_sizes``, ...), then
  passes the result to ``forward`` as ``mm_encoder_outputs``. Replacing ``get_image_features`` on the
  base model instance therefore covers both ``forward`` and ``generate``.
* LLaVA-1.5: ``pixel_values`` ``[B, 3, S, S]``, one view, ``(S/p)²`` tokens per image (CLS dropped by the
  "default" strategy).
* LLaVA-NeXT: ``pixel_values`` ``[B, V, 3, S, S]`` plus ``image_sizes`` ``[B, 2]`` (H, W): V = 1 resized
  full image + the tiles of the best ``image_grid_pinpoints`` resolution. Its ``get_image_features``
  additionally calls ``pack_image_features``, which reshapes the tiles into one spatial grid, *unpads*
  it to the original aspect ratio and appends the learned ``image_newline`` after every row, so the
  token count depends on ``image_sizes``. :mod:`tokexport.vlm.packing` reproduces that packing for any
  kept subset of positions (``pack_visual_tokens`` here: base view first, then the stitched, unpadded
  tile grid row-major with ``image_newline`` after every row); with every position kept it equals
  ``pack_image_features`` exactly. ``reduced_visual_tokens`` and ``embed_with_visual_tokens`` feed
  whatever sequence they are given, so pack first.

The LLaVA convention for ``vision_feature_layer``: ``hidden_states[i]`` with index 0 = embeddings
(after CLIP's ``pre_layrnorm``), i = output of block i-1; -2 (the default) = the penultimate block.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..checkpoints import weights_kwargs
from ..errors import InputError
from ..files import check_model_dir, read_json

KINDS = {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SelectFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


@dataclass
class LlavaParts:
    model: nn.Module  # Llava(Next)ForConditionalGeneration, eval mode, float32
    kind: str  # "llava" | "llava_next"
    tower: nn.Module  # vision tower (CLIPVisionModel for the released checkpoints)
    projector: nn.Module  # multi_modal_projector: per-token MLP, D_vision -> D_llm
    feature_layer: int  # hidden_states index fed to the projector (LLaVA: -2)
    feature_select: str  # "default" drops the CLS token, "full" keeps it
    image_size: int  # S, side of one view
    patch_size: int
    grid: tuple[int, int]  # (gh, gw) patches per view
    image_token_id: int
    text_config: object  # the language model's config (llm_prefill_flops)
    image_newline: torch.Tensor | None = None  # LLaVA-NeXT's row separator [D_llm]
    grid_pinpoints: list[tuple[int, int]] | None = None  # LLaVA-NeXT's anyres resolutions (H, W)
    path: Path | None = None

    @property
    def tokens_per_view(self) -> int:
        """Visual tokens one view gives the language model (before any reduction)."""
        return self.grid[0] * self.grid[1] + (1 if self.feature_select == "full" else 0)

    def anyres_grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """LLaVA-NeXT: (rows, cols) of S×S tiles for an image of (H, W); (0, 0) for LLaVA-1.5.
        The model then takes 1 + rows·cols views."""
        if self.grid_pinpoints is None:
            return (0, 0)
        from transformers.image_processing_utils import select_best_resolution

        h, w = select_best_resolution(tuple(int(v) for v in image_hw), [list(p) for p in self.grid_pinpoints])
        return h // self.image_size, w // self.image_size


# -- loading ---------------------------------------------------------------------------------------
def _model_class(config, model_type: str):
    """optimum's TasksManager (architecture -> task -> Auto class), else the class named for the type."""
    import transformers

    archs = list(getattr(config, "architectures", None) or [])
    arch_cls = getattr(transformers, archs[0], None) if archs else None
    if arch_cls is not None:
        try:
            from optimum.exporters.tasks import TasksManager

            task = TasksManager.infer_task_from_model(arch_cls)
            return TasksManager.get_model_class_for_task(task, framework="pt", library="transformers")
        except Exception:  # noqa: BLE001  (optimum absent, or the architecture/task is not mapped: several error types)
            pass
    return getattr(transformers, KINDS[model_type])


def load_llava(path_or_dir) -> LlavaParts:
    """Load a LLaVA-1.5 (model_type "llava") or LLaVA-NeXT ("llava_next") checkpoint directory (or a
    bundled name / Hub id, resolved like the rest of tokexport) in float32, eval mode."""
    from ..load import resolve_source

    path = Path(path_or_dir).expanduser()
    if not (path.is_dir() and (path / "config.json").is_file()):
        path, _ = resolve_source(str(path_or_dir), Path.cwd())
    check_model_dir(path)  # regular files only: a FIFO would hang transformers
    cfg = read_json(path / "config.json", "model file", finite=True, label="model")
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    weights = weights_kwargs(path)  # safetensors only, unless the recipe allows pickle (tokexport.checkpoints)
    if model_type not in KINDS:
        raise InputError(f"model: {path} has model_type {model_type!r}; LLaVA loading supports {', '.join(KINDS)}")
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(path)
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise InputError(
            f"model: vision_feature_layer {layer!r} (several layers concatenated) is not supported; "
            "token selection needs a single feature layer"
        )
    select = config.vision_feature_select_strategy
    if select not in ("default", "full"):
        raise InputError(f"model: vision_feature_select_strategy {select!r} is not 'default' or 'full'")
    cls = _model_class(config, model_type)
    try:
        model, info = cls.from_pretrained(
            path, dtype=torch.float32, attn_implementation="sdpa", output_loading_info=True, **weights
        )
    except Exception as e:  # noqa: BLE001  (corrupt / truncated weights: transformers raises many types)
        raise InputError(f"model: cannot load {path}: {str(e).splitlines()[0][:200]}") from None
    if type(model).__name__ != KINDS[model_type]:
        raise InputError(f"model: {path} loaded as {type(model).__name__}, expected {KINDS[model_type]}")
    if info.get("missing_keys"):
        missing = sorted(info["missing_keys"])
        raise InputError(f"model: {path} is missing {len(missing)} weights (e.g. {missing[0]})")
    model.eval()
    base = model.model
    vc = config.vision_config
    size = int(vc.image_size[0] if isinstance(vc.image_size, (list, tuple)) else vc.image_size)
    patch = int(vc.patch_size[0] if isinstance(vc.patch_size, (list, tuple)) else vc.patch_size)
    if size % patch:
        raise InputError(f"model: vision image_size {size} is not a multiple of patch_size {patch}")
    pinpoints = None
    if model_type == "llava_next":
        pinpoints = [tuple(int(v) for v in p) for p in config.image_grid_pinpoints]
    return LlavaParts(
        model=model,
        kind=model_type,
        tower=base.vision_tower,
        projector=base.multi_modal_projector,
        feature_layer=int(layer),
        feature_select=select,
        image_size=size,
        patch_size=patch,
        grid=(size // patch, size // patch),
        image_token_id=int(config.image_token_id),
        text_config=config.text_config,
        image_newline=getattr(base, "image_newline", None),
        grid_pinpoints=pinpoints,
        path=path,
    )


def image_mean_std(path) -> tuple[tuple, tuple]:
    """(image_mean, image_std) from the checkpoint's preprocessor_config.json; CLIP's when it has none."""
    pre = Path(path) / "preprocessor_config.json"
    if not pre.is_file():
        return CLIP_MEAN, CLIP_STD
    d = read_json(pre, "model file", finite=True, label="model")
    if not isinstance(d, dict):
        raise InputError(f"model: {pre} is not a JSON object")
    return tuple(d.get("image_mean", CLIP_MEAN)), tuple(d.get("image_std", CLIP_STD))


# -- FLOPs ------------------------------------------------------------------------------------------
_UNGATED_MLP = ("gpt2", "gptj", "gpt_neox", "opt", "phi", "bloom", "falcon", "mpt")


def llm_prefill_flops(text_config, n_tokens: int, gated_mlp: bool | None = None) -> int:
    """Analytic FLOPs (= 2 × multiply-accumulates) of the language model's prefill of ``n_tokens``.

    With D = hidden_size, L = num_hidden_layers, H = num_attention_heads, Hkv = num_key_value_heads
    (GQA; = H when absent), dh = head_dim (= D / H when absent), M = intermediate_size, V = vocab_size:

        per layer:  q and o projections      2·n·D·H·dh
                    k and v projections      2·n·D·Hkv·dh
                    scores QKᵀ and A·V       2·n²·H·dh   (the full n×n matrix; causal masking not discounted)
                    MLP                      3·n·D·M     (gated: gate, up, down — llama/mistral/qwen/gemma)
                                             2·n·D·M     (ungated, ``gated_mlp=False`` or a GPT/OPT-style type)
        LM head:    D·V, for the last token only (the next-token logits prefill needs)
        FLOPs = 2 · (L · per layer + LM head)

    Embedding lookups, norms, rotary embeddings, softmax and activations are left out (linear in n and
    small). ``text_config`` is any object with those attributes (a transformers config works).
    """
    c = text_config
    n = int(n_tokens)
    if n < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n}")
    d = int(c.hidden_size)
    h = int(c.num_attention_heads)
    hkv = int(getattr(c, "num_key_value_heads", None) or h)
    dh = int(getattr(c, "head_dim", None) or d // h)
    m = int(c.intermediate_size)
    vocab = int(c.vocab_size)
    if gated_mlp is None:
        gated_mlp = getattr(c, "model_type", None) not in _UNGATED_MLP
    per_layer = 2 * n * d * h * dh + 2 * n * d * hkv * dh + 2 * n * n * h * dh + (3 if gated_mlp else 2) * n * d * m
    head = d * vocab if n > 0 else 0
    return int(2 * (int(c.num_hidden_layers) * per_layer + head))


# -- visual tokens ----------------------------------------------------------------------------------
def visual_tokens(parts: LlavaParts, pixel_values: torch.Tensor, image_sizes=None) -> torch.Tensor:
    """All projected visual tokens per image, in view-major raster order, *without* NeXT's packing:
    ``[num_images, V·T, D_llm]`` (T = tokens_per_view). For LLaVA-1.5 this equals the stacked
    ``get_image_features`` output. For NeXT every image must have the same number of views."""
    x = pixel_values
    if x.dim() == 4:
        x = x[:, None]
    if x.dim() != 5:
        raise InputError(f"pixel_values: expected [B, 3, S, S] or [B, V, 3, S, S], got {tuple(pixel_values.shape)}")
    b, v = x.shape[:2]
    if parts.kind == "llava_next" and image_sizes is not None:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        for hw in image_sizes:
            want = image_size_to_num_patches(hw, [list(p) for p in parts.grid_pinpoints], parts.image_size)
            if want != v:
                raise InputError(
                    f"pixel_values: {v} views per image, but image size {tuple(int(t) for t in hw)} "
                    f"takes {want} with grid pinpoints {parts.grid_pinpoints}"
                )
    out = parts.tower(x.reshape(b * v, *x.shape[2:]), output_hidden_states=True, return_dict=True)
    feats = out.hidden_states[parts.feature_layer]
    if parts.feature_select == "default":
        feats = feats[:, 1:]
    feats = parts.projector(feats)
    return feats.reshape(b, v * feats.shape[1], feats.shape[-1])


def packing_layout(parts: LlavaParts, image_size=None) -> tuple[int, tuple[int, int], tuple[int, int] | None]:
    """(views, grid, sub_grid) of the model's input for an image of ``image_size`` = (H, W): LLaVA-1.5
    one view; LLaVA-NeXT 1 + rows·cols views, (rows, cols) from the model's grid pinpoints."""
    if parts.kind == "llava":
        return 1, parts.grid, None
    if image_size is None:
        raise InputError("LLaVA-NeXT packing needs the image size (H, W): it picks the tile grid and the unpadding")
    rows, cols = parts.anyres_grid(tuple(int(v) for v in image_size))
    return 1 + rows * cols, parts.grid, (rows, cols)


def pack_visual_tokens(parts: LlavaParts, tokens, positions, image_size=None, empty_rows: str = "newline"):
    """One image's kept tokens [K, D_llm] (and their ``positions`` [K] in the view-major V·P sequence, as
    model.onnx returns them) in the order the model feeds its language model: LLaVA-1.5 as given
    (CLS first with ``full``, patches ascending); LLaVA-NeXT ``pack_image_features``' order with
    ``image_newline`` (see :mod:`tokexport.vlm.packing`). numpy or torch in, the same out."""
    from .packing import pack

    views, grid, sub_grid = packing_layout(parts, image_size)
    newline = parts.image_newline.detach() if parts.image_newline is not None else None
    if newline is not None and not hasattr(tokens, "detach"):
        newline = newline.cpu().numpy()
    try:
        return pack(tokens, positions, views, grid, sub_grid, newline, image_size if sub_grid else None, empty_rows)
    except ValueError as e:
        raise InputError(f"visual tokens: {e}") from None


def num_llm_visual_tokens(parts: LlavaParts, image_size=None) -> int:
    """Image placeholders the unmodified model fills for one image (LLaVA-NeXT: newlines included)."""
    from .packing import packed_length

    views, grid, sub_grid = packing_layout(parts, image_size)
    n = views * grid[0] * grid[1]
    pos = ([-1] if parts.feature_select == "full" else []) + list(range(n))  # CLS first with "full"
    try:
        return packed_length(
            pos, views, grid, sub_grid, parts.image_newline is not None, image_size if sub_grid else None
        )
    except ValueError as e:
        raise InputError(f"visual tokens: {e}") from None


def embed_with_visual_tokens(parts: LlavaParts, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """``inputs_embeds`` [B, L, D_llm] for ``generate``/``forward``: the prompt's token embeddings with the
    ``image_token_id`` placeholders replaced, in order, by ``features`` [N, D_llm] (all images' packed
    tokens concatenated) — what the model's own forward does with the image features it computes."""
    emb = parts.model.get_input_embeddings()(input_ids)
    mask = input_ids == parts.image_token_id
    n = int(mask.sum())
    if features.dim() != 2 or features.shape[0] != n or features.shape[1] != emb.shape[-1]:
        raise InputError(
            f"the prompt holds {n} image placeholder tokens but {tuple(features.shape)} visual "
            f"features were given (expected [{n}, {emb.shape[-1]}]); expand the prompt with "
            "expand_image_tokens(input_ids, image_token_id, len(features))"
        )
    return emb.masked_scatter(mask[..., None], features.to(emb.device, emb.dtype))


def _num_images(pixel_values: torch.Tensor, image_sizes) -> int:
    if image_sizes is not None:
        return len(image_sizes)
    return int(pixel_values.shape[0])


@contextlib.contextmanager
def reduced_visual_tokens(parts: LlavaParts, select_fn: SelectFn):
    """Make the model's ``get_image_features`` return, per image, the K tokens of
    ``select_fn(pixel_values, image_sizes) -> [num_images, K, D_llm]`` (for ``forward`` and ``generate``).

    The prompt must then hold exactly K ``image_token_id`` placeholders per image (see
    ``expand_image_tokens``); a mismatch raises ``InputError`` before the scatter. For LLaVA-NeXT,
    ``pack_image_features`` (unpadding, ``image_newline`` after each row) is bypassed: the K tokens go to
    the language model as returned, so return them packed (``pack_visual_tokens``) to get the model's
    order and newlines. The feature layer and select strategy are
    ``select_fn``'s business; ``vision_feature_layer``/``vision_feature_select_strategy`` arguments are
    accepted and ignored. Instance attributes are restored on exit, even on error.
    """
    base = parts.model.model
    d_llm = int(parts.text_config.hidden_size)
    originals = {
        name: base.__dict__[name] for name in ("get_image_features", "get_placeholder_mask") if name in base.__dict__
    }
    class_placeholder_mask = base.get_placeholder_mask
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    # The named parameters matter: generate() passes the model kwargs named in this signature.
    def get_image_features(
        pixel_values, image_sizes=None, vision_feature_layer=None, vision_feature_select_strategy=None, **kwargs
    ):
        feats = select_fn(pixel_values, image_sizes)
        n_img = _num_images(pixel_values, image_sizes)
        if (
            not isinstance(feats, torch.Tensor)
            or feats.dim() != 3
            or feats.shape[0] != n_img
            or feats.shape[-1] != d_llm
        ):
            shape = tuple(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
            raise InputError(f"select_fn must return [num_images={n_img}, K, D_llm={d_llm}], got {shape}")
        return BaseModelOutputWithPooling(last_hidden_state=feats, pooler_output=list(feats.unbind(0)))

    def get_placeholder_mask(input_ids, inputs_embeds, image_features):
        if input_ids is not None:
            n_tok = int((input_ids == parts.image_token_id).sum())
            if n_tok != image_features.shape[0]:
                raise InputError(
                    f"the prompt holds {n_tok} image placeholder tokens but the selection gives "
                    f"{image_features.shape[0]} visual tokens; expand the prompt with "
                    "expand_image_tokens(input_ids, image_token_id, K)"
                )
        return class_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, image_features=image_features)

    base.get_image_features = get_image_features
    base.get_placeholder_mask = get_placeholder_mask
    try:
        yield parts.model
    finally:
        for name in ("get_image_features", "get_placeholder_mask"):
            if name in originals:
                setattr(base, name, originals[name])
            else:
                base.__dict__.pop(name, None)


def expand_image_tokens(
    input_ids: torch.Tensor, image_token_id: int, k: int, n_images: int | None = None
) -> torch.Tensor:
    """Replace each run of consecutive ``image_token_id`` placeholders (a single one included) by exactly
    ``k``. input_ids: [B, L] (or [L]). Raises ``InputError`` when a row has no placeholder, when
    ``n_images`` is given and a row has another number of runs, or when rows end up of different lengths."""
    if k < 1:
        raise InputError(f"expand_image_tokens: k must be >= 1, got {k}")
    squeeze = input_ids.dim() == 1
    ids = input_ids[None] if squeeze else input_ids
    if ids.dim() != 2:
        raise InputError(f"expand_image_tokens: input_ids must be [B, L] or [L], got {tuple(input_ids.shape)}")
    rows = []
    for r, row in enumerate(ids.tolist()):
        out, runs, prev = [], 0, False
        for t in row:
            is_img = t == image_token_id
            if is_img and not prev:
                out.extend([image_token_id] * k)
                runs += 1
            elif not is_img:
                out.append(t)
            prev = is_img
        if runs == 0:
            raise InputError(f"expand_image_tokens: row {r} has no image placeholder (id {image_token_id})")
        if n_images is not None and runs != n_images:
            raise InputError(f"expand_image_tokens: row {r} has {runs} image placeholder runs, expected {n_images}")
        rows.append(out)
    if len({len(x) for x in rows}) > 1:
        raise InputError("expand_image_tokens: rows have different lengths after expansion; expand them one by one")
    res = torch.tensor(rows, dtype=input_ids.dtype, device=input_ids.device)
    return res[0] if squeeze else res


# -- tiny random twins ------------------------------------------------------------------------------
TINY_VISION = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=2,
    image_size=56,
    patch_size=14,
    projection_dim=32,
)
TINY_TEXT = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
TINY_IMAGE_TOKEN = 127
TINY_PINPOINTS = [[112, 112]]  # one resolution: every image becomes 2×2 tiles + the full view (5 views)


def _tiny(path, kind: str, seed: int) -> Path:
    import transformers as T

    path = Path(path)
    torch.manual_seed(seed)
    vision = T.CLIPVisionConfig(**TINY_VISION)
    text = T.LlamaConfig(**TINY_TEXT)
    common = dict(
        vision_config=vision,
        text_config=text,
        image_token_index=TINY_IMAGE_TOKEN,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=16,
    )
    if kind == "llava":
        model = T.LlavaForConditionalGeneration(T.LlavaConfig(**common))
    else:
        model = T.LlavaNextForConditionalGeneration(T.LlavaNextConfig(**common, image_grid_pinpoints=TINY_PINPOINTS))
    model.eval().save_pretrained(path)
    s = TINY_VISION["image_size"]
    pre = {
        "crop_size": {"height": s, "width": s},
        "size": {"shortest_edge": s},
        "do_center_crop": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
    }
    if kind == "llava_next":
        pre["image_grid_pinpoints"] = TINY_PINPOINTS
    (path / "preprocessor_config.json").write_text(json.dumps(pre, indent=1))
    return path


def tiny_llava(path, seed: int = 0) -> Path:
    """Write a randomly initialised LLaVA-1.5 twin (CLIP tower 56/14 → 4×4 grid, 3 blocks; 2-layer Llama
    with GQA, vocab 128, image token 127) in Hugging Face layout. Returns the directory."""
    return _tiny(path, "llava", seed)


def tiny_clip(path, seed: int = 0) -> Path:
    """Write a randomly initialised CLIP (vision tower shaped like the tiny twins' — 56/14, 32 wide, 3
    blocks — plus a 2-layer text tower and both projections, no tokenizer) in Hugging Face layout: the
    ``clip_model`` of the tiny CDPruner twin. Returns the directory."""
    import transformers as T

    path = Path(path)
    torch.manual_seed(seed)
    text = T.CLIPTextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    cfg = T.CLIPConfig(
        text_config=text.to_dict(), vision_config=T.CLIPVisionConfig(**TINY_VISION).to_dict(), projection_dim=32
    )
    T.CLIPModel(cfg).eval().save_pretrained(path)
    return path


def tiny_llava_next(path, seed: int = 0) -> Path:
    """Write a randomly initialised LLaVA-NeXT twin (same tower and LM; one grid pinpoint 112×112, so
    every image is 2×2 tiles of 56 + the full view = 5 views of 4×4 patches)."""
    return _tiny(path, "llava_next", seed)
