"""What a vocab-trim report adds to report.md and the console: size and speed (original → trimmed),
coverage per text and language, the trim (budget, ranking, keep list), the checkpoint check and the greedy
generations; read from the report alone (:meth:`VocabTrim.markdown`, :meth:`VocabTrim.console_lines`)."""

from __future__ import annotations

import json


def size_rows(r: dict) -> list[list[str]]:
    m, t, art = r["model"], r["tokenizer"], r["artifacts"]
    rows = [
        ["parameters", f"{m['params']:,}", f"{m['params_trimmed']:,}", f"{m['params_trimmed'] / m['params']:.3f}×"],
        [
            "vocabulary",
            f"{t['vocab_size']:,}",
            f"{t['vocab_size_trimmed']:,}",
            f"{t['vocab_size_trimmed'] / t['vocab_size']:.3f}×",
        ],
        [
            "ONNX bytes",
            f"{art['baseline_onnx_bytes']:,}",
            f"{art['onnx_bytes']:,}",
            f"{art['onnx_bytes'] / art['baseline_onnx_bytes']:.3f}×",
        ],
    ]
    b = r.get("bench")
    if b:
        for batch, row in b["batches"].items():
            rows.append(
                [
                    f"forward ms (batch {batch}, seq {b['seq_len']})",
                    f"{row['baseline_ms']:.2f}",
                    f"{row['reduced_ms']:.2f}",
                    f"{row['speedup']:.3f}× faster",
                ]
            )
        ls = b["load_s"]
        rows.append(["load s (PyTorch)", f"{ls['pytorch_original']:.2f}", f"{ls['pytorch_trimmed']:.2f}", ""])
        if "onnx_original" in ls:
            rows.append(["load s (onnxruntime session)", f"{ls['onnx_original']:.2f}", f"{ls['onnx_trimmed']:.2f}", ""])
        if "lm_head_share" in b:
            rows.append(
                ["LM head share of MACs", _pct(b["lm_head_share"]["original"]), _pct(b["lm_head_share"]["trimmed"]), ""]
            )
    return rows


def coverage_rows(r: dict) -> list[list[str]]:
    c = r["coverage"]
    rows = [
        ["mining part (running text)", f"{c['mining']['tokens']:,}", _pct(c["mining"]["token_coverage"]), "—"],
        [
            "held-out (all)",
            f"{c['heldout']['tokens']:,}",
            _pct(c["heldout"]["token_coverage"]),
            f"{c['heldout']['documents_fully_in_vocab']}/{c['heldout']['documents']}",
        ],
    ]
    for lang, v in c["heldout_by_language"].items():
        rows.append(
            [
                f"held-out {lang}",
                f"{v['tokens']:,}",
                _pct(v["token_coverage"]),
                f"{v['documents_fully_in_vocab']}/{v['documents']}",
            ]
        )
    return rows


def markdown(report: dict) -> list[str]:
    from ..stages.render import md_table

    m, t, tr, c, ck = report["model"], report["tokenizer"], report["trim"], report["coverage"], report["checkpoint"]
    oov, ex, art = c["heldout_oov"], report["export"], report["artifacts"]
    lines = [
        (
            f"- Trimmed: `{m['class']}` ({m['architecture']}, tied embeddings: {m['tied_embeddings']}); tokenizer "
            f"{t['model_type']} ({t['family']}), out-of-vocabulary text: {t['oov_behaviour']}"
        ),
        (
            f"- Kept {tr['kept']:,} ids: {tr['mined']:,} "
            + (
                "listed in the keep file"
                if tr.get("keep_file")
                else f"ranked by expected coverage (of {tr['eligible']:,} with any evidence)"
                if (tr.get("ranking") or {}).get("method") == "coverage"
                else f"mined (of {tr['eligible']:,} seen ≥ {tr['min_frequency']} times; target {tr['target_vocab_size']})"
            )
            + f"; required {json.dumps(tr['required'])}, BPE merge-path closure "
            f"+{tr['bpe_closure_added']}, special tokens dropped by pattern {tr['special_dropped']}"
        ),
        f"- Config ids remapped: {json.dumps(tr['config_ids'])}; generation config: {json.dumps(tr['generation_config_ids'])}",
        (
            f"- Graphs: inputs input_ids/attention_mask [{ex['batch']}, {ex['seq_len']}], outputs "
            f"{json.dumps(ex['outputs'])}"
        ),
        f"- `{art['model_dir']}/`: trimmed model (save_pretrained) and tokenizer; `{art['id_map']}`: new id → original id"
        + (
            f"; `{art['keep_list']}`: the kept original ids (reproduce this vocabulary with `trim.keep_file`)"
            if art.get("keep_list")
            else ""
        ),
        *trim_lines(tr),
        "",
        "## Size and speed (original → trimmed)",
        md_table(["", "original", "trimmed", "ratio"], size_rows(report)),
        "",
        "## Coverage (original tokenization, share of tokens kept)",
        md_table(["text", "tokens", "token coverage", "sentences fully in vocabulary"], coverage_rows(report)),
        "",
        (
            f"Held-out sentences with out-of-vocabulary pieces: {oov['documents']} ({oov['original_tokens']:,} tokens "
            f"originally, {oov['trimmed_tokens']:,} after trimming, {oov['unk_tokens']} unk, {oov['byte_tokens']} byte "
            "tokens)."
        ),
        "",
        "## Checkpoint (save_pretrained → reload → every tensor vs the expected slice)",
        (
            f"- {ck['tensors']} tensors; mismatched {ck['mismatched'][:5]}, missing {ck['missing'][:5]}, unexpected "
            f"{ck['unexpected'][:5]}; tied after reload: {ck['tied_after_reload']} → {'PASS' if ck['passed'] else 'FAIL'}"
        ),
    ]
    gens = report["accuracy"].get("generations")
    if gens:
        lines += [
            "",
            "## Greedy generations",
            md_table(
                ["prompt", "original", "trimmed", "first difference"],
                [[g["prompt"], g["original"], g["trimmed"], _first_difference(g)] for g in gens],
            ),
        ]
    if t["files"]:
        lines += ["", "## Tokenizer files", *[f"- {n}" for n in t["files"]]]
    return lines


