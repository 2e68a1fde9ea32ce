"""Which ids to keep: ranking (corpus frequency, or expected held-out coverage), sizing (a mined-id
count or a parameter / byte budget, BPE merge paths counted exactly) and the tuning of the coverage
blend on a dev split of the mining part.

Coverage ranking. Token coverage of text is the share of its token occurrences whose ids are kept,
so the ids that add the most expected coverage are those with the highest expected frequency in
text of the target languages. The mining corpus estimates that frequency badly for ids it saw
rarely (a 150 kB corpus sees "distinguer" a few times, or never); a language's word-frequency list
estimates it from far more text. Per language ``l`` the score of id ``i`` is

    (corpus_l(i) + a * prior_l(i)) / (corpus tokens_l + a)

(a Dirichlet-smoothed frequency: a small corpus leans on the prior more than a large one), where
``prior_l`` is the token distribution of the language's word lists (wordfreq sources, tokenised
with the model's tokenizer, weighted by word frequency) plus, with weight ``n``, the integers
0..2100 (wordfreq's estimated frequencies; word lists leave digits out). Languages count equally
(the mean of their scores), and decoders with ``trim.self_generated`` mix in the distribution of the
model's own greedy tokens with share ``g``. ``a``, ``n`` and ``g`` are picked from the recipe's
candidate lists by the coverage they give on a dev split of the mining documents, mined from the
rest, at the recipe's size; the final counts then use the whole mining part. Held-out text is never
looked at here: the task measures each ingredient on it afterwards (:func:`ablation`) and reports it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .corpus import encode_all

NUMBERS = range(2101)
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


# ---------------------------------------------------------------------------------------------- BPE paths


class MergePaths:
    """The ids a kept id needs for the trimmed BPE tokenizer to produce it: both parts of every merge
    producing it, recursively (the closure :func:`tokexport.vocab.tokenizer.bpe_closure` computes for
    a whole set). For Unigram and WordPiece an id needs nothing else."""

    def __init__(self, state: dict):
        from .tokenizer import merge_pair

        model = state["model"]
        self.producers: dict[int, list[int]] = {}
        if model["type"] != "BPE":
            return
        vocab = model["vocab"]
        prefix = model.get("continuing_subword_prefix") or ""
        for m in model["merges"]:
            a, b = merge_pair(m)
            result = a + (b[len(prefix) :] if prefix and b.startswith(prefix) else b)
            rid = vocab.get(result)
            if rid is None:
                continue
            parts = self.producers.setdefault(rid, [])
            parts += [vocab[p] for p in (a, b) if p in vocab]

    def needed(self, i: int, keep: set[int]) -> list[int]:
        """``i`` and every id on its merge paths that ``keep`` lacks (empty when ``i`` is kept)."""
        if i in keep:
            return []
        out, seen, stack = [], {i}, [i]
        while stack:
            t = stack.pop()
            out.append(t)
            for p in self.producers.get(t, ()):
                if p not in seen and p not in keep:
                    seen.add(p)
                    stack.append(p)
        return out


def ranked(score: np.ndarray, eligible: np.ndarray, exclude: set[int]) -> np.ndarray:
    """Eligible ids by score, best first (ties by id), ``exclude`` left out."""
    cand = np.flatnonzero(eligible)
    if exclude:
        cand = np.setdiff1d(cand, np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
    return cand[np.lexsort((cand, -score[cand]))]


def fill(order: np.ndarray, base: set[int], paths: MergePaths, max_total: int) -> tuple[set[int], list[int]]:
    """Greedy: walk ``order`` and add each id with its missing merge-path ids while the keep set stays
    within ``max_total`` ids. Returns (keep set, the picked ids in order)."""
    keep, picks = set(base), []
    for i in order.tolist():
        if len(keep) >= max_total:
            break
        need = paths.needed(i, keep)
        if need and len(keep) + len(need) <= max_total:
            keep.update(need)
            picks.append(i)
    return keep, picks


# ---------------------------------------------------------------------------------------------- budget


@dataclass
class Budget:
    """What a parameter / byte budget allows: the model's parameters outside the vocabulary tensors
    are fixed, every kept id costs ``per_token`` more."""

    max_params: int | None
    max_bytes: int | None
    precision: str
    fixed_params: int
    per_token: int
    max_tokens: int

    @property
    def bytes_per_param(self) -> int:
        return BYTES_PER_PARAM[self.precision]

    def params(self, kept: int) -> int:
        return self.fixed_params + kept * self.per_token

    def describe(self, kept: int, heldout_coverage: float | None = None, by_language: dict | None = None) -> dict:
        p = self.params(kept)
        return {
            "max_params": self.max_params,
            "max_bytes": self.max_bytes,
            "precision": self.precision,
            "bytes_per_param": self.bytes_per_param,
            "fixed_params": self.fixed_params,
            "params_per_token": self.per_token,
            "max_tokens": self.max_tokens,
            "kept": kept,
            "params": p,
            "bytes": p * self.bytes_per_param,
            "heldout_token_coverage": heldout_coverage,
            "heldout_token_coverage_by_language": by_language or {},
        }


def budget_of(trim, total_params: int, rows: int, per_token: int, forced_keep: int) -> Budget | None:
    """The budget of ``trim`` (max_params / max_bytes at trim.precision) in kept ids; InputError when
    not even the required ids fit."""
    if trim.max_params is None and trim.max_bytes is None:
        return None
    fixed = total_params - rows * per_token
    limits = [
        x
        for x in (
            trim.max_params,
            (trim.max_bytes // BYTES_PER_PARAM[trim.precision]) if trim.max_bytes is not None else None,
        )
        if x is not None
    ]
    limit = min(limits)
    max_tokens = (limit - fixed) // per_token if limit > fixed else 0
    b = Budget(trim.max_params, trim.max_bytes, trim.precision, fixed, per_token, int(min(max_tokens, rows)))
    if b.max_tokens < forced_keep:
        field_name = "trim.max_params" if trim.max_params is not None and limit == trim.max_params else "trim.max_bytes"
        raise InputError(
            f"{field_name}: {limit:,} parameters do not even hold the {forced_keep:,} required ids "
            f"({fixed:,} parameters outside the vocabulary + {per_token} per id needs at least "
            f"{b.params(forced_keep):,}); raise the budget"
        )
    return b


# ---------------------------------------------------------------------------------------------- evidence


def _bincount(rows: Sequence[Sequence[int]], size: int, weights: Sequence[float] | None = None) -> np.ndarray:
    ids = np.fromiter((i for r in rows for i in r), dtype=np.int64)
    w = None if weights is None else np.fromiter((x for r, x in zip(rows, weights) for _ in r), dtype=np.float64)
    return np.bincount(ids, weights=w, minlength=size)[:size].astype(np.float64)


def _normalised(v: np.ndarray | None) -> np.ndarray | None:
    if v is None:
        return None
    s = v.sum()
    return v / s if s > 0 else None


@dataclass
class Evidence:
    """Per language label: corpus counts on the mining documents (split train / dev), the word-list
    prior and the numbers' distribution; and the model's own tokens (decoders)."""

    size: int
    labels: list[str]
    train: dict[str, np.ndarray]
    dev: dict[str, np.ndarray]
    words: dict[str, np.ndarray] = field(default_factory=dict)
    numbers: dict[str, np.ndarray] = field(default_factory=dict)
    generated: np.ndarray | None = None
    dev_documents: dict[str, int] = field(default_factory=dict)

    def full(self) -> dict[str, np.ndarray]:
        return {k: self.train.get(k, 0) + self.dev.get(k, 0) for k in set(self.train) | set(self.dev)}


def dev_split(n: int, fraction: float, seed: int, index: int) -> np.ndarray:
    """Boolean mask of the dev documents among ``n`` mining documents (seeded, per language)."""
    mask = np.zeros(n, dtype=bool)
    if n < 2:
        return mask
    order = np.random.default_rng([seed, index, 1]).permutation(n)
    mask[order[: max(1, round(fraction * n))]] = True
    return mask


def gather_evidence(
    corpus,
    mining_rows: dict[str, list[list[int]]],
    encode_plain: Callable,
    size: int,
    dev_fraction: float,
    seed: int,
    want_numbers: bool,
    weighted_rows: dict[str, list[list[int]]] | None = None,
) -> tuple[Evidence, dict[str, np.ndarray]]:
    """Counts of the encoded mining documents of each label split train / dev, word-list and number
    distributions. Also returns each label's dev mask (self-generated prompts come from train documents)."""
    labels = sorted(set(mining_rows) | set(corpus.weighted))
    train, dev, masks, ndev = {}, {}, {}, {}
    for k, lab in enumerate(labels):
        rows = mining_rows.get(lab)
        if not rows:
            continue
        mask = dev_split(len(rows), dev_fraction, seed, k)
        masks[lab], ndev[lab] = mask, int(mask.sum())
        train[lab] = _bincount([r for r, m in zip(rows, mask) if not m], size)
        dev[lab] = _bincount([r for r, m in zip(rows, mask) if m], size)
    words, numbers = {}, {}
    for lab, entries in corpus.weighted.items():
        rows = (
            weighted_rows[lab]
            if weighted_rows and lab in weighted_rows
            else encode_all(encode_plain, [t for t, _ in entries])
        )
        words[lab] = _normalised(_bincount(rows, size, [c for _, c in entries]))
        if want_numbers and corpus.wordfreq_langs.get(lab):
            import wordfreq

            forms, weights = [], []
            for code in sorted(corpus.wordfreq_langs[lab]):
                for n in NUMBERS:
                    f = wordfreq.word_frequency(str(n), code)
                    forms += [str(n), " " + str(n)]
                    weights += [f, f]
            numbers[lab] = _normalised(_bincount(encode_all(encode_plain, forms), size, weights))
    return Evidence(
        size,
        labels,
        train,
        dev,
        {k: v for k, v in words.items() if v is not None},
        {k: v for k, v in numbers.items() if v is not None},
        dev_documents=ndev,
    ), masks


