"""LLaVA-1.5 / LLaVA-NeXT on tiny random twins: loading, generation with reduced visual tokens (the
patch agrees with hand-fed embeddings and is reverted), placeholder expansion, prefill FLOPs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from tokexport.errors import InputError
from tokexport.vlm.llava import (
    TINY_IMAGE_TOKEN,
    expand_image_tokens,
    llm_prefill_flops,
    load_llava,
    reduced_visual_tokens,
    tiny_llava,
    tiny_llava_next,
    visual_tokens,
)

IMG = TINY_IMAGE_TOKEN
PROMPT = torch.tensor([[1, 5, IMG, 6, 7, 8]])
GEN = dict(max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava")
    return {"llava": tiny_llava(root / "llava"), "llava_next": tiny_llava_next(root / "llava_next")}


@pytest.fixture(scope="module")
def parts(ckpts):
    return {k: load_llava(p) for k, p in ckpts.items()}


def _inputs(kind, n=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "llava":
        return torch.randn(n, 3, 56, 56, generator=g), None
    return torch.randn(n, 5, 3, 56, 56, generator=g), torch.tensor([[112, 112]] * n)


def _extra(sizes):
    return {} if sizes is None else {"image_sizes": sizes}


def _new(out, prompt_len):
    return out.sequences[:, prompt_len:], torch.stack(out.logits, 1)


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_parts(parts, kind):
    p = parts[kind]
    assert p.kind == kind
    assert (
        type(p.model).__name__
        == {"llava": "LlavaForConditionalGeneration", "llava_next": "LlavaNextForConditionalGeneration"}[kind]
    )
    assert type(p.tower).__name__ == "CLIPVisionModel"
    assert p.projector is p.model.model.multi_modal_projector
    assert (p.feature_layer, p.feature_select) == (-2, "default")
    assert (p.image_size, p.patch_size, p.grid, p.tokens_per_view) == (56, 14, (4, 4), 16)
    assert p.image_token_id == IMG
    assert p.text_config.model_type == "llama" and p.text_config.num_key_value_heads == 2
    if kind == "llava":
        assert p.image_newline is None and p.grid_pinpoints is None
    else:
        assert p.image_newline.shape == (32,)
        assert p.grid_pinpoints == [(112, 112)]
        assert p.anyres_grid((112, 112)) == (2, 2) and p.anyres_grid((40, 90)) == (2, 2)


def test_unsupported_checkpoints(tmp_path):
    d = tiny_llava(tmp_path / "multi")
    cfg = json.loads((d / "config.json").read_text())
    cfg["vision_feature_layer"] = [-2, -5]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="several layers concatenated.*not supported"):
        load_llava(d)
    cfg["model_type"] = "vit"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="supports llava, llava_next"):
        load_llava(d)


def test_visual_tokens_match_transformers(parts):
    p = parts["llava"]
    x, _ = _inputs("llava", n=2)
    with torch.no_grad():
        ref = torch.stack(p.model.model.get_image_features(pixel_values=x).pooler_output)
        torch.testing.assert_close(visual_tokens(p, x), ref, atol=1e-6, rtol=1e-6)
    # NeXT packs the tiles (unpad + newlines) after the full view, whose 16 tokens come first unchanged
    p = parts["llava_next"]
    x, sizes = _inputs("llava_next")
    with torch.no_grad():
        packed = p.model.model.get_image_features(x, sizes).pooler_output[0]
        mine = visual_tokens(p, x, sizes)
    assert mine.shape == (1, 5 * 16, 32) and packed.shape == (16 + 8 * (8 + 1), 32)
    torch.testing.assert_close(mine[0, :16], packed[:16], atol=1e-6, rtol=1e-6)
    with pytest.raises(InputError, match="views per image"):
        visual_tokens(p, x[:, :3], sizes)


def test_identity_selection_equals_unpatched_llava15(parts):
    p = parts["llava"]
    x, _ = _inputs("llava")
    ids = expand_image_tokens(PROMPT, IMG, 16)
    with torch.no_grad():
        ref_seq, ref_logits = _new(p.model.generate(input_ids=ids, pixel_values=x, **GEN), ids.shape[1])
        with reduced_visual_tokens(p, lambda pv, sizes: visual_tokens(p, pv, sizes)):
            seq, logits = _new(p.model.generate(input_ids=ids, pixel_values=x, **GEN), ids.shape[1])
    assert torch.equal(seq, ref_seq)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_first_k_equals_hand_fed_embeddings(parts, kind):
    p, k = parts[kind], 5
    x, sizes = _inputs(kind)
    seen = {}

    def first_k(pv, image_sizes):
        seen["sizes"] = image_sizes
        return visual_tokens(p, pv, image_sizes)[:, :k]

    ids = expand_image_tokens(PROMPT, IMG, k)
    with torch.no_grad():
        with reduced_visual_tokens(p, first_k):
            seq, logits = _new(p.model.generate(input_ids=ids, pixel_values=x, **_extra(sizes), **GEN), ids.shape[1])
        emb = p.model.get_input_embeddings()(ids)
        emb[ids == IMG] = visual_tokens(p, x, sizes)[:, :k].reshape(-1, emb.shape[-1])
        hand = p.model.generate(inputs_embeds=emb, attention_mask=torch.ones_like(ids), **GEN)
        full_ids = expand_image_tokens(PROMPT, IMG, 16 if kind == "llava" else 88)
        full = p.model.generate(input_ids=full_ids, pixel_values=x, **_extra(sizes), **GEN)
    assert seq.shape == (1, 3)
    assert torch.equal(seq, hand.sequences)  # inputs_embeds-only generate returns the new tokens only
    torch.testing.assert_close(logits, torch.stack(hand.logits, 1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits[:, 0], full.logits[0], atol=1e-4)  # the reduction is not a no-op
    assert (seen["sizes"] is None) == (kind == "llava")


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_patch_is_reverted(parts, kind):
    p = parts[kind]
    base = p.model.model
    x, sizes = _inputs(kind)

    def features():
        with torch.no_grad():
            return base.get_image_features(x, sizes) if kind == "llava_next" else base.get_image_features(x)

    before = features().pooler_output
    assert "get_image_features" not in base.__dict__ and "get_placeholder_mask" not in base.__dict__
    with pytest.raises(RuntimeError, match="boom"):
        with reduced_visual_tokens(p, lambda pv, s: visual_tokens(p, pv, s)[:, :3]):
            assert len(features().pooler_output[0]) == 3
            raise RuntimeError("boom")
    assert "get_image_features" not in base.__dict__ and "get_placeholder_mask" not in base.__dict__
    after = features().pooler_output
    assert len(after) == len(before)
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_wrong_placeholder_count_and_bad_selection_raise(parts):
    p = parts["llava"]
    x, _ = _inputs("llava")
    with torch.no_grad(), reduced_visual_tokens(p, lambda pv, s: visual_tokens(p, pv, s)[:, :5]):
        with pytest.raises(InputError, match="4 image placeholder tokens but the selection gives 5"):
            p.model(input_ids=expand_image_tokens(PROMPT, IMG, 4), pixel_values=x)
        with pytest.raises(InputError, match="16 image placeholder tokens"):
            p.model.generate(input_ids=expand_image_tokens(PROMPT, IMG, 16), pixel_values=x, max_new_tokens=1)
    with torch.no_grad(), reduced_visual_tokens(p, lambda pv, s: visual_tokens(p, pv, s)[0]):
        with pytest.raises(InputError, match=r"select_fn must return \[num_images=1, K, D_llm=32\]"):
            p.model(input_ids=expand_image_tokens(PROMPT, IMG, 5), pixel_values=x)


def test_expand_image_tokens():
    ids = torch.tensor([[1, IMG, IMG, IMG, 5, IMG, 6]])
    assert expand_image_tokens(ids, IMG, 2).tolist() == [[1, IMG, IMG, 5, IMG, IMG, 6]]
    assert expand_image_tokens(ids[0], IMG, 1).tolist() == [1, IMG, 5, IMG, 6]
    assert expand_image_tokens(ids, IMG, 3, n_images=2).shape == (1, 9)
    with pytest.raises(InputError, match="2 image placeholder runs, expected 1"):
        expand_image_tokens(ids, IMG, 3, n_images=1)
    with pytest.raises(InputError, match="no image placeholder"):
        expand_image_tokens(torch.tensor([[1, 2, 3]]), IMG, 4)
    with pytest.raises(InputError, match="k must be >= 1"):
        expand_image_tokens(ids, IMG, 0)
    with pytest.raises(InputError, match="different lengths"):
        expand_image_tokens(torch.tensor([[IMG, 1, IMG], [IMG, 1, 2]]), IMG, 2)


def test_llm_prefill_flops_by_hand():
    # D=8, L=2, H=2, Hkv=1 (GQA), dh=4, M=16, V=10, n=3
    c = SimpleNamespace(
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=16,
        vocab_size=10,
    )
    # per layer MACs: q,o 2*3*8*8=384; k,v 2*3*8*4=192; QK^T and AV 2*3*3*8=144; gated MLP 3*3*8*16=1152
    per_layer = 384 + 192 + 144 + 1152
    assert per_layer == 1872
    assert llm_prefill_flops(c, 3) == 2 * (2 * per_layer + 8 * 10) == 7648
    assert llm_prefill_flops(c, 3, gated_mlp=False) == 2 * (2 * (per_layer - 3 * 8 * 16) + 80) == 6112
    assert llm_prefill_flops(c, 0) == 0
    # a real config: same numbers (its default head_dim = D / H); MHA when num_key_value_heads is absent
    from transformers import LlamaConfig

    real = LlamaConfig(
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=16,
        vocab_size=10,
    )
    assert llm_prefill_flops(real, 3) == 7648
    mha = SimpleNamespace(**{k: v for k, v in vars(c).items() if k != "num_key_value_heads"})
    assert llm_prefill_flops(mha, 3) == 7648 + 2 * 2 * (2 * 3 * 8 * 4)
    # only the attention term is quadratic: f(6) - 2 f(3) = 2 * L * 2*H*dh * (36 - 2*9) - 2 * (LM head)
    assert llm_prefill_flops(c, 6) - 2 * llm_prefill_flops(c, 3) == 2 * 2 * 16 * 18 - 2 * 80
