"""Shared fixtures: tiny randomly initialised checkpoints of every supported family (shape/graph
tests only), saved in Hugging Face layout so the real loading code path is exercised; the shipped
recipes converted once per test session (:func:`shipped`); and the guard of the two tiers.

Tiers (docs/ci.md): a test that loads a real checkpoint (the bundled DINOv2-S, e5, MiniLM, SmolLM2,
Gemma; a real ``tokexport models fetch``) carries ``@pytest.mark.real_model``; ``pytest -m "not
real_model"`` is the fast tier. The guard below makes an unmarked test that touches a real checkpoint
fail: while it runs, ``$TOKEXPORT_MODELS_DIR`` points at an empty directory (a subprocess finds no real
model there, and one it fetches is caught), and in this process a call of the zoo's real loading path
(``tokexport.zoo.fetch`` / ``resolve_bundled`` of a bundled name), of :func:`real_model_dir`, or an
``open()`` of a file under the real models directory is recorded and fails the test."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from shipped_runs import ROOT_ENV, Conversion, convert_shipped_once

from tokexport import zoo

REPO = Path(__file__).resolve().parents[1]

TINY = dict(
    hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=56, patch_size=14
)


def _save(model, path: Path, image_size: int = 56) -> Path:
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        '{"crop_size": {"height": %d, "width": %d}, "do_center_crop": true, '
        '"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}' % (image_size, image_size)
    )
    return path


def make_tiny(kind: str, path: Path) -> Path:
    import transformers as T

    torch.manual_seed(0)
    if kind == "vit-classifier":
        cfg = T.ViTConfig(
            **TINY, num_labels=5, id2label={i: f"c{i}" for i in range(5)}, label2id={f"c{i}": i for i in range(5)}
        )
        return _save(T.ViTForImageClassification(cfg).eval(), path)
    if kind == "vit":
        return _save(T.ViTModel(T.ViTConfig(**TINY)).eval(), path)
    if kind == "deit-teacher":
        cfg = T.DeiTConfig(**TINY, num_labels=5)
        return _save(T.DeiTForImageClassificationWithTeacher(cfg).eval(), path)
    if kind == "dinov2":
        cfg = T.Dinov2Config(**{**TINY, "image_size": 518})
        return _save(T.Dinov2Model(cfg).eval(), path)
    if kind == "clip-vision":
        return _save(T.CLIPVisionModel(T.CLIPVisionConfig(**TINY)).eval(), path)
    if kind == "siglip-vision":
        return _save(T.SiglipVisionModel(T.SiglipVisionConfig(**TINY)).eval(), path)
    raise ValueError(kind)


TINY_KINDS = ["vit-classifier", "vit", "deit-teacher", "dinov2", "clip-vision", "siglip-vision"]


def pytest_configure(config):
    """Under pytest-xdist each worker gets its share of the cores for PyTorch (here and in the CLI runs it
    starts), so that two workers on two cores do not oversubscribe them. The controller makes the folder
    through which the workers tell it the xdist groups (:func:`pytest_xdist_make_scheduler`)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):  # the controller
        _GUARD["groups"] = tempfile.mkdtemp(prefix="tokexport-xdist-groups-")
        os.environ[_GROUPS_ENV] = _GUARD["groups"]  # the workers start after this and inherit it


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {k: make_tiny(k, root / k) for k in TINY_KINDS}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


# ---------------------------------------------------------------------------------------------- tiers

REAL_MODELS = zoo.models_dir()  # read before any test changes $TOKEXPORT_MODELS_DIR
_REAL_PREFIXES = tuple({str(REAL_MODELS.absolute()) + os.sep, str(REAL_MODELS.resolve()) + os.sep})
_GUARD: dict = {"allowed": True, "touched": [], "tripwire": None, "item": None, "groups": None}
_GROUPS_ENV = "TOKEXPORT_TEST_XDIST_GROUPS"


def _touch(what: str) -> None:
    if not _GUARD["allowed"]:
        _GUARD["touched"].append(what)


def real_model_dir() -> Path | None:
    """The bundled DINOv2-S, when fetched (CI fetches it before the tests). Only for real_model tests."""
    _touch("conftest.real_model_dir()")
    p = REAL_MODELS / "dinov2-small"
    return p if (p / "model.safetensors").is_file() else None


def _guarded(fn):
    """``fn`` of the zoo, recording a call that reached a real checkpoint (it returned: a real model's
    folder, or the installed package file a real fetch converts); the generated tiny twins are not real."""

    @functools.wraps(fn)
    def wrapper(model, *args, **kwargs):
        out = fn(model, *args, **kwargs)
        name = getattr(model, "name", model)
        if name in zoo.BUNDLED:
            _touch(f"tokexport.zoo.{fn.__name__}({name!r})")
        return out

    wrapper.__tokexport_tier_guard__ = True
    return wrapper


