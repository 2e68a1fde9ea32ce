"""Honest baselines of ViT token pruning (recipe ``task: auto | feature-extraction | image-classification``),
evaluated in PyTorch at the method's budget on the same evaluation crops, in the same run (report section
``baselines``, built by :func:`tokexport.stages.baselines.baselines_section`).

- ``random``: at every stage of the method's schedule (same blocks, same kept counts) keep a subset of the
  current tokens drawn uniformly **per image** — a new subset for every image, every stage and every seed
  (``torch.rand`` scores from ``torch.Generator().manual_seed(seed)``, consumed in a fixed order, so a seed
  gives the same draws every run); mean ± sd over the seeds. A baseline, not an export: the deployable
  ``random`` method is one *fixed* random subset for every image.
- ``uniform``: the 2-D lattice of :mod:`tokexport.reduce.uniform_keep` (nested coarse-to-fine square /
  quincunx lattices of the patch grid, chosen by the tokens' original 2-D positions), the same for every
  image.

Merging schedules (ToMe) are compared at the same token counts: the baselines prune after the merge
block instead of merging inside it (the block's MLP then runs on all tokens; the budget says by how many
FLOPs that differs).

Cost: the blocks before the first stage are the same in the original model and in every baseline, so
their output is recorded once while the original model runs on the eval crops (:func:`record_block`)
and every baseline run starts from it (:func:`replaying`): 5 random seeds + uniform cost about
6 × (1 − first stage's share of the encoder) forward passes, in batches under ``torch.inference_mode``.

Per-sample figures (one value per evaluation crop, what the bootstrap resamples): ``feature_cosine``
(cosine of the reduced feature to the original model's), ``instance_top1`` (1 when the reduced feature's
nearest class prototype — prototypes from the ORIGINAL model — is the crop's source photograph) and
``top1_agreement`` (classifiers: 1 when the reduced logits' argmax equals the original's). Their means are
exactly the report's ``accuracy.metrics`` values.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from .. import metrics as M
from ..stages.baselines import BaselineRun
from .base import LayerInputs, Method, ReductionConfig
from .common import keep_topk
from .patch import reduced
from .schedule import Stage
from .uniform_keep import UniformKeep, UniformKeepConfig

COMPARED = ("feature_cosine", "instance_top1", "top1_agreement")
BETTER = {"feature_cosine": "higher", "instance_top1": "higher", "top1_agreement": "higher"}
RANDOM_DESCRIPTION = (
    "random keep drawn per image: at each of the method's stages a uniformly random subset of the "
    "current tokens, new for every image and seed (torch.Generator().manual_seed(seed)); "
    "mean ± sd over the seeds"
)
UNIFORM_DESCRIPTION = (
    "2-D uniform lattice of the patch grid (nested square/quincunx lattices, kept by original 2-D "
    "position across stages), the same for every image"
)
BATCH = 24  # rows per forward of a baseline (PyTorch or the tail graph); the per-image random draws follow it


class PerImageRandom(Method):
    """Random keep drawn per image (a baseline; never exported)."""

    name = "random-per-image"
    config_cls = ReductionConfig
    needs_attention = False

    def __init__(self, seed: int):
        super().__init__(ReductionConfig(method=self.name))
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def select(self, x: LayerInputs, n_keep: int) -> torch.Tensor:
        b, n = int(x.hidden.shape[0]), int(x.hidden.shape[1]) - x.n_prefix
        scores = torch.rand((b, n), generator=self.generator).to(x.hidden.device)
        return keep_topk(scores, n_keep, x.n_prefix)


MAX_CACHE_BYTES = 2 << 30  # record the prefix blocks' output only when it fits in 2 GiB


class _Replay(torch.nn.Module):
    """Stands in for the host's blocks 0..L during a baseline run: blocks before L hand their input on
    unchanged, block L returns the original model's recorded output for the current rows (in order)."""

    def __init__(self, recorded: torch.Tensor | None, cursor: list[int], as_tuple: bool):
        super().__init__()
        self.recorded, self.cursor, self.as_tuple = recorded, cursor, as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states
        if self.recorded is not None:
            b, start = int(hidden_states.shape[0]), self.cursor[0]
            out = self.recorded[start : start + b]
            if out.shape[0] != b:
                raise RuntimeError(f"replay: rows {start}..{start + b} beyond the {self.recorded.shape[0]} recorded")
            self.cursor[0] = start + b
        return (out,) if self.as_tuple else out


