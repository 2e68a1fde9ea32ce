"""Model surgery for a trimmed vocabulary: embedding rows, output head rows (weight and bias), other
vocabulary-sized vectors (``final_logits_bias``-style), tied weights kept tied, config and
generation-config ids remapped; then ``save_pretrained``, reload, and a check of every tensor
against the expected slices of the original (a reload that silently re-initialises a tensor, as
``ignore_mismatched_sizes`` can, is caught here)."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError

# Config fields holding token ids (ints or lists of ints).
ID_FIELDS = (
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "unk_token_id",
    "sep_token_id",
    "cls_token_id",
    "mask_token_id",
    "decoder_start_token_id",
    "forced_bos_token_id",
    "forced_eos_token_id",
)
ID_LIST_FIELDS = ("suppress_tokens", "begin_suppress_tokens")


@dataclass
class VocabTensors:
    """Names (state-dict keys) of the tensors indexed by the vocabulary, and along which axis."""

    axes: dict[str, int]
    embedding: str
    head: str | None
    tied: bool


def vocab_tensors(model: nn.Module, vocab_rows: int) -> VocabTensors:
    """Find the embedding and head; refuse a model whose head is not a plain linear over the
    vocabulary or that has other tensors with a vocabulary-sized axis we do not understand."""
    emb = model.get_input_embeddings()
    if not isinstance(emb, nn.Embedding) or emb.weight.shape[0] != vocab_rows:
        raise InputError(
            f"model {type(model).__name__}: input embedding is {type(emb).__name__} "
            f"{tuple(getattr(emb, 'weight', torch.empty(0)).shape)}, not a {vocab_rows}-row nn.Embedding"
        )
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    names_of = {}
    for n, p in params.items():
        names_of.setdefault(id(p), []).append(n)
    emb_name = names_of[id(emb.weight)][0]
    head_name, tied = None, False
    if head is not None:
        if type(head) is not nn.Linear or head.out_features != vocab_rows:
            raise InputError(
                f"model {type(model).__name__}: output head is {type(head).__name__}"
                f"{' with ' + str(head.out_features) + ' outputs' if isinstance(head, nn.Linear) else ''}, "
                f"not a plain nn.Linear over the {vocab_rows}-token vocabulary; trimming it is not supported"
            )
        tied = head.weight is emb.weight
        head_name = names_of[id(head.weight)][-1] if not tied else emb_name
    axes = dict.fromkeys(names_of[id(emb.weight)], 0)
    seen = {id(emb.weight)}
    for p in (getattr(head, "weight", None), getattr(head, "bias", None)):
        if p is not None and id(p) not in seen:
            axes.update(dict.fromkeys(names_of[id(p)], 0))
            seen.add(id(p))
    for n, t in [*params.items(), *buffers.items()]:
        if id(t) in seen or vocab_rows not in t.shape:
            continue  # aliases of a handled tensor are in axes already (names_of lists them all)
        if t.dim() == 1 or (t.dim() == 2 and t.shape[0] == 1 and t.shape[1] == vocab_rows):
            # output bias kept outside the head (BertForMaskedLM, mBART final_logits_bias)
            axes.update(dict.fromkeys(names_of.get(id(t), [n]), t.dim() - 1))
            seen.add(id(t))
            continue
        raise InputError(
            f"model {type(model).__name__}: tensor {n} {tuple(t.shape)} has a vocabulary-sized axis "
            "but is neither the input embedding nor a plain linear head; trimming it is not supported"
        )
    return VocabTensors(axes=axes, embedding=emb_name, head=head_name, tied=tied)


def _remap_id(v, old2new: np.ndarray, where: str):
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return [_remap_id(x, old2new, where) for x in v]
    if not 0 <= v < len(old2new) or old2new[v] < 0:
        raise InputError(f"{where}: token id {v} is not kept by the trim")
    return int(old2new[v])


def config_ids(config) -> set[int]:
    """Token ids named by a (generation) config: they must survive the trim."""
    out: set[int] = set()
    for f in (*ID_FIELDS, *ID_LIST_FIELDS):
        v = getattr(config, f, None)
        if v is None:
            continue
        out.update(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]) if x is not None and x >= 0)
    return out


def remap_config(config, old2new: np.ndarray, what: str) -> dict:
    """Remap every id field in place; returns {field: [old, new]} for the report."""
    changed = {}
    for f in (*ID_FIELDS, *ID_LIST_FIELDS):
        v = getattr(config, f, None)
        if v is None:
            continue
        new = _remap_id(v, old2new, f"{what}.{f}")
        setattr(config, f, new)
        changed[f] = [v, new]
    return changed


def trim_model(model: nn.Module, keep: np.ndarray, vt: VocabTensors) -> nn.Module:
    """A trimmed deep copy of ``model``: every vocabulary tensor indexed by ``keep`` (sorted old ids)
    and put back wherever the original was referenced, so tied weights and aliased biases stay one
    tensor; module classes are kept (Gemma's scaled embedding)."""
    model = copy.deepcopy(model)
    idx = torch.as_tensor(keep, dtype=torch.long)
    named = {
        **dict(model.named_parameters(remove_duplicate=False)),
        **dict(model.named_buffers(remove_duplicate=False)),
    }
    new: dict[int, torch.Tensor] = {}
    for name, axis in vt.axes.items():
        t = named[name]
        if id(t) not in new:
            sliced = t.detach().index_select(axis, idx).clone()
            new[id(t)] = nn.Parameter(sliced, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else sliced
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for k, t in store.items():
                if t is not None and id(t) in new:
                    store[k] = new[id(t)]
    n = len(keep)
    emb = model.get_input_embeddings()
    emb.num_embeddings = n
    if emb.padding_idx is not None:
        hit = np.flatnonzero(np.asarray(keep) == emb.padding_idx)
        emb.padding_idx = int(hit[0]) if len(hit) else None
    head = model.get_output_embeddings() if vt.head is not None else None
    if head is not None:
        head.out_features = n
    model.config.vocab_size = n
    if hasattr(model.config, "get_text_config"):
        text = model.config.get_text_config()
        if text is not model.config and hasattr(text, "vocab_size"):
            text.vocab_size = n
    return model


def expected_state(original: nn.Module, keep: np.ndarray, vt: VocabTensors) -> dict[str, torch.Tensor]:
    """What the saved trimmed checkpoint must hold: the original tensors, vocabulary ones sliced."""
    idx = torch.as_tensor(keep, dtype=torch.long)
    out = {}
    for k, v in original.state_dict().items():
        axis = vt.axes.get(k)
        out[k] = v.detach().index_select(axis, idx) if axis is not None else v.detach()
    return out


def verify_tensors(reloaded: nn.Module, expected: dict[str, torch.Tensor], vt: VocabTensors) -> dict:
    """Compare every tensor of the reloaded model with the expected slice, bit for bit."""
    state = reloaded.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = []
    for k, v in expected.items():
        if k in state and (state[k].shape != v.shape or not torch.equal(state[k], v)):
            mismatched.append(k)
    tied_ok = True
    if vt.tied:
        head = reloaded.get_output_embeddings()
        tied_ok = head is not None and head.weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    return {
        "tensors": len(expected),
        "missing": missing,
        "unexpected": unexpected,
        "mismatched": mismatched,
        "tied_weights": vt.tied,
        "tied_after_reload": tied_ok,
        "passed": not (missing or unexpected or mismatched) and tied_ok,
    }


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


ID_MAP = "new_to_old_ids.json"


def save_trimmed(model: nn.Module, path: Path, keep: np.ndarray) -> None:
    """save_pretrained plus the id map: entry i is the original id of new id i."""
    model.save_pretrained(path)
    (path / ID_MAP).write_text(json.dumps([int(i) for i in keep]) + "\n")
    umask = os.umask(0)
    os.umask(umask)
    for f in path.iterdir():  # save_pretrained leaves the weights private (0600); the folder is meant to be shipped
        os.chmod(f, 0o666 & ~umask)
