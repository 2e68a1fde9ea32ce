"""Vocabulary trimming (recipe `task: vocab-trim`): mine the ids a target corpus uses, cut the
tokenizer and every vocabulary tensor down to them, save and reload the trimmed checkpoint (every
tensor checked against the expected slice), then export the trimmed graph (model.onnx, trimmed ids)
and the untouched one (baseline.onnx, original ids) at a static sequence length.

Accuracy is always against the original model with its own tokenizer, on held-out corpus text —
encoders: exact outputs on in-vocabulary text and embedding cosine on all of it; decoders: identical
greedy generations (and every difference explained by a dropped token), next-token top-1 agreement
and perplexity per character. Every bad input is found in :meth:`VocabTrim.load`, before the
staging directory exists; the trimmed checkpoint is written into it (``model/``) during export."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import weights_kwargs
from ..errors import InputError
from ..files import check_model_dir, read_json, read_text, stat_regular
from ..stages import metric as MC
from ..stages.compare import parity as compare_outputs
from ..stages.runners import OrtRunner, TorchRunner, run_rows
from ..vocab import rank as R
from ..vocab import verify as V
from ..vocab.corpus import Mined, count_ids, coverage, encode_all, load_corpus, mine
from ..vocab.export import INPUTS, export_text_onnx, graph_for
from ..vocab.keepfile import check_keep_file, read_keep_file, write_keep_ids
from ..vocab.keepfile import resolve as resolve_keep_file
from ..vocab.model import (
    ID_MAP,
    config_ids,
    count_params,
    expected_state,
    remap_config,
    save_trimmed,
    trim_model,
    verify_tensors,
    vocab_tensors,
)
from ..vocab.selfgen import self_generated_counts
from ..vocab.tokenizer import (
    BYTE_FALLBACK_TOKENS,
    complete_keep,
    inspect_tokenizer,
    trim_state,
    write_tokenizer_files,
)
from .base import TASKS, Graphs, ParityCase, Stages, Task

MODEL_DIR = "model"  # the ready-to-run trimmed model folder inside the output directory
KEEP_LIST = "keep_ids.txt"  # the kept original ids, one per line: trim.keep_file reads it back


# ---------------------------------------------------------------------------------------------- inputs


def resolve_model_dir(name: str, base_dir: Path) -> tuple[Path, str]:
    """The recipe's model as a local Hugging Face directory: a bundled model, or a path (relative to
    the recipe file)."""
    from ..zoo import resolve_bundled

    bundled = resolve_bundled(name)
    if bundled is not None:
        return Path(bundled), "bundled"
    p = Path(name).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not (p / "config.json").is_file():
        raise InputError(f"model: {name!r} is neither a bundled model (`tokexport models list`) nor a local Hugging "
                         f"Face directory with config.json ({p})")
    return p, "local"


def architecture_of(recipe, config) -> str:
    if recipe.architecture != "auto":
        return recipe.architecture
    archs = getattr(config, "architectures", None) or []
    return "decoder" if any(a.endswith("ForCausalLM") for a in archs) else "encoder"


def load_checkpoint(path: Path, architecture: str):
    """The checkpoint in float32 with eager attention, and the seconds it took; InputError when it
    cannot be loaded as that architecture or lacks tensors (which would be randomly initialised)."""
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # length warnings of long corpus lines, init notes: the report says what matters
    cls = AutoModelForCausalLM if architecture == "decoder" else AutoModel
    t0 = time.perf_counter()
    kwargs = {"dtype": torch.float32, "attn_implementation": "eager", "output_loading_info": True,
              **weights_kwargs(path)}  # safetensors only, unless the recipe allows pickle (tokexport.checkpoints)
    try:
        model, info = cls.from_pretrained(path, **kwargs)
        missing = list(info.get("missing_keys") or [])
        if missing and all(k.startswith("pooler.") for k in missing):
            # a BERT-style encoder saved without its (unused) pooler: build it without one instead
            # of carrying a randomly initialised pooler into the trimmed checkpoint
            model, info = cls.from_pretrained(path, add_pooling_layer=False, **kwargs)
            missing = list(info.get("missing_keys") or [])
    except (ValueError, TypeError) as e:
        raise InputError(f"model {path}: cannot load as {'a causal LM' if architecture == 'decoder' else 'an encoder'} "
                         f"({str(e).splitlines()[0][:200]})") from None
    if missing:
        raise InputError(f"model {path}: the checkpoint lacks {len(missing)} tensors the model needs (e.g. {missing[0]}); "
                         "they would be randomly initialised")
    return model.eval(), time.perf_counter() - t0


def _tokens_file(recipe, base_dir: Path) -> Path:
    """trim.tokens_to_keep_file, resolved against the recipe's folder; InputError unless a regular file."""
    p = Path(recipe.trim.tokens_to_keep_file).expanduser()
    p = p if p.is_absolute() else base_dir / p
    stat_regular(p, "token list", missing="does not exist", label="trim.tokens_to_keep_file")
    return p


def tokens_to_keep(recipe, base_dir: Path, lookup: dict[str, int]) -> list[int]:
    """The ids of trim.tokens_to_keep and trim.tokens_to_keep_file (each must be a vocabulary entry)."""
    entries = [("trim.tokens_to_keep", t) for t in recipe.trim.tokens_to_keep]
    if recipe.trim.tokens_to_keep_file:
        p = _tokens_file(recipe, base_dir)
        entries += [(f"trim.tokens_to_keep_file ({p.name})", line)
                    for line in read_text(p, "token list", label="trim.tokens_to_keep_file").splitlines() if line.strip()]
    ids = []
    for where, tok in entries:
        if tok not in lookup:
            raise InputError(f"{where}: {tok!r} is not an entry of the tokenizer's vocabulary")
        ids.append(lookup[tok])
    return ids


