"""Vocabulary trimming on tiny tokenizers and models (seconds): tokenizer surgery per family, model
surgery (tied weights, head bias, config ids), save/reload verification, recipe and corpus errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from torch import nn

from tokexport.errors import InputError
from tokexport.vocab import model as VM
from tokexport.vocab.corpus import Corpus, coverage, load_corpus, mine
from tokexport.vocab.recipe import (
    CorpusConfig,
    TrimConfig,
    VocabRecipe,
    validate_vocab_recipe,
)
from tokexport.vocab.tokenizer import (
    BYTE_FALLBACK_TOKENS,
    complete_keep,
    inspect_tokenizer,
    trim_state,
)

TEXT = (
    "the cat sat on the mat. the dog ate the bone. a bird sang in the tree. "
    "the sun is warm and the sky is blue. cats and dogs play in the garden every day. "
) * 20
KEPT = ["the cat sat on the mat.", "the dog ate the bone.", "cats and dogs play in the garden."]
UNSEEN = "zebra quizzically juxtaposed xylophones"


def _train(kind: str) -> Tokenizer:
    if kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=400,
            special_tokens=["<pad>", "<unk>", "<s>"],
            unk_token="<unk>",
            initial_alphabet=list("abcdefghijklmnopqrstuvwxyz"),
        )
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer()
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.WordPieceTrainer(
            vocab_size=300,
            special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"],
            initial_alphabet=list("abcdefghijklmnopqrstuvwxyz"),
        )
    elif kind == "byte-level":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=500, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    else:
        raise ValueError(kind)
    tok.train_from_iterator([TEXT], trainer)
    return tok


def _byte_fallback() -> Tokenizer:
    """SentencePiece-BPE like Gemma/Llama: '▁' for spaces, <0xXX> tokens in the vocabulary, byte_fallback."""
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<unk>", "<bos>"])
    base.train_from_iterator([TEXT], trainer)
    state = json.loads(base.to_str())
    old = state["model"]["vocab"]
    vocab = {
        t: i
        for i, t in enumerate(
            [
                "<pad>",
                "<unk>",
                "<bos>",
                *BYTE_FALLBACK_TOKENS,
                *[t for t, _ in sorted(old.items(), key=lambda kv: kv[1]) if t not in ("<pad>", "<unk>", "<bos>")],
            ]
        )
    }
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["model"]["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(["<pad>", "<unk>", "<bos>"])
    return tok


def _trim(tok: Tokenizer, texts: list[str]):
    state = json.loads(tok.to_str())
    info = inspect_tokenizer(state)
    ids = {i for t in texts for i in tok.encode(t).ids} | info.required_ids()
    keep, _ = complete_keep(state, ids)
    new_state, _ = trim_state(state, keep)
    old2new = np.full(info.vocab_size, -1)
    old2new[keep] = np.arange(len(keep))
    return info, Tokenizer.from_str(json.dumps(new_state)), keep, old2new


@pytest.mark.parametrize("kind", ["unigram", "wordpiece", "byte-level", "byte-fallback"])
def test_tokenizer_surgery_keeps_ids_of_kept_text(kind):
    tok = _byte_fallback() if kind == "byte-fallback" else _train(kind)
    _info, new, keep, old2new = _trim(tok, KEPT)
    assert len(keep) < tok.get_vocab_size()
    for text in KEPT:
        assert new.encode(text).ids == old2new[tok.encode(text).ids].tolist()
    # new ids are the sorted old ids
    vocab = tok.get_vocab()
    assert {t: old2new[i] for t, i in vocab.items() if old2new[i] >= 0} == new.get_vocab()


@pytest.mark.parametrize("kind, unk, text", [("unigram", "<unk>", UNSEEN), ("wordpiece", "[UNK]", "bird warm sky")])
def test_unseen_text_unigram_and_wordpiece_unk(kind, unk, text):
    tok = _train(kind)
    info, new, _keep, _old2new = _trim(tok, KEPT)
    assert unk in info.oov_behaviour or "unk" in info.oov_behaviour
    assert tok.token_to_id(unk) not in tok.encode(text).ids  # the original has pieces for it
    ids = new.encode(text).ids  # (Unigram reports the surface string as the token of an unk id)
    assert new.token_to_id(unk) in ids, (kind, ids)


def test_unseen_text_byte_level_never_unk_and_roundtrips():
    tok = _train("byte-level")
    info, new, _keep, _ = _trim(tok, KEPT)
    assert info.family == "byte-level-bpe" and len(info.required["byte_alphabet"]) == 256  # all present here
    text = "a bird sang in the warm sky é€"
    enc = new.encode(text)
    assert new.decode(enc.ids) == text
    assert len(enc.ids) > len(tok.encode(text).ids)  # smaller kept pieces, down to bytes; no unk exists


def test_unseen_text_byte_fallback_uses_byte_tokens():
    tok = _byte_fallback()
    info, new, _keep, _ = _trim(tok, KEPT)
    assert info.family == "byte-fallback-bpe"
    enc = new.encode("the zebra é")
    assert any(t.startswith("<0x") for t in enc.tokens)
    assert "<unk>" not in enc.tokens
    assert new.decode(enc.ids) == "the zebra é"


def test_bpe_merges_pruned_consistently():
    tok = _train("byte-level")
    state = json.loads(tok.to_str())
    _, new, _keep, _ = _trim(tok, KEPT)
    new_state = json.loads(new.to_str())
    vocab = new_state["model"]["vocab"]
    assert 0 < len(new_state["model"]["merges"]) < len(state["model"]["merges"])
    for a, b in new_state["model"]["merges"]:
        assert a in vocab and b in vocab and a + b in vocab


def test_unsupported_tokenizer_type():
    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(InputError, match="'WordLevel' is not supported"):
        inspect_tokenizer(json.loads(tok.to_str()))


# ------------------------------------------------------------------------------- model surgery


def _tiny_llama(tied: bool):
    import transformers as T

    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return T.LlamaForCausalLM(cfg).eval()


KEEP = np.array([0, 1, 2, 5, 7, 9, 10, 20, 33, 63])


@pytest.mark.parametrize("tied", [True, False])
def test_model_surgery_logits_are_the_kept_columns(tied, tmp_path):
    m = _tiny_llama(tied)
    vt = VM.vocab_tensors(m, 64)
    assert vt.tied is tied
    t = VM.trim_model(m, KEEP, vt)
    old2new = np.full(64, -1)
    old2new[KEEP] = np.arange(len(KEEP))
    VM.remap_config(t.config, old2new, "config")
    ids = torch.tensor([[1, 5, 9, 33, 63]])
    with torch.inference_mode():
        ref = m(input_ids=ids).logits[..., KEEP]
        got = t(input_ids=torch.as_tensor(old2new[ids.numpy()])).logits
    assert torch.allclose(ref, got, rtol=0, atol=1e-6)  # a narrower head matmul rounds differently
    assert (t.lm_head.weight is t.model.embed_tokens.weight) is tied
    VM.save_trimmed(t, tmp_path / "m", KEEP)
    import transformers as T

    r = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    res = VM.verify_tensors(r, VM.expected_state(m, KEEP, vt), vt)
    assert res["passed"], res
    assert r.config.vocab_size == len(KEEP) and json.loads((tmp_path / "m" / VM.ID_MAP).read_text()) == KEEP.tolist()


def test_config_ids_remapped_and_refused_when_dropped():
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=64, pad_token_id=5, bos_token_id=7, eos_token_id=[9, 10])
    keep = np.array([0, 5, 7, 9, 10, 11])
    old2new = np.full(64, -1)
    old2new[keep] = np.arange(len(keep))
    assert VM.config_ids(cfg) >= {5, 7, 9, 10}
    VM.remap_config(cfg, old2new, "config")
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (1, 2, [3, 4])
    cfg2 = T.LlamaConfig(vocab_size=64, pad_token_id=6)
    with pytest.raises(InputError, match="pad_token_id: token id 6 is not kept"):
        VM.remap_config(cfg2, old2new, "config")


def test_head_bias_and_aliases(tmp_path):
    import transformers as T

    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    m = T.BertForMaskedLM(cfg).eval()
    with torch.no_grad():
        m.cls.predictions.bias.normal_()
    vt = VM.vocab_tensors(m, 64)
    t = VM.trim_model(m, KEEP, vt)
    ids = torch.tensor([[1, 5, 9, 33]])
    old2new = np.full(64, -1)
    old2new[KEEP] = np.arange(len(KEEP))
    with torch.inference_mode():
        ref, got = m(input_ids=ids).logits[..., KEEP], t(input_ids=torch.as_tensor(old2new[ids.numpy()])).logits
    assert torch.allclose(ref, got, rtol=0, atol=1e-6)  # a narrower head matmul rounds differently


def test_verify_catches_a_corrupted_tensor(tmp_path):
    import transformers as T
    from safetensors.torch import load_file, save_file

    m = _tiny_llama(True)
    vt = VM.vocab_tensors(m, 64)
    VM.save_trimmed(VM.trim_model(m, KEEP, vt), tmp_path / "m", KEEP)
    f = tmp_path / "m" / "model.safetensors"
    sd = load_file(f)
    key = "model.layers.0.mlp.up_proj.weight"
    sd[key][0, 0] += 1e-3
    save_file(sd, f, metadata={"format": "pt"})
    res = VM.verify_tensors(T.AutoModelForCausalLM.from_pretrained(tmp_path / "m"), VM.expected_state(m, KEEP, vt), vt)
    assert not res["passed"] and res["mismatched"] == [key]


def test_head_not_plain_linear_refused():
    m = _tiny_llama(False)
    m.lm_head = nn.Sequential(nn.Linear(16, 64))
    with pytest.raises(InputError, match="not a plain nn.Linear over the 64-token vocabulary"):
        VM.vocab_tensors(m, 64)
    m = _tiny_llama(False)
    m.register_buffer("extra", torch.zeros(4, 64))
    with pytest.raises(InputError, match="tensor extra"):
        VM.vocab_tensors(m, 64)


# ------------------------------------------------------------------------------- corpus and recipe


def test_corpus_split_is_deterministic_and_disjoint(tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(f"line {i}. It ends" for i in range(50)))
    cfg = CorpusConfig(sources=[{"path": "a.txt", "lang": "x"}], heldout_fraction=0.2, seed=3)
    c1, c2 = load_corpus(cfg, tmp_path), load_corpus(cfg, tmp_path)
    assert c1.heldout == c2.heldout and len(c1.heldout["x"]) == 20 and len(c1.mining["x"]) == 40
    assert set(c1.heldout["x"][::2]) <= {f"line {i}." for i in range(50)} and c1.heldout["x"][1] == "It ends"
    held = {s.split(".")[0] for s in c1.heldout["x"][::2]}
    assert not held & {s.split(".")[0] for s in c1.mining["x"]}  # whole documents are held out
    c3 = load_corpus(cfg.model_copy(update={"seed": 4}), tmp_path)
    assert c3.heldout != c1.heldout


def test_mine_frequency_target_and_too_small_corpus():
    corpus = Corpus(mining={"x": ["a"]}, weighted={"x": [("b", 3)]})

    def enc(texts):
        return [[{"a": 1, "b": 2}[t], 3] for t in texts]

    m = mine(corpus, enc, enc, 8, TrimConfig(min_frequency=2), forced={0})
    assert m.counts.tolist()[:4] == [0, 1, 3, 4] and m.selected.tolist() == [2, 3]
    m = mine(corpus, enc, enc, 8, TrimConfig(min_frequency=1, target_vocab_size=1), forced=set())
    assert m.selected.tolist() == [3]
    with pytest.raises(InputError, match="fewer than 5"):
        mine(corpus, enc, enc, 8, TrimConfig(min_frequency=1, target_vocab_size=5), forced=set())
    keep_mask = np.zeros(8, bool)
    keep_mask[[1, 3]] = True
    assert coverage([[1, 3], [2, 3]], keep_mask)["token_coverage"] == 0.75


@pytest.mark.parametrize(
    "source, match",
    [
        ({"path": "missing.txt"}, "does not exist"),
        ({"path": "empty.txt"}, "the corpus is empty"),
        ({"path": "*.nothing"}, "matches no file"),
        ({"dataset_build": "xxx"}, "dataset-build has no language 'xxx'"),
    ],
)
def test_bad_corpus_sources(tmp_path, source, match):
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InputError, match=match):
        load_corpus(CorpusConfig(sources=[source]), tmp_path)


def test_recipe_errors_are_one_line():
    base = {"task": "vocab-trim", "model": "e5-small", "corpus": {"sources": [{"dataset_build": "eng"}]}}
    assert isinstance(validate_vocab_recipe("r.yaml", base), VocabRecipe)
    for bad, match in (
        ({"trim": {"min_frequncy": 2}}, "trim.min_frequncy: unknown field; did you mean 'min_frequency'"),
        ({"corpus": {"sources": [{"dataset_build": "eng", "path": "x"}]}}, "exactly one of"),
        ({"corpus": {"sources": []}}, "corpus.sources"),
        ({"trim": {"drop_special": "("}}, "not a regular expression"),
        ({"export": {"opset": 18}}, "opset 18 does not fit target jetpack-6.0: TensorRT 8.6 reads"),
        ({"export": {"target": "jetpack-9"}}, "export.target"),
        ({"trim": {"self_generated": {"prompts": 0}}}, "trim.self_generated.prompts"),
        (
            {"trim": {"self_generated": {"max_new_tokns": 8}}},
            "trim.self_generated.max_new_tokns: unknown field; did you mean 'max_new_tokens'",
        ),
        ({"trim": {"self_generated": "yes"}}, "trim.self_generated"),
    ):
        with pytest.raises(InputError, match=match) as e:
            validate_vocab_recipe("r.yaml", {**base, **bad})
        assert "\n" not in str(e.value) and str(e.value).startswith("r.yaml: ")
    # the same deployment targets as the other tasks, the old spelling included
    r = validate_vocab_recipe("r.yaml", {**base, "export": {"target": "jetpack-5.1"}})
    assert (r.export.target, r.export.opset, r.export.trt_target) == ("jetpack-5.1", 16, "8.5")
    assert validate_vocab_recipe("r.yaml", {**base, "export": {"trt_target": "10.3"}}).export.target == "tensorrt-10"


def test_self_generated_counts_are_the_models_own_greedy_tokens():
    """trim.self_generated counts exactly what the original generates from mining-part prompts: batched
    left-padded generation equals one-by-one greedy generation, counts are weighted, short documents skip."""
    from tokexport.vocab.recipe import SelfGenerated
    from tokexport.vocab.selfgen import self_generated_counts
    from tokexport.vocab.verify import greedy_generations

    m = _tiny_llama(True)
    m.generation_config.eos_token_id = None  # random weights: never stop early, so every prompt gives 6 tokens
    docs = [[1, 5, 9, 33, 7, 10], [1, 20, 20, 5], [1, 63], [1, 7, 7, 7, 9, 5, 33]]  # [1, 63] is too short
    cfg = SelfGenerated(prompts=10, prompt_tokens=3, max_new_tokens=6, weight=3, batch=2)
    counts, info = self_generated_counts(m, cfg, docs, 64, pad_id=0)
    one_by_one = greedy_generations(m, [d[:3] for d in docs if len(d) > 3], 6, 0)
    expected = np.bincount([t for g in one_by_one for t in g], minlength=64) * 3
    assert np.array_equal(counts, expected)
    assert info["prompts"] == 3 and info["generated_tokens"] == 18 and info["distinct_ids"] == int((expected > 0).sum())


def test_mine_adds_extra_counts():
    corpus = Corpus(mining={"x": ["a"]})
    enc = lambda texts: [[1, 2, 2] for _ in texts]  # noqa: E731
    extra = np.zeros(8, dtype=np.int64)
    extra[5] = 10  # only the model's generations name id 5
    m = mine(corpus, enc, enc, 8, TrimConfig(min_frequency=2, target_vocab_size=2), set(), extra)
    assert m.selected.tolist() == [2, 5] and m.counts[5] == 10
