"""Recipe of a vocabulary trim (``task: vocab-trim``): which corpus to mine, how many tokens to keep,
how to export and what to check. Same strictness and errors (one line each) as :mod:`tokexport.recipe`.

Imports only :mod:`tokexport.recipe_base` among the recipe modules: ``tokexport.recipe`` imports this
one (its union of recipe kinds), never the other way round."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, ValidationError, model_validator

from ..bounds import Batch, Count, Real, Threads
from ..errors import SchemaErrors
from ..recipe_base import (
    DeployConfig,
    ParityConfig,
    ProviderSettings,
    Strict,
    TargetedExport,
    allow_pickle_field,
    format_errors,
)


class WordfreqSource(Strict):
    lang: str = Field(description="wordfreq language code (e.g. en, fr, pt).")
    top_n: Count(1, 1_000_000) = Field(50000, description="Most frequent words taken from the list, 1..1000000.")
    words: Count(1, 1_000_000_000) = Field(
        1_000_000,
        description="Pseudo-corpus size, 1..1000000000: a word of frequency f counts max(1, round(f * words)) times, so list words rank by frequency next to running text.",
    )
    leading_space: bool = Field(
        True,
        description="Also count each word as ' word' (how it appears inside a sentence for BPE/SentencePiece vocabularies).",
    )
    capitalized: Real(0, 1) = Field(
        0.0,
        description="Also count each word capitalised ('Word', ' Word') with this share of its count, in [0, 1] (0: not at all): wordfreq lists are lower-case, but sentence starts and names are not (cased vocabularies).",
    )


class CorpusSource(Strict):
    lang: str | None = Field(
        None,
        description="Label for per-language coverage in the report (default: the dataset_build code, the wordfreq code, or 'text').",
    )
    path: str | list[str] | None = Field(
        None,
        min_length=1,
        description="Text file(s), folder(s) (every *.txt inside, recursively) or glob(s), relative to the recipe file; one document per non-empty line.",
    )
    dataset_build: str | None = Field(
        None, description="ISO 639-3 code: every text file of the dataset-build package's dataset_build/data/<code>/."
    )
    wordfreq: WordfreqSource | None = Field(
        None,
        description="A wordfreq top-n word list (mining only: a word list is not running text, so it never enters the held-out part).",
    )

    @model_validator(mode="after")
    def _one_kind(self):
        given = [k for k in ("path", "dataset_build", "wordfreq") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "each corpus source needs exactly one of path, dataset_build, wordfreq"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def label(self) -> str:
        if self.lang:
            return self.lang
        if self.dataset_build:
            return self.dataset_build
        if self.wordfreq:
            return self.wordfreq.lang
        return "text"


class CorpusConfig(Strict):
    sources: list[CorpusSource] = Field(
        min_length=1, max_length=256, description="Where the text comes from, 1 to 256 sources; languages may be mixed."
    )
    heldout_fraction: Real(0, 1, lo_open=True, hi_open=True) = Field(
        0.2,
        description="Share of each running-text source's documents held out (never mined) for coverage and accuracy checks, in (0, 1).",
    )
    seed: Count(0, 2**32 - 1) = Field(0, description="Seed of the deterministic document split, 0..4294967295.")
    prefix: str = Field("", description="Text prepended to every document before tokenising (e5: 'passage: ').")


class SelfGenerated(Strict):
    """Decoders: mine the original model's own greedy continuations of mining-part documents too."""

    prompts: Count(1, 100_000) = Field(
        256,
        description="Mining-part documents (evenly spaced) whose beginnings the original model continues, 1..100000.",
    )
    prompt_tokens: Count(1, 1024) = Field(
        12,
        description="Tokens of each document used as the prompt, 1..1024 (documents not longer than this are skipped).",
    )
    max_new_tokens: Count(1, 1024) = Field(
        32, description="Greedy tokens generated per prompt, 1..1024 (stopped at EOS)."
    )
    weight: Count(1, 1_000_000) = Field(
        1, description="Each generated token counts this many times next to the corpus counts, 1..1000000."
    )
    batch: Count(1, 1024) = Field(16, description="Prompts generated together (left padding), 1..1024.")