def required_ids(recipe, info, lookup: dict[str, int], model, keep_user: list[int]
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
    named = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
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
    return {"path": str(kl.path), "format": kl.format, "entries": kl.entries, "listed_ids": len(listed),
            "kept": len(keep), "added_total": sum(len(v) for v in added.values()), "added": added}


def evenly(items: list, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def rows_of(feed: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """``n`` rows of a text feed (its first rows, repeated cyclically when it has fewer)."""
    return {k: np.ascontiguousarray(np.resize(v, (n, *v.shape[1:]))) for k, v in feed.items()}


def output_diffs(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, dict]:
    """Per output: max and mean |got - ref| at real positions (the pooled embedding in full)."""
    res = compare_outputs(got, ref, 1.0, 1.0, mask, unmasked=("sentence_embedding",), agreement=())
    return {k: ({"max_abs_diff": o["max_abs_diff"], "mean_abs_diff": o["mean_abs_diff"]} if "max_abs_diff" in o
                else {"max_abs_diff": float("inf"), "mean_abs_diff": float("inf"), "error": o.get("error")})
            for k, o in res["outputs"].items()}


# ------------------------------------------------------------------------------------------------ task


@TASKS.register
class VocabTrim(Task):
    kind = "vocab-trim"
    recipe_tasks = ("vocab-trim",)
    extra_outputs = ", model/ (trimmed checkpoint, tokenizer, id map)"


    @property
    def fixed_batch(self) -> int | None:
        """The graphs' batch (None for a dynamic batch axis)."""
        b = self.recipe.export.batch
        return None if b == "dynamic" else int(b)

    @property
    def export_batch(self) -> int:
        return self.fixed_batch or 1

    # ---- load: inputs (every check that can fail on a bad recipe), then mining and the keep set
    def load(self, stages: Stages) -> None:
        # the recipe's own input files first, by the reading rules (a FIFO, a device, a missing file: one line
        # now, not after the model and the corpus loaded)
        if self.recipe.trim.keep_file is not None:
            check_keep_file(resolve_keep_file(self.recipe.trim.keep_file, self.base_dir), read=False)
        if self.recipe.trim.tokens_to_keep_file:
            _tokens_file(self.recipe, self.base_dir)
        from transformers import AutoConfig, AutoTokenizer

        recipe, ver = self.recipe, self.recipe.verify
        with stages.stage("load"):
            model_dir, self.source_kind = resolve_model_dir(recipe.model, self.base_dir)
            check_model_dir(model_dir)  # regular files only: a FIFO would hang transformers
            weights_kwargs(model_dir)  # a pickle-only checkpoint without allow_pickle: refused now, not after mining
            read_json(model_dir / "config.json", "model file", finite=True)  # a FIFO, a NaN, a key twice: one line
            config = AutoConfig.from_pretrained(model_dir)
            architecture = architecture_of(recipe, config)
            if architecture == "encoder" and recipe.trim.self_generated is not None:
                raise InputError("trim.self_generated: only decoders generate text; remove it for an encoder")
            if architecture == "decoder" and ver.generation is None:
                raise InputError("verify.generation: required for a decoder (prompts generated by the original and the "
                                 "trimmed model)")
            tok = AutoTokenizer.from_pretrained(model_dir)
            if not getattr(tok, "is_fast", False) or not hasattr(tok, "backend_tokenizer"):
                raise InputError(f"model {model_dir}: tokenizer {type(tok).__name__} has no tokenizers (fast) backend; "
                                 "vocabulary trimming edits tokenizer.json")
            state = json.loads(tok.backend_tokenizer.to_str())
            info = inspect_tokenizer(state)
            corpus = load_corpus(recipe.corpus, self.base_dir)
            heldout = corpus.heldout_docs()
            if not heldout:
                raise InputError("corpus: no running text to hold out (word lists are mining-only); add a path or "
                                 "dataset_build source")
            lookup = dict(tok.backend_tokenizer.get_vocab(with_added_tokens=True))
            keep_user = tokens_to_keep(recipe, self.base_dir, lookup)
            model, load_s = load_checkpoint(model_dir, architecture)
            rows = model.get_input_embeddings().weight.shape[0]
            if info.vocab_size > rows:
                raise InputError(f"model {model_dir}: tokenizer emits ids up to {info.vocab_size - 1} but the embedding "
                                 f"has {rows} rows")
            vt = vocab_tensors(model, rows)

        with stages.stage("mine"):
            def encode_special(texts):
                return tok(texts, add_special_tokens=True)["input_ids"]

            def encode_plain(texts):
                return tok(texts, add_special_tokens=False)["input_ids"]

            trim = recipe.trim
            required, dropped = required_ids(recipe, info, lookup, model, keep_user)
            forced = {i for ids in required.values() for i in ids}
            mining_rows = {lang: encode_all(encode_special, docs) for lang, docs in corpus.mining.items()}
            mining_ids = [ids for rs in mining_rows.values() for ids in rs]
            paths = R.MergePaths(state)
            base = {int(i) for i in complete_keep(state, forced)[0]}
            budget = R.budget_of(trim, count_params(model), rows, per_token_params(model, vt), len(base))
            size = R.Size(mined=trim.target_vocab_size, total=budget.max_tokens if budget else None)
            pad_gen = tok.pad_token_id if tok.pad_token_id is not None else (config.pad_token_id or 0)
            extra, self_gen, ranking, keep_list, weighted_rows = None, None, None, None, None
            if trim.keep_file is not None:
                kl = read_keep_file(trim.keep_file, self.base_dir, lookup, info.vocab_size)
                picks = [int(i) for i in kl.ids]
                mined = Mined(counts=None, selected=np.array(sorted(picks), dtype=np.int64), eligible=len(picks),
                              mining_tokens=sum(len(r) for r in mining_ids))
                keep_list = kl
            elif trim.ranking == "coverage":
                cfg = trim.coverage
                weighted_rows = {lang: encode_all(encode_plain, [t for t, _ in entries])
                                 for lang, entries in corpus.weighted.items()}
                ev, dev_masks = R.gather_evidence(corpus, mining_rows, encode_plain, rows, cfg.dev_fraction,
                                                  recipe.corpus.seed, any(x > 0 for x in cfg.numbers), weighted_rows)
                if trim.self_generated is not None:  # prompts from the train split only: the dev split stays unseen
                    train_rows = [r for lang, rs in mining_rows.items() for r, dev in zip(rs, dev_masks[lang]) if not dev]
                    extra, self_gen = self_generated_counts(model, trim.self_generated, train_rows, rows, pad_gen)
                    ev.generated = extra.astype(np.float64) / max(1, extra.sum()) if extra.sum() else None
                best, trials = R.tune(ev, cfg, base, paths, size)
                score = R.blend(ev, ev.full(), best["prior_strength"], best["numbers"], best["self_generated"])
                _, picks = R.choose(score, score > 0, base, paths, size)
                mined = Mined(counts=None, selected=np.array(sorted(picks), dtype=np.int64), eligible=int((score > 0).sum()),
                              mining_tokens=sum(len(r) for r in mining_ids))
                ranking = {"method": "coverage", "chosen": best, "dev_documents": ev.dev_documents,
                           "dev_fraction": cfg.dev_fraction, "trials": trials,
                           "note": "blend weights chosen by token coverage of a dev split of the mining documents "
                                   "(mined from the rest) at the recipe's size; held-out text is never used to choose"}
                self._rank_ctx = (ev, best)
            else:
                if trim.self_generated is not None:
                    extra, self_gen = self_generated_counts(model, trim.self_generated, mining_ids, rows, pad_gen)
                if budget is None:
                    mined = mine(corpus, encode_special, encode_plain, rows, trim, forced, extra)
                else:
                    counts = count_ids(corpus, encode_special, encode_plain, rows, extra, mining_rows)
                    if counts.sum() == 0:
                        raise InputError("corpus: the mining part tokenises to no tokens at all; give text in the "
                                         "target language")
                    eligible = counts >= trim.min_frequency
                    _, picks = R.choose(counts.astype(np.float64), eligible, base, paths, size)
                    mined = Mined(counts=counts, selected=np.array(sorted(picks), dtype=np.int64),
                                  eligible=int(eligible.sum()), mining_tokens=int(counts.sum()))
                ranking = {"method": "frequency", "min_frequency": trim.min_frequency}
            keep, closure_added = complete_keep(state, forced | {int(i) for i in mined.selected})
            if budget is not None and len(keep) > budget.max_tokens:  # cannot happen: fill() counts merge paths
                raise AssertionError(f"budget overrun: {len(keep)} > {budget.max_tokens}")
            keep_mask = np.zeros(rows, dtype=bool)
            keep_mask[keep] = True
            old2new = np.full(rows, -1, dtype=np.int64)
            old2new[keep] = np.arange(len(keep))
            texts = [d for _, d in heldout]
            orig_ids = encode_all(encode_special, texts)
            in_vocab = [i for i, ids in enumerate(orig_ids) if keep_mask[np.asarray(ids, dtype=np.int64)].all()]
            if not in_vocab and keep_list is None:
                raise InputError("corpus: no held-out sentence is fully inside the kept vocabulary, so exactness cannot "
                                 "be checked; lower trim.min_frequency or raise trim.target_vocab_size")
            # (a keep_file vocabulary that covers no held-out sentence is the user's choice: the exactness
            # metrics then fail, exit 4, instead of refusing the input)
            self.mining_cov = coverage(mining_ids, keep_mask)
            self.heldout_counts = {}
            for lang in sorted({lang for lang, _ in heldout}):
                ids = [t for (lg, _), row in zip(heldout, orig_ids) if lg == lang for t in row]
                self.heldout_counts[lang] = np.bincount(np.asarray(ids, dtype=np.int64), minlength=rows)[:rows]
            if ranking is not None and ranking["method"] == "coverage":
                ev, best = self._rank_ctx
                plain = count_ids(corpus, encode_special, encode_plain, rows, None, mining_rows, weighted_rows)
                corpus_only = sum((c for c in ev.full().values()), np.zeros(rows))
                ranking["heldout_ablation"] = R.ablation(
                    ev, best, base, paths, size, self.heldout_counts,
                    {"corpus counts only (vocabtrimmer, min_frequency)": (corpus_only, corpus_only >= trim.min_frequency),
                     "ranking: frequency (corpus + word-list pseudo-counts)": (plain.astype(np.float64),
                                                                              plain >= trim.min_frequency)})
                del self._rank_ctx
            if keep_list is not None:
                self.keep_list_info = keep_list_report(keep_list, keep, required, lookup)
            else:
                self.keep_list_info = None
            self.budget, self.ranking = budget, ranking

        self.model_dir, self.config, self.architecture = model_dir, config, architecture
        self.tok, self.state, self.info, self.corpus, self.heldout, self.lookup = tok, state, info, corpus, heldout, lookup
        self.model, self.load_s, self.rows, self.vt = model, load_s, rows, vt
        self.required, self.dropped, self.self_gen, self.mined = required, dropped, self_gen, mined
        self.keep, self.closure_added, self.keep_mask, self.old2new = keep, closure_added, keep_mask, old2new
        self.texts, self.orig_ids, self.in_vocab = texts, orig_ids, in_vocab
        self.pad_old = tok.pad_token_id if tok.pad_token_id is not None else (config.pad_token_id or 0)

    # ---- export: surgery, save, reload, verify every tensor; held-out text through both tokenizers; the graphs
    def export(self, tmp: Path, stages: Stages) -> Graphs:
        from transformers import AutoTokenizer

        ex, keep, old2new = self.recipe.export, self.keep, self.old2new
        out_model = tmp / MODEL_DIR
        with stages.stage("surgery"):
            new_state, self.tok_stats = trim_state(self.state, keep)
            trimmed = trim_model(self.model, keep, self.vt)
            self.config_changes = remap_config(trimmed.config, old2new, "config")
            self.gen_changes = remap_config(trimmed.generation_config, old2new, "generation_config") \
                if getattr(trimmed, "generation_config", None) is not None else {}
            out_model.mkdir()
            save_trimmed(trimmed, out_model, keep)
            write_keep_ids(tmp / KEEP_LIST, keep)
            self.tok_notes = write_tokenizer_files(self.model_dir, out_model, new_state, old2new)
            del trimmed
            self.reloaded, self.reload_s = load_checkpoint(out_model, self.architecture)
            self.tok_new = AutoTokenizer.from_pretrained(out_model)
            self.checkpoint = verify_tensors(self.reloaded, expected_state(self.model, keep, self.vt), self.vt)

        with stages.stage("tokenize held-out"):
            tok_new, orig_ids, keep_mask = self.tok_new, self.orig_ids, self.keep_mask
            self.new_ids = encode_all(lambda t: tok_new(t, add_special_tokens=True)["input_ids"], self.texts)
            self.per_lang = {}
            for lang in sorted({lang for lang, _ in self.heldout}):
                idx = [i for i, (lg, _) in enumerate(self.heldout) if lg == lang]
                self.per_lang[lang] = coverage([orig_ids[i] for i in idx], keep_mask)
            self.held_cov = coverage(orig_ids, keep_mask)
            unk_old = self.info.required.get("unk", [None])[0]
            unk_new = int(old2new[unk_old]) if unk_old is not None else None
            byte_new = {int(old2new[self.lookup[t]]) for t in BYTE_FALLBACK_TOKENS
                        if t in self.lookup and keep_mask[self.lookup[t]]}
            self.oov = V.oov_behaviour(orig_ids, self.new_ids, keep_mask, unk_new, byte_new)
            self.remap = V.remap_mismatches(orig_ids, self.new_ids, keep_mask, old2new)
        self.pad_new = tok_new.pad_token_id if tok_new.pad_token_id is not None else int(old2new[self.pad_old])

        self.base_graph = graph_for(self.model, self.architecture, ex.pooling)
        self.new_graph = graph_for(self.reloaded, self.architecture, ex.pooling)
        par_idx = evenly(list(range(len(self.texts))), self.recipe.verify.parity.samples)
        self.feed_old = V.pad_rows([orig_ids[i] for i in par_idx], ex.seq_len, self.pad_old)
        self.feed_new = V.pad_rows([self.new_ids[i] for i in par_idx], ex.seq_len, self.pad_new)
        dynamic = self.fixed_batch is None
        model_path, base_path = tmp / "model.onnx", tmp / "baseline.onnx"
        with stages.stage("export", total=2) as advance:
            example = {k: torch.from_numpy(v) for k, v in rows_of(self.feed_new, self.export_batch).items()}
            new_info = export_text_onnx(self.new_graph, example, model_path, ex.opset, dynamic)
            advance()
            example = {k: torch.from_numpy(v) for k, v in rows_of(self.feed_old, self.export_batch).items()}
            base_info = export_text_onnx(self.base_graph, example, base_path, ex.opset, dynamic)
            advance()
        return Graphs(model_path, base_path, new_info, base_info)

    # ---- parity: each graph against its own PyTorch module, each on its own ids
    def _torch(self, graph) -> TorchRunner:
        """The PyTorch twin of an exported graph, run in the graph's batch (run_rows pads the last chunk
        of a fixed batch like it does for ONNX Runtime, so both see the same batches)."""
        r = TorchRunner(graph, INPUTS, output_names=graph.outputs)
        r.fixed_batch = self.fixed_batch
        return r

    def parity_cases(self, graphs: Graphs) -> dict[str, ParityCase]:
        threads = self.recipe.bench.threads
        return {"parity": ParityCase(graphs.model, self._torch(self.new_graph), self.feed_new,
                                     mask=self.feed_new["attention_mask"], unmasked=("sentence_embedding",),
                                     threads=threads),
                "parity_baseline": ParityCase(graphs.baseline, self._torch(self.base_graph), self.feed_old,
                                              mask=self.feed_old["attention_mask"], unmasked=("sentence_embedding",),
                                              threads=threads)}

    # ---- accuracy against the original
    def metrics(self, graphs: Graphs, stages: Stages) -> dict[str, dict]:
        threads = self.recipe.bench.threads
        t0 = time.perf_counter()
        new_ort = OrtRunner(graphs.model, threads)
        ort_load_new = time.perf_counter() - t0
        t0 = time.perf_counter()
        OrtRunner(graphs.baseline, threads)
        self.ort_load = {"onnx_original": time.perf_counter() - t0, "onnx_trimmed": ort_load_new}

        in_vocab_docs, bad = self.remap
        share = 1 - len(bad) / len(in_vocab_docs) if in_vocab_docs else 0.0
        ck = self.checkpoint
        metrics: dict[str, dict] = {
            "tokenizer_remap_exact": MC.metric(
                1.0, share, {"min": 1}, documents=len(in_vocab_docs), mismatched_documents=bad[:10],
                criterion="every in-vocabulary held-out sentence: the trimmed tokenizer gives the remapped original ids"),
            "checkpoint_tensors_exact": MC.metric(
                1.0, 1.0 if ck["passed"] else 0.0, {"min": 1}, mismatched=ck["mismatched"][:10], missing=ck["missing"][:10],
                criterion="every tensor equal to the expected slice after save/reload"),
        }
        if self.multilingual:
            bad_set = set(bad)
            for lang in self.per_lang:
                docs = [i for i in in_vocab_docs if self.heldout[i][0] == lang]
                metrics[f"tokenizer_remap_exact_{lang}"] = MC.info(
                    1 - sum(i in bad_set for i in docs) / len(docs) if docs else None, documents=len(docs))
        metrics |= self._coverage_metrics()
        if self.architecture == "encoder":
            metrics |= self._encoder_metrics(new_ort)
        else:
            metrics |= self._decoder_metrics()
        return metrics

    @property
    def multilingual(self) -> bool:
        return len(self.per_lang) > 1

    def _coverage_metrics(self) -> dict[str, dict]:
        min_cov = self.recipe.verify.accuracy.min_token_coverage
        hc = self.held_cov
        out = {"heldout_token_coverage": MC.metric(
            1.0, hc["token_coverage"], {"min": min_cov} if min_cov is not None else None, "higher",
            tokens=hc["tokens"], documents=hc["documents"], documents_fully_in_vocab=hc["documents_fully_in_vocab"],
            note="share of the held-out text's original tokens that are kept")}
        for lang, c in self.per_lang.items():
            detail = {"tokens": c["tokens"], "documents": c["documents"],
                      "documents_fully_in_vocab": c["documents_fully_in_vocab"]}
            if self.multilingual and min_cov is not None:  # each language must reach the bar, not only their mix
                out[f"heldout_token_coverage_{lang}"] = MC.metric(1.0, c["token_coverage"], {"min": min_cov}, "higher",
                                                                  **detail)
            else:
                out[f"heldout_token_coverage_{lang}"] = MC.info(c["token_coverage"], **detail)
        return out

    def _lang_rows(self, rows: list[int], n: int) -> list[int]:
        """``n`` rows evenly spaced, per language when there are several (each language gets ``n``)."""
        if not self.multilingual:
            return evenly(rows, n)
        out = []
        for lang in self.per_lang:
            out += evenly([i for i in rows if self.heldout[i][0] == lang], n)
        return sorted(out)

    def _encoder_metrics(self, new_ort: OrtRunner) -> dict[str, dict]:
        ex, acc = self.recipe.export, self.recipe.verify.accuracy
        orig_ids, new_ids = self.orig_ids, self.new_ids
        torch_base, torch_new = self._torch(self.base_graph), self._torch(self.new_graph)
        sel = self._lang_rows(self.in_vocab, acc.samples)
        out = {}
        if not sel:  # a keep_file vocabulary holding no held-out sentence: exactness cannot be shown
            out["in_vocab_max_abs_diff"] = MC.metric(
                0.0, float("inf"), {"max": acc.max_abs_diff}, "lower", documents=0,
                note="no held-out sentence is fully inside the kept vocabulary")
            out["in_vocab_onnx_max_abs_diff"] = MC.info(None, documents=0)
        else:
            fo = V.pad_rows([orig_ids[i] for i in sel], ex.seq_len, self.pad_old)
            fn = V.pad_rows([new_ids[i] for i in sel], ex.seq_len, self.pad_new)
            ref = run_rows(torch_base, fo)
            got = run_rows(torch_new, fn)
            diffs = output_diffs(got, ref, fo["attention_mask"])
            worst = max(d["max_abs_diff"] for d in diffs.values())
            masks_equal = bool(np.array_equal(fo["attention_mask"], fn["attention_mask"]))
            out["in_vocab_max_abs_diff"] = MC.metric(
                0.0, worst, {"max": acc.max_abs_diff}, "lower", documents=len(sel), outputs=diffs,
                attention_masks_equal=masks_equal,
                note="trimmed checkpoint (reloaded) with the trimmed tokenizer's ids vs the original with its own, PyTorch")
            if not masks_equal:  # the same text tokenised to another length: not the same computation
                out["in_vocab_max_abs_diff"]["passed"] = False
            onnx_diffs = output_diffs(run_rows(new_ort, fn), ref, fo["attention_mask"])
            out["in_vocab_onnx_max_abs_diff"] = MC.info(
                max(d["max_abs_diff"] for d in onnx_diffs.values()), outputs=onnx_diffs,
                note="model.onnx (onnxruntime) vs the original PyTorch model: includes ONNX Runtime rounding")
            if self.multilingual:  # exactness per language, on the same rows
                for lang in self.per_lang:
                    rows = [k for k, i in enumerate(sel) if self.heldout[i][0] == lang]
                    if not rows:
                        out[f"in_vocab_max_abs_diff_{lang}"] = MC.info(None, documents=0)
                        continue
                    d = output_diffs({k: v[rows] for k, v in got.items()}, {k: v[rows] for k, v in ref.items()},
                                     fo["attention_mask"][rows])
                    out[f"in_vocab_max_abs_diff_{lang}"] = MC.info(max(x["max_abs_diff"] for x in d.values()),
                                                                   documents=len(rows))
        sel = self._lang_rows(list(range(len(self.texts))), acc.samples)
        fo = V.pad_rows([orig_ids[i] for i in sel], ex.seq_len, self.pad_old)
        fn = V.pad_rows([new_ids[i] for i in sel], ex.seq_len, self.pad_new)
        e_old = run_rows(torch_base, fo)["sentence_embedding"]
        e_new = run_rows(new_ort, fn)["sentence_embedding"]
        cos = (e_old * e_new).sum(-1) / (np.linalg.norm(e_old, axis=-1) * np.linalg.norm(e_new, axis=-1))
        oov_rows = [k for k, i in enumerate(sel) if not self.keep_mask[np.asarray(orig_ids[i])].all()]
        out["heldout_embedding_cosine"] = MC.metric(
            1.0, float(cos.mean()), {"min": acc.min_cosine}, "higher", documents=len(sel), min=float(cos.min()),
            oov_documents=len(oov_rows), oov_mean=float(cos[oov_rows].mean()) if oov_rows else None,
            note="all held-out documents, out-of-vocabulary text included; trimmed = model.onnx")
        if self.multilingual:
            for lang in self.per_lang:
                rows = [k for k, i in enumerate(sel) if self.heldout[i][0] == lang]
                out[f"heldout_embedding_cosine_{lang}"] = MC.info(float(cos[rows].mean()) if rows else None,
                                                                  documents=len(rows))
        self.generations = None
        return out

    def _decoder_metrics(self) -> dict[str, dict]:
        ex, acc, g = self.recipe.export, self.recipe.verify.accuracy, self.recipe.verify.generation
        tok, tok_new, keep, keep_mask = self.tok, self.tok_new, self.keep, self.keep_mask
        orig_ids, new_ids, texts = self.orig_ids, self.new_ids, self.texts
        prompts_old = [tok(p, add_special_tokens=True)["input_ids"] for p in g.prompts]
        prompts_new = [tok_new(p, add_special_tokens=True)["input_ids"] for p in g.prompts]
        gen_old = V.greedy_generations(self.model, prompts_old, g.max_new_tokens, self.pad_old)
        gen_new = V.greedy_generations(self.reloaded, prompts_new, g.max_new_tokens, self.pad_new)
        gen_new_old = [keep[np.asarray(b, dtype=np.int64)].tolist() for b in gen_new]
        same = [a == b for a, b in zip(gen_old, gen_new_old)]
        prompt_kept = [bool(keep_mask[np.asarray(p)].all()) for p in prompts_old]
        share = sum(same) / len(same)
        out = {"generation_exact_match": MC.metric(
            1.0, share, {"min": g.min_exact_match}, "higher", prompts=len(same), prompts_in_vocab=sum(prompt_kept),
            max_new_tokens=g.max_new_tokens)}
        gens = []
        for p, a, b, bn, s, pk in zip(g.prompts, gen_old, gen_new_old, gen_new, same, prompt_kept):
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            kept = bool(at >= len(a) or keep_mask[a[at]])  # no original token there: unexplained
            gens.append({"prompt": p, "original": tok.decode(a), "trimmed": tok_new.decode(bn), "identical": s,
                         "prompt_in_vocab": pk, "first_difference": None if s else {
                             "position": at, "original_token": tok.convert_ids_to_tokens(a[at]) if at < len(a) else None,
                             "original_token_kept": kept}})
        self.generations = gens
        diverged = [gr for gr in gens if not gr["identical"]]
        explained = [gr for gr in diverged if not gr["prompt_in_vocab"] or not gr["first_difference"]["original_token_kept"]]
        value = len(explained) / len(diverged) if diverged else 1.0
        out["generation_differences_explained"] = MC.metric(
            1.0, value, {"min": 1}, "higher", differing=len(diverged), explained=len(explained),
            criterion="every difference starts where the original's token or prompt is not kept")
        sel = self._lang_rows(self.in_vocab, acc.samples)
        s_old = V.lm_scores(self.model, [orig_ids[i] for i in sel], ex.seq_len)
        s_new = V.lm_scores(self.reloaded, [new_ids[i] for i in sel], ex.seq_len)
        # (no rows: a keep_file vocabulary holding no held-out sentence; the agreement is then NaN and fails)
        agree = np.concatenate([np.zeros(0, bool)] + [a == keep[b] for (a, _), (b, _) in zip(s_old, s_new)])
        orig_top = np.concatenate([np.zeros(0, np.int64)] + [a for a, _ in s_old])
        on_kept = keep_mask[orig_top] if orig_top.size else np.zeros(0, bool)
        n_tok = sum(max(0, min(len(orig_ids[i]), ex.seq_len) - 1) for i in sel)
        ppl_old = float(np.exp(sum(n for _, n in s_old) / max(n_tok, 1)))
        ppl_new = float(np.exp(sum(n for _, n in s_new) / max(n_tok, 1)))
        out["next_token_top1_agreement"] = MC.metric(
            1.0, float(agree.mean()) if agree.size else float("nan"), {"min": acc.min_top1_agreement}, "higher", documents=len(sel),
            positions=int(agree.size), perplexity_in_vocab={"original": ppl_old, "trimmed": ppl_new},
            original_top1_kept=float(on_kept.mean()) if on_kept.size else None)
        kept_agree = float(agree[on_kept].mean()) if on_kept.any() else 1.0
        out["top1_agreement_where_kept"] = MC.metric(
            1.0, kept_agree, {"min": 0.999}, "higher", positions=int(on_kept.sum()),
            criterion="positions whose original top-1 is kept (rounding ties aside)")
        sel = evenly(list(range(len(texts))), acc.samples)
        nll_old = sum(n for _, n in V.lm_scores(self.model, [orig_ids[i] for i in sel], ex.seq_len))
        nll_new = sum(n for _, n in V.lm_scores(self.reloaded, [new_ids[i] for i in sel], ex.seq_len))
        chars = sum(len(texts[i]) for i in sel)
        pc_old, pc_new = float(np.exp(nll_old / chars)), float(np.exp(nll_new / chars))
        out["perplexity_per_char_increase"] = MC.metric(
            0.0, pc_new / pc_old - 1, {"max": acc.max_perplexity_increase}, "lower",
            perplexity_per_char={"original": pc_old, "trimmed": pc_new}, documents=len(sel),
            note="exp(NLL / characters) on all held-out documents, each model on its own tokenization "
                 "(documents truncated to export.seq_len tokens)")
        return out

    # ---- bench and deploy: each graph on its own ids
    def bench_feed(self, batch: int) -> dict[str, np.ndarray]:
        return rows_of(self.feed_new, batch)

    def bench_feeds(self, batch: int) -> dict[str, dict[str, np.ndarray]]:
        return {"baseline": rows_of(self.feed_old, batch), "model": rows_of(self.feed_new, batch)}

    def bench_batches(self) -> list[int]:
        return [self.export_batch]  # VocabBenchConfig has no batch_sizes: the graph's batch (1 for dynamic)

    def bench_extra(self, batches: dict) -> dict:
        out = {"seq_len": self.recipe.export.seq_len,
               "load_s": {"pytorch_original": self.load_s, "pytorch_trimmed": self.reload_s,
                          **(getattr(self, "ort_load", None) or {})}}
        if self.architecture == "decoder":
            rows, hidden = self.rows, self._hidden
            body = self._params_old - rows * hidden * (1 if self.vt.tied else 2)  # non-vocabulary parameters
            out["lm_head_share"] = {
                "original": rows * hidden / (rows * hidden + body),
                "trimmed": len(self.keep) * hidden / (len(self.keep) * hidden + body),
                "note": "analytic: head MACs / (head MACs + one MAC per non-vocabulary weight) per token, attention "
                        "scores excluded"}
        return out

    @property
    def _hidden(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def _params_old(self) -> int:
        if not hasattr(self, "_params_cache"):
            self._params_cache = (count_params(self.model), count_params(self.reloaded))
        return self._params_cache[0]

    def deploy_feed(self) -> dict[str, np.ndarray]:
        return rows_of(self.feed_new, self.export_batch)  # the trimmed model's ids (int64 input_ids, attention_mask)

    # ---- report
    def sections(self, graphs: Graphs) -> dict:
        recipe, ex = self.recipe, self.recipe.export
        params_old = self._params_old
        params_new = self._params_cache[1]
        b = "batch" if self.fixed_batch is None else self.fixed_batch
        return {
            "model": {"source": recipe.model, "source_kind": self.source_kind, "path": str(self.model_dir),
                      "architecture": self.architecture, "class": type(self.model).__name__,
                      "model_type": self.config.model_type, "params": params_old, "params_trimmed": params_new,
                      "embedding_rows": self.rows, "hidden_size": self._hidden, "tied_embeddings": self.vt.tied,
                      "tokenizer_class": type(self.tok).__name__},
            "tokenizer": {"model_type": self.info.model_type, "family": self.info.family,
                          "vocab_size": self.info.vocab_size, "vocab_size_trimmed": len(self.keep),
                          "oov_behaviour": self.info.oov_behaviour, "surgery": self.tok_stats, "files": self.tok_notes},
            "corpus": self.corpus.describe() | {"mining_tokens": self.mined.mining_tokens,
                                               "heldout_fraction": recipe.corpus.heldout_fraction,
                                               "seed": recipe.corpus.seed},
            "trim": {"kept": len(self.keep), "mined": len(self.mined.selected), "eligible": self.mined.eligible,
                     "min_frequency": recipe.trim.min_frequency, "target_vocab_size": recipe.trim.target_vocab_size,
                     "required": {k: len(v) for k, v in self.required.items()}, "special_dropped": len(self.dropped),
                     "bpe_closure_added": self.closure_added, "self_generated": self.self_gen,
                     "config_ids": self.config_changes, "generation_config_ids": self.gen_changes,
                     "ranking": self.ranking,
                     "budget": self.budget.describe(len(self.keep), self.held_cov["token_coverage"],
                                                    {k: v["token_coverage"] for k, v in self.per_lang.items()})
                     if self.budget is not None else None,
                     "keep_file": self.keep_list_info},
            "coverage": {"mining": self.mining_cov, "heldout": self.held_cov, "heldout_by_language": self.per_lang,
                         "heldout_oov": self.oov},
            "checkpoint": self.checkpoint,
            "export": {"opset": ex.opset, "exporter": graphs.model_info.exporter, "batch": ex.batch,
                       "seq_len": ex.seq_len, "target": ex.target, "trt_target": ex.trt_target,
                       "inputs": {n: [b, ex.seq_len] for n in INPUTS},
                       "outputs": graphs.model_info.output_shapes, "baseline_outputs": graphs.baseline_info.output_shapes},
            "artifacts_extra": {"model_dir": MODEL_DIR, "id_map": f"{MODEL_DIR}/{ID_MAP}", "keep_list": KEEP_LIST},
            "accuracy_extra": {
                "dataset": "held-out corpus text",
                "description": (f"{len(self.texts)} held-out documents of the corpus (never mined); original = the "
                                "unmodified PyTorch model with its own tokenizer; trimmed = the reloaded checkpoint "
                                "(PyTorch) or model.onnx (onnxruntime) with the trimmed tokenizer, as each metric says"),
                "generations": self.generations},
        }

    @classmethod
    def _size_rows(cls, r: dict) -> list[list[str]]:
        m, t, art = r["model"], r["tokenizer"], r["artifacts"]
        rows = [
            ["parameters", f"{m['params']:,}", f"{m['params_trimmed']:,}", f"{m['params_trimmed'] / m['params']:.3f}×"],
            ["vocabulary", f"{t['vocab_size']:,}", f"{t['vocab_size_trimmed']:,}",
             f"{t['vocab_size_trimmed'] / t['vocab_size']:.3f}×"],
            ["ONNX bytes", f"{art['baseline_onnx_bytes']:,}", f"{art['onnx_bytes']:,}",
             f"{art['onnx_bytes'] / art['baseline_onnx_bytes']:.3f}×"],
        ]
        b = r.get("bench")
        if b:
            for batch, row in b["batches"].items():
                rows.append([f"forward ms (batch {batch}, seq {b['seq_len']})", f"{row['baseline_ms']:.2f}",
                             f"{row['reduced_ms']:.2f}", f"{row['speedup']:.3f}× faster"])
            ls = b["load_s"]
            rows.append(["load s (PyTorch)", f"{ls['pytorch_original']:.2f}", f"{ls['pytorch_trimmed']:.2f}", ""])
            if "onnx_original" in ls:
                rows.append(["load s (onnxruntime session)", f"{ls['onnx_original']:.2f}", f"{ls['onnx_trimmed']:.2f}", ""])
            if "lm_head_share" in b:
                rows.append(["LM head share of MACs", _pct(b["lm_head_share"]["original"]),
                             _pct(b["lm_head_share"]["trimmed"]), ""])
        return rows

    @staticmethod
    def _coverage_rows(r: dict) -> list[list[str]]:
        c = r["coverage"]
        rows = [["mining part (running text)", f"{c['mining']['tokens']:,}", _pct(c["mining"]["token_coverage"]), "—"],
                ["held-out (all)", f"{c['heldout']['tokens']:,}", _pct(c["heldout"]["token_coverage"]),
                 f"{c['heldout']['documents_fully_in_vocab']}/{c['heldout']['documents']}"]]
        for lang, v in c["heldout_by_language"].items():
            rows.append([f"held-out {lang}", f"{v['tokens']:,}", _pct(v["token_coverage"]),
                         f"{v['documents_fully_in_vocab']}/{v['documents']}"])
        return rows

    @classmethod
    def markdown(cls, report: dict) -> list[str]:
        from ..stages.render import md_table

        m, t, tr, c, ck = report["model"], report["tokenizer"], report["trim"], report["coverage"], report["checkpoint"]
        oov, ex, art = c["heldout_oov"], report["export"], report["artifacts"]
        lines = [
            (f"- Trimmed: `{m['class']}` ({m['architecture']}, tied embeddings: {m['tied_embeddings']}); tokenizer "
             f"{t['model_type']} ({t['family']}), out-of-vocabulary text: {t['oov_behaviour']}"),
            (f"- Kept {tr['kept']:,} ids: {tr['mined']:,} " + (
                "listed in the keep file" if tr.get("keep_file") else
                f"ranked by expected coverage (of {tr['eligible']:,} with any evidence)"
                if (tr.get("ranking") or {}).get("method") == "coverage" else
                f"mined (of {tr['eligible']:,} seen ≥ {tr['min_frequency']} times; target {tr['target_vocab_size']})")
             + f"; required {json.dumps(tr['required'])}, BPE merge-path closure "
             f"+{tr['bpe_closure_added']}, special tokens dropped by pattern {tr['special_dropped']}"),
            f"- Config ids remapped: {json.dumps(tr['config_ids'])}; generation config: {json.dumps(tr['generation_config_ids'])}",
            (f"- Graphs: inputs input_ids/attention_mask [{ex['batch']}, {ex['seq_len']}], outputs "
             f"{json.dumps(ex['outputs'])}"),
            f"- `{art['model_dir']}/`: trimmed model (save_pretrained) and tokenizer; `{art['id_map']}`: new id → original id"
            + (f"; `{art['keep_list']}`: the kept original ids (reproduce this vocabulary with `trim.keep_file`)"
               if art.get("keep_list") else ""),
            *cls._trim_lines(tr),
            "",
            "## Size and speed (original → trimmed)",
            md_table(["", "original", "trimmed", "ratio"], cls._size_rows(report)),
            "",
            "## Coverage (original tokenization, share of tokens kept)",
            md_table(["text", "tokens", "token coverage", "sentences fully in vocabulary"], cls._coverage_rows(report)),
            "",
            (f"Held-out sentences with out-of-vocabulary pieces: {oov['documents']} ({oov['original_tokens']:,} tokens "
             f"originally, {oov['trimmed_tokens']:,} after trimming, {oov['unk_tokens']} unk, {oov['byte_tokens']} byte "
             "tokens)."),
            "",
            "## Checkpoint (save_pretrained → reload → every tensor vs the expected slice)",
            (f"- {ck['tensors']} tensors; mismatched {ck['mismatched'][:5]}, missing {ck['missing'][:5]}, unexpected "
             f"{ck['unexpected'][:5]}; tied after reload: {ck['tied_after_reload']} → {'PASS' if ck['passed'] else 'FAIL'}"),
        ]
        gens = report["accuracy"].get("generations")
        if gens:
            lines += ["", "## Greedy generations", md_table(
                ["prompt", "original", "trimmed", "first difference"],
                [[g["prompt"], g["original"], g["trimmed"], _first_difference(g)] for g in gens])]
        if t["files"]:
            lines += ["", "## Tokenizer files", *[f"- {n}" for n in t["files"]]]
        return lines

    @staticmethod
    def _trim_lines(tr: dict) -> list[str]:
        """Budget, ranking and keep-list lines of report.md (absent from reports of older runs)."""
        out = []
        b = tr.get("budget")
        if b:
            limit = " and ".join(x for x in (f"{b['max_params']:,} parameters" if b["max_params"] else "",
                                             f"{b['max_bytes']:,} bytes at {b['precision']}" if b["max_bytes"] else "") if x)
            cov = (f", held-out token coverage {_pct(b['heldout_token_coverage'])}"
                   if b.get("heldout_token_coverage") is not None else "")
            by_lang = b.get("heldout_token_coverage_by_language") or {}
            langs = f" ({', '.join(f'{k} {_pct(v)}' for k, v in by_lang.items())})" if len(by_lang) > 1 else ""
            out.append(f"- Budget {limit}: {b['fixed_params']:,} parameters outside the vocabulary + {b['params_per_token']} "
                       f"per id → at most {b['max_tokens']:,} ids; bought {b['kept']:,} ids = {b['params']:,} parameters "
                       f"({b['bytes']:,} bytes at {b['precision']}){cov}{langs}")
        r = tr.get("ranking")
        if r and r.get("method") == "coverage":
            c = r["chosen"]
            out.append(f"- Ranking: expected coverage; the dev split ({sum(r['dev_documents'].values())} mining documents) "
                       f"chose word-list prior strength {c['prior_strength']:g}, numbers {c['numbers']:g}, model's own "
                       f"tokens {c['self_generated']:g} (dev token coverage {_pct(c['dev_token_coverage'])}, "
                       f"{len(r['trials'])} blends tried)")
            abl = r.get("heldout_ablation") or {}
            if abl:
                out.append("- Held-out token coverage at the same size (measured after the choice, never used for it): "
                           + "; ".join(f"{k} {_pct(v['heldout_token_coverage'])}" if "heldout_token_coverage" in v
                                       else f"{k}: n/a" for k, v in abl.items()))
        k = tr.get("keep_file")
        if k:
            added = ", ".join(f"{reason} +{len(v)} ({', '.join(repr(x['token']) for x in v[:5])}"
                              f"{', …' if len(v) > 5 else ''})" for reason, v in k["added"].items())
            out.append(f"- Keep file `{k['path']}` ({k['format']}, {k['listed_ids']:,} ids): kept {k['kept']:,}; added for "
                       f"the tokenizer to stay valid: {added or 'nothing'}")
        return out

    @classmethod
    def console_lines(cls, report: dict) -> list[str]:
        out = ["original → trimmed: " + "; ".join(f"{name} {a} → {b}" + (f" ({ratio})" if ratio else "")
                                                  for name, a, b, ratio in cls._size_rows(report))]
        out.append("coverage: " + "; ".join(f"{name} {cov} of {tokens} tokens" + (f", {docs} sentences in vocabulary"
                                                                                if docs != "—" else "")
                                            for name, tokens, cov, docs in cls._coverage_rows(report)))
        ck = report["checkpoint"]
        out.append(f"checkpoint: {ck['tensors']} tensors after save/reload → {'PASS' if ck['passed'] else 'FAIL'}")
        gens = report["accuracy"].get("generations")
        if gens:
            out.append(f"greedy generations: {sum(g['identical'] for g in gens)}/{len(gens)} identical")
        return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _first_difference(g: dict) -> str:
    if g["identical"]:
        return "identical"
    d = g["first_difference"]
    why = "prompt not in vocabulary" if not g["prompt_in_vocab"] else (
        f"original's token {d['original_token']!r} {'kept' if d['original_token_kept'] else 'not kept'}")
    return f"from token {d['position']}: {why}"
