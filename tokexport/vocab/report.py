"""report.md and the console summary of a vocab-trim report (tokexport.report dispatches here by kind)."""
from __future__ import annotations

import json

from rich.console import Group
from rich.table import Table
from rich.text import Text

from ..report import fmt_value


def _fmt(v) -> str:
    return fmt_value(v, float_format=".6g")


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _summary_rows(r: dict) -> list[list[str]]:
    m, t, art = r["model"], r["tokenizer"], r["artifacts"]
    rows = [
        ["parameters", f"{m['params']:,}", f"{m['params_trimmed']:,}", f"{m['params_trimmed'] / m['params']:.3f}×"],
        ["vocabulary", f"{t['vocab_size']:,}", f"{t['vocab_size_trimmed']:,}", f"{t['vocab_size_trimmed'] / t['vocab_size']:.3f}×"],
        ["ONNX bytes", f"{art['baseline_onnx_bytes']:,}", f"{art['onnx_bytes']:,}",
         f"{art['onnx_bytes'] / art['baseline_onnx_bytes']:.3f}×"],
    ]
    b = r.get("bench")
    if b:
        rows.append([f"forward ms (batch {b['batch']}, seq {b['seq_len']})", f"{b['baseline_ms']:.2f}", f"{b['trimmed_ms']:.2f}",
                     f"{b['speedup']:.3f}× faster"])
        ls = b["load_s"]
        rows.append(["load s (PyTorch)", f"{ls['pytorch_original']:.2f}", f"{ls['pytorch_trimmed']:.2f}", ""])
        rows.append(["load s (onnxruntime session)", f"{ls['onnx_original']:.2f}", f"{ls['onnx_trimmed']:.2f}", ""])
        if "lm_head_share" in b:
            rows.append(["LM head share of MACs", _pct(b["lm_head_share"]["original"]), _pct(b["lm_head_share"]["trimmed"]), ""])
    return rows


def _coverage_rows(r: dict) -> list[list[str]]:
    c = r["coverage"]
    rows = [["mining part (running text)", f"{c['mining']['tokens']:,}", _pct(c["mining"]["token_coverage"]), "—"]]
    rows.append(["held-out (all)", f"{c['heldout']['tokens']:,}", _pct(c["heldout"]["token_coverage"]),
                 f"{c['heldout']['documents_fully_in_vocab']}/{c['heldout']['documents']}"])
    for lang, v in c["heldout_by_language"].items():
        rows.append([f"held-out {lang}", f"{v['tokens']:,}", _pct(v["token_coverage"]),
                     f"{v['documents_fully_in_vocab']}/{v['documents']}"])
    return rows


def _parity_rows(r: dict) -> list[list[str]]:
    return [[name, _fmt(p["max_abs_diff"]), _fmt(p["mean_abs_diff"]), f"{p['atol']:g} / {p['mean_atol']:g}", _fmt(p["passed"])]
            for name, p in (("model.onnx vs trimmed PyTorch", r["parity"]), ("baseline.onnx vs original PyTorch", r["parity_baseline"]))]


def _accuracy_rows(r: dict) -> list[list[str]]:
    return [[name, _fmt(m["value"]), m["threshold"] or "—", _fmt(m["passed"])] for name, m in r["accuracy"]["metrics"].items()]


def _table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(row) + " |" for row in rows])


