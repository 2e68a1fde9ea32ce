"""A vocab trim's accuracy against the original model (:meth:`~.vocab_trim.VocabTrim.metrics`), each
model on its own tokenization of the held-out corpus text: coverage of that text by the kept ids; for an
encoder, exact outputs on in-vocabulary text and the embedding cosine on all of it; for a decoder,
identical greedy generations (every difference explained by a dropped token), next-token top-1 agreement
and the perplexity per character. Each function reads the loaded and exported task (``task``: a
:class:`~.vocab_trim.VocabTrim`)."""

from __future__ import annotations

import numpy as np

from ..stages import metric as MC
from ..stages.compare import parity as compare_outputs
from ..stages.runners import OrtRunner, run_rows
from ..vocab import verify as V


def evenly(items: list, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def output_diffs(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, dict]:
    """Per output: max and mean |got - ref| at real positions (the pooled embedding in full)."""
    res = compare_outputs(got, ref, 1.0, 1.0, mask, unmasked=("sentence_embedding",), agreement=())
    return {
        k: (
            {"max_abs_diff": o["max_abs_diff"], "mean_abs_diff": o["mean_abs_diff"]}
            if "max_abs_diff" in o
            else {"max_abs_diff": float("inf"), "mean_abs_diff": float("inf"), "error": o.get("error")}
        )
        for k, o in res["outputs"].items()
    }


def coverage_metrics(task) -> dict[str, dict]:
    """The held-out text's token coverage by the kept ids, overall (gated) and per language (each gated
    when there are several)."""
    min_cov = task.recipe.verify.accuracy.min_token_coverage
    hc = task.held_cov
    out = {
        "heldout_token_coverage": MC.metric(
            1.0,
            hc["token_coverage"],
            {"min": min_cov} if min_cov is not None else None,
            "higher",
            tokens=hc["tokens"],
            documents=hc["documents"],
            documents_fully_in_vocab=hc["documents_fully_in_vocab"],
            note="share of the held-out text's original tokens that are kept",
        )
    }
    for lang, c in task.per_lang.items():
        detail = {
            "tokens": c["tokens"],
            "documents": c["documents"],
            "documents_fully_in_vocab": c["documents_fully_in_vocab"],
        }
        if task.multilingual and min_cov is not None:  # each language must reach the bar, not only their mix
            out[f"heldout_token_coverage_{lang}"] = MC.metric(
                1.0, c["token_coverage"], {"min": min_cov}, "higher", **detail
            )
        else:
            out[f"heldout_token_coverage_{lang}"] = MC.info(c["token_coverage"], **detail)
    return out


def lang_rows(task, rows: list[int], n: int) -> list[int]:
    """``n`` rows evenly spaced, per language when there are several (each language gets ``n``)."""
    if not task.multilingual:
        return evenly(rows, n)
    out = []
    for lang in task.per_lang:
        out += evenly([i for i in rows if task.heldout[i][0] == lang], n)
    return sorted(out)


# ------------------------------------------------------------------------------------------------ encoders


def encoder_metrics(task, new_ort: OrtRunner) -> dict[str, dict]:
    """Exact outputs on in-vocabulary held-out text (PyTorch, and model.onnx for information), then the
    embedding cosine on all of it (model.onnx against the original)."""
    torch_base, torch_new = task.torch_runner(task.base_graph), task.torch_runner(task.new_graph)
    out = _in_vocab_exactness(task, new_ort, torch_base, torch_new)
    out |= _embedding_cosine(task, new_ort, torch_base)
    task.generations = None
    return out


def _in_vocab_exactness(task, new_ort: OrtRunner, torch_base, torch_new) -> dict[str, dict]:
    """The trimmed checkpoint with the trimmed tokenizer's ids against the original with its own, on the
    held-out sentences fully inside the kept vocabulary (per language too when there are several)."""
    ex, acc = task.recipe.export, task.recipe.verify.accuracy
    sel = lang_rows(task, task.in_vocab, acc.samples)
    out = {}
    if not sel:  # a keep_file vocabulary holding no held-out sentence: exactness cannot be shown
        out["in_vocab_max_abs_diff"] = MC.metric(
            0.0,
            float("inf"),
            {"max": acc.max_abs_diff},
            "lower",
            documents=0,
            note="no held-out sentence is fully inside the kept vocabulary",
        )
        out["in_vocab_onnx_max_abs_diff"] = MC.info(None, documents=0)
        return out
    fo = V.pad_rows([task.orig_ids[i] for i in sel], ex.seq_len, task.pad_old)
    fn = V.pad_rows([task.new_ids[i] for i in sel], ex.seq_len, task.pad_new)
    ref = run_rows(torch_base, fo)
    got = run_rows(torch_new, fn)
    diffs = output_diffs(got, ref, fo["attention_mask"])
    worst = max(d["max_abs_diff"] for d in diffs.values())
    masks_equal = bool(np.array_equal(fo["attention_mask"], fn["attention_mask"]))
    out["in_vocab_max_abs_diff"] = MC.metric(
        0.0,
        worst,
        {"max": acc.max_abs_diff},
        "lower",
        documents=len(sel),
        outputs=diffs,
        attention_masks_equal=masks_equal,
        note="trimmed checkpoint (reloaded) with the trimmed tokenizer's ids vs the original with its own, PyTorch",
    )
    if not masks_equal:  # the same text tokenised to another length: not the same computation
        out["in_vocab_max_abs_diff"]["passed"] = False
    onnx_diffs = output_diffs(run_rows(new_ort, fn), ref, fo["attention_mask"])
    out["in_vocab_onnx_max_abs_diff"] = MC.info(
        max(d["max_abs_diff"] for d in onnx_diffs.values()),
        outputs=onnx_diffs,
        note="model.onnx (onnxruntime) vs the original PyTorch model: includes ONNX Runtime rounding",
    )
    if task.multilingual:  # exactness per language, on the same rows
        for lang in task.per_lang:
            rows = [k for k, i in enumerate(sel) if task.heldout[i][0] == lang]
            if not rows:
                out[f"in_vocab_max_abs_diff_{lang}"] = MC.info(None, documents=0)
                continue
            d = output_diffs(
                {k: v[rows] for k, v in got.items()}, {k: v[rows] for k, v in ref.items()}, fo["attention_mask"][rows]
            )
            out[f"in_vocab_max_abs_diff_{lang}"] = MC.info(
                max(x["max_abs_diff"] for x in d.values()), documents=len(rows)
            )
    return out


def _embedding_cosine(task, new_ort: OrtRunner, torch_base) -> dict[str, dict]:
    """The sentence embedding's cosine, model.onnx against the original, on all held-out documents
    (out-of-vocabulary text included; per language for information)."""
    ex, acc, orig_ids = task.recipe.export, task.recipe.verify.accuracy, task.orig_ids
    sel = lang_rows(task, list(range(len(task.texts))), acc.samples)
    fo = V.pad_rows([orig_ids[i] for i in sel], ex.seq_len, task.pad_old)
    fn = V.pad_rows([task.new_ids[i] for i in sel], ex.seq_len, task.pad_new)
    e_old = run_rows(torch_base, fo)["sentence_embedding"]
    e_new = run_rows(new_ort, fn)["sentence_embedding"]
    cos = (e_old * e_new).sum(-1) / (np.linalg.norm(e_old, axis=-1) * np.linalg.norm(e_new, axis=-1))
    oov_rows = [k for k, i in enumerate(sel) if not task.keep_mask[np.asarray(orig_ids[i])].all()]
    out = {
        "heldout_embedding_cosine": MC.metric(
            1.0,
            float(cos.mean()),
            {"min": acc.min_cosine},
            "higher",
            documents=len(sel),
            min=float(cos.min()),
            oov_documents=len(oov_rows),
            oov_mean=float(cos[oov_rows].mean()) if oov_rows else None,
            note="all held-out documents, out-of-vocabulary text included; trimmed = model.onnx",
        )
    }
    if task.multilingual:
        for lang in task.per_lang:
            rows = [k for k, i in enumerate(sel) if task.heldout[i][0] == lang]
            out[f"heldout_embedding_cosine_{lang}"] = MC.info(
                float(cos[rows].mean()) if rows else None, documents=len(rows)
            )
    return out


# ------------------------------------------------------------------------------------------------ decoders


def decoder_metrics(task) -> dict[str, dict]:
    """Greedy generations of the verify prompts, next-token top-1 agreement on in-vocabulary held-out text,
    and the perplexity per character on all of it (PyTorch: the original against the reloaded checkpoint)."""
    out = _generation_metrics(task)
    out |= _next_token_metrics(task)
    out |= _perplexity_metric(task)
    return out


def _generation_metrics(task) -> dict[str, dict]:
    """The share of identical greedy generations, and of differences explained (each starts where the
    original's token or prompt is not kept); the generations themselves go to ``task.generations``."""
    g = task.recipe.verify.generation
    tok, tok_new, keep, keep_mask = task.tok, task.tok_new, task.keep, task.keep_mask
    prompts_old = [tok(p, add_special_tokens=True)["input_ids"] for p in g.prompts]
    prompts_new = [tok_new(p, add_special_tokens=True)["input_ids"] for p in g.prompts]
    gen_old = V.greedy_generations(task.model, prompts_old, g.max_new_tokens, task.pad_old)
    gen_new = V.greedy_generations(task.reloaded, prompts_new, g.max_new_tokens, task.pad_new)
    gen_new_old = [keep[np.asarray(b, dtype=np.int64)].tolist() for b in gen_new]
    same = [a == b for a, b in zip(gen_old, gen_new_old)]
    prompt_kept = [bool(keep_mask[np.asarray(p)].all()) for p in prompts_old]
    share = sum(same) / len(same)
    out = {
        "generation_exact_match": MC.metric(
            1.0,
            share,
            {"min": g.min_exact_match},
            "higher",
            prompts=len(same),
            prompts_in_vocab=sum(prompt_kept),
            max_new_tokens=g.max_new_tokens,
        )
    }
    gens = []
    for p, a, b, bn, s, pk in zip(g.prompts, gen_old, gen_new_old, gen_new, same, prompt_kept):
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        kept = bool(at >= len(a) or keep_mask[a[at]])  # no original token there: unexplained
        gens.append(
            {
                "prompt": p,
                "original": tok.decode(a),
                "trimmed": tok_new.decode(bn),
                "identical": s,
                "prompt_in_vocab": pk,
                "first_difference": None
                if s
                else {
                    "position": at,
                    "original_token": tok.convert_ids_to_tokens(a[at]) if at < len(a) else None,
                    "original_token_kept": kept,
                },
            }
        )
    task.generations = gens
    diverged = [gr for gr in gens if not gr["identical"]]
    explained = [
        gr for gr in diverged if not gr["prompt_in_vocab"] or not gr["first_difference"]["original_token_kept"]
    ]
    value = len(explained) / len(diverged) if diverged else 1.0
    out["generation_differences_explained"] = MC.metric(
        1.0,
        value,
        {"min": 1},
        "higher",
        differing=len(diverged),
        explained=len(explained),
        criterion="every difference starts where the original's token or prompt is not kept",
    )
    return out


def _next_token_metrics(task) -> dict[str, dict]:
    """Next-token top-1 agreement on in-vocabulary held-out text (everywhere, and where the original's top-1
    is kept), with the perplexity of both models there."""
    ex, acc, keep, keep_mask = task.recipe.export, task.recipe.verify.accuracy, task.keep, task.keep_mask
    orig_ids, new_ids = task.orig_ids, task.new_ids
    sel = lang_rows(task, task.in_vocab, acc.samples)
    s_old = V.lm_scores(task.model, [orig_ids[i] for i in sel], ex.seq_len)
    s_new = V.lm_scores(task.reloaded, [new_ids[i] for i in sel], ex.seq_len)
    # (no rows: a keep_file vocabulary holding no held-out sentence; the agreement is then NaN and fails)
    agree = np.concatenate([np.zeros(0, bool)] + [a == keep[b] for (a, _), (b, _) in zip(s_old, s_new)])
    orig_top = np.concatenate([np.zeros(0, np.int64)] + [a for a, _ in s_old])
    on_kept = keep_mask[orig_top] if orig_top.size else np.zeros(0, bool)
    n_tok = sum(max(0, min(len(orig_ids[i]), ex.seq_len) - 1) for i in sel)
    ppl_old = float(np.exp(sum(n for _, n in s_old) / max(n_tok, 1)))
    ppl_new = float(np.exp(sum(n for _, n in s_new) / max(n_tok, 1)))
    out = {
        "next_token_top1_agreement": MC.metric(
            1.0,
            float(agree.mean()) if agree.size else float("nan"),
            {"min": acc.min_top1_agreement},
            "higher",
            documents=len(sel),
            positions=int(agree.size),
            perplexity_in_vocab={"original": ppl_old, "trimmed": ppl_new},
            original_top1_kept=float(on_kept.mean()) if on_kept.size else None,
        )
    }
    kept_agree = float(agree[on_kept].mean()) if on_kept.any() else 1.0
    out["top1_agreement_where_kept"] = MC.metric(
        1.0,
        kept_agree,
        {"min": 0.999},
        "higher",
        positions=int(on_kept.sum()),
        criterion="positions whose original top-1 is kept (rounding ties aside)",
    )
    return out


def _perplexity_metric(task) -> dict[str, dict]:
    """The perplexity per character's increase on all held-out documents, each model on its own
    tokenization."""
    ex, acc, texts = task.recipe.export, task.recipe.verify.accuracy, task.texts
    sel = evenly(list(range(len(texts))), acc.samples)
    nll_old = sum(n for _, n in V.lm_scores(task.model, [task.orig_ids[i] for i in sel], ex.seq_len))
    nll_new = sum(n for _, n in V.lm_scores(task.reloaded, [task.new_ids[i] for i in sel], ex.seq_len))
    chars = sum(len(texts[i]) for i in sel)
    pc_old, pc_new = float(np.exp(nll_old / chars)), float(np.exp(nll_new / chars))
    return {
        "perplexity_per_char_increase": MC.metric(
            0.0,
            pc_new / pc_old - 1,
            {"max": acc.max_perplexity_increase},
            "lower",
            perplexity_per_char={"original": pc_old, "trimmed": pc_new},
            documents=len(sel),
            note="exp(NLL / characters) on all held-out documents, each model on its own tokenization "
            "(documents truncated to export.seq_len tokens)",
        )
    }