class CoverageRanking(Strict):
    """How ``ranking: coverage`` blends its ingredients; every weight is chosen on a dev split of the
    mining part (never on held-out text)."""

    dev_fraction: Real(0, 1, lo_open=True, hi_open=True) = Field(
        0.2,
        description="Share of each language's mining documents held back as the dev split the blend is tuned on, in (0, 1); the final counts use the whole mining part.",
    )
    prior_strength: list[Real(0, 1e9)] = Field(
        default_factory=lambda: [0, 1e3, 1e4, 3e4, 1e5, 3e5],
        min_length=1,
        max_length=32,
        description="Candidates for the strength (in pseudo-tokens) of the word-list prior of each language: score = (corpus count + strength x word-list share) / (corpus tokens + strength), so a small corpus leans on the list more than a large one. 0: corpus only. Each value in [0, 1000000000].",
    )
    numbers: list[Real(0, 10)] = Field(
        default_factory=lambda: [0, 0.05, 0.2],
        min_length=1,
        max_length=32,
        description="Candidates for the weight of the integers 0..2100 (wordfreq's estimated frequencies, with and without a leading space) inside each language's word-list prior, relative to the words; each in [0, 10].",
    )
    self_generated: list[Real(0, 1)] = Field(
        default_factory=lambda: [0, 0.1, 0.3],
        min_length=1,
        max_length=32,
        description="Decoders with trim.self_generated: candidates for the share of the score given to the model's own greedy tokens, each in [0, 1].",
    )


