"""Vocabulary trimming (recipe `task: vocab-trim`): mine the ids a target corpus uses, cut the
tokenizer and every vocabulary tensor down to them, save and reload the trimmed checkpoint (every
tensor checked against the expected slice), then export the trimmed graph (model.onnx, trimmed ids)
and the untouched one (baseline.onnx, original ids) at a static sequence length.

Accuracy is always against the original model with its own tokenizer, on held-out corpus text —
encoders: exact outputs on in-vocabulary text and embedding cosine on all of it; decoders: identical
greedy generations (and every difference explained by a dropped token), next-token top-1 agreement
and perplexity per character. Every bad input is found in :meth:`VocabTrim.load`, before the
staging directory exists; the trimmed checkpoint is written into it (``model/``) during export.

Beside this module: :mod:`.vocab_trim_inputs` (the model folder, checkpoint and token lists, read and
checked), :mod:`.vocab_trim_keep` (choosing the kept ids) and :mod:`.vocab_trim_report` (report.md and
the console lines)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import weights_kwargs
from ..errors import InputError
from ..files import check_model_dir, read_json
from ..stages import metric as MC
from ..stages.compare import parity as compare_outputs
from ..stages.runners import OrtRunner, TorchRunner, run_rows
from ..vocab import rank as R
from ..vocab import verify as V
from ..vocab.corpus import coverage, encode_all, load_corpus
from ..vocab.export import INPUTS, export_text_onnx, graph_for
from ..vocab.keepfile import check_keep_file, write_keep_ids
from ..vocab.keepfile import resolve as resolve_keep_file
from ..vocab.model import (
    ID_MAP,
    count_params,
    expected_state,
    remap_config,
    save_trimmed,
    trim_model,
    verify_tensors,
    vocab_tensors,
)
from ..vocab.tokenizer import (
    BYTE_FALLBACK_TOKENS,
    complete_keep,
    inspect_tokenizer,
    trim_state,
    write_tokenizer_files,
)
from . import vocab_trim_report
from .base import TASKS, Graphs, ParityCase, Stages, Task
from .vocab_trim_inputs import architecture_of, load_checkpoint, resolve_model_dir, tokens_file, tokens_to_keep
from .vocab_trim_keep import (
    Mining,
    heldout_ablation,
    keep_file_ids,
    keep_list_report,
    per_token_params,
    rank_by_coverage,
    rank_by_frequency,
    required_ids,
)

MODEL_DIR = "model"  # the ready-to-run trimmed model folder inside the output directory
KEEP_LIST = "keep_ids.txt"  # the kept original ids, one per line: trim.keep_file reads it back


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
            tokens_file(self.recipe, self.base_dir)
        from transformers import AutoConfig, AutoTokenizer  # noqa: F401  (the import's seconds stay outside the load stage)

        with stages.stage("load"):
            keep_user = self._load_inputs()
        with stages.stage("mine"):
            self._mine(keep_user)
        tok, config = self.tok, self.config
        self.pad_old = tok.pad_token_id if tok.pad_token_id is not None else (config.pad_token_id or 0)

    def _load_inputs(self) -> list[int]:
        """Model folder, config, tokenizer, corpus and checkpoint, each checked as it is read; the ids of
        trim.tokens_to_keep(_file)."""
        from transformers import AutoConfig, AutoTokenizer

        recipe, ver = self.recipe, self.recipe.verify
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
        self.model_dir, self.config, self.architecture = model_dir, config, architecture
        self.tok, self.state, self.info, self.corpus, self.heldout, self.lookup = tok, state, info, corpus, heldout, lookup
        self.model, self.load_s, self.rows, self.vt = model, load_s, rows, vt
        return keep_user

    def _encode_special(self, texts):
        return self.tok(texts, add_special_tokens=True)["input_ids"]

    def _encode_plain(self, texts):
        return self.tok(texts, add_special_tokens=False)["input_ids"]

    def _mine(self, keep_user: list[int]) -> None:
        """The keep set: the required ids plus the ids a keep file lists, or the corpus's ranked by coverage or
        by frequency (within a budget); then the held-out text's coverage by it."""
        recipe, trim, tok, rows, state = self.recipe, self.recipe.trim, self.tok, self.rows, self.state
        required, dropped = required_ids(recipe, self.info, self.lookup, self.model, keep_user)
        forced = {i for ids in required.values() for i in ids}
        mining_rows = {lang: encode_all(self._encode_special, docs) for lang, docs in self.corpus.mining.items()}
        mining_ids = [ids for rs in mining_rows.values() for ids in rs]
        paths = R.MergePaths(state)
        base = {int(i) for i in complete_keep(state, forced)[0]}
        budget = R.budget_of(trim, count_params(self.model), rows, per_token_params(self.model, self.vt), len(base))
        size = R.Size(mined=trim.target_vocab_size, total=budget.max_tokens if budget else None)
        pad_gen = tok.pad_token_id if tok.pad_token_id is not None else (self.config.pad_token_id or 0)
        m = Mining(recipe, self.corpus, self.model, rows, self._encode_special, self._encode_plain, mining_rows,
                   mining_ids, forced, base, paths, size, budget, pad_gen)
        self_gen, ranking, keep_list, weighted_rows, rank_ctx = None, None, None, None, None
        if trim.keep_file is not None:
            mined, keep_list = keep_file_ids(m, self.base_dir, self.lookup, self.info.vocab_size)
        elif trim.ranking == "coverage":
            mined, ranking, self_gen, weighted_rows, rank_ctx = rank_by_coverage(m)
        else:
            mined, ranking, self_gen = rank_by_frequency(m)
        keep, closure_added = complete_keep(state, forced | {int(i) for i in mined.selected})
        if budget is not None and len(keep) > budget.max_tokens:  # cannot happen: fill() counts merge paths
            raise AssertionError(f"budget overrun: {len(keep)} > {budget.max_tokens}")
        keep_mask = np.zeros(rows, dtype=bool)
        keep_mask[keep] = True
        old2new = np.full(rows, -1, dtype=np.int64)
        old2new[keep] = np.arange(len(keep))
        self._heldout(keep_mask, keep_list is not None)
        self.mining_cov = coverage(mining_ids, keep_mask)
        if ranking is not None and ranking["method"] == "coverage":
            ranking["heldout_ablation"] = heldout_ablation(m, *rank_ctx, self.heldout_counts, weighted_rows)
        if keep_list is not None:
            self.keep_list_info = keep_list_report(keep_list, keep, required, self.lookup)
        else:
            self.keep_list_info = None
        self.budget, self.ranking = budget, ranking
        self.required, self.dropped, self.self_gen, self.mined = required, dropped, self_gen, mined
        self.keep, self.closure_added, self.keep_mask, self.old2new = keep, closure_added, keep_mask, old2new

    def _heldout(self, keep_mask: np.ndarray, from_keep_file: bool) -> None:
        """The held-out documents in the original ids, those fully inside the kept vocabulary, and each
        language's id counts."""
        heldout, rows = self.heldout, self.rows
        texts = [d for _, d in heldout]
        orig_ids = encode_all(self._encode_special, texts)
        in_vocab = [i for i, ids in enumerate(orig_ids) if keep_mask[np.asarray(ids, dtype=np.int64)].all()]
        if not in_vocab and not from_keep_file:
            raise InputError("corpus: no held-out sentence is fully inside the kept vocabulary, so exactness cannot "
                             "be checked; lower trim.min_frequency or raise trim.target_vocab_size")
        # (a keep_file vocabulary that covers no held-out sentence is the user's choice: the exactness
        # metrics then fail, exit 4, instead of refusing the input)
        self.texts, self.orig_ids, self.in_vocab = texts, orig_ids, in_vocab
        self.heldout_counts = {}
        for lang in sorted({lang for lang, _ in heldout}):
            ids = [t for (lg, _), row in zip(heldout, orig_ids) if lg == lang for t in row]
            self.heldout_counts[lang] = np.bincount(np.asarray(ids, dtype=np.int64), minlength=rows)[:rows]

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
    def markdown(cls, report: dict) -> list[str]:
        return vocab_trim_report.markdown(report)

    @classmethod
    def console_lines(cls, report: dict) -> list[str]:
        return vocab_trim_report.console_lines(report)
