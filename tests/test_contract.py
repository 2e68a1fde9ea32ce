"""Contract over every registered adapter × method (new ones are covered on registration):
keep-everything equals the original, token counts follow the plan, the patch is reversible, and
the exported static graph matches PyTorch. For merging methods (ToMe) keep-everything runs every
block as its two halves (``Adapter.halves``), so it also checks that the halves compose to the host
block's own forward."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY, TINY_KINDS
from torch import nn

from tokexport.adapters import ADAPTERS, adapter_for
from tokexport.errors import InputError
from tokexport.export import export_onnx
from tokexport.load import load_model
from tokexport.reduce import METHODS
from tokexport.reduce.patch import reduced
from tokexport.reduce.schedule import plan
from tokexport.stages.runners import OrtRunner


def _setup(tiny_models, kind):
    lm = load_model(str(tiny_models[kind]), tiny_models[kind].parent)
    kwargs = lm.adapter.forward_kwargs(lm.image_size)

    def fn(x):
        return lm.adapter.outputs(lm.model, lm.model(pixel_values=x, **kwargs))

    return lm, fn


def _method(name, **kw):
    cls = METHODS[name]
    return cls(cls.config_cls(method=name, **kw))


def _unsupported(lm, m) -> bool:
    """Methods that need a CLS token must refuse a model without one, with a one-line InputError."""
    try:
        m.check(lm.adapter.n_prefix())
    except InputError as e:
        assert lm.adapter.n_prefix() == 0 and "CLS" in str(e) and "\n" not in str(e)
        with pytest.raises(InputError):
            plan_ = plan(m.config, lm.adapter.n_tokens(lm.image_size), 0, lm.adapter.num_layers)
            with reduced(lm.model, lm.adapter, plan_, m):
                pass
        return True
    return False


def _n_prefix(kind: str) -> int:
    """The prefix tokens (CLS, distillation, registers) of a tiny kind, from its config alone."""
    import transformers as T

    cls = {
        "vit-classifier": T.ViTConfig,
        "vit": T.ViTConfig,
        "deit-teacher": T.DeiTConfig,
        "dinov2": T.Dinov2Config,
        "clip-vision": T.CLIPVisionConfig,
        "siglip-vision": T.SiglipVisionConfig,
    }[kind]
    return adapter_for(cls(**TINY)).n_prefix()


def _runs_on(kind: str, name: str) -> bool:
    try:
        _method(name, prune_layers=[1, 2], keep_rate=[0.5, 0.5]).check(_n_prefix(kind))
    except InputError:
        return False
    return True


# (kind, method) pairs: the ones a method runs on, and the ones it must refuse (a method that needs a CLS
# token on a model without one); each pair is one test case, none is skipped
PAIRS = [(k, n) for k in TINY_KINDS for n in sorted(METHODS)]
SUPPORTED = [p for p in PAIRS if _runs_on(*p)]
REFUSED = [p for p in PAIRS if not _runs_on(*p)]


def test_the_refused_pairs_are_the_methods_needing_cls_on_a_model_without_one():
    assert len(SUPPORTED) >= len(TINY_KINDS) * 2 and REFUSED, (SUPPORTED, REFUSED)
    assert all(_n_prefix(k) == 0 for k, _ in REFUSED), REFUSED


@pytest.mark.parametrize("kind,name", REFUSED)
def test_a_method_needing_cls_refuses_a_model_without_one(tiny_models, kind, name):
    lm, _ = _setup(tiny_models, kind)
    for cfg in ({"prune_layers": [0, 2], "keep_rate": 1.0}, {"prune_layers": [1, 2], "keep_rate": [0.5, 0.5]}):
        assert _unsupported(lm, _method(name, **cfg)), (kind, name, cfg)


def _x(lm, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, lm.image_size, lm.image_size, generator=g)


def test_every_family_has_a_tiny_checkpoint():
    covered = {
        adapter_for(__import__("transformers").AutoConfig.for_model(t)).family
        for t in ("vit", "deit", "dinov2", "clip_vision_model", "siglip_vision_model")
    }
    assert covered == set(ADAPTERS)


@pytest.mark.parametrize("kind,name", SUPPORTED)
def test_keep_everything_equals_original(tiny_models, kind, name):
    lm, fn = _setup(tiny_models, kind)
    x = _x(lm)
    n = lm.adapter.n_tokens(lm.image_size)
    m = _method(name, prune_layers=[0, 2], keep_rate=1.0)
    assert not _unsupported(lm, m)
    stages = plan(m.config, n, lm.adapter.n_prefix(), lm.adapter.num_layers)
    with torch.no_grad():
        ref = fn(x)
        with reduced(lm.model, lm.adapter, stages, m):
            got = fn(x)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,name", SUPPORTED)
def test_token_counts_patch_reversible_and_onnx_parity(tiny_models, kind, name, tmp_path):
    lm, fn = _setup(tiny_models, kind)
    ad = lm.adapter
    n = ad.n_tokens(lm.image_size)
    m = _method(name, prune_layers=[1, 2], keep_rate=[0.5, 0.5])
    assert not _unsupported(lm, m)
    stages = plan(m.config, n, ad.n_prefix(), ad.num_layers)
    x = _x(lm)
    layer_types = [type(b) for b in ad.layers(lm.model)]
    with torch.no_grad():
        before = fn(x)
        with reduced(lm.model, ad, stages, m):
            red = fn(x)
            export_onnx(lm.model, fn, x[:1], tmp_path / "m.onnx", 17, dynamic_batch=True)
        after = fn(x)
    # the patch is gone and nothing changed
    assert [type(b) for b in ad.layers(lm.model)] == layer_types
    for k in before:
        torch.testing.assert_close(after[k], before[k], atol=0, rtol=0)
    if "last_hidden_state" in red:
        assert red["last_hidden_state"].shape[1] == stages[-1].tokens_out
    # static graph: token dims are constants, batch is the only symbolic dim
    g = onnx.load(tmp_path / "m.onnx").graph
    for o in g.output:
        dims = o.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch"
        assert all(d.HasField("dim_value") for d in dims[1:])
    assert not [nd for nd in g.node if nd.op_type == "NonZero"]
    # parity on other inputs than the export example, and another batch size
    x2 = _x(lm, b=3, seed=1)
    with torch.no_grad(), reduced(lm.model, ad, stages, m):
        ref = fn(x2)
    out = OrtRunner(tmp_path / "m.onnx").infer({"pixel_values": x2.numpy()})
    for k in ref:
        np.testing.assert_allclose(out[k], ref[k].numpy(), atol=1e-4)


@pytest.mark.parametrize("kind", TINY_KINDS)
def test_log_size_bias_reaches_the_host_attention(tiny_models, kind):
    """Proportional attention passes log(size) through the host attention's ``attention_mask``. A token of
    size s must weigh as s copies of it: with the bias, the attention half equals the same half run on the
    sequence with every token repeated s times (read at each token's first copy). Checks every family's
    attention function actually adds a float mask to its logits."""
    lm, _ = _setup(tiny_models, kind)
    halves = lm.adapter.halves(lm.adapter.layers(lm.model)[0])
    g = torch.Generator().manual_seed(0)
    n, d = 9, lm.config.hidden_size
    x = torch.randn(2, n, d, generator=g)
    size = torch.tensor([1, 3, 1, 2, 1, 1, 4, 1, 2])
    bias = size.float().log()[None, None, None, :].expand(2, 1, 1, n)
    first = torch.cumsum(size, 0) - size
    with torch.no_grad():
        got = halves.attention(x, bias)
        want = halves.attention(torch.repeat_interleave(x, size, dim=1))[:, first]
        plain = halves.attention(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert (got - plain).abs().max() > 1e-3


def test_prefix_tokens_survive(tiny_models):
    """DeiT's CLS and distillation tokens are never pruned: with them kept, the logits head still works
    and the first two output tokens equal a run that prunes after the last block only."""
    lm, fn = _setup(tiny_models, "deit-teacher")
    assert lm.adapter.n_prefix() == 2
    m = _method("topk-cls", prune_layers=[3], keep=[3])
    stages = plan(m.config, lm.adapter.n_tokens(lm.image_size), 2, 4)
    x = _x(lm)
    with torch.no_grad():
        ref = fn(x)
        with reduced(lm.model, lm.adapter, stages, m):
            got = fn(x)
    # pruning after the last block leaves the prefix tokens (and so the logits) untouched
    torch.testing.assert_close(got["logits"], ref["logits"], atol=1e-5, rtol=1e-5)


def test_unrecognised_structure_is_an_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])

    import transformers

    ad = adapter_for(transformers.ViTConfig())
    with pytest.raises(InputError, match="no transformer blocks"):
        ad.layers(Odd())
    with pytest.raises(InputError, match="no query/key projections"):
        ad.qk(nn.Linear(2, 2))


def test_unsupported_architecture_and_family_mismatch():
    import transformers

    with pytest.raises(InputError, match="unsupported architecture"):
        adapter_for(transformers.BertConfig())
    with pytest.raises(InputError, match="does not match"):
        adapter_for(transformers.ViTConfig(), family="dinov2")
    with pytest.raises(InputError, match="unknown family"):
        adapter_for(transformers.ViTConfig(), family="swin")
