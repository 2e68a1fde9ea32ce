import pytest

from tokexport.errors import InputError
from tokexport.reduce.base import ReductionConfig
from tokexport.reduce.schedule import TOPK_LIMIT, plan, tokens_per_layer


def cfg(**kw):
    return ReductionConfig(method="x", **kw)


def test_keep_rate_is_relative_to_tokens_entering_each_step_floor():
    # DINOv2-S at 224: 256 patches + CLS; 0.9/0.8/0.7 of the tokens entering each step.
    st = plan(cfg(prune_layers=[2, 5, 8], keep_rate=[0.9, 0.8, 0.7]), 257, 1, 12)
    assert [(s.layer, s.tokens_in, s.tokens_out) for s in st] == [(2, 257, 231), (5, 231, 185), (8, 185, 129)]
    assert [s.n_keep for s in st] == [230, 184, 128]
    assert tokens_per_layer(st, 257, 12) == [257] * 3 + [231] * 3 + [185] * 3 + [129] * 3


@pytest.mark.parametrize("rule,expected", [("floor", 230), ("ceil", 231), ("round", 230)])
def test_rounding_rules(rule, expected):
    assert plan(cfg(prune_layers=[0], keep_rate=0.9, rounding=rule), 257, 1, 12)[0].n_keep == expected


def test_single_rate_broadcasts_and_prefix_is_kept():
    st = plan(cfg(prune_layers=[1, 2], keep_rate=0.5), 198, 2, 4)  # DeiT: 196 patches + 2 prefix
    assert [s.n_keep for s in st] == [98, 49]
    assert [s.tokens_out for s in st] == [100, 51]


def test_absolute_keep():
    st = plan(cfg(prune_layers=[3, 6], keep=[100, 50]), 257, 1, 12)
    assert [s.tokens_out for s in st] == [101, 51]


def test_no_pruning_is_empty():
    assert plan(cfg(), 257, 1, 12) == []


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"prune_layers": [2, 12], "keep_rate": 0.9}, "reduction.prune_layers[1]"),
        ({"prune_layers": [5, 2], "keep_rate": 0.9}, "strictly increasing"),
        ({"prune_layers": [2, 2], "keep_rate": 0.9}, "strictly increasing"),
        ({"prune_layers": [2], "keep_rate": 1.5}, "reduction.keep_rate[0]"),
        ({"prune_layers": [2], "keep_rate": 0.0}, "outside (0, 1]"),
        ({"prune_layers": [2, 3], "keep_rate": [0.5]}, "one per layer"),
        ({"prune_layers": [2, 3], "keep": [100, 200]}, "reduction.keep[1]"),
        ({"prune_layers": [2], "keep": [300]}, "only 256"),
        ({"prune_layers": [2]}, "exactly one of keep_rate"),
        ({"prune_layers": [2], "keep_rate": 0.5, "keep": [10]}, "exactly one of keep_rate"),
        ({"keep_rate": 0.5}, "prune_layers: empty"),
    ],
)
def test_bad_schedules_name_the_field(kw, needle):
    with pytest.raises(InputError) as e:
        plan(cfg(**kw), 257, 1, 12)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_topk_limit_enforced():
    with pytest.raises(InputError, match="TopK"):
        plan(cfg(prune_layers=[0], keep_rate=0.5), TOPK_LIMIT + 10, 1, 12)


def tome(**kw):
    from tokexport.reduce.tome import ToMeConfig

    return ToMeConfig(method="tome", **kw)


def test_merge_schedule_from_r():
    st = plan(tome(r=9), 257, 1, 12)  # ToMe's constant r: every block
    assert [s.layer for s in st] == list(range(12))
    assert [s.tokens_out for s in st] == [257 - 9 * (i + 1) for i in range(12)]
    assert {(s.kind, s.prop_attn) for s in st} == {("merge", True)}
    st = plan(tome(r=[0, 16, 0, 8] + [0] * 8, prop_attn=False), 257, 1, 12)  # per block; 0 = no merge
    assert [(s.layer, s.tokens_in, s.tokens_out, s.prop_attn) for s in st] == [
        (1, 257, 241, False),
        (3, 241, 233, False),
    ]
    st = plan(tome(prune_layers=[2, 5], r=[10, 20]), 198, 2, 12)  # listed blocks; DeiT's two prefix tokens
    assert [(s.layer, s.n_keep) for s in st] == [(2, 186), (5, 166)]
    assert tokens_per_layer(st, 198, 12) == [198] * 3 + [188] * 3 + [168] * 6
    assert plan(tome(prune_layers=[3], keep_rate=0.5), 257, 1, 12)[0].tokens_out == 129  # generic fields, merged
    assert plan(tome(r=0), 257, 1, 12) == [] and plan(tome(), 257, 1, 12) == []


@pytest.mark.parametrize(
    "kw,needle",
    [
        ({"r": 129}, "reduction.r: 129 tokens merged at block 0"),
        ({"r": [128, 65] + [0] * 10}, "reduction.r[1]: 65 tokens merged at block 1"),
        ({"r": [1, 2]}, "reduction.r: 2 values for a model with 12 blocks"),
        ({"prune_layers": [0], "keep": [100]}, "reduction.keep[0]: 156 tokens merged"),
    ],
)
def test_merges_are_at_most_half(kw, needle):
    with pytest.raises(InputError) as e:
        plan(tome(**kw), 257, 1, 12)
    assert needle in str(e.value) and "\n" not in str(e.value)
