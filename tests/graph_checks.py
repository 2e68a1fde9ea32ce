"""What every reduced graph must satisfy (docs/methods/static-export.md), as one helper for the method tests:
no control flow, scatter or data-dependent shapes, every TopK with a constant K < 3840, and the TensorRT
targets' static checks (jetpack-6.0, jetpack-7.0)."""

from __future__ import annotations

from pathlib import Path

FORBIDDEN = {"Loop", "If", "Scan", "ScatterND", "ScatterElements", "Scatter", "NonZero"}


def assert_static_and_trt_ready(path: Path, targets=("jetpack-6.0", "jetpack-7.0")) -> dict:
    """The graph at ``path`` is static and passes ``check-target`` for ``targets``; returns its inspection."""
    from tokexport.onnx_tools import check_target, inspect_model

    info = inspect_model(path)
    bad = FORBIDDEN & set(info["op_histogram"])
    assert not bad, f"{path.name}: {sorted(bad)}"
    for t in info["topk"]:
        assert t["k_constant"] and t["k"] is not None and 1 <= t["k"] < 3840, t
    for target in targets:
        res = check_target(path, target, lint=False)
        assert res.passed, [f.to_dict() for f in res.errors]
    return info
