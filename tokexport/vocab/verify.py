"""Checks of a trimmed model against the original: tokenizer remap on held-out text, ONNX vs PyTorch
parity at the static shape, and accuracy — encoders: exact outputs on in-vocabulary text and
embedding cosine on all held-out text; decoders: identical greedy generations, next-token top-1
agreement and perplexity per character."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..runners import OrtRunner

Feed = dict[str, np.ndarray]


# ---- used only by tokexport/vocab/pipeline.py (the pre-driver pipeline, to be deleted): metric, run_rows,
# torch_fn, ort_fn, _masked, compare, parity and tokenizer_remap; tokexport.tasks.vocab_trim uses
# tokexport.stages (runners, compare, metric) instead.
def metric(value: float, passed: bool | None, threshold: str | None, **detail) -> dict:
    return {"value": float(value), "threshold": threshold, "passed": passed, **detail}


def pad_rows(id_lists: Sequence[Sequence[int]], seq_len: int, pad_id: int) -> Feed:
    """Right-pad/truncate to the static sequence length of the exported graphs."""
    ids = np.full((len(id_lists), seq_len), pad_id, dtype=np.int64)
    mask = np.zeros((len(id_lists), seq_len), dtype=np.int64)
    for r, row in enumerate(id_lists):
        row = list(row)[:seq_len]
        ids[r, :len(row)] = row
        mask[r, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def run_rows(fn: Callable[[Feed], dict[str, np.ndarray]], feed: Feed, batch: int | None) -> dict[str, np.ndarray]:
    """Run ``fn`` over the rows of ``feed`` in chunks of ``batch`` (a fixed-batch graph gets its last
    chunk padded by repeating the last row; the extra rows are dropped)."""
    n = len(feed["input_ids"])
    step = batch or 8
    outs: dict[str, list[np.ndarray]] = {}
    for s in range(0, n, step):
        chunk = {k: v[s:s + step] for k, v in feed.items()}
        real = len(chunk["input_ids"])
        if batch and real < batch:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch - real, axis=0)]) for k, v in chunk.items()}
        for k, v in fn(chunk).items():
            outs.setdefault(k, []).append(v[:real])
    return {k: np.concatenate(v) for k, v in outs.items()}


def torch_fn(graph: torch.nn.Module) -> Callable[[Feed], dict[str, np.ndarray]]:
    def fn(feed: Feed) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = graph(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]))
        return {k: v.float().numpy() for k, v in zip(graph.outputs, out)}
    return fn


def ort_fn(runner: OrtRunner) -> Callable[[Feed], dict[str, np.ndarray]]:
    return lambda feed: runner.infer(feed)


def _masked(name: str, out: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Values at real (non-padding) positions only: padded positions are not part of the contract."""
    if out.ndim >= 2 and out.shape[:2] == mask.shape and name != "sentence_embedding":
        return out[mask.astype(bool)]
    return out


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, dict]:
    out = {}
    for k, value in a.items():
        d = np.abs(_masked(k, value, mask).astype(np.float64) - _masked(k, b[k], mask).astype(np.float64))
        out[k] = {"max_abs_diff": float(d.max()) if d.size else 0.0, "mean_abs_diff": float(d.mean()) if d.size else 0.0}
    return out


def parity(onnx_out: dict[str, np.ndarray], torch_out: dict[str, np.ndarray], mask: np.ndarray, atol: float,
           mean_atol: float) -> dict:
    """Same report shape as tokexport.verify.parity (every output, real positions)."""
    outputs, ok = {}, True
    for name, r in torch_out.items():
        g = onnx_out.get(name)
        if g is None or g.shape != r.shape or not np.all(np.isfinite(g)):
            outputs[name] = {"error": "missing, wrong shape or non-finite ONNX output", "passed": False}
            ok = False
            continue
        entry = compare({name: g}, {name: r}, mask)[name]
        if name == "logits":
            m = mask.astype(bool)
            entry["top1_agreement"] = float((g.argmax(-1)[m] == r.argmax(-1)[m]).mean())
        entry["passed"] = bool(entry["max_abs_diff"] <= atol and entry["mean_abs_diff"] <= mean_atol)
        ok &= entry["passed"]
        outputs[name] = entry
    return {"max_abs_diff": max((o.get("max_abs_diff", float("inf")) for o in outputs.values()), default=0.0),
            "mean_abs_diff": max((o.get("mean_abs_diff", float("inf")) for o in outputs.values()), default=0.0),
            "atol": atol, "mean_atol": mean_atol, "samples": len(mask), "outputs": outputs, "passed": bool(ok)}


