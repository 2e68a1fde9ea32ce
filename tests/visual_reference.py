"""Plain-PyTorch references of the official visual-token algorithms, one image at a time, the greedy
loops written as Python loops over Python lists (no static-shape tricks): what tokexport's static graphs
(tokexport/vlm/*.py) must reproduce index for index. Written from the published algorithms
(docs/methods/*.md), not copied from any implementation.
"""

from __future__ import annotations

import math

import torch


def divprune_reference(x: torch.Tensor, k: int) -> list[int]:
    """DivPrune (official form): x [N, d] one image's tokens. Cosine distance D; the first pick is the
    column whose second-smallest entry (nearest other token) is largest; every later pick maximises
    the minimum distance to the picks so far, recomputed from the picked rows each step. First-index
    ties (torch.argmax). No guard against re-picking (the official code has none)."""
    xn = x / x.norm(dim=-1, keepdim=True)
    dist = 1.0 - xn @ xn.T
    picked: list[int] = []
    for i in range(k):
        if i == 0:
            score = torch.topk(dist, 2, dim=0, largest=False).values[1]
        else:
            score = dist[picked].min(dim=0).values
        picked.append(int(torch.argmax(score)))
    return sorted(picked)


def visionzip_reference(
    hidden: torch.Tensor, cls_attn: torch.Tensor, keys: torch.Tensor, dominant: int, contextual: int
) -> tuple[list[int], torch.Tensor, list[int], torch.Tensor]:
    """VisionZip (official form, one view, CLS not among the candidates): hidden [P, D] patch features,
    cls_attn [P] the CLS query's attention to each patch summed over heads, keys [P, dh] the patch keys
    averaged over heads. Returns (dominant positions ascending, their tokens, target positions, the
    contextual tokens = target token + MEAN of the tokens assigned to it)."""
    p = hidden.shape[0]
    dom = sorted(int(i) for i in torch.topk(cls_attn, dominant).indices) if dominant else []
    rest = [i for i in range(p) if i not in set(dom)]  # ascending remainder list
    if contextual == 0:
        return dom, hidden[dom], [], hidden[:0]
    kn = keys[rest] / keys[rest].norm(dim=-1, keepdim=True)
    step = max(1, len(rest) // contextual)
    slots = list(range(0, len(rest), step))[:contextual]
    others = [s for s in range(len(rest)) if s not in set(slots)]
    targets = [rest[s] for s in slots]
    sim = kn[others] @ kn[slots].T  # [|others|, contextual] cosine of the head-averaged keys
    members: dict[int, list[int]] = {t: [] for t in range(contextual)}
    for row, o in enumerate(others):
        members[int(torch.argmax(sim[row]))].append(rest[o])  # first index on ties
    ctx = []
    for t, pos in enumerate(targets):
        m = members[t]
        mean = hidden[m].sum(dim=0) / max(1, len(m))
        ctx.append(hidden[pos] + mean)
    return dom, hidden[dom], targets, torch.stack(ctx)


def dart_reference(x: torch.Tensor, k: int, pivots: int) -> list[int]:
    """DART, embedding-level variant (TensorRT Edge-LLM's DartPruner on one visual span, no text
    pivots): pivots = the ``min(pivots, k)`` tokens of largest L1 norm (ties: lower index), kept; then
    for each pivot in that order, the ceil(remaining / pivots left) candidates with the lowest cosine
    similarity to it (ties: lower index) are kept and leave the pool."""
    n = x.shape[0]
    l1 = x.abs().sum(dim=-1).tolist()
    n_piv = min(pivots, k)
    piv = sorted(range(n), key=lambda i: (-l1[i], i))[:n_piv]
    kept = list(piv)
    pool = [i for i in range(n) if i not in set(piv)]
    norms = x.norm(dim=-1)
    for off, pv in enumerate(piv):
        remaining = k - len(kept)
        if remaining <= 0 or not pool:
            break
        take = math.ceil(remaining / (n_piv - off))
        cos = {c: float((x[pv] @ x[c]) / max(float(norms[pv] * norms[c]), 1e-8)) for c in pool}
        chosen = sorted(pool, key=lambda c: (cos[c], c))[:take]
        kept += chosen
        pool = [c for c in pool if c not in set(chosen)]
    return sorted(kept)


def dpp_map_reference(kernel: torch.Tensor, k: int) -> list[int]:
    """Greedy MAP of a DPP (Chen et al. 2018, CDPruner's loop): d = diag(L); each step j = argmax d,
    e = (L[j] − Σ_t c_t[j]·c_t) / sqrt(d_j), append e to c, d −= e², d_j = −inf."""
    d = torch.diagonal(kernel).clone()
    cs: list[torch.Tensor] = []
    picked: list[int] = []
    for _ in range(k):
        j = int(torch.argmax(d))
        picked.append(j)
        e = kernel[j].clone()
        if cs:
            c = torch.stack(cs)  # [t, N]
            e = e - (c[:, j : j + 1] * c).sum(dim=0)
        e = e / torch.sqrt(d[j])
        cs.append(e)
        d = d - e * e
        d[j] = -math.inf
    return sorted(picked)


def cdpruner_reference(
    tokens: torch.Tensor, image_embeds: torch.Tensor, text_embed: torch.Tensor, per_view: list[int], patches: int
) -> list[int]:
    """CDPruner (official form) on one image: tokens [V·P, D] the projected tokens, image_embeds [V·P, E]
    in CLIP's joint space, text_embed [E]; relevance −cos, min–max normalised over all the image's tokens
    (the official batch of crops), then the greedy MAP per view with that view's T."""
    e = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    t = text_embed / text_embed.norm()
    rel = -(e @ t)
    rel = (rel - rel.min() + 1e-6) / (rel.max() - rel.min())
    out: list[int] = []
    for v, kv in enumerate(per_view):
        sl = slice(v * patches, (v + 1) * patches)
        x = tokens[sl] / tokens[sl].norm(dim=-1, keepdim=True)
        kernel = rel[sl].unsqueeze(1) * (x @ x.T) * rel[sl].unsqueeze(0)
        out += [v * patches + i for i in dpp_map_reference(kernel, kv)] if kv else []
    return out
