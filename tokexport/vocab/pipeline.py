"""``task: vocab-trim``: mine -> tokenizer surgery -> model surgery -> save/reload/verify ->
export (trimmed and baseline ONNX) -> parity -> accuracy against the original -> bench -> report.

Runs inside ``tokexport.pipeline._in_tmp`` (the caller), so output handling, report writing and
exit codes (parity 3, accuracy 4) are shared with the other tasks. Every bad input is found
before anything heavy runs and raised as a one-line InputError."""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..onnx_tools import onnx_files, sha256_onnx
from ..report import report_header
from ..runners import OrtRunner
from . import verify as V
from .corpus import coverage, encode_all, load_corpus, mine
from .export import export_text_onnx, graph_for
from .model import (
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
from .recipe import VocabRecipe
from .selfgen import self_generated_counts
from .tokenizer import (
    BYTE_FALLBACK_TOKENS,
    complete_keep,
    inspect_tokenizer,
    trim_state,
    write_tokenizer_files,
)

MODEL_DIR = "model"  # the ready-to-run trimmed model folder inside the output directory


def resolve_model_dir(name: str, base_dir: Path) -> tuple[Path, str]:
    from ..zoo import resolve_bundled

    bundled = resolve_bundled(name)
    if bundled is not None:
        return bundled, "bundled"
    p = Path(name).expanduser()
    p = p if p.is_absolute() else base_dir / p
    if not (p / "config.json").is_file():
        raise InputError(f"model: {name!r} is neither a bundled model (`tokexport models list`) nor a local Hugging "
                         f"Face directory with config.json ({p})")
    return p, "local"


def _architecture(recipe: VocabRecipe, config) -> str:
    if recipe.architecture != "auto":
        return recipe.architecture
    archs = getattr(config, "architectures", None) or []
    return "decoder" if any(a.endswith("ForCausalLM") for a in archs) else "encoder"


def _load(path: Path, architecture: str):
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # length warnings of long corpus lines, init notes: the report says what matters
    cls = AutoModelForCausalLM if architecture == "decoder" else AutoModel
    t0 = time.perf_counter()
    kwargs = {"dtype": torch.float32, "attn_implementation": "eager", "output_loading_info": True}
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


def _tokens_to_keep(recipe: VocabRecipe, base_dir: Path, lookup: dict[str, int]) -> list[int]:
    entries = [("trim.tokens_to_keep", t) for t in recipe.trim.tokens_to_keep]
    if recipe.trim.tokens_to_keep_file:
        p = Path(recipe.trim.tokens_to_keep_file).expanduser()
        p = p if p.is_absolute() else base_dir / p
        if not p.is_file():
            raise InputError(f"trim.tokens_to_keep_file: {p} does not exist")
        entries += [(f"trim.tokens_to_keep_file ({p.name})", line) for line in p.read_text(encoding="utf-8").splitlines()
                    if line.strip()]
    ids = []
    for where, tok in entries:
        if tok not in lookup:
            raise InputError(f"{where}: {tok!r} is not an entry of the tokenizer's vocabulary")
        ids.append(lookup[tok])
    return ids


def required_ids(recipe: VocabRecipe, info, lookup: dict[str, int], model, keep_user: list[int]
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


def _evenly(items: list, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def run_vocab(recipe: VocabRecipe, label: str, base_dir: Path, tmp: Path, stages) -> dict:
    from transformers import AutoConfig, AutoTokenizer

    from ..pipeline import trt_section

    ex, ver, acc = recipe.export, recipe.verify, recipe.verify.accuracy

    # ---- inputs: every check that can fail on a bad recipe runs before anything heavy
    with stages.stage("load"):
        model_dir, source_kind = resolve_model_dir(recipe.model, base_dir)
        config = AutoConfig.from_pretrained(model_dir)
        architecture = _architecture(recipe, config)
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
        corpus = load_corpus(recipe.corpus, base_dir)
        heldout = corpus.heldout_docs()
        if not heldout:
            raise InputError("corpus: no running text to hold out (word lists are mining-only); add a path or "
                             "dataset_build source")
        lookup = dict(tok.backend_tokenizer.get_vocab(with_added_tokens=True))
        keep_user = _tokens_to_keep(recipe, base_dir, lookup)
        model, load_s = _load(model_dir, architecture)
        rows = model.get_input_embeddings().weight.shape[0]
        if info.vocab_size > rows:
            raise InputError(f"model {model_dir}: tokenizer emits ids up to {info.vocab_size - 1} but the embedding has "
                             f"{rows} rows")
        vt = vocab_tensors(model, rows)

    # ---- mining and the keep set
    with stages.stage("mine"):
        def encode_special(texts):
            return tok(texts, add_special_tokens=True)["input_ids"]

        def encode_plain(texts):
            return tok(texts, add_special_tokens=False)["input_ids"]

        required, dropped = required_ids(recipe, info, lookup, model, keep_user)
        forced = {i for ids in required.values() for i in ids}
        mining_ids = [ids for docs in corpus.mining.values() for ids in encode_all(encode_special, docs)]
        extra, self_gen = None, None
        if recipe.trim.self_generated is not None:
            pad_gen = tok.pad_token_id if tok.pad_token_id is not None else (config.pad_token_id or 0)
            extra, self_gen = self_generated_counts(model, recipe.trim.self_generated, mining_ids, rows, pad_gen)
        mined = mine(corpus, encode_special, encode_plain, rows, recipe.trim, forced, extra)
        keep, closure_added = complete_keep(state, forced | {int(i) for i in mined.selected})
        keep_mask = np.zeros(rows, dtype=bool)
        keep_mask[keep] = True
        old2new = np.full(rows, -1, dtype=np.int64)
        old2new[keep] = np.arange(len(keep))
        mining_cov = coverage(mining_ids, keep_mask)
        texts = [d for _, d in heldout]
        orig_ids = encode_all(encode_special, texts)
        in_vocab = [i for i, ids in enumerate(orig_ids) if keep_mask[np.asarray(ids, dtype=np.int64)].all()]
        if not in_vocab:
            raise InputError("corpus: no held-out sentence is fully inside the kept vocabulary, so exactness cannot be "
                             "checked; lower trim.min_frequency or raise trim.target_vocab_size")

    # ---- surgery, save, reload, verify every tensor
    out_model = tmp / MODEL_DIR
    with stages.stage("surgery"):
        new_state, tok_stats = trim_state(state, keep)
        trimmed = trim_model(model, keep, vt)
        config_changes = remap_config(trimmed.config, old2new, "config")
        gen_changes = remap_config(trimmed.generation_config, old2new, "generation_config") \
            if getattr(trimmed, "generation_config", None) is not None else {}
        out_model.mkdir()
        save_trimmed(trimmed, out_model, keep)
        notes = write_tokenizer_files(model_dir, out_model, new_state, old2new)
        del trimmed
        reloaded, reload_s = _load(out_model, architecture)
        tok_new = AutoTokenizer.from_pretrained(out_model)
        checkpoint = verify_tensors(reloaded, expected_state(model, keep, vt), vt)

    # ---- held-out text through both tokenizers
    with stages.stage("tokenize held-out"):
        new_ids = encode_all(lambda t: tok_new(t, add_special_tokens=True)["input_ids"], texts)
        per_lang = {}
        for lang in sorted({lang for lang, _ in heldout}):
            idx = [i for i, (lg, _) in enumerate(heldout) if lg == lang]
            per_lang[lang] = coverage([orig_ids[i] for i in idx], keep_mask)
        held_cov = coverage(orig_ids, keep_mask)
        unk_old = info.required.get("unk", [None])[0]
        unk_new = int(old2new[unk_old]) if unk_old is not None else None
        byte_new = {int(old2new[lookup[t]]) for t in BYTE_FALLBACK_TOKENS if t in lookup and keep_mask[lookup[t]]}
        oov = V.oov_behaviour(orig_ids, new_ids, keep_mask, unk_new, byte_new)
        remap_metric = V.tokenizer_remap(orig_ids, new_ids, keep_mask, old2new)

    pad_old = tok.pad_token_id if tok.pad_token_id is not None else (config.pad_token_id or 0)
    pad_new = tok_new.pad_token_id if tok_new.pad_token_id is not None else int(old2new[pad_old])

    # ---- export both graphs at the static shape
    base_graph = graph_for(model, architecture, ex.pooling)
    new_graph = graph_for(reloaded, architecture, ex.pooling)
    dynamic = ex.batch == "dynamic"
    batch = None if dynamic else ex.batch
    par_idx = _evenly(list(range(len(texts))), ver.parity.samples)
    feed_old = V.pad_rows([orig_ids[i] for i in par_idx], ex.seq_len, pad_old)
    feed_new = V.pad_rows([new_ids[i] for i in par_idx], ex.seq_len, pad_new)
    n_ex = 1 if dynamic else ex.batch
    model_path, base_path = tmp / "model.onnx", tmp / "baseline.onnx"
    with stages.stage("export", total=2) as advance:
        example = {k: torch.from_numpy(np.resize(v, (n_ex, ex.seq_len))) for k, v in feed_new.items()}
        new_info = export_text_onnx(new_graph, example, model_path, ex.opset, dynamic)
        advance()
        example = {k: torch.from_numpy(np.resize(v, (n_ex, ex.seq_len))) for k, v in feed_old.items()}
        base_info = export_text_onnx(base_graph, example, base_path, ex.opset, dynamic)
        advance()

    t0 = time.perf_counter()
    new_ort = OrtRunner(model_path, recipe.bench.threads)
    ort_load_new = time.perf_counter() - t0
    t0 = time.perf_counter()
    base_ort = OrtRunner(base_path, recipe.bench.threads)
    ort_load_base = time.perf_counter() - t0
    par = ver.parity
    with stages.stage("verify: parity", total=2) as advance:
        parity_new = V.parity(V.run_rows(V.ort_fn(new_ort), feed_new, batch),
                              V.run_rows(V.torch_fn(new_graph), feed_new, batch), feed_new["attention_mask"],
                              par.atol, par.mean_atol)
        advance()
        parity_base = V.parity(V.run_rows(V.ort_fn(base_ort), feed_old, batch),
                               V.run_rows(V.torch_fn(base_graph), feed_old, batch), feed_old["attention_mask"],
                               par.atol, par.mean_atol)
        advance()

    # ---- accuracy against the original
    metrics: dict[str, dict] = {
        "tokenizer_remap_exact": remap_metric,
        "checkpoint_tensors_exact": V.metric(1.0 if checkpoint["passed"] else 0.0, checkpoint["passed"],
                                             "every tensor equal to the expected slice after save/reload",
                                             mismatched=checkpoint["mismatched"][:10], missing=checkpoint["missing"][:10]),
    }
    gen_report = None
    with stages.stage("verify: accuracy"):
        if architecture == "encoder":
            sel = _evenly(in_vocab, acc.samples)
            fo = V.pad_rows([orig_ids[i] for i in sel], ex.seq_len, pad_old)
            fn = V.pad_rows([new_ids[i] for i in sel], ex.seq_len, pad_new)
            ref = V.run_rows(V.torch_fn(base_graph), fo, batch)
            got = V.run_rows(V.torch_fn(new_graph), fn, batch)
            diffs = V.compare(got, ref, fo["attention_mask"])
            worst = max(d["max_abs_diff"] for d in diffs.values())
            metrics["in_vocab_max_abs_diff"] = V.metric(
                worst, bool(worst <= acc.max_abs_diff and np.array_equal(fo["attention_mask"], fn["attention_mask"])),
                f"<= {acc.max_abs_diff:g}", documents=len(sel), outputs=diffs,
                note="trimmed checkpoint (reloaded) with the trimmed tokenizer's ids vs the original with its own, PyTorch")
            onnx_diffs = V.compare(V.run_rows(V.ort_fn(new_ort), fn, batch), ref, fo["attention_mask"])
            metrics["in_vocab_onnx_max_abs_diff"] = V.metric(
                max(d["max_abs_diff"] for d in onnx_diffs.values()), None, None, outputs=onnx_diffs,
                note="model.onnx (onnxruntime) vs the original PyTorch model: includes ONNX Runtime rounding")
            sel = _evenly(list(range(len(texts))), acc.samples)
            fo = V.pad_rows([orig_ids[i] for i in sel], ex.seq_len, pad_old)
            fn = V.pad_rows([new_ids[i] for i in sel], ex.seq_len, pad_new)
            e_old = V.run_rows(V.torch_fn(base_graph), fo, batch)["sentence_embedding"]
            e_new = V.run_rows(V.ort_fn(new_ort), fn, batch)["sentence_embedding"]
            cos = (e_old * e_new).sum(-1) / (np.linalg.norm(e_old, axis=-1) * np.linalg.norm(e_new, axis=-1))
            oov_rows = [k for k, i in enumerate(sel) if not keep_mask[np.asarray(orig_ids[i])].all()]
            metrics["heldout_embedding_cosine"] = V.metric(
                float(cos.mean()), bool(cos.mean() >= acc.min_cosine), f">= {acc.min_cosine:g}", documents=len(sel),
                min=float(cos.min()), oov_documents=len(oov_rows),
                oov_mean=float(cos[oov_rows].mean()) if oov_rows else None,
                note="all held-out documents, out-of-vocabulary text included; trimmed = model.onnx")
        else:
            g = ver.generation
            prompts_old = [tok(p, add_special_tokens=True)["input_ids"] for p in g.prompts]
            prompts_new = [tok_new(p, add_special_tokens=True)["input_ids"] for p in g.prompts]
            gen_old = V.greedy_generations(model, prompts_old, g.max_new_tokens, pad_old)
            gen_new = V.greedy_generations(reloaded, prompts_new, g.max_new_tokens, pad_new)
            gen_new_old = [keep[np.asarray(b, dtype=np.int64)].tolist() for b in gen_new]
            same = [a == b for a, b in zip(gen_old, gen_new_old)]
            prompt_kept = [bool(keep_mask[np.asarray(p)].all()) for p in prompts_old]
            share = sum(same) / len(same)
            metrics["generation_exact_match"] = V.metric(share, share >= g.min_exact_match, f">= {g.min_exact_match:g}",
                                                         prompts=len(same), prompts_in_vocab=sum(prompt_kept),
                                                         max_new_tokens=g.max_new_tokens)
            gen_report = []
            for p, a, b, bn, s, pk in zip(g.prompts, gen_old, gen_new_old, gen_new, same, prompt_kept):
                at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                kept = bool(at >= len(a) or keep_mask[a[at]])  # no original token there: unexplained
                gen_report.append({"prompt": p, "original": tok.decode(a), "trimmed": tok_new.decode(bn), "identical": s,
                                   "prompt_in_vocab": pk, "first_difference": None if s else {
                                       "position": at, "original_token": tok.convert_ids_to_tokens(a[at]) if at < len(a) else None,
                                       "original_token_kept": kept}})
            diverged = [gr for gr in gen_report if not gr["identical"]]
            explained = [gr for gr in diverged if not gr["prompt_in_vocab"] or not gr["first_difference"]["original_token_kept"]]
            value = len(explained) / len(diverged) if diverged else 1.0
            metrics["generation_differences_explained"] = V.metric(
                value, value == 1.0, "= 1 (every difference starts where the original's token or prompt is not kept)",
                differing=len(diverged), explained=len(explained))
            sel = _evenly(in_vocab, acc.samples)
            s_old = V.lm_scores(model, [orig_ids[i] for i in sel], ex.seq_len)
            s_new = V.lm_scores(reloaded, [new_ids[i] for i in sel], ex.seq_len)
            agree = np.concatenate([a == keep[b] for (a, _), (b, _) in zip(s_old, s_new)])
            orig_top = np.concatenate([a for a, _ in s_old])
            on_kept = keep_mask[orig_top] if orig_top.size else np.zeros(0, bool)
            n_tok = sum(max(0, min(len(orig_ids[i]), ex.seq_len) - 1) for i in sel)
            ppl_old = float(np.exp(sum(n for _, n in s_old) / max(n_tok, 1)))
            ppl_new = float(np.exp(sum(n for _, n in s_new) / max(n_tok, 1)))
            metrics["next_token_top1_agreement"] = V.metric(
                float(agree.mean()), bool(agree.mean() >= acc.min_top1_agreement), f">= {acc.min_top1_agreement:g}",
                documents=len(sel), positions=int(agree.size), perplexity_in_vocab={"original": ppl_old, "trimmed": ppl_new},
                original_top1_kept=float(on_kept.mean()) if on_kept.size else None)
            kept_agree = float(agree[on_kept].mean()) if on_kept.any() else 1.0
            metrics["top1_agreement_where_kept"] = V.metric(
                kept_agree, kept_agree >= 0.999, ">= 0.999 (positions whose original top-1 is kept; rounding ties aside)",
                positions=int(on_kept.sum()))
            sel = _evenly(list(range(len(texts))), acc.samples)
            nll_old = sum(n for _, n in V.lm_scores(model, [orig_ids[i] for i in sel], ex.seq_len))
            nll_new = sum(n for _, n in V.lm_scores(reloaded, [new_ids[i] for i in sel], ex.seq_len))
            chars = sum(len(texts[i]) for i in sel)
            pc_old, pc_new = float(np.exp(nll_old / chars)), float(np.exp(nll_new / chars))
            rel = pc_new / pc_old - 1
            metrics["perplexity_per_char_increase"] = V.metric(
                rel, bool(rel <= acc.max_perplexity_increase), f"<= {acc.max_perplexity_increase:g}",
                original=pc_old, trimmed=pc_new, documents=len(sel),
                note="exp(NLL / characters) on all held-out documents, each model on its own tokenization "
                     "(documents truncated to export.seq_len tokens)")
    acc_passed = all(m["passed"] is not False for m in metrics.values())

    # ---- bench
    params_old, params_new = count_params(model), count_params(reloaded)
    hidden = model.get_input_embeddings().weight.shape[1]
    bench = None
    if recipe.bench.enabled:
        b = recipe.bench
        feed_b = {k: v[: (ex.batch if batch else 1)] for k, v in feed_new.items()}
        feed_o = {k: v[: (ex.batch if batch else 1)] for k, v in feed_old.items()}
        with stages.stage("bench", total=b.repeats):
            times = {"baseline": [], "trimmed": []}
            for _ in range(b.warmup):
                base_ort.infer(feed_o)
                new_ort.infer(feed_b)
            for i in range(b.repeats):
                order = [("baseline", base_ort, feed_o), ("trimmed", new_ort, feed_b)]
                for name, r, f in order if i % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    r.infer(f)
                    times[name].append((time.perf_counter() - t0) * 1e3)
        med = {k: float(np.median(v)) for k, v in times.items()}
        bench = {"runtime": f"onnxruntime {__import__('onnxruntime').__version__} CPUExecutionProvider",
                 "threads": b.threads or os.cpu_count(), "repeats": b.repeats, "batch": len(feed_b["input_ids"]),
                 "seq_len": ex.seq_len, "baseline_ms": med["baseline"], "trimmed_ms": med["trimmed"],
                 "speedup": med["baseline"] / med["trimmed"],
                 "load_s": {"pytorch_original": load_s, "pytorch_trimmed": reload_s,
                            "onnx_original": ort_load_base, "onnx_trimmed": ort_load_new}}
        if architecture == "decoder":
            body = params_old - rows * hidden * (1 if vt.tied else 2)  # non-vocabulary parameters
            bench["lm_head_share"] = {
                "original": rows * hidden / (rows * hidden + body), "trimmed": len(keep) * hidden / (len(keep) * hidden + body),
                "note": "analytic: head MACs / (head MACs + one MAC per non-vocabulary weight) per token, attention "
                        "scores excluded"}

    trt = trt_section(model_path, ex.target)
    failures = []
    if not parity_new["passed"]:
        failures.append(f"parity: model.onnx differs from PyTorch by {parity_new['max_abs_diff']:.3g} (atol {par.atol:g})")
    if not parity_base["passed"]:
        failures.append(f"parity: baseline.onnx differs from PyTorch by {parity_base['max_abs_diff']:.3g}")
    failures += [f"accuracy: {n} {m['value']:.6g} misses {m['threshold']}" for n, m in metrics.items() if m["passed"] is False]

    def nbytes(p: Path) -> int:
        return sum(f.stat().st_size for f in onnx_files(p))

    return {
        **report_header("vocab-trim", label, recipe),
        "model": {"source": recipe.model, "source_kind": source_kind, "path": str(model_dir), "architecture": architecture,
                  "class": type(model).__name__, "model_type": config.model_type, "params": params_old,
                  "params_trimmed": params_new, "embedding_rows": rows, "hidden_size": hidden,
                  "tied_embeddings": vt.tied, "tokenizer_class": type(tok).__name__},
        "tokenizer": {"model_type": info.model_type, "family": info.family, "vocab_size": info.vocab_size,
                      "vocab_size_trimmed": len(keep), "oov_behaviour": info.oov_behaviour, "surgery": tok_stats,
                      "files": notes},
        "corpus": corpus.describe() | {"mining_tokens": mined.mining_tokens, "heldout_fraction": recipe.corpus.heldout_fraction,
                                      "seed": recipe.corpus.seed},
        "trim": {"kept": len(keep), "mined": len(mined.selected), "eligible": mined.eligible,
                 "min_frequency": recipe.trim.min_frequency, "target_vocab_size": recipe.trim.target_vocab_size,
                 "required": {k: len(v) for k, v in required.items()}, "special_dropped": len(dropped),
                 "bpe_closure_added": closure_added, "self_generated": self_gen, "config_ids": config_changes, "generation_config_ids": gen_changes},
        "coverage": {"mining": mining_cov, "heldout": held_cov, "heldout_by_language": per_lang, "heldout_oov": oov},
        "checkpoint": checkpoint,
        "export": {"opset": ex.opset, "exporter": new_info.exporter, "batch": ex.batch, "seq_len": ex.seq_len,
                   "inputs": ["input_ids", "attention_mask"], "outputs": new_info.output_shapes,
                   "baseline_outputs": base_info.output_shapes, "target": ex.target, "trt_target": ex.trt_target},
        "artifacts": {"onnx": model_path.name, "onnx_sha256": sha256_onnx(model_path), "onnx_bytes": nbytes(model_path),
                      "baseline_onnx": base_path.name, "baseline_onnx_sha256": sha256_onnx(base_path),
                      "baseline_onnx_bytes": nbytes(base_path), "model_dir": MODEL_DIR, "id_map": f"{MODEL_DIR}/{ID_MAP}"},
        "parity": parity_new,
        "parity_baseline": parity_base,
        "accuracy": {"metrics": metrics, "passed": acc_passed, "generations": gen_report},
        "bench": bench,
        "trt_check": trt,
        "deploy": None,
        "passed": bool(parity_new["passed"] and parity_base["passed"] and acc_passed),
        "failures": failures,
    }
