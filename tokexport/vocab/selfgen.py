"""Self-generated mining text for decoders (``trim.self_generated``).

A trimmed decoder differs from the original only where the original's greedy choice is a token that
was dropped. Corpus text ranks tokens by how often *people* write them; what matters for identical
generations is what the *model* writes. So, optionally, the original model continues the beginnings
of mining-part documents greedily, and the tokens it generates are counted with the corpus before the
most frequent ids are kept. Only the mining part is used as prompts: the held-out text and the
recipe's generation prompts stay unseen, so the checks stay honest.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from .recipe import SelfGenerated


def _evenly(items: Sequence, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def batched_greedy(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int, batch: int) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (token id lists), left-padded in batches of ``batch``.
    Returns the generated ids of each prompt (prompt excluded, stopped at the first EOS)."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    out: list[list[int]] = []
    for s in range(0, len(prompts), batch):
        rows = prompts[s : s + batch]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            mask[i, width - len(r) :] = 1
        with torch.inference_mode():
            y = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
            )
        for row in y[:, width:].tolist():
            cut = next((j for j, t in enumerate(row) if t in eos), len(row))
            out.append(row[:cut])
    return out


def self_generated_counts(
    model, cfg: SelfGenerated, mining_ids: list[list[int]], vocab_rows: int, pad_id: int
) -> tuple[np.ndarray, dict]:
    """Counts (×weight) of the ids the original model generates from the beginnings of mining
    documents, and a summary for the report."""
    t0 = time.perf_counter()
    usable = [ids for ids in mining_ids if len(ids) > cfg.prompt_tokens]
    prompts = [ids[: cfg.prompt_tokens] for ids in _evenly(usable, cfg.prompts)]
    gen = batched_greedy(model, prompts, cfg.max_new_tokens, pad_id, cfg.batch) if prompts else []
    flat = np.asarray([t for g in gen for t in g], dtype=np.int64)
    counts = np.bincount(flat, minlength=vocab_rows)[:vocab_rows].astype(np.int64) * cfg.weight
    return counts, {
        "prompts": len(prompts),
        "prompt_tokens": cfg.prompt_tokens,
        "max_new_tokens": cfg.max_new_tokens,
        "generated_tokens": int(flat.size),
        "distinct_ids": int((counts > 0).sum()),
        "weight": cfg.weight,
        "seconds": round(time.perf_counter() - t0, 1),
    }