def blend(ev: Evidence, counts: dict[str, np.ndarray], strength: float, numbers: float, generated: float) -> np.ndarray:
    """The coverage score of every id for one choice of the blend's weights (see the module doc)."""
    s = np.zeros(ev.size)
    for lab in ev.labels:
        c = counts.get(lab)
        n = float(c.sum()) if c is not None else 0.0
        prior = ev.words.get(lab)
        if prior is not None and numbers and lab in ev.numbers:
            prior = (prior + numbers * ev.numbers[lab]) / (1 + numbers)
        if prior is not None and (strength > 0 or n == 0):
            a = strength if n > 0 else 1.0
            s += ((c if c is not None else 0) + a * prior) / (n + a)
        elif n > 0:
            s += c / n
    s /= max(1, len(ev.labels))
    if generated and ev.generated is not None:
        s = (1 - generated) * s + generated * ev.generated
    return s


def dev_objective(keep_mask: np.ndarray, dev: dict[str, np.ndarray]) -> float:
    """Mean over languages of the dev split's token coverage."""
    covs = [float((c * keep_mask).sum() / c.sum()) for c in dev.values() if c.sum() > 0]
    return float(np.mean(covs)) if covs else 0.0


@dataclass
class Size:
    """How many ids: ``mined`` best-ranked ids (merge paths on top), or at most ``total`` ids in all."""

    mined: int | None = None
    total: int | None = None