@contextlib.contextmanager
def record_block(model, adapter, layer: int | None):
    """While the ORIGINAL model runs on the eval rows (in order), record block ``layer``'s output.
    Yields a dict that holds ``{"layer", "hidden" [N, T, D], "as_tuple"}`` after the block; empty when
    ``layer`` is None."""
    got: dict = {}
    if layer is None:
        yield got
        return
    parts: list[torch.Tensor] = []
    state = {"tuple": False, "bytes": 0}

    def hook(_module, _args, out):
        h = out[0] if isinstance(out, tuple) else out
        state["tuple"] = isinstance(out, tuple)
        state["bytes"] += h.numel() * h.element_size()
        if state["bytes"] <= MAX_CACHE_BYTES:
            parts.append(h.detach().clone())

    handle = adapter.layers(model)[layer].register_forward_hook(hook)
    try:
        yield got
    finally:
        handle.remove()
    if parts and state["bytes"] <= MAX_CACHE_BYTES:
        got.update(layer=layer, hidden=torch.cat(parts), as_tuple=state["tuple"])


@contextlib.contextmanager
def replaying(model, adapter, recorded: dict | None):
    """Blocks 0..recorded["layer"] replaced by :class:`_Replay` (restored on exit); a no-op without a record.
    Yields the row cursor (reset it to [0] before each pass over the rows)."""
    cursor = [0]
    if not recorded:
        yield cursor
        return
    layers = adapter.layers(model)
    last = recorded["layer"]
    originals = [layers[i] for i in range(last + 1)]
    try:
        for i in range(last + 1):
            layers[i] = _Replay(recorded["hidden"] if i == last else None, cursor, recorded["as_tuple"])
        yield cursor
    finally:
        for i, block in enumerate(originals):
            layers[i] = block


def pruning_stages(schedule: Iterable[Stage]) -> list[Stage]:
    """The schedule as pruning stages (a merge stage becomes pruning to the same count after its block)."""
    return [replace(s, kind="prune", prop_attn=False) for s in schedule]