def render_markdown(r: dict) -> str:
    m, t, tr, c = r["model"], r["tokenizer"], r["trim"], r["coverage"]
    oov = c["heldout_oov"]
    lines = [
        f"# tokexport vocabulary trim — {r['recipe'].get('name') or r['recipe_path']}",
        "",
        f"**Result: {'PASS' if r['passed'] else 'FAIL'}**" + (f" — {'; '.join(r['failures'])}" if r["failures"] else ""),
        "",
        f"- Model: `{m['source']}` ({m['source_kind']}, {m['class']}, {m['architecture']}, tied embeddings: {m['tied_embeddings']})",
        f"- Tokenizer: {t['model_type']} ({t['family']}); out-of-vocabulary text: {t['oov_behaviour']}",
        (f"- Kept {tr['kept']:,} ids: {tr['mined']:,} mined (of {tr['eligible']:,} seen ≥ {tr['min_frequency']} times; target "
        f"{tr['target_vocab_size']}), required {json.dumps(tr['required'])}, BPE merge-path closure +{tr['bpe_closure_added']}, "
        f"special tokens dropped by pattern {tr['special_dropped']}"),
        f"- Config ids remapped: {json.dumps(tr['config_ids'])}; generation config: {json.dumps(tr['generation_config_ids'])}",
        (f"- Export: inputs input_ids/attention_mask [{r['export']['batch']}, {r['export']['seq_len']}], opset {r['export']['opset']} "
        f"({r['export']['exporter']}), outputs {json.dumps(r['export']['outputs'])}"),
        "",
        "## Size and speed (original → trimmed)",
        _table(["", "original", "trimmed", "ratio"], _summary_rows(r)),
        "",
        "## Coverage (original tokenization, share of tokens kept)",
        _table(["text", "tokens", "token coverage", "sentences fully in vocabulary"], _coverage_rows(r)),
        "",
        (f"Held-out sentences with out-of-vocabulary pieces: {oov['documents']} ({oov['original_tokens']:,} tokens originally, "
        f"{oov['trimmed_tokens']:,} after trimming, {oov['unk_tokens']} unk, {oov['byte_tokens']} byte tokens)."),
        "",
        "## Checkpoint (save_pretrained → reload → every tensor vs the expected slice)",
        (f"- {r['checkpoint']['tensors']} tensors; mismatched {r['checkpoint']['mismatched'][:5]}, missing "
        f"{r['checkpoint']['missing'][:5]}, unexpected {r['checkpoint']['unexpected'][:5]}; tied after reload: "
        f"{r['checkpoint']['tied_after_reload']} → {_fmt(r['checkpoint']['passed'])}"),
        "",
        "## Parity (ONNX Runtime vs PyTorch, real positions)",
        _table(["graph", "max abs diff", "mean abs diff", "atol / mean atol", "result"], _parity_rows(r)),
        "",
        "## Accuracy against the original",
        _table(["check", "value", "threshold", "result"], _accuracy_rows(r)),
    ]
    gens = r["accuracy"].get("generations")
    if gens:
        def first_difference(g: dict) -> str:
            if g["identical"]:
                return "identical"
            d = g["first_difference"]
            why = "prompt not in vocabulary" if not g["prompt_in_vocab"] else (
                f"original's token {d['original_token']!r} {'kept' if d['original_token_kept'] else 'not kept'}")
            return f"from token {d['position']}: {why}"

        lines += ["", "## Greedy generations", _table(["prompt", "original", "trimmed", "first difference"],
                  [[g["prompt"], g["original"].replace("\n", " ").replace("|", "\\|"),
                    g["trimmed"].replace("\n", " ").replace("|", "\\|"), first_difference(g)] for g in gens])]
    if t["files"]:
        lines += ["", "## Tokenizer files", *[f"- {n}" for n in t["files"]]]
    art = r["artifacts"]
    lines += ["", "## Artifacts",
              f"- `{art['onnx']}` sha256 `{art['onnx_sha256']}` ({art['onnx_bytes']:,} bytes)",
              f"- `{art['baseline_onnx']}` sha256 `{art['baseline_onnx_sha256']}` ({art['baseline_onnx_bytes']:,} bytes)",
              f"- `{art['model_dir']}/`: trimmed model (save_pretrained) and tokenizer; `{art['id_map']}`: new id → original id"]
    if r.get("trt_check"):
        tc = r["trt_check"]
        lines += ["", f"## TensorRT {tc['target']} compatibility (static checks, no GPU)"]
        lines += [f"- {f['level']}: {f['code']} — {f['message']}" for f in tc["findings"]] or ["- no findings"]
    return "\n".join(lines) + "\n"


def console_summary(r: dict):
    parts = []
    for title, header, rows in (("original → trimmed", ["", "original", "trimmed", "ratio"], _summary_rows(r)),
                                ("coverage", ["text", "tokens", "coverage", "sentences in vocab"], _coverage_rows(r)),
                                ("parity", ["graph", "max abs", "mean abs", "tolerance", ""], _parity_rows(r)),
                                ("accuracy against the original", ["check", "value", "threshold", ""], _accuracy_rows(r))):
        t = Table(title=title, show_edge=False)
        for h in header:
            t.add_column(h)
        for row in rows:
            t.add_row(*row)
        parts.append(t)
    parts.append(Text("PASS", style="bold green") if r["passed"] else Text("FAIL: " + "; ".join(r["failures"]), style="bold red"))
    return Group(*parts)