def choose(
    score: np.ndarray, eligible: np.ndarray, base: set[int], paths: MergePaths, size: Size, what: str = "the corpus"
) -> tuple[set[int], list[int]]:
    """The keep set (``base`` = required ids, already closed over merge paths) and the picked ids."""
    order = ranked(score, eligible, base)
    if size.total is not None:
        return fill(order, base, paths, size.total)
    if size.mined is not None:
        if len(order) < size.mined:
            raise InputError(
                f"trim.target_vocab_size: {what} yields only {len(order):,} candidate ids besides the "
                f"{len(base)} required ones, fewer than {size.mined:,}; add corpus text or lower "
                "trim.target_vocab_size"
            )
        order = order[: size.mined]
    keep = set(base)
    for i in order.tolist():
        keep.update(paths.needed(i, keep))
    return keep, order.tolist()


def tune(ev: Evidence, cfg, base: set[int], paths: MergePaths, size: Size) -> tuple[dict, list[dict]]:
    """The blend weights with the best dev coverage (first in grid order on ties) and every trial."""
    strengths = list(dict.fromkeys(cfg.prior_strength)) if ev.words else [0.0]
    nums = list(dict.fromkeys(cfg.numbers)) if ev.numbers else [0.0]
    gens = list(dict.fromkeys(cfg.self_generated)) if ev.generated is not None else [0.0]
    trials, best = [], None
    for a, n, g in itertools.product(strengths, nums, gens):
        if a == 0 and n != nums[0]:
            continue  # no prior: the numbers' weight changes nothing
        score = blend(ev, ev.train, a, n, g)
        keep, _ = choose(score, score > 0, base, paths, size, "the mining part's train split")
        mask = np.zeros(ev.size, dtype=bool)
        mask[list(keep)] = True
        t = {
            "prior_strength": a,
            "numbers": n,
            "self_generated": g,
            "dev_token_coverage": dev_objective(mask, ev.dev),
            "kept": len(keep),
        }
        trials.append(t)
        if best is None or t["dev_token_coverage"] > best["dev_token_coverage"] + 1e-12:
            best = t
    return best, trials


