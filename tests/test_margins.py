"""Near-tie aware parity: selections note their decision margins only while recording, and the parity
check leaves out exactly the samples that differ *and* were decided within rounding noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokexport.reduce.common import keep_topk
from tokexport.reduce.margins import note_boundary, recording, sample_margins
from tokexport.reduce.tome import bipartite_merge
from tokexport.stages.compare import parity


def test_boundary_gap_is_relative_and_per_sample():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 1.0 + 1e-6, 0.5, 0.0]])
    with recording() as rec:
        note_boundary(scores, 2)
        note_boundary(scores, 1)
    m = sample_margins(rec, 2)
    assert m[0] == pytest.approx(0.25)  # min over decisions: (4 - 3) / 4 at k=1 vs (3 - 2) / 3 at k=2
    assert m[1] == pytest.approx(1e-6, rel=0.1)  # the top two of sample 1 are a near-tie (float32: 1 + 9.5e-7)


def test_no_recording_outside_the_context_and_no_decision_means_inf():
    note_boundary(torch.rand(2, 5), 2)  # no recorder: nothing happens
    with recording() as rec:
        keep_topk(torch.rand(2, 5), 5, 1)  # keeping everything decides nothing
    assert rec == [] and sample_margins(rec, 2) == [float("inf")] * 2


def test_tome_notes_merge_and_partner_margins():
    torch.manual_seed(0)
    x, keys = torch.randn(3, 17, 8), torch.randn(3, 2, 17, 4)
    with recording() as rec:
        bipartite_merge(x, keys, None, 1, 5)
    assert len(rec) == 2 and all(r.shape == (3,) for r in rec)
    keys[1] = keys[1, :, [0, *([1] * 16)]]  # sample 1: every token the same key -> all exact ties
    with recording() as rec:
        bipartite_merge(x, keys, None, 1, 5)
    assert sample_margins(rec, 3)[1] == 0.0


def _parity(ref, got, margins, tie=1e-4):
    return parity({"out": got.copy()}, {"out": ref.copy()}, 1e-3, 1e-4, margins=margins, tie_margin=tie)


def test_parity_leaves_out_only_differing_near_ties():
    ref = np.zeros((4, 3), np.float32)
    got = ref.copy()
    got[2] = 5.0  # sample 2 took the other side of a tie
    r = _parity(ref, got, [1.0, 1.0, 1e-7, 1e-7])
    assert r["passed"] and r["decisive_samples"] == 3 and r["max_abs_diff"] == 0.0
    assert [t["sample"] for t in r["near_ties"]] == [2] and r["near_ties"][0]["max_abs_diff"] == 5.0
    # the same difference on a sample decided by a clear margin is a wrong graph
    r = _parity(ref, got, [1.0, 1.0, 1e-2, 1e-7])
    assert not r["passed"] and r["near_ties"] == [] and r["max_abs_diff"] == 5.0
    # without margins (or with tie_margin 0) every sample counts
    assert not _parity(ref, got, None)["passed"] and not _parity(ref, got, [1e-7] * 4, 0.0)["passed"]


def test_parity_fails_when_most_samples_are_near_ties():
    ref = np.zeros((4, 3), np.float32)
    got = ref + np.array([[5.0], [5.0], [5.0], [0.0]], np.float32)
    r = _parity(ref, got, [1e-7] * 4)
    assert not r["passed"] and len(r["near_ties"]) == 3 and r["decisive_samples"] == 1