def remap_mismatches(orig_ids: Sequence[Sequence[int]], trimmed_ids: Sequence[Sequence[int]], keep_mask: np.ndarray,
                     old2new: np.ndarray) -> tuple[list[int], list[int]]:
    """The documents whose original ids are all kept, and those of them on which the trimmed tokenizer
    does not give old2new of the original ids (it must give exactly that)."""
    in_vocab = [i for i, ids in enumerate(orig_ids) if keep_mask[np.asarray(ids, dtype=np.int64)].all()]
    bad = [i for i in in_vocab if list(old2new[np.asarray(orig_ids[i], dtype=np.int64)]) != list(trimmed_ids[i])]
    return in_vocab, bad


def tokenizer_remap(orig_ids: Sequence[Sequence[int]], trimmed_ids: Sequence[Sequence[int]], keep_mask: np.ndarray,
                    old2new: np.ndarray) -> dict:
    """On documents whose original ids are all kept, the trimmed tokenizer must give old2new of them."""
    in_vocab, bad = remap_mismatches(orig_ids, trimmed_ids, keep_mask, old2new)
    share = 1 - len(bad) / len(in_vocab) if in_vocab else 0.0
    return metric(share, bool(in_vocab) and not bad, "= 1 (every in-vocabulary held-out sentence)",
                  documents=len(in_vocab), mismatched_documents=bad[:10])


def oov_behaviour(orig_ids: Sequence[Sequence[int]], trimmed_ids: Sequence[Sequence[int]], keep_mask: np.ndarray,
                  unk_new: int | None, byte_new: set[int]) -> dict:
    """What the trimmed tokenizer emits on held-out documents with out-of-vocabulary pieces."""
    docs = [i for i, ids in enumerate(orig_ids) if not keep_mask[np.asarray(ids, dtype=np.int64)].all()]
    orig_n = sum(len(orig_ids[i]) for i in docs)
    new = [t for i in docs for t in trimmed_ids[i]]
    return {"documents": len(docs), "original_tokens": orig_n, "trimmed_tokens": len(new),
            "length_ratio": len(new) / orig_n if orig_n else 1.0,
            "unk_tokens": sum(1 for t in new if t == unk_new) if unk_new is not None else 0,
            "byte_tokens": sum(1 for t in new if t in byte_new)}


def greedy_generations(model, prompts_ids: list[list[int]], max_new_tokens: int, pad_id: int | None) -> list[list[int]]:
    out = []
    for ids in prompts_ids:
        x = torch.tensor([ids])
        with torch.inference_mode():
            y = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                               do_sample=False, num_beams=1, pad_token_id=pad_id)
        out.append(y[0, len(ids):].tolist())
    return out


def lm_scores(model, id_lists: Sequence[Sequence[int]], seq_len: int) -> list[tuple[np.ndarray, float]]:
    """Per document: next-token argmax at each position and the summed NLL of the document's tokens."""
    out = []
    for ids in id_lists:
        ids = list(ids)[:seq_len]
        if len(ids) < 2:
            out.append((np.zeros(0, dtype=np.int64), 0.0))
            continue
        x = torch.tensor([ids])
        with torch.inference_mode():
            logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False).logits[0].float()
        logp = torch.log_softmax(logits[:-1], dim=-1)
        nll = -logp.gather(1, x[0, 1:, None]).sum().item()
        out.append((logits[:-1].argmax(-1).numpy(), nll))
    return out
