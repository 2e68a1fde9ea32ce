"""LLaVA-NeXT's own packing for reduced visual tokens (tokexport.vlm.packing) on the tiny twins.

- identity selection packed by position equals transformers' ``pack_image_features`` exactly (square and
  letterboxed image sizes), and generating from it reproduces the unmodified model's ``generate()``
  token for token — from PyTorch features and from an exported visual-token graph run by ONNX Runtime;
  LLaVA-1.5 (no anyres, no newline) likewise;
- HiRED's kept positions, packed, follow the model's order: transformers' packing of position ids with
  the newline as a sentinel, filtered to the kept set (what HiRED's reference code does with its mask);
- the generation check of the visual-token task compares the unmodified model with model.onnx's packed
  tokens: identity selection through model.onnx gives exact match 1.0.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tokexport.errors import InputError
from tokexport.vlm.llava import (
    TINY_IMAGE_TOKEN,
    embed_with_visual_tokens,
    expand_image_tokens,
    load_llava,
    num_llm_visual_tokens,
    pack_visual_tokens,
    tiny_llava,
    tiny_llava_next,
    visual_tokens,
)
from tokexport.vlm.packing import NEWLINE, pack, packing_order, unpad_bounds

IMG = TINY_IMAGE_TOKEN
PROMPT = torch.tensor([[1, 5, IMG, 6, 7, 8]])
GEN = {"max_new_tokens": 6, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
SIZES = [(112, 112), (40, 90), (90, 40), (100, 111)]  # square, letterboxed rows, letterboxed columns, nearly square


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava-pack")
    return {"llava": tiny_llava(root / "llava", seed=1), "llava_next": tiny_llava_next(root / "llava_next", seed=2)}


@pytest.fixture(scope="module")
def parts(ckpts):
    return {k: load_llava(p) for k, p in ckpts.items()}


def _pixels(kind, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, 56, 56, generator=g) if kind == "llava" else torch.randn(1, 5, 3, 56, 56, generator=g)


def _reference(p, x, hw):
    """The unmodified model's generate(): input_ids with as many placeholders as it fills."""
    ids = expand_image_tokens(PROMPT, IMG, num_llm_visual_tokens(p, hw))
    extra = {"image_sizes": torch.tensor([hw])} if hw else {}
    out = p.model.generate(input_ids=ids, pixel_values=x, **extra, **GEN)
    return out.sequences[:, ids.shape[1] :], torch.stack(out.logits, 1)


def _from_features(p, packed):
    ids = expand_image_tokens(PROMPT, IMG, packed.shape[0])
    out = p.model.generate(
        inputs_embeds=embed_with_visual_tokens(p, ids, packed), attention_mask=torch.ones_like(ids), **GEN
    )
    return out.sequences, torch.stack(out.logits, 1)


def _graph(p, selector=None, k=None):
    from tokexport.adapters import adapter_for
    from tokexport.vlm.graph import VisualTokenGraph
    from tokexport.vlm.select import VisualLayout

    layout = VisualLayout(5, (4, 4), (2, 2)) if p.kind == "llava_next" else VisualLayout(1, (4, 4))
    return VisualTokenGraph(
        p.tower, adapter_for(p.tower.config), layout, 56, p.feature_layer, p.feature_select, p.projector, selector, k
    )


def _export(graph, x, path):
    from tokexport.export import export_onnx
    from tokexport.tasks.visual_tokens import _named

    export_onnx(graph, _named(graph), x, path, 17, True)
    return path


# ---- the packing itself -------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", SIZES)
def test_identity_packing_equals_pack_image_features(parts, hw):
    p = parts["llava_next"]
    x, sizes = _pixels("llava_next"), torch.tensor([hw])
    with torch.no_grad():
        ref = p.model.model.get_image_features(x, sizes).pooler_output[0]
        feats = visual_tokens(p, x, sizes)[0]
    assert ref.shape[0] == num_llm_visual_tokens(p, hw)
    mine = pack_visual_tokens(p, feats, torch.arange(80), hw)
    assert mine.shape == ref.shape and torch.equal(mine, ref)  # bit for bit
    # numpy in, numpy out; any input order gives the same sequence
    perm = np.random.default_rng(0).permutation(80)
    np_packed = pack_visual_tokens(p, feats.numpy()[perm], perm, hw)
    assert isinstance(np_packed, np.ndarray) and np.array_equal(np_packed, ref.numpy())
    if hw == (40, 90):  # the letterbox band is cut: 4 of 8 stitched rows remain
        assert ref.shape[0] == 16 + 4 * (8 + 1)