if not getattr(zoo.fetch, "__tokexport_tier_guard__", False):
    # the real loading path: fetch and resolve_bundled (a bundled name to its folder), _source_path (the
    # installed package file a fetch reads); a test that monkeypatches one of them replaces the guard with
    # its fake, which is no real checkpoint
    for _fn in ("fetch", "resolve_bundled", "_source_path"):
        setattr(zoo, _fn, _guarded(getattr(zoo, _fn)))


def _audit(event: str, args: tuple) -> None:
    if event != "open" or _GUARD["allowed"] or not args or isinstance(args[0], int) or args[0] is None:
        return
    try:
        path = os.path.abspath(os.fsdecode(args[0]))
    except (TypeError, ValueError):
        return
    if path.startswith(_REAL_PREFIXES):
        _GUARD["touched"].append(f"open({path!r})")


sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """An unmarked test runs with $TOKEXPORT_MODELS_DIR on an empty tripwire directory."""
    allowed = item.get_closest_marker("real_model") is not None
    if _GUARD["tripwire"] is None:
        _GUARD["tripwire"] = Path(tempfile.mkdtemp(prefix="tokexport-no-real-models-"))
    saved = os.environ.get(zoo.ENV_MODELS_DIR)
    # swap only the real models directory (or the tripwire): a module fixture's own models directory stays
    swap = saved is None or saved == str(_GUARD["tripwire"]) or Path(saved).resolve() == REAL_MODELS.resolve()
    mine = str(REAL_MODELS if allowed else _GUARD["tripwire"])
    if swap:
        os.environ[zoo.ENV_MODELS_DIR] = mine
    _GUARD.update(allowed=allowed, touched=[], item=item.nodeid)
    try:
        return (yield)
    finally:
        _GUARD.update(allowed=True, item=None)
        if swap and os.environ.get(zoo.ENV_MODELS_DIR) == mine:  # not changed by a fixture that outlives the test
            if saved is None:
                os.environ.pop(zoo.ENV_MODELS_DIR, None)
            else:
                os.environ[zoo.ENV_MODELS_DIR] = saved


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    touched = list(dict.fromkeys(_GUARD["touched"]))
    trip = _GUARD["tripwire"]
    left = sorted(p.name for p in trip.iterdir()) if trip is not None and trip.exists() else []
    for p in left:
        shutil.rmtree(trip / p, ignore_errors=True)
    left = [p for p in left if p in zoo.BUNDLED]  # a generated tiny twin is no real checkpoint
    if not _GUARD["allowed"] and (touched or left):
        what = touched[:5] + [f"fetched into $TOKEXPORT_MODELS_DIR: {p}" for p in left]
        pytest.fail(
            f"{item.nodeid} touches a real checkpoint but is not marked @pytest.mark.real_model: " + "; ".join(what),
            pytrace=False,
        )
    return result


def pytest_unconfigure(config):
    for d in (_GUARD["tripwire"], _GUARD["groups"]):
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)


def _schedule_key(item) -> tuple[int, int, str]:
    """Longest work first: xdist hands out work units in collection order, so the groups of the slowest
    shipped conversions (Gemma's, then the other real ones) start at once and the short tests fill in."""
    groups = [m.args[0] for m in item.iter_markers("xdist_group") if m.args]
    if item.get_closest_marker("gemma"):
        return 0, 0, groups[0] if groups else ""
    if groups and not groups[0].endswith(MODULE_GROUP):  # a shipped conversion's group
        return 1, 0, groups[0]
    # a module's shared fixture (:func:`_module_fixture_group`) keeps its tier's place, first in it (its
    # tests run one after the other on one worker: started early, they do not make the run's tail)
    tier = 2 if item.get_closest_marker("real_model") else 3
    return (tier, 0, groups[0]) if groups else (tier, 1, "")


MODULE_GROUP = "::module-fixtures"  # suffix of the xdist group of a module's shared fixtures


