"""Checks of a trimmed model against the original: tokenizer remap on held-out text, and accuracy —
encoders: exact outputs on in-vocabulary text and
embedding cosine on all held-out text; decoders: identical greedy generations, next-token top-1
agreement and perplexity per character."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Feed = dict[str, np.ndarray]


def pad_rows(id_lists: Sequence[Sequence[int]], seq_len: int, pad_id: int) -> Feed:
    """Right-pad/truncate to the static sequence length of the exported graphs."""
    ids = np.full((len(id_lists), seq_len), pad_id, dtype=np.int64)
    mask = np.zeros((len(id_lists), seq_len), dtype=np.int64)
    for r, row in enumerate(id_lists):
        row = list(row)[:seq_len]
        ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def remap_mismatches(
    orig_ids: Sequence[Sequence[int]], trimmed_ids: Sequence[Sequence[int]], keep_mask: np.ndarray, old2new: np.ndarray
) -> tuple[list[int], list[int]]:
    """The documents whose original ids are all kept, and those of them on which the trimmed tokenizer
    does not give old2new of the original ids (it must give exactly that)."""
    in_vocab = [i for i, ids in enumerate(orig_ids) if keep_mask[np.asarray(ids, dtype=np.int64)].all()]
    bad = [i for i in in_vocab if list(old2new[np.asarray(orig_ids[i], dtype=np.int64)]) != list(trimmed_ids[i])]
    return in_vocab, bad


def oov_behaviour(
    orig_ids: Sequence[Sequence[int]],
    trimmed_ids: Sequence[Sequence[int]],
    keep_mask: np.ndarray,
    unk_new: int | None,
    byte_new: set[int],
) -> dict:
    """What the trimmed tokenizer emits on held-out documents with out-of-vocabulary pieces."""
    docs = [i for i, ids in enumerate(orig_ids) if not keep_mask[np.asarray(ids, dtype=np.int64)].all()]
    orig_n = sum(len(orig_ids[i]) for i in docs)
    new = [t for i in docs for t in trimmed_ids[i]]
    return {
        "documents": len(docs),
        "original_tokens": orig_n,
        "trimmed_tokens": len(new),
        "length_ratio": len(new) / orig_n if orig_n else 1.0,
        "unk_tokens": sum(1 for t in new if t == unk_new) if unk_new is not None else 0,
        "byte_tokens": sum(1 for t in new if t in byte_new),
    }


def greedy_generations(model, prompts_ids: list[list[int]], max_new_tokens: int, pad_id: int | None) -> list[list[int]]:
    out = []
    for ids in prompts_ids:
        x = torch.tensor([ids])
        with torch.inference_mode():
            y = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
            )
        out.append(y[0, len(ids) :].tolist())
    return out


def lm_scores(model, id_lists: Sequence[Sequence[int]], seq_len: int) -> list[tuple[np.ndarray, float]]:
    """Per document: next-token argmax at each position and the summed NLL of the document's tokens."""
    out = []
    for ids in id_lists:
        ids = list(ids)[:seq_len]
        if len(ids) < 2:
            out.append((np.zeros(0, dtype=np.int64), 0.0))
            continue
        x = torch.tensor([ids])
        with torch.inference_mode():
            logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        nll = -logp.gather(1, x[0, 1:, None]).sum().item()
        out.append((logits[:-1].argmax(-1).numpy(), nll))
    return out
