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


@pytest.mark.parametrize("kw,needle", [
    (dict(prune_layers=[2, 12], keep_rate=0.9), "reduction.prune_layers[1]"),
    (dict(prune_layers=[5, 2], keep_rate=0.9), "strictly increasing"),
    (dict(prune_layers=[2, 2], keep_rate=0.9), "strictly increasing"),
    (dict(prune_layers=[2], keep_rate=1.5), "reduction.keep_rate[0]"),
    (dict(prune_layers=[2], keep_rate=0.0), "outside (0, 1]"),
    (dict(prune_layers=[2, 3], keep_rate=[0.5]), "one per layer"),
    (dict(prune_layers=[2, 3], keep=[100, 200]), "reduction.keep[1]"),
    (dict(prune_layers=[2], keep=[300]), "only 256"),
    (dict(prune_layers=[2]), "exactly one of keep_rate"),
    (dict(prune_layers=[2], keep_rate=0.5, keep=[10]), "exactly one of keep_rate"),
    (dict(keep_rate=0.5), "prune_layers: empty"),
])
def test_bad_schedules_name_the_field(kw, needle):
    with pytest.raises(InputError) as e:
        plan(cfg(**kw), 257, 1, 12)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_topk_limit_enforced():
    with pytest.raises(InputError, match="TopK"):
        plan(cfg(prune_layers=[0], keep_rate=0.5), TOPK_LIMIT + 10, 1, 12)