def test_unpad_bounds_follow_transformers():
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    for h, w in [(8, 8), (48, 48), (24, 48), (48, 24)]:
        grid = torch.arange(h * w).reshape(1, h, w)
        for oh, ow in [(1, 1), (40, 90), (90, 40), (336, 337), (7, 100), (100, 7), (480, 640), (1080, 1920)]:
            r0, r1, c0, c1 = unpad_bounds(h, w, (oh, ow))
            assert torch.equal(unpad_image(grid, (oh, ow)), grid[:, r0:r1, c0:c1]), (h, w, oh, ow)


def test_packing_rules_by_hand():
    # 2x2 tiles of 2x2 patches: stitched 4x4 grid; views 1..4 = tiles (0,0) (0,1) (1,0) (1,1)
    lay = {"views": 5, "grid": (2, 2), "sub_grid": (2, 2)}
    # base 3, 0; tile (0,1) patch 0 -> stitched (0, 2) = 4+4; tile (0,0) patch 3 -> (1, 1) = 4+3;
    # tile (1,0) patch 1 -> (2, 1) = 12+1
    pos = np.array([4 + 4, 3, 12 + 1, 4 + 3, 0])
    assert packing_order(pos, **lay).tolist() == [4, 1, 0, NEWLINE, 3, NEWLINE, 2, NEWLINE, NEWLINE]
    assert packing_order(pos, **lay, empty_rows="drop").tolist() == [4, 1, 0, NEWLINE, 3, NEWLINE, 2, NEWLINE]
    assert packing_order(pos, **lay, newline=False).tolist() == [4, 1, 0, 3, 2]
    # LLaVA-1.5: CLS (-1) first, then ascending; no newline
    assert packing_order(np.array([5, -1, 2]), 1, (4, 4), None, newline=False).tolist() == [1, 2, 0]
    for bad, match in [(np.array([3, 3]), "twice"), (np.array([20]), r"\[0, 20\)"), (np.array([-1, 2]), "CLS")]:
        with pytest.raises(ValueError, match=match):
            packing_order(bad, **lay)
    with pytest.raises(ValueError, match="1-D integer"):
        packing_order(np.array([1.0]), **lay)
    t = np.arange(10, dtype=np.float32).reshape(5, 2)
    out = pack(t, pos, **lay, image_newline=np.array([-7, -7], np.float32))
    assert out[:, 0].tolist() == [8, 2, 0, -7, 6, -7, 4, -7, -7]