def per_sample(
    names: Iterable[str],
    orig: dict[str, np.ndarray],
    red: dict[str, np.ndarray],
    feature: str,
    prototypes: np.ndarray,
    labels: np.ndarray,
) -> dict[str, np.ndarray]:
    """One value per evaluation sample of each compared metric in ``names`` (see the module doc)."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == "feature_cosine":
            out[name] = M.cosine_rows(orig[feature], red[feature])
        elif name == "instance_top1":
            out[name] = (M.nearest_prototype_predict(red[feature], prototypes) == np.asarray(labels)).astype(np.float64)
        elif name == "top1_agreement" and "logits" in red:
            out[name] = (np.argmax(red["logits"], axis=1) == np.argmax(orig["logits"], axis=1)).astype(np.float64)
    return out


def _torch_outputs(
    model, adapter, forward: Callable, stages: list[Stage], x: np.ndarray, method: Method, recorded: dict | None
) -> dict[str, np.ndarray]:
    """One baseline run in PyTorch (host forward under the patch, prefix blocks replayed from ``recorded``)."""
    from ..stages.runners import TorchRunner, run_rows

    def fn(t: torch.Tensor) -> dict[str, torch.Tensor]:
        with reduced(model, adapter, stages, method):
            return forward(t)

    with replaying(model, adapter, recorded) as cursor:
        cursor[0] = 0
        return run_rows(TorchRunner(fn), {"pixel_values": x}, batch=BATCH)  # TorchRunner: inference_mode


def baseline_runs(
    model,
    adapter,
    forward: Callable[[torch.Tensor], dict],
    schedule: list[Stage],
    x: np.ndarray,
    figures: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    seeds: Iterable[int],
    on_step: Callable[[], None] = lambda: None,
    recorded: dict | None = None,
    engine: str = "torch",
    workdir=None,
    info: dict | None = None,
) -> list[BaselineRun]:
    """Run the per-image random baseline (one run per seed) and the 2-D uniform baseline on ``x`` at
    ``schedule``'s kept counts; ``figures(outputs)`` turns a run's outputs into per-sample values.
    ``recorded`` (:func:`record_block` / :func:`record_prefix` of the first stage's block, on the same rows
    ``x``): start every run from it instead of recomputing the unpruned prefix blocks.

    ``engine="onnxruntime"`` (needs ``recorded`` and a ``workdir``): the same runs through the tail graph of
    :func:`export_tail` (ONNX Runtime runs it ~2x faster than PyTorch eager on CPU), after checking it
    against the PyTorch run on the first rows; any export failure or disagreement falls back to PyTorch.
    ``info`` (a dict) receives ``engine`` (what ran) and ``note`` (why, when it fell back)."""
    stages = pruning_stages(schedule)
    if recorded and (
        not stages or recorded.get("layer") != stages[0].layer or int(recorded["hidden"].shape[0]) != len(x)
    ):
        recorded = None  # not the record of these rows at this schedule's first stage: compute everything
    info = info if info is not None else {}
    methods = [PerImageRandom(int(s)) for s in seeds] + [UniformKeep(UniformKeepConfig())]
    tail = None
    if engine == "onnxruntime":
        if not recorded or workdir is None:
            info["note"] = "no record of the prefix blocks: baselines computed in PyTorch"
        else:
            try:
                tail = TailGraph(model, adapter, forward, stages, recorded, x, workdir)
                tail.check(
                    _torch_outputs(
                        model,
                        adapter,
                        forward,
                        stages,
                        x[:CHECK_ROWS],
                        UniformKeep(UniformKeepConfig()),
                        {**recorded, "hidden": recorded["hidden"][:CHECK_ROWS]},
                    ),
                    UniformKeep(UniformKeepConfig()),
                    CHECK_ROWS,
                )
            except TailGraphError as e:
                info["note"] = f"{e}; baselines computed in PyTorch"
                tail = None
    info["engine"] = "onnxruntime" if tail is not None else "torch"

    def outputs(method: Method) -> dict[str, np.ndarray]:
        out = (
            tail.run(method)
            if tail is not None
            else _torch_outputs(model, adapter, forward, stages, x, method, recorded)
        )
        on_step()
        return out

    seeds = [m.seed for m in methods[:-1]]
    random_draws: dict[str, list[np.ndarray]] = {}
    for method in methods[:-1]:
        for name, v in figures(outputs(method)).items():
            random_draws.setdefault(name, []).append(v)
    uniform = {name: [v] for name, v in figures(outputs(methods[-1])).items()}
    if tail is not None:
        info["check_max_abs_diff"] = tail.checked
    return [
        BaselineRun("random", RANDOM_DESCRIPTION, random_draws, seeds=seeds),
        BaselineRun("uniform", UNIFORM_DESCRIPTION, uniform),
    ]


# --- the same runs in ONNX Runtime ----------------------------------------------------------------------

CHECK_ROWS = 2  # rows of the PyTorch run the tail graph must reproduce before it is used
CHECK_ATOL = 1e-3  # the parity tolerance of the shipped graphs


class TailGraphError(RuntimeError):
    """The tail graph could not be built, or disagreed with PyTorch."""


class GivenKeep(Method):
    """Keeps the positions it is handed (the tail graph's ``keep_<i>`` inputs), stage after stage."""

    name = "given-keep"
    config_cls = ReductionConfig
    needs_attention = False

    def __init__(self):
        super().__init__(ReductionConfig(method=self.name))
        self.queue: list[torch.Tensor] = []

    def select(self, x: LayerInputs, n_keep: int) -> torch.Tensor:
        idx = self.queue.pop(0)
        if int(idx.shape[-1]) != n_keep:
            raise RuntimeError(f"given-keep: {int(idx.shape[-1])} positions for a stage keeping {n_keep}")
        return idx


def keep_plan(
    method: Method, stages: list[Stage], n_tokens: int, n_prefix: int, num_layers: int, rows: int, batch: int
) -> list[list[np.ndarray]]:
    """The positions ``method`` keeps, chunk by chunk (``batch`` rows, the last one shorter) and stage by
    stage, WITHOUT running the model: for methods that never look at the tokens (per-image random, the
    lattice) ``select`` needs only the shapes. The calls happen in the order the PyTorch run makes them
    (chunk-major, then stage), so a seeded generator yields the same draws."""
    if method.needs_attention:
        raise ValueError(f"{method.name} looks at the tokens: its positions need the model")
    n_patches = n_tokens - n_prefix
    side = math.isqrt(n_patches)
    grid = (side, side) if side * side == n_patches else (1, n_patches)
    plan: list[list[np.ndarray]] = []
    for s in range(0, rows, batch):
        b, n, per = min(batch, rows - s), n_tokens, []
        for st in stages:
            x = LayerInputs(
                hidden=torch.zeros(b, n, 1),
                attn=None,
                keys=None,
                n_prefix=n_prefix,
                layer=st.layer,
                num_layers=num_layers,
                grid=grid,
            )
            per.append(method.select(x, st.n_keep).to(torch.int64).numpy())
            n = n_prefix + st.n_keep
        plan.append(per)
    return plan


class _Inject(nn.Module):
    """Stands in for block ``i`` <= L of the tail graph: block L returns the graph's ``hidden`` input, the
    blocks before it hand their input on (dead code the exporter drops)."""

    def __init__(self, holder: list, last: bool, as_tuple: bool):
        super().__init__()
        self.holder, self.last, self.as_tuple = holder, last, as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        out = self.holder[0] if self.last else hidden_states
        return (out,) if self.as_tuple else out


class _Tail(nn.Module):
    def __init__(
        self, model, forward: Callable, holder: list, method: GivenKeep, names: list[str], pixel_shape: tuple[int, ...]
    ):
        super().__init__()
        self.model, self.forward_fn, self.holder, self.method = model, forward, holder, method
        self.names, self.pixel_shape = names, pixel_shape

    def forward(self, hidden, *keeps):
        self.holder[0] = hidden
        self.method.queue = list(keeps)
        out = self.forward_fn(hidden.new_zeros((hidden.shape[0], *self.pixel_shape)))
        return tuple(out[n] for n in self.names)


class TailGraph:
    """The host model from the first pruning block's output to its outputs, as an ONNX graph with the kept
    positions of every stage as inputs (``hidden`` [B, T, D], ``keep_<i>`` [B, k_i] int64; static batch
    :data:`BATCH`), run by ONNX Runtime on the CPU for every baseline. Never shipped: it lives in ``workdir``.
    ``x`` are the rows the baselines run on (pixel values; only their shape is used)."""

    def __init__(self, model, adapter, forward: Callable, stages: list[Stage], recorded: dict, x: np.ndarray, workdir):
        from pathlib import Path

        from ..export import ExportError, run_exporter
        from ..stages.runners import OrtRunner

        self.model, self.adapter, self.stages, self.recorded = model, adapter, stages, recorded
        hidden = recorded["hidden"]
        self.rows, self.n_tokens, self.n_prefix = int(hidden.shape[0]), int(hidden.shape[1]), adapter.n_prefix()
        self.checked: float | None = None
        holder: list = [None]
        given = GivenKeep()
        keeps = [
            torch.arange(self.n_prefix, self.n_prefix + st.n_keep).expand(BATCH, st.n_keep).contiguous()
            for st in stages
        ]
        example = torch.from_numpy(_pad(hidden[:BATCH].numpy(), BATCH))
        layers = adapter.layers(model)
        last = int(recorded["layer"])
        originals = [layers[i] for i in range(last + 1)]
        path = Path(workdir) / "baselines_tail.onnx"
        try:
            for i in range(last + 1):
                layers[i] = _Inject(holder, i == last, bool(recorded["as_tuple"]))
            with reduced(model, adapter, stages, given), torch.inference_mode():  # one row: the output names
                holder[0] = example[:1]
                given.queue = [k[:1] for k in keeps]
                probe = forward(torch.zeros(1, *x.shape[1:], dtype=example.dtype))
            self.names = list(probe)
            with reduced(model, adapter, stages, given):
                module = _Tail(model, forward, holder, given, self.names, tuple(x.shape[1:])).eval()
                run_exporter(
                    module,
                    (example, *keeps),
                    path,
                    17,
                    "torchscript",
                    ["hidden", *[f"keep_{i}" for i in range(len(keeps))]],
                    self.names,
                    False,
                )
        except ExportError as e:
            raise TailGraphError(f"the baselines' tail graph did not export ({e})") from e
        except Exception as e:  # the probe forward under the patch: any failure means PyTorch computes them
            raise TailGraphError(
                f"the baselines' tail graph could not be traced ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200] if str(e) else ''})"
            ) from e
        finally:
            for i, block in enumerate(originals):
                layers[i] = block
        try:
            self.runner = OrtRunner(path, provider="cpu")
        except Exception as e:  # any onnxruntime refusal means: use PyTorch
            raise TailGraphError(
                f"onnxruntime did not load the baselines' tail graph ({str(e).splitlines()[0][:200]})"
            ) from e
        self.inputs = set(self.runner.input_names)

    def run(self, method: Method, rows: int | None = None) -> dict[str, np.ndarray]:
        """Outputs of the first ``rows`` (default all) recorded rows with ``method``'s positions."""
        rows = self.rows if rows is None else rows
        hidden = self.recorded["hidden"][:rows].numpy()
        plan = keep_plan(method, self.stages, self.n_tokens, self.n_prefix, self.adapter.num_layers, rows, BATCH)
        parts: dict[str, list[np.ndarray]] = {}
        for c, per in enumerate(plan):
            h = hidden[c * BATCH : (c + 1) * BATCH]
            real = len(h)
            feed = {"hidden": _pad(h, BATCH), **{f"keep_{i}": _pad(k, BATCH) for i, k in enumerate(per)}}
            for name, v in self.runner.infer({k: v for k, v in feed.items() if k in self.inputs}).items():
                parts.setdefault(name, []).append(v[:real])
        return {k: np.concatenate(v) for k, v in parts.items()}

    def check(self, reference: dict[str, np.ndarray], method: Method, rows: int) -> None:
        got = self.run(method, rows)
        worst = 0.0
        for name, ref in reference.items():
            if name not in got or got[name].shape != ref.shape:
                raise TailGraphError(f"the baselines' tail graph gave no {name} of shape {tuple(ref.shape)}")
            worst = max(worst, float(np.abs(got[name].astype(np.float64) - ref).max()))
        if not worst <= CHECK_ATOL:
            raise TailGraphError(f"the baselines' tail graph differs from PyTorch by {worst:.3g} (> {CHECK_ATOL:g})")
        self.checked = worst


def _pad(a: np.ndarray, rows: int) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if len(a) >= rows:
        return a
    return np.concatenate([a, np.repeat(a[-1:], rows - len(a), axis=0)])


def record_prefix(model, adapter, forward: Callable, layer: int, x: np.ndarray) -> dict:
    """Block ``layer``'s output on the rows ``x`` (what :func:`record_block` records during a full run) at
    the cost of blocks 0..layer only: the later blocks hand their input on while it runs. Empty when it
    would take more than :data:`MAX_CACHE_BYTES`."""
    from ..stages.runners import TorchRunner, run_rows

    layers = adapter.layers(model)
    originals = list(layers)
    hidden = originals[layer]
    parts: list[torch.Tensor] = []
    kind = {"tuple": False}

    def hook(_module, _args, out):
        kind["tuple"] = isinstance(out, tuple)
        parts.append((out[0] if kind["tuple"] else out).detach().clone())

    class _Pass(nn.Module):
        def forward(self, hidden_states, *args, **kwargs):
            return (hidden_states,) if kind["tuple"] else hidden_states

    n = len(x)
    handle = hidden.register_forward_hook(hook)
    try:
        for i in range(layer + 1, len(originals)):
            layers[i] = _Pass()
        for s in range(0, n, BATCH):
            run_rows(TorchRunner(forward), {"pixel_values": x[s : s + BATCH]}, batch=BATCH)
            row = parts[0][0]  # one row of block `layer`'s output: all n rows must fit
            if row.numel() * row.element_size() * n > MAX_CACHE_BYTES:
                return {}
    finally:
        handle.remove()
        for i, block in enumerate(originals):
            layers[i] = block
    return {"layer": layer, "hidden": torch.cat(parts), "as_tuple": kind["tuple"]} if parts else {}


__all__ = [
    "BETTER",
    "COMPARED",
    "GivenKeep",
    "PerImageRandom",
    "TailGraph",
    "TailGraphError",
    "baseline_runs",
    "keep_plan",
    "per_sample",
    "pruning_stages",
    "record_block",
    "record_prefix",
    "replaying",
]


def block_output_name(graph, model, adapter, layer: int) -> str | None:
    """The tensor of the exported ``graph`` (an onnx.ModelProto of the unreduced model, TorchScript exporter)
    that is block ``layer``'s output: the one tensor made inside the block's name scope
    (``/model/<layers path>.<layer>/``) that nodes outside it read. None when there is not exactly one (another
    exporter's naming, a fused graph): the caller then records the block in PyTorch."""
    layers = adapter.layers(model)
    path = next((name for name, mod in model.named_modules() if mod is layers), None)
    if path is None:
        return None
    scope = "/model/" + path.replace(".", "/") + f".{layer}/"
    inside = {n.name for n in graph.graph.node if n.name.startswith(scope)}
    made = {o for n in graph.graph.node if n.name in inside for o in n.output}
    outs = {o.name for o in graph.graph.output}
    leaving = {i for n in graph.graph.node if n.name not in inside for i in n.input if i in made}
    leaving |= made & outs
    return next(iter(leaving)) if len(leaving) == 1 else None


def with_block_output(graph_path, model, adapter, layer: int, workdir) -> tuple[object, str] | None:
    """A copy of the graph at ``graph_path`` in ``workdir`` that also outputs block ``layer``'s output, and
    that output's name; None when the block's output cannot be found (:func:`block_output_name`)."""
    from pathlib import Path

    import onnx

    from ..onnx_tools import onnx_files

    if len(onnx_files(Path(graph_path))) != 1:
        return None  # external data: leave it alone
    g = onnx.load(str(graph_path))
    name = block_output_name(g, model, adapter, layer)
    if name is None:
        return None
    g.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    out = Path(workdir) / "original_with_block.onnx"
    onnx.save(g, str(out))
    return out, name