def _module_fixture_group(item) -> str | None:
    """The group of a test that uses a module-scoped fixture of its own module (a sweep, a Ray instance, a
    conversion shared by the module's tests): one group per module (its fixtures may depend on each other),
    so that the tests sharing them run on one worker and each is computed once per run, not once per
    worker. None when the test uses no such fixture."""
    info = getattr(item, "_fixtureinfo", None)
    module = item.nodeid.split("::")[0]
    for name in getattr(item, "fixturenames", ()):
        for fd in info.name2fixturedefs.get(name, ()) if info is not None else ():
            if fd.scope == "module" and fd.baseid == module:
                return f"{module}{MODULE_GROUP}"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("gemma") and not item.get_closest_marker("real_model"):
            raise pytest.UsageError(f"{item.nodeid}: a gemma test loads a real checkpoint: mark it real_model too")
        if not any(item.iter_markers("xdist_group")):
            shared = _module_fixture_group(item)
            if shared:
                item.add_marker(pytest.mark.xdist_group(shared))
    items.sort(key=_schedule_key)  # stable: the order within a group and a file is kept
    worker = getattr(config, "workerinput", {}).get("workerid")  # a pytest-xdist worker (not its environment:
    folder = os.environ.get(_GROUPS_ENV)  # a run started inside a worker is no worker)
    if worker and folder:
        groups = {}
        for item in items:
            names = {
                str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")
            }
            if names:  # as pytest-xdist names a test's group
                groups[item.nodeid] = "_".join(sorted(names))
        tmp = Path(folder) / f"{worker}.json.part"
        tmp.write_text(json.dumps(groups))
        tmp.replace(Path(folder) / f"{worker}.json")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup` that keeps its promise. pytest-xdist tags a grouped test by appending
    ``@GROUP`` to ``item._nodeid``, which pytest >= 9.2 no longer reads (``nodeid`` comes from
    ``item._id``): every test became its own group and each worker converted the shipped recipes its
    tests read (the Gemma conversion twice). Here the workers write ``{nodeid: group}`` at collection
    and the controller's scheduler reads it; a tag that does arrive is used as before."""
    if config.getvalue("dist") != "loadgroup" or not _GUARD["groups"]:
        return None
    from xdist.scheduler import LoadGroupScheduling

    folder, cache, loaded = Path(_GUARD["groups"]), {}, []
    # hand the work out in collection order (:func:`_schedule_key`: the longest first), not by the number of
    # tests in a group (xdist's default), which put Gemma's two-test group, the longest, last
    config.option.loadscopereorder = False

    class _Scheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if "@" in nodeid:
                return super()._split_scope(nodeid)
            if not loaded:  # every worker has collected (and written) before the first schedule
                for f in sorted(folder.glob("*.json")):
                    cache.update(json.loads(f.read_text()))
                loaded.append(True)
            return cache.get(nodeid, nodeid)

    return _Scheduling(config, log)


# ------------------------------------------------------------------------- shipped recipes, converted once


def shipped_recipes(task: str | None = None) -> list[str]:
    """Every shipped recipe (`tokexport recipes list`: tokexport/recipes/*.yaml, not the tiny twins), by
    name, optionally of one recipe ``task`` (ViT recipes: task auto, feature-extraction or
    image-classification)."""
    import yaml

    out = []
    for p in sorted((REPO / "tokexport" / "recipes").glob("*.yaml")):
        t = yaml.safe_load(p.read_text()).get("task") or "auto"
        vit = t in ("auto", "feature-extraction", "image-classification")
        if task is None or t == task or (task == "vit" and vit):
            out.append(p.stem)
    return out


def group(name: str):
    """The xdist group of the tests reading the shipped conversion ``name`` (`--dist loadgroup` puts
    them on one worker, so the session converts each recipe once)."""
    return pytest.mark.xdist_group(name)


@pytest.fixture(scope="session")
def _shipped_root(tmp_path_factory, pytestconfig) -> Path:
    """Where the shipped conversions of this run go: ``$TOKEXPORT_TEST_SHIPPED_ROOT`` when set (.ci/run converts
    the default recipe there before the suite, tests/shipped_runs.py), else the folder all xdist workers of the
    run share (the parent of their own temporary folders), or the session's own without xdist."""
    if os.environ.get(ROOT_ENV):
        return Path(os.environ[ROOT_ENV])
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if hasattr(pytestconfig, "workerinput") else base) / "shipped"
    root.mkdir(exist_ok=True)
    return root


@pytest.fixture
def shipped(request, _shipped_root):
    """``shipped(NAME)``: the shipped recipe NAME converted as shipped (bench, deploy and every verify
    setting as in the file), once per run; the test must carry ``group(NAME)`` (the tests that read one
    conversion then run on one worker, one after the other)."""

    def get(name: str) -> Conversion:
        marks = {m.args[0] for m in request.node.iter_markers("xdist_group") if m.args}
        assert name in marks, f"{request.node.nodeid} reads shipped({name!r}): mark it conftest.group({name!r})"
        return convert_shipped_once(name, _shipped_root)

    return get