def trim_lines(tr: dict) -> list[str]:
    """Budget, ranking and keep-list lines of report.md (absent from reports of older runs)."""
    out = []
    b = tr.get("budget")
    if b:
        limit = " and ".join(
            x
            for x in (
                f"{b['max_params']:,} parameters" if b["max_params"] else "",
                f"{b['max_bytes']:,} bytes at {b['precision']}" if b["max_bytes"] else "",
            )
            if x
        )
        cov = (
            f", held-out token coverage {_pct(b['heldout_token_coverage'])}"
            if b.get("heldout_token_coverage") is not None
            else ""
        )
        by_lang = b.get("heldout_token_coverage_by_language") or {}
        langs = f" ({', '.join(f'{k} {_pct(v)}' for k, v in by_lang.items())})" if len(by_lang) > 1 else ""
        out.append(
            f"- Budget {limit}: {b['fixed_params']:,} parameters outside the vocabulary + {b['params_per_token']} "
            f"per id → at most {b['max_tokens']:,} ids; bought {b['kept']:,} ids = {b['params']:,} parameters "
            f"({b['bytes']:,} bytes at {b['precision']}){cov}{langs}"
        )
    r = tr.get("ranking")
    if r and r.get("method") == "coverage":
        c = r["chosen"]
        out.append(
            f"- Ranking: expected coverage; the dev split ({sum(r['dev_documents'].values())} mining documents) "
            f"chose word-list prior strength {c['prior_strength']:g}, numbers {c['numbers']:g}, model's own "
            f"tokens {c['self_generated']:g} (dev token coverage {_pct(c['dev_token_coverage'])}, "
            f"{len(r['trials'])} blends tried)"
        )
        abl = r.get("heldout_ablation") or {}
        if abl:
            out.append(
                "- Held-out token coverage at the same size (measured after the choice, never used for it): "
                + "; ".join(
                    f"{k} {_pct(v['heldout_token_coverage'])}" if "heldout_token_coverage" in v else f"{k}: n/a"
                    for k, v in abl.items()
                )
            )
    k = tr.get("keep_file")
    if k:
        added = ", ".join(
            f"{reason} +{len(v)} ({', '.join(repr(x['token']) for x in v[:5])}{', …' if len(v) > 5 else ''})"
            for reason, v in k["added"].items()
        )
        out.append(
            f"- Keep file `{k['path']}` ({k['format']}, {k['listed_ids']:,} ids): kept {k['kept']:,}; added for "
            f"the tokenizer to stay valid: {added or 'nothing'}"
        )
    return out


def console_lines(report: dict) -> list[str]:
    out = [
        "original → trimmed: "
        + "; ".join(f"{name} {a} → {b}" + (f" ({ratio})" if ratio else "") for name, a, b, ratio in size_rows(report))
    ]
    out.append(
        "coverage: "
        + "; ".join(
            f"{name} {cov} of {tokens} tokens" + (f", {docs} sentences in vocabulary" if docs != "—" else "")
            for name, tokens, cov, docs in coverage_rows(report)
        )
    )
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
    why = (
        "prompt not in vocabulary"
        if not g["prompt_in_vocab"]
        else (f"original's token {d['original_token']!r} {'kept' if d['original_token_kept'] else 'not kept'}")
    )
    return f"from token {d['position']}: {why}"