class TrimConfig(Strict):
    min_frequency: Count(1, 1_000_000_000) = Field(
        2,
        description="ranking: frequency: mined ids seen fewer times in the mining part are dropped, 1..1000000000 (the reference uses 2). ranking: coverage ranks every id with any evidence and ignores it.",
    )
    target_vocab_size: Count(1, 10_000_000) | None = Field(
        None,
        description="Keep this many mined ids (best ranked first), 1..10000000; null keeps every id reaching min_frequency. The corpus must yield at least this many. Special, required and tokens_to_keep ids (and BPE merge paths) come on top. Not with max_params/max_bytes.",
    )
    max_params: Count(1, 10**12) | None = Field(
        None,
        description="Parameter budget of the trimmed model, 1..1000000000000: the vocabulary is as large as fits (required ids, best-ranked ids and their BPE merge paths, counted exactly). Not with target_vocab_size.",
    )
    max_bytes: Count(1, 10**13) | None = Field(
        None,
        description="Byte budget of the trimmed model's parameters at trim.precision, 1..10000000000000 (with max_params too, the tighter one counts). Not with target_vocab_size.",
    )
    precision: Literal["fp32", "fp16", "bf16", "int8"] = Field(
        "fp32",
        description="Bytes per parameter max_bytes counts (fp32: 4, fp16/bf16: 2, int8: 1); the exported ONNX is fp32.",
    )
    ranking: Literal["frequency", "coverage"] = Field(
        "frequency",
        description="frequency: mined ids by count in the mining part, most frequent first (vocabtrimmer). coverage: by expected held-out coverage — per language, corpus counts smoothed with the language's word-list prior (wordfreq sources, plus numbers), and the model's own tokens for decoders — with the blend tuned on a dev split of the mining part. Needs a size (target_vocab_size, max_params or max_bytes).",
    )
    coverage: CoverageRanking = Field(
        default_factory=CoverageRanking, description="ranking: coverage: the ingredient weights tried on the dev split."
    )
    keep_file: str | None = Field(
        None,
        description="Keep exactly these vocabulary entries (relative to the recipe file): one token string per line as tokenizer.json spells it, or one original id per line (a file whose every line is a decimal number is read as ids), e.g. keep_ids.txt of a previous run. Required ids (special, config, unk, byte symbols) and BPE merge paths are added and listed in the report. Not with target_vocab_size, max_params, max_bytes, self_generated or ranking: coverage.",
    )
    tokens_to_keep: list[str] = Field(
        default_factory=list, description="Vocabulary entries (token strings, as in tokenizer.json) always kept."
    )
    tokens_to_keep_file: str | None = Field(
        None, description="File with one vocabulary entry per line, always kept (relative to the recipe file)."
    )
    self_generated: SelfGenerated | None = Field(
        None,
        description="Decoders only: also count the tokens the original model generates greedily from the beginnings of mining-part documents (what the model writes, not only what people write), so that fewer greedy generations reach a dropped token. Uses the mining part only: held-out text and verify.generation prompts stay unseen.",
    )
    drop_special: str | None = Field(
        None,
        description="Regular expression (full match) of special tokens that may be dropped, e.g. Gemma's '<unused[0-9]+>' placeholders; special tokens are kept otherwise, and those named by the config or the post-processor always.",
    )

    @model_validator(mode="after")
    def _pattern(self):
        if self.target_vocab_size is not None and (self.max_params is not None or self.max_bytes is not None):
            raise ValueError("give either target_vocab_size or a budget (max_params / max_bytes), not both")
        if self.keep_file is not None:
            clash = [
                k
                for k in ("target_vocab_size", "max_params", "max_bytes", "self_generated")
                if getattr(self, k) is not None
            ] + (["ranking: coverage"] if self.ranking == "coverage" else [])
            if clash:
                raise ValueError(f"keep_file keeps exactly the listed ids; remove {', '.join(clash)}")
        if (
            self.ranking == "coverage"
            and self.target_vocab_size is None
            and self.max_params is None
            and self.max_bytes is None
        ):
            raise ValueError(
                "ranking: coverage ranks every id with any evidence; give a size: target_vocab_size, "
                "max_params or max_bytes"
            )
        if self.drop_special is not None:
            try:
                re.compile(self.drop_special)
            except re.error as e:
                raise ValueError(f"drop_special: not a regular expression ({e})") from None
        return self

    def summary(self) -> str:
        """What the trim keeps, in a few words (`tokexport recipes list`)."""
        if self.keep_file:
            return f"keep the ids listed in {self.keep_file}"
        budget = [
            x
            for x in (
                f"{self.max_params:,} parameters" if self.max_params is not None else "",
                f"{self.max_bytes:,} bytes at {self.precision}" if self.max_bytes is not None else "",
            )
            if x
        ]
        if budget:
            return f"as many ids as fit in {' and '.join(budget)} ({self.ranking} ranking)"
        how = f"{self.ranking} ranking" if self.ranking == "coverage" else f"min frequency {self.min_frequency}"
        return f"keep {self.target_vocab_size or 'all'} mined ids ({how})"


class VocabExportConfig(TargetedExport):
    seq_len: Count(2, 8192) = Field(
        128,
        description="Static sequence length of input_ids/attention_mask, 2..8192 (inputs are padded/truncated to it).",
    )
    batch: Batch(1024) = Field(1, description="Fixed batch size, 1..1024, or 'dynamic'.")
    pooling: Literal["mean", "cls"] = Field(
        "mean",
        description="Encoders: pooled embedding output (mean over attention_mask, or the first token), L2-normalised.",
    )


class GenerationCheck(Strict):
    prompts: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1,
        max_length=1024,
        description="Decoders: prompts generated greedily by the original and the trimmed model; 1 to 1024 non-empty strings.",
    )
    max_new_tokens: Count(1, 256) = Field(16, description="1..256.")
    min_exact_match: Real(0, 1) = Field(
        1.0, description="Share of prompts whose generations must be identical, in [0, 1]."
    )