def ablation(
    ev: Evidence,
    best: dict,
    base: set[int],
    paths: MergePaths,
    size: Size,
    heldout: dict[str, np.ndarray],
    baselines: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict:
    """Held-out token coverage (overall and per language) of the chosen blend, of the blend without
    each ingredient, and of plain corpus frequency, all at the same size: what each ingredient buys
    on text nobody tuned on. Measurement only: nothing here changes the selection."""
    full = ev.full()
    variants = {"chosen blend": (best["prior_strength"], best["numbers"], best["self_generated"])}
    if best["prior_strength"] > 0:
        variants["without the word-list prior"] = (0.0, 0.0, best["self_generated"])
    if best["numbers"] > 0:
        variants["without numbers"] = (best["prior_strength"], 0.0, best["self_generated"])
    if best["self_generated"] > 0:
        variants["without the model's own tokens"] = (best["prior_strength"], best["numbers"], 0.0)
    total = sum(heldout.values())
    out = {}

    def measure(keep: set[int]) -> dict:
        mask = np.zeros(ev.size, dtype=bool)
        mask[list(keep)] = True
        return {
            "kept": len(keep),
            "heldout_token_coverage": float((total * mask).sum() / total.sum()),
            "by_language": {k: float((v * mask).sum() / v.sum()) for k, v in heldout.items() if v.sum() > 0},
        }

    for name, (a, n, g) in variants.items():
        score = blend(ev, full, a, n, g)
        out[name] = {
            "prior_strength": a,
            "numbers": n,
            "self_generated": g,
            **measure(choose(score, score > 0, base, paths, size)[0]),
        }
    for name, (score, eligible) in baselines.items():
        try:
            out[name] = measure(choose(score, eligible, base, paths, size)[0])
        except InputError as e:  # a count-only ranking cannot fill a target_vocab_size
            out[name] = {"error": str(e)}
    return out