# ---- identity selection reproduces the unmodified model ----------------------------------------------
@pytest.mark.parametrize("kind,hw", [("llava", None), ("llava_next", (112, 112)), ("llava_next", (40, 90))])
def test_identity_selection_reproduces_generate(parts, kind, hw):
    p = parts[kind]
    x = _pixels(kind, seed=3)
    with torch.no_grad():
        ref_seq, ref_logits = _reference(p, x, hw)
        feats = visual_tokens(p, x, torch.tensor([hw]) if hw else None)[0]
        seq, logits = _from_features(p, pack_visual_tokens(p, feats, torch.arange(feats.shape[0]), hw))
        # what the check did before: view-major order, no newline — not what the model computes
        _, old_logits = _from_features(p, feats)
    assert seq.shape == ref_seq.shape == (1, GEN["max_new_tokens"])
    assert torch.equal(seq, ref_seq)  # token for token
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    if kind == "llava_next":
        assert not torch.allclose(old_logits, ref_logits, atol=1e-3)
    else:  # LLaVA-1.5 has no packing: raster order is the model's order
        torch.testing.assert_close(old_logits, ref_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_identity_graph_through_onnxruntime_reproduces_generate(parts, kind, tmp_path):
    """The exported all-tokens graph, run by ONNX Runtime, packed by its positions: same tokens."""
    import onnxruntime as ort

    p = parts[kind]
    hw = (112, 112) if kind == "llava_next" else None
    x = _pixels(kind, seed=4)
    path = _export(_graph(p), x, tmp_path / "identity.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tokens, positions = sess.run(["visual_tokens", "positions"], {"pixel_values": x.numpy()})
    assert positions[0].tolist() == list(range(tokens.shape[1]))
    with torch.no_grad():
        ref_seq, ref_logits = _reference(p, x, hw)
        seq, logits = _from_features(p, pack_visual_tokens(p, torch.from_numpy(tokens[0]), positions[0], hw))
    assert torch.equal(seq, ref_seq)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


# ---- HiRED's kept positions in the model's order ---------------------------------------------------------
def _model_order(p, hw) -> list[int]:
    """transformers' pack_image_features applied to position ids (newline = -1): the model's order."""
    ids = torch.arange(80, dtype=torch.float32).reshape(5, 16, 1)
    packed, _ = p.model.model.pack_image_features(
        [ids], torch.tensor([hw]), "default", image_newline=torch.tensor([-1.0])
    )
    return [int(v) for v in packed[0][:, 0].tolist()]


def _filtered(model_order: list[int], kept: set[int], empty_rows: str) -> list[int]:
    """The kept positions in the model's order; newline after every row ("newline", HiRED's reference
    with image_newline on: the newline column of its mask is all ones) or after non-empty rows ("drop")."""
    out, row = [], []
    base = [v for v in model_order[:16] if v in kept]
    for v in model_order[16:]:
        if v == -1:
            out += row + ([-1] if row or empty_rows == "newline" else [])
            row = []
        elif v in kept:
            row.append(v)
    return base + out


@pytest.mark.parametrize("k", [6, 20])
def test_hired_output_follows_the_model_packing(parts, k):
    from tokexport.vlm.hired import HiRED, HiREDConfig

    p = parts["llava_next"]
    graph = _graph(p, HiRED(HiREDConfig(keep=k, alpha=0.5)), k)
    x = torch.cat([_pixels("llava_next", seed=s) for s in range(3)])
    with torch.no_grad():
        tokens, positions = graph(x)
    saw_empty_row = False
    for b in range(x.shape[0]):
        pos = positions[b].numpy()
        assert sorted(pos.tolist()) == pos.tolist() and len(set(pos.tolist())) == k  # the graph's contract
        for hw in [(112, 112), (40, 90)]:
            model_order = _model_order(p, hw)
            for empty_rows in ("newline", "drop"):
                order = packing_order(pos, 5, (4, 4), (2, 2), True, hw, empty_rows)
                got = [-1 if i == NEWLINE else int(pos[i]) for i in order]
                assert got == _filtered(model_order, set(pos.tolist()), empty_rows), (b, hw, empty_rows)
            rows = [model_order[16:][i : i + 9][:8] for i in range(0, len(model_order) - 16, 9)]
            saw_empty_row |= any(not set(r) & set(pos.tolist()) for r in rows)
        # features: the model's own packed sequence, masked as HiRED's reference does (newline column kept)
        with torch.no_grad():
            full = p.model.model.get_image_features(x[b : b + 1], torch.tensor([[112, 112]])).pooler_output[0]
        keep = [v == -1 or v in set(pos.tolist()) for v in _model_order(p, (112, 112))]
        mine = pack_visual_tokens(p, tokens[b], positions[b], (112, 112))
        torch.testing.assert_close(mine, full[torch.tensor(keep)], atol=1e-5, rtol=1e-5)
        assert mine.shape[0] == k + 8  # K tokens + one newline per stitched row: fixed for a square image
    assert saw_empty_row or k == 20  # at K=6 some stitched rows keep nothing: the newline rule is exercised


# ---- the visual-token task's generation check ---------------------------------------------------------
def _gen_args(ckpt, p):
    from tokexport.adapters import adapter_for
    from tokexport.vlm.llava import image_mean_std

    mean, std = image_mean_std(ckpt)
    recipe = SimpleNamespace(
        verify=SimpleNamespace(generation=SimpleNamespace(prompts=["Describe the image."], images=2, max_new_tokens=5))
    )
    vm = SimpleNamespace(llava=p, path=ckpt, image_size=56, mean=mean, std=std, adapter=adapter_for(p.tower.config))
    return recipe, vm


@pytest.mark.parametrize("kind", ["llava", "llava_next"])
def test_task_generation_identity_through_model_onnx(ckpts, parts, kind, tmp_path):
    """generation: the unmodified generate() vs model.onnx's tokens. A selector keeping every token
    (HiRED with alpha 0.2 at keep_rate 1 on NeXT: 16 + 4·16; FoPru rank K = 16 on 1.5) matches exactly."""
    from tokexport.tasks.visual_tokens_generation import generation
    from tokexport.vlm.fopru import FoPruRank, FoPruRankConfig
    from tokexport.vlm.hired import HiRED, HiREDConfig

    p = parts[kind]
    sel, k = (
        (HiRED(HiREDConfig(keep_rate=1.0, alpha=0.2)), 80)
        if kind == "llava_next"
        else (FoPruRank(FoPruRankConfig(keep=16)), 16)
    )
    graph = _graph(p, sel, k)
    model = _export(graph, _pixels(kind), tmp_path / "model.onnx")
    recipe, vm = _gen_args(ckpts[kind], p)
    extra, gen = generation(recipe, vm, model, graph.layout)
    assert gen == {"generation_exact_match": (1.0, 1.0), "generation_token_agreement": (1.0, 1.0)}
    n_full = 16 if kind == "llava" else 16 + 8 * 9
    assert [s["llm_visual_tokens"] for s in extra["samples"]] == [[n_full, n_full]] * 2
    assert all(1 <= len(s["full"]) <= 5 and s["exact"] for s in extra["samples"])


def test_task_generation_reduced(ckpts, parts, tmp_path):
    """A real reduction (HiRED 20 of 80) through model.onnx: K tokens + 8 newlines reach the LLM."""
    from tokexport.tasks.visual_tokens_generation import generation
    from tokexport.vlm.hired import HiRED, HiREDConfig

    p = parts["llava_next"]
    graph = _graph(p, HiRED(HiREDConfig(keep=20, alpha=0.5)), 20)
    model = _export(graph, _pixels("llava_next"), tmp_path / "model.onnx")
    recipe, vm = _gen_args(ckpts["llava_next"], p)
    extra, gen = generation(recipe, vm, model, graph.layout)
    assert [s["llm_visual_tokens"] for s in extra["samples"]] == [[88, 28]] * 2
    for orig, red in gen.values():
        assert orig == 1.0 and 0.0 <= red <= 1.0


def test_llava_next_recipe_needs_the_models_grid(ckpts, tmp_path):
    from tokexport.recipe import Recipe
    from tokexport.tasks.run import run

    base = {"model": str(ckpts["llava_next"]), "task": "visual-tokens", "reduction": {"method": "hired", "keep": 20}}
    for vision, needles in [
        ({}, ["vision.grid", "set grid: [rows, cols]", "[[112, 112]]"]),
        ({"grid": [1, 1]}, ["vision.grid", "into [2, 2] tiles, not [1, 1]", "set grid: [2, 2]"]),
    ]:
        out = tmp_path / "out"
        with pytest.raises(InputError) as e:
            run(Recipe.model_validate({**base, "vision": vision}), tmp_path, out, label="r.yaml")
        assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)
        assert not out.exists()


def test_pack_visual_tokens_errors(parts):
    p = parts["llava_next"]
    with pytest.raises(InputError, match="needs the image size"):
        pack_visual_tokens(p, torch.zeros(2, 32), [0, 1])
    with pytest.raises(InputError, match="visual tokens: positions hold a position twice"):
        pack_visual_tokens(p, torch.zeros(2, 32), [1, 1], (112, 112))
    with pytest.raises(InputError, match="prompt holds 1 image placeholder tokens but"):
        embed_with_visual_tokens(p, PROMPT, torch.zeros(3, 32))
