"""Tokenizer surgery on the ``tokenizers`` JSON state, per model type.

New ids are the sorted old ids of the keep set (a monotone remap), so Unigram piece lists and
WordPiece/BPE vocabularies keep their relative order. What each family needs kept for the trimmed
tokenizer to give *the same pieces* on text whose original pieces are all kept:

* Unigram (XLM-R, e5, mT5): nothing more: Viterbi over a subset of the pieces still finds the
  original best segmentation when all its pieces are kept. Other text: pieces that are gone can
  only be replaced by kept ones or ``unk``.
* WordPiece (BERT, MiniLM): nothing more: greedy longest-match-first picks the same prefix from a
  subset that still contains it. Other words become ``[UNK]`` as a whole (WordPiece's rule).
* BPE (byte-level GPT-2/SmolLM, SentencePiece-BPE Gemma/Llama): every token on a merge path of a
  kept token (closure over the merges producing it); merges are kept when their result is kept, in
  their original order. Then every merge the original applies to kept text is still there and it
  is still the lowest-ranked applicable one, so the result is identical. Byte-level BPE keeps its
  256-symbol byte alphabet and byte-fallback BPE its 256 ``<0xXX>`` tokens, so other text is still
  encoded (into smaller kept pieces or bytes), never to ``unk``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import read_json

SUPPORTED = ("Unigram", "WordPiece", "BPE")
BYTE_FALLBACK_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def bytes_to_unicode() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values (the ByteLevel pre-tokenizer alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def _has_byte_level(node) -> bool:
    if isinstance(node, dict):
        if node.get("type") == "ByteLevel":
            return True
        return any(_has_byte_level(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_byte_level(v) for v in node)
    return False


@dataclass
class TokenizerInfo:
    model_type: str
    family: str  # unigram | wordpiece | byte-level-bpe | byte-fallback-bpe | bpe
    vocab_size: int  # ids the tokenizer can emit (max id + 1)
    oov_behaviour: str  # what happens to text outside the kept vocabulary
    required: dict[str, list[int]]  # ids kept regardless of the corpus, by reason

    def required_ids(self) -> set[int]:
        return {i for ids in self.required.values() for i in ids}


def _vocab_items(model: dict) -> list[tuple[str, int]]:
    if model["type"] == "Unigram":
        return [(piece, i) for i, (piece, _score) in enumerate(model["vocab"])]
    return list(model["vocab"].items())


def merge_pair(m) -> tuple[str, str]:
    return tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1])


def _post_processor_ids(node) -> list[int]:
    out = []
    if isinstance(node, dict):
        if node.get("type") in ("RobertaProcessing", "BertProcessing"):
            out += [node["sep"][1], node["cls"][1]]
        for spec in (node.get("special_tokens") or {}).values():
            out += list(spec.get("ids", []))
        for sub in node.get("processors", []) or []:
            out += _post_processor_ids(sub)
    return out


def inspect_tokenizer(state: dict) -> TokenizerInfo:
    """Family, size and the ids that must survive any trim; InputError for unsupported models."""
    model = state.get("model") or {}
    mtype = model.get("type")
    if mtype not in SUPPORTED:
        raise InputError(
            f"tokenizer model type {mtype!r} is not supported for vocabulary trimming "
            f"(supported: {', '.join(SUPPORTED)})"
        )
    items = _vocab_items(model)
    ids = [i for _, i in items] + [t["id"] for t in state.get("added_tokens", [])]
    size = max(ids) + 1
    lookup = dict(items)
    required: dict[str, list[int]] = {
        "special": sorted(t["id"] for t in state.get("added_tokens", []) if t.get("special")),
        "post_processor": sorted(set(_post_processor_ids(state.get("post_processor")))),
    }
    if state.get("padding"):
        required["padding"] = [state["padding"]["pad_id"]]
    if mtype == "Unigram":
        if model.get("unk_id") is not None:
            required["unk"] = [model["unk_id"]]
        family, oov = "unigram", "segmented into kept pieces; characters no kept piece covers become unk"
        if model.get("byte_fallback"):
            required["byte_fallback"] = [lookup[t] for t in BYTE_FALLBACK_TOKENS if t in lookup]
            oov = "segmented into kept pieces; other characters fall back to <0xXX> byte tokens"
    elif mtype == "WordPiece":
        unk = model.get("unk_token")
        if unk not in lookup:
            raise InputError(f"WordPiece tokenizer: unk token {unk!r} is not in its vocabulary")
        required["unk"] = [lookup[unk]]
        family, oov = "wordpiece", f"a word with any piece outside the kept vocabulary becomes {unk} (WordPiece rule)"
    else:
        if model.get("byte_fallback"):
            missing = [t for t in BYTE_FALLBACK_TOKENS if t not in lookup]
            if missing:
                raise InputError(f"BPE tokenizer has byte_fallback but lacks byte tokens such as {missing[0]!r}")
            required["byte_fallback"] = [lookup[t] for t in BYTE_FALLBACK_TOKENS]
            family, oov = (
                "byte-fallback-bpe",
                "merged from kept pieces; characters not in the kept vocabulary fall back to <0xXX> byte tokens",
            )
        elif _has_byte_level(state.get("pre_tokenizer")):
            # every byte symbol the original has (SmolLM2 lacks a few control bytes: the original
            # cannot encode those either)
            required["byte_alphabet"] = [lookup[c] for c in bytes_to_unicode() if c in lookup]
            family, oov = "byte-level-bpe", "merged from kept pieces down to single bytes; never unk"
        else:
            family = "bpe"
            unk = model.get("unk_token")
            if unk is not None and unk in lookup:
                required["unk"] = [lookup[unk]]
            oov = f"merged from kept pieces; symbols outside the kept vocabulary become {unk}"
        if model.get("unk_token") in lookup:
            required.setdefault("unk", [lookup[model["unk_token"]]])
    return TokenizerInfo(mtype, family, size, oov, {k: v for k, v in required.items() if v})


def bpe_closure(state: dict, keep: set[int]) -> set[int]:
    """``keep`` plus every token on a merge path of a kept token (both parts of each merge producing it)."""
    model = state["model"]
    vocab = model["vocab"]
    prefix = model.get("continuing_subword_prefix") or ""
    producers: dict[str, list[tuple[str, str]]] = {}
    for m in model["merges"]:
        a, b = merge_pair(m)
        result = a + (b[len(prefix) :] if prefix and b.startswith(prefix) else b)
        producers.setdefault(result, []).append((a, b))
    inverse = {i: t for t, i in vocab.items()}
    out = set(keep)
    stack = [inverse[i] for i in keep if i in inverse]
    while stack:
        tok = stack.pop()
        for a, b in producers.get(tok, ()):
            for part in (a, b):
                pid = vocab.get(part)
                if pid is not None and pid not in out:
                    out.add(pid)
                    stack.append(part)
    return out


def complete_keep(state: dict, ids: set[int]) -> tuple[np.ndarray, int]:
    """The final keep set as sorted old ids: ``ids`` (mined, special, required, user) closed over BPE
    merge paths. Returns (keep, number of ids the closure added)."""
    closed = bpe_closure(state, ids) if state["model"]["type"] == "BPE" else set(ids)
    return np.array(sorted(closed), dtype=np.int64), len(closed) - len(ids)


def _remap_post_processor(node, old2new: np.ndarray) -> None:
    if not isinstance(node, dict):
        return
    if node.get("type") in ("RobertaProcessing", "BertProcessing"):
        for k in ("sep", "cls"):
            node[k] = [node[k][0], int(old2new[node[k][1]])]
    for spec in (node.get("special_tokens") or {}).values():
        spec["ids"] = [int(old2new[i]) for i in spec.get("ids", [])]
    for sub in node.get("processors", []) or []:
        _remap_post_processor(sub, old2new)


def trim_state(state: dict, keep: np.ndarray) -> tuple[dict, dict]:
    """A trimmed copy of the tokenizer JSON state keeping the sorted old ids ``keep`` (renumbered
    0..n-1 in that order). Returns (state, stats)."""
    state = json.loads(json.dumps(state))
    keep = np.asarray(keep, dtype=np.int64)
    size = int(max(keep.max() + 1, inspect_tokenizer(state).vocab_size))
    old2new = np.full(size, -1, dtype=np.int64)
    old2new[keep] = np.arange(len(keep))
    model = state["model"]
    stats = {"model_type": model["type"]}
    if model["type"] == "Unigram":
        n = len(model["vocab"])
        model["vocab"] = [model["vocab"][i] for i in keep if i < n]
        if model.get("unk_id") is not None:
            model["unk_id"] = int(old2new[model["unk_id"]])
    else:
        model["vocab"] = {
            t: int(old2new[i]) for t, i in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if old2new[i] >= 0
        }
        if model["type"] == "BPE":
            vocab = model["vocab"]
            prefix = model.get("continuing_subword_prefix") or ""
            kept_merges = []
            for m in model["merges"]:
                a, b = merge_pair(m)
                result = a + (b[len(prefix) :] if prefix and b.startswith(prefix) else b)
                if a in vocab and b in vocab and result in vocab:
                    kept_merges.append(m)
            stats["merges"] = {"before": len(model["merges"]), "after": len(kept_merges)}
            model["merges"] = kept_merges
    added = []
    for t in state.get("added_tokens", []):
        if old2new[t["id"]] >= 0:
            added.append({**t, "id": int(old2new[t["id"]])})
    stats["added_tokens"] = {"before": len(state.get("added_tokens", [])), "after": len(added)}
    state["added_tokens"] = added
    _remap_post_processor(state.get("post_processor"), old2new)
    if state.get("padding"):
        state["padding"]["pad_id"] = int(old2new[state["padding"]["pad_id"]])
    return state, stats


# Files of a Hugging Face tokenizer folder and what happens to each.
SLOW_MODEL_FILES = ("sentencepiece.bpe.model", "spiece.model", "tokenizer.model", "sentencepiece.model")


def write_tokenizer_files(src_dir: Path, dest: Path, state: dict, old2new: np.ndarray) -> list[str]:
    """Write the trimmed tokenizer folder next to the model: tokenizer.json (trimmed state),
    tokenizer_config.json / added_tokens.json with remapped ids, slow vocab.txt / vocab.json +
    merges.txt rewritten from the trimmed state, SentencePiece .model files left out (with a note:
    they would give the untrimmed ids). Returns notes for the report."""
    notes = []
    (dest / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    cfg_path = src_dir / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg = read_json(cfg_path, "model file")
        if "added_tokens_decoder" in cfg:
            cfg["added_tokens_decoder"] = {
                str(int(old2new[int(k)])): v
                for k, v in cfg["added_tokens_decoder"].items()
                if int(k) < len(old2new) and old2new[int(k)] >= 0
            }
        (dest / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n")
    added_path = src_dir / "added_tokens.json"
    if added_path.is_file():
        added = read_json(added_path, "model file")
        (dest / "added_tokens.json").write_text(
            json.dumps({t: int(old2new[i]) for t, i in added.items() if i < len(old2new) and old2new[i] >= 0}, indent=2)
            + "\n"
        )
    for name in ("special_tokens_map.json", "chat_template.jinja", "chat_template.json"):
        if (src_dir / name).is_file():
            (dest / name).write_bytes((src_dir / name).read_bytes())
    model = state["model"]
    ordered = sorted(_vocab_items(model), key=lambda kv: kv[1])
    if (src_dir / "vocab.txt").is_file():
        if model["type"] != "WordPiece":
            raise InputError(
                f"{src_dir}/vocab.txt: a slow WordPiece vocabulary next to a {model['type']} tokenizer.json"
            )
        tokens = {i: t for t, i in ordered} | {t["id"]: t["content"] for t in state["added_tokens"]}
        (dest / "vocab.txt").write_text("".join(tokens[i] + "\n" for i in range(len(tokens))), encoding="utf-8")
        notes.append("vocab.txt rewritten from the trimmed vocabulary (slow BertTokenizer gives the same ids)")
    if (src_dir / "vocab.json").is_file() and model["type"] == "BPE":
        (dest / "vocab.json").write_text(json.dumps(dict(ordered), ensure_ascii=False) + "\n", encoding="utf-8")
        merges = [" ".join(merge_pair(m)) for m in model["merges"]]
        (dest / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
        notes.append("vocab.json and merges.txt rewritten from the trimmed vocabulary and merges")
    for name in SLOW_MODEL_FILES:
        if (src_dir / name).is_file():
            notes.append(
                f"{name} (SentencePiece model of the untrimmed vocabulary) left out: it would give the old "
                "ids; load with the fast tokenizer (tokenizer.json)"
            )
    return notes
