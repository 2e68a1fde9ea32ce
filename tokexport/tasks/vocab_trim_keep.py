"""Choosing the vocab-trim task's kept ids (its mine stage): the ids kept whatever the corpus says
(:func:`required_ids`), then the ids a keep file lists (:func:`keep_file_ids`), or the corpus's ids ranked
by expected coverage, the blend chosen on a dev split (:func:`rank_by_coverage`), or by frequency
(:func:`rank_by_frequency`), within a parameter or byte budget when the recipe sets one."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..vocab import rank as R
from ..vocab.corpus import Mined, count_ids, encode_all, mine
from ..vocab.keepfile import read_keep_file
from ..vocab.model import config_ids
from ..vocab.selfgen import self_generated_counts


def required_ids(
    recipe, info, lookup: dict[str, int], model, keep_user: list[int]
) -> tuple[dict[str, list[int]], list[int]]:
    """Ids kept whatever the corpus says, by reason (the tokenizer's specials, padding, unk, byte
    symbols; ids named by the config and generation config; tokens_to_keep), and the special ids
    ``trim.drop_special`` lets go."""
    required = dict(info.required)
    dropped: list[int] = []
    if recipe.trim.drop_special:
        pattern = re.compile(recipe.trim.drop_special)
        special = required.get("special", [])
        inverse = {i: t for t, i in lookup.items()}
        dropped = [i for i in special if pattern.fullmatch(inverse.get(i, ""))]
        required["special"] = [i for i in special if i not in set(dropped)]
    gen_cfg = getattr(model, "generation_config", None)
    required["config"] = sorted(config_ids(model.config) | (config_ids(gen_cfg) if gen_cfg is not None else set()))
    required["tokens_to_keep"] = sorted(set(keep_user))
    return required, dropped


def per_token_params(model, vt) -> int:
    """Parameters each kept id costs: one row of every distinct vocabulary tensor (embedding, untied
    head, head bias, final_logits_bias-style vectors)."""
    named = {
        **dict(model.named_parameters(remove_duplicate=False)),
        **dict(model.named_buffers(remove_duplicate=False)),
    }
    params = {id(p) for p in model.parameters()}
    seen, total = set(), 0
    for name, axis in vt.axes.items():
        t = named[name]
        if id(t) in seen or id(t) not in params:
            continue
        seen.add(id(t))
        total += t.numel() // t.shape[axis]
    return int(total)


def keep_list_report(kl, keep: np.ndarray, required: dict[str, list[int]], lookup: dict[str, int]) -> dict:
    """What trim.keep_file asked for and what had to be added for the tokenizer to stay valid, by reason."""
    inverse = {i: t for t, i in lookup.items()}
    listed = set(kl.ids)
    added: dict[str, list[dict]] = {}
    seen = set(listed)
    for reason, ids in required.items():
        extra = sorted(set(ids) - seen)
        if extra:
            added[reason] = [{"id": int(i), "token": inverse.get(int(i))} for i in extra]
            seen.update(extra)
    closure = sorted({int(i) for i in keep} - seen)
    if closure:
        added["bpe_merge_paths"] = [{"id": i, "token": inverse.get(i)} for i in closure]
    return {
        "path": str(kl.path),
        "format": kl.format,
        "entries": kl.entries,
        "listed_ids": len(listed),
        "kept": len(keep),
        "added_total": sum(len(v) for v in added.values()),
        "added": added,
    }


@dataclass
class Mining:
    """What every way of choosing the kept ids reads: the recipe, its corpus (the mining documents
    encoded), the model, the ids kept anyway (``forced``; ``base`` with their merge paths) and the room
    for the rest (``size``, ``budget``)."""

    recipe: object
    corpus: object
    model: object
    rows: int
    encode_special: Callable
    encode_plain: Callable
    mining_rows: dict
    mining_ids: list
    forced: set
    base: set
    paths: object
    size: object
    budget: object
    pad_gen: int


def keep_file_ids(m: Mining, base_dir: Path, lookup: dict[str, int], vocab_size: int) -> tuple:
    """(mined, keep list): the ids trim.keep_file lists."""
    kl = read_keep_file(m.recipe.trim.keep_file, base_dir, lookup, vocab_size)
    picks = [int(i) for i in kl.ids]
    mined = Mined(
        counts=None,
        selected=np.array(sorted(picks), dtype=np.int64),
        eligible=len(picks),
        mining_tokens=sum(len(r) for r in m.mining_ids),
    )
    return mined, kl


def rank_by_coverage(m: Mining) -> tuple:
    """(mined, ranking, self-generated counts, encoded word lists, (evidence, chosen blend)): the ids of the
    best expected coverage, the blend weights chosen by the token coverage of a dev split of the mining
    documents."""
    trim, rows, corpus, mining_rows = m.recipe.trim, m.rows, m.corpus, m.mining_rows
    cfg = trim.coverage
    self_gen = None
    weighted_rows = {
        lang: encode_all(m.encode_plain, [t for t, _ in entries]) for lang, entries in corpus.weighted.items()
    }
    ev, dev_masks = R.gather_evidence(
        corpus,
        mining_rows,
        m.encode_plain,
        rows,
        cfg.dev_fraction,
        m.recipe.corpus.seed,
        any(x > 0 for x in cfg.numbers),
        weighted_rows,
    )
    if trim.self_generated is not None:  # prompts from the train split only: the dev split stays unseen
        train_rows = [r for lang, rs in mining_rows.items() for r, dev in zip(rs, dev_masks[lang]) if not dev]
        extra, self_gen = self_generated_counts(m.model, trim.self_generated, train_rows, rows, m.pad_gen)
        ev.generated = extra.astype(np.float64) / max(1, extra.sum()) if extra.sum() else None
    best, trials = R.tune(ev, cfg, m.base, m.paths, m.size)
    score = R.blend(ev, ev.full(), best["prior_strength"], best["numbers"], best["self_generated"])
    _, picks = R.choose(score, score > 0, m.base, m.paths, m.size)
    mined = Mined(
        counts=None,
        selected=np.array(sorted(picks), dtype=np.int64),
        eligible=int((score > 0).sum()),
        mining_tokens=sum(len(r) for r in m.mining_ids),
    )
    ranking = {
        "method": "coverage",
        "chosen": best,
        "dev_documents": ev.dev_documents,
        "dev_fraction": cfg.dev_fraction,
        "trials": trials,
        "note": "blend weights chosen by token coverage of a dev split of the mining documents "
        "(mined from the rest) at the recipe's size; held-out text is never used to choose",
    }
    return mined, ranking, self_gen, weighted_rows, (ev, best)


def rank_by_frequency(m: Mining) -> tuple:
    """(mined, ranking, self-generated counts): the ids seen at least trim.min_frequency times, the most
    frequent first (within the budget, when there is one)."""
    trim, rows, corpus = m.recipe.trim, m.rows, m.corpus
    extra, self_gen = None, None
    if trim.self_generated is not None:
        extra, self_gen = self_generated_counts(m.model, trim.self_generated, m.mining_ids, rows, m.pad_gen)
    if m.budget is None:
        mined = mine(corpus, m.encode_special, m.encode_plain, rows, trim, m.forced, extra)
    else:
        counts = count_ids(corpus, m.encode_special, m.encode_plain, rows, extra, m.mining_rows)
        if counts.sum() == 0:
            raise InputError("corpus: the mining part tokenises to no tokens at all; give text in the target language")
        eligible = counts >= trim.min_frequency
        _, picks = R.choose(counts.astype(np.float64), eligible, m.base, m.paths, m.size)
        mined = Mined(
            counts=counts,
            selected=np.array(sorted(picks), dtype=np.int64),
            eligible=int(eligible.sum()),
            mining_tokens=int(counts.sum()),
        )
    ranking = {"method": "frequency", "min_frequency": trim.min_frequency}
    return mined, ranking, self_gen


def heldout_ablation(m: Mining, ev, best: dict, heldout_counts: dict, weighted_rows: dict) -> dict:
    """The held-out token coverage of the coverage ranking's choice against plainer rankings at the same
    size (measured after the choice, never used for it)."""
    trim, rows = m.recipe.trim, m.rows
    plain = count_ids(m.corpus, m.encode_special, m.encode_plain, rows, None, m.mining_rows, weighted_rows)
    corpus_only = sum((c for c in ev.full().values()), np.zeros(rows))
    return R.ablation(
        ev,
        best,
        m.base,
        m.paths,
        m.size,
        heldout_counts,
        {
            "corpus counts only (vocabtrimmer, min_frequency)": (corpus_only, corpus_only >= trim.min_frequency),
            "ranking: frequency (corpus + word-list pseudo-counts)": (
                plain.astype(np.float64),
                plain >= trim.min_frequency,
            ),
        },
    )