class VocabAccuracyConfig(Strict):
    samples: Count(1, 4096) = Field(
        64, description="Held-out documents used by the accuracy checks (evenly spaced), 1..4096."
    )
    max_abs_diff: Real(0, 1, lo_open=True) = Field(
        1e-5,
        description="Encoders: max |trimmed - original| on in-vocabulary held-out text (hidden states and embedding), both in PyTorch from the saved checkpoints; finite, in (0, 1].",
    )
    min_cosine: Real(-1, 1) = Field(
        0.95,
        description="Encoders: mean cosine between trimmed and original embeddings on all held-out documents (out-of-vocabulary text included); in [-1, 1].",
    )
    min_top1_agreement: Real(0, 1) = Field(
        0.95, description="Decoders: next-token argmax agreement on in-vocabulary held-out text; in [0, 1]."
    )
    min_token_coverage: Real(0, 1) | None = Field(
        None,
        description="Smallest share of the held-out text's original tokens that must be kept, overall and (with several languages) in each language; in [0, 1]. null: reported, not gated.",
    )
    max_perplexity_increase: Real(0, 100) = Field(
        0.05,
        description="Decoders: relative increase of perplexity per character on all held-out text allowed; finite, in [0, 100].",
    )


class VocabVerifyConfig(Strict):
    parity: ParityConfig = Field(default_factory=lambda: ParityConfig(samples=4))
    accuracy: VocabAccuracyConfig = VocabAccuracyConfig()
    generation: GenerationCheck | None = Field(
        None, description="Decoders: greedy generation check (required for decoders)."
    )


class VocabBenchConfig(ProviderSettings):
    enabled: bool = True
    warmup: Count(0, 1000) = Field(2, description="Untimed forward passes per graph first, 0..1000.")
    repeats: Count(1, 10000) = Field(
        10, description="Timed forward passes per graph, 1..10000 (baseline and trimmed alternate)."
    )
    threads: Threads = Field(
        None, description="onnxruntime intra-op threads, 1..4 x CPU cores of this machine; default (null): all cores."
    )


class VocabRecipe(Strict):
    name: str | None = Field(None, description="Free-form name shown in reports.")
    description: str | None = None
    task: Literal["vocab-trim"] = Field(
        description="vocab-trim: drop vocabulary entries a target language does not use."
    )
    model: str = Field(
        description="Bundled model name (see `tokexport models list`), or a local Hugging Face directory (relative to this file)."
    )
    allow_pickle: bool = allow_pickle_field()
    architecture: Literal["auto", "encoder", "decoder"] = Field(
        "auto",
        description="encoder: hidden states + pooled embedding; decoder: causal-LM logits. auto: decoder when config.architectures names a *ForCausalLM class.",
    )
    corpus: CorpusConfig
    trim: TrimConfig = TrimConfig()
    export: VocabExportConfig = VocabExportConfig()
    verify: VocabVerifyConfig = VocabVerifyConfig()

    @classmethod
    def listing(cls, data: dict) -> tuple[str, str]:
        """(method, what it keeps) of a recipe mapping for `tokexport recipes list`, from its ``trim`` alone (a
        recipe that does not validate as a whole still lists)."""
        trim = data.get("trim") if data.get("trim") is not None else {}
        try:
            return data.get("task", "vocab-trim"), TrimConfig.model_validate(trim).summary()
        except ValidationError:
            return data.get("task", "vocab-trim"), "(trim does not validate: `tokexport convert` says why)"

    bench: VocabBenchConfig = VocabBenchConfig()
    deploy: DeployConfig = DeployConfig()


def format_vocab_errors(path: str, errors, data) -> str:
    """Every error of a vocab-trim recipe, one line each naming the file and the field, in document
    order (``errors``: pydantic's error dicts, their ``loc`` relative to VocabRecipe)."""
    return format_errors(path, errors, data, VocabRecipe)


def format_vocab_error(path: str, err: ValidationError, data=None) -> str:
    """The errors of ``VocabRecipe.model_validate``, one line each, like tokexport.recipe.format_error."""
    return format_vocab_errors(path, err.errors(), data)


def validate_vocab_recipe(path: str, data: dict) -> VocabRecipe:
    try:
        return VocabRecipe.model_validate(data)
    except ValidationError as e:
        raise SchemaErrors(format_vocab_error(path, e, data)) from None
