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
checked), :mod:`.vocab_trim_keep` (choosing the kept ids), :mod:`.vocab_trim_metrics` (the accuracy
against the original) and :mod:`.vocab_trim_report` (report.md and the console lines)."""

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
from ..stages.runners import OrtRunner, TorchRunner
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
from .vocab_trim_metrics import coverage_metrics, decoder_metrics, encoder_metrics, evenly

MODEL_DIR = "model"  # the ready-to-run trimmed model folder inside the output directory
KEEP_LIST = "keep_ids.txt"  # the kept original ids, one per line: trim.keep_file reads it back


def rows_of(feed: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """``n`` rows of a text feed (its first rows, repeated cyclically when it has fewer)."""
    return {k: np.ascontiguousarray(np.resize(v, (n, *v.shape[1:]))) for k, v in feed.items()}


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
            raise InputError(
                "verify.generation: required for a decoder (prompts generated by the original and the trimmed model)"
            )
        tok = AutoTokenizer.from_pretrained(model_dir)
        if not getattr(tok, "is_fast", False) or not hasattr(tok, "backend_tokenizer"):
            raise InputError(
                f"model {model_dir}: tokenizer {type(tok).__name__} has no tokenizers (fast) backend; "
                "vocabulary trimming edits tokenizer.json"
            )
        state = json.loads(tok.backend_tokenizer.to_str())
        info = inspect_tokenizer(state)
        corpus = load_corpus(recipe.corpus, self.base_dir)
        heldout = corpus.heldout_docs()
        if not heldout:
            raise InputError(
                "corpus: no running text to hold out (word lists are mining-only); add a path or dataset_build source"
            )
        lookup = dict(tok.backend_tokenizer.get_vocab(with_added_tokens=True))
        keep_user = tokens_to_keep(recipe, self.base_dir, lookup)
        model, load_s = load_checkpoint(model_dir, architecture)
        rows = model.get_input_embeddings().weight.shape[0]
        if info.vocab_size > rows:
            raise InputError(
                f"model {model_dir}: tokenizer emits ids up to {info.vocab_size - 1} but the embedding has {rows} rows"
            )
        vt = vocab_tensors(model, rows)
        self.model_dir, self.config, self.architecture = model_dir, config, architecture
        self.tok, self.state, self.info, self.corpus, self.heldout, self.lookup = (
            tok,
            state,
            info,
            corpus,
            heldout,
            lookup,
        )
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
        m = Mining(
            recipe,
            self.corpus,
            self.model,
            rows,
            self._encode_special,
            self._encode_plain,
            mining_rows,
            mining_ids,
            forced,
            base,
            paths,
            size,
            budget,
            pad_gen,
        )
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
            raise InputError(
                "corpus: no held-out sentence is fully inside the kept vocabulary, so exactness cannot "
                "be checked; lower trim.min_frequency or raise trim.target_vocab_size"
            )
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
            self.gen_changes = (
                remap_config(trimmed.generation_config, old2new, "generation_config")
                if getattr(trimmed, "generation_config", None) is not None
                else {}
            )
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
            byte_new = {
                int(old2new[self.lookup[t]])
                for t in BYTE_FALLBACK_TOKENS
                if t in self.lookup and keep_mask[self.lookup[t]]
            }
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
    def torch_runner(self, graph) -> TorchRunner:
        """The PyTorch twin of an exported graph, run in the graph's batch (run_rows pads the last chunk
        of a fixed batch like it does for ONNX Runtime, so both see the same batches)."""
        r = TorchRunner(graph, INPUTS, output_names=graph.outputs)
        r.fixed_batch = self.fixed_batch
        return r

    def parity_cases(self, graphs: Graphs) -> dict[str, ParityCase]:
        threads = self.recipe.bench.threads
        return {
            "parity": ParityCase(
                graphs.model,
                self.torch_runner(self.new_graph),
                self.feed_new,
                mask=self.feed_new["attention_mask"],
                unmasked=("sentence_embedding",),
                threads=threads,
            ),
            "parity_baseline": ParityCase(
                graphs.baseline,
                self.torch_runner(self.base_graph),
                self.feed_old,
                mask=self.feed_old["attention_mask"],
                unmasked=("sentence_embedding",),
                threads=threads,
            ),
        }

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
                1.0,
                share,
                {"min": 1},
                documents=len(in_vocab_docs),
                mismatched_documents=bad[:10],
                criterion="every in-vocabulary held-out sentence: the trimmed tokenizer gives the remapped original ids",
            ),
            "checkpoint_tensors_exact": MC.metric(
                1.0,
                1.0 if ck["passed"] else 0.0,
                {"min": 1},
                mismatched=ck["mismatched"][:10],
                missing=ck["missing"][:10],
                criterion="every tensor equal to the expected slice after save/reload",
            ),
        }
        if self.multilingual:
            bad_set = set(bad)
            for lang in self.per_lang:
                docs = [i for i in in_vocab_docs if self.heldout[i][0] == lang]
                metrics[f"tokenizer_remap_exact_{lang}"] = MC.info(
                    1 - sum(i in bad_set for i in docs) / len(docs) if docs else None, documents=len(docs)
                )
        metrics |= coverage_metrics(self)
        if self.architecture == "encoder":
            metrics |= encoder_metrics(self, new_ort)
        else:
            metrics |= decoder_metrics(self)
        return metrics

    @property
    def multilingual(self) -> bool:
        return len(self.per_lang) > 1

    # ---- bench and deploy: each graph on its own ids
    def bench_feed(self, batch: int) -> dict[str, np.ndarray]:
        return rows_of(self.feed_new, batch)

    def bench_feeds(self, batch: int) -> dict[str, dict[str, np.ndarray]]:
        return {"baseline": rows_of(self.feed_old, batch), "model": rows_of(self.feed_new, batch)}

    def bench_batches(self) -> list[int]:
        return [self.export_batch]  # VocabBenchConfig has no batch_sizes: the graph's batch (1 for dynamic)

    def bench_extra(self, batches: dict) -> dict:
        out = {
            "seq_len": self.recipe.export.seq_len,
            "load_s": {
                "pytorch_original": self.load_s,
                "pytorch_trimmed": self.reload_s,
                **(getattr(self, "ort_load", None) or {}),
            },
        }
        if self.architecture == "decoder":
            rows, hidden = self.rows, self._hidden
            body = self._params_old - rows * hidden * (1 if self.vt.tied else 2)  # non-vocabulary parameters
            out["lm_head_share"] = {
                "original": rows * hidden / (rows * hidden + body),
                "trimmed": len(self.keep) * hidden / (len(self.keep) * hidden + body),
                "note": "analytic: head MACs / (head MACs + one MAC per non-vocabulary weight) per token, attention "
                "scores excluded",
            }
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
        recipe = self.recipe
        params_old = self._params_old
        params_new = self._params_cache[1]
        return {
            "model": {
                "source": recipe.model,
                "source_kind": self.source_kind,
                "path": str(self.model_dir),
                "architecture": self.architecture,
                "class": type(self.model).__name__,
                "model_type": self.config.model_type,
                "params": params_old,
                "params_trimmed": params_new,
                "embedding_rows": self.rows,
                "hidden_size": self._hidden,
                "tied_embeddings": self.vt.tied,
                "tokenizer_class": type(self.tok).__name__,
            },
            "tokenizer": {
                "model_type": self.info.model_type,
                "family": self.info.family,
                "vocab_size": self.info.vocab_size,
                "vocab_size_trimmed": len(self.keep),
                "oov_behaviour": self.info.oov_behaviour,
                "surgery": self.tok_stats,
                "files": self.tok_notes,
            },
            "corpus": self.corpus.describe()
            | {
                "mining_tokens": self.mined.mining_tokens,
                "heldout_fraction": recipe.corpus.heldout_fraction,
                "seed": recipe.corpus.seed,
            },
            "trim": self._trim_section(),
            "coverage": {
                "mining": self.mining_cov,
                "heldout": self.held_cov,
                "heldout_by_language": self.per_lang,
                "heldout_oov": self.oov,
            },
            "checkpoint": self.checkpoint,
            "export": self._export_section(graphs),
            "artifacts_extra": {"model_dir": MODEL_DIR, "id_map": f"{MODEL_DIR}/{ID_MAP}", "keep_list": KEEP_LIST},
            "accuracy_extra": {
                "dataset": "held-out corpus text",
                "description": (
                    f"{len(self.texts)} held-out documents of the corpus (never mined); original = the "
                    "unmodified PyTorch model with its own tokenizer; trimmed = the reloaded checkpoint "
                    "(PyTorch) or model.onnx (onnxruntime) with the trimmed tokenizer, as each metric says"
                ),
                "generations": self.generations,
            },
        }

    def _trim_section(self) -> dict:
        """The report's ``trim``: what was kept and why (required ids, BPE closure, ranking, budget, keep file)."""
        trim = self.recipe.trim
        return {
            "kept": len(self.keep),
            "mined": len(self.mined.selected),
            "eligible": self.mined.eligible,
            "min_frequency": trim.min_frequency,
            "target_vocab_size": trim.target_vocab_size,
            "required": {k: len(v) for k, v in self.required.items()},
            "special_dropped": len(self.dropped),
            "bpe_closure_added": self.closure_added,
            "self_generated": self.self_gen,
            "config_ids": self.config_changes,
            "generation_config_ids": self.gen_changes,
            "ranking": self.ranking,
            "budget": self.budget.describe(
                len(self.keep),
                self.held_cov["token_coverage"],
                {k: v["token_coverage"] for k, v in self.per_lang.items()},
            )
            if self.budget is not None
            else None,
            "keep_file": self.keep_list_info,
        }

    def _export_section(self, graphs: Graphs) -> dict:
        """The report's ``export``: the graphs' opset, exporter, batch, sequence length, target and shapes."""
        ex = self.recipe.export
        b = "batch" if self.fixed_batch is None else self.fixed_batch
        return {
            "opset": ex.opset,
            "exporter": graphs.model_info.exporter,
            "batch": ex.batch,
            "seq_len": ex.seq_len,
            "target": ex.target,
            "trt_target": ex.trt_target,
            "inputs": {n: [b, ex.seq_len] for n in INPUTS},
            "outputs": graphs.model_info.output_shapes,
            "baseline_outputs": graphs.baseline_info.output_shapes,
        }

    @classmethod
    def markdown(cls, report: dict) -> list[str]:
        return vocab_trim_report.markdown(report)

    @classmethod
    def console_lines(cls, report: dict) -> list[str]:
        return vocab_trim_report.console_lines(report)
