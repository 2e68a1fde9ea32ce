"""Bounded, finite input, one line every time (tokexport.bounds and its users).

Every bad input runs through the CLI: exit 2, exactly one stderr line starting with ``error:`` that names
the field, no traceback, the output directory never created and nothing else in the test's directory
changed. Recipe rows point ``model`` at a directory that does not exist: a recipe error that were only
caught once the model is loaded would surface as a "model:" error instead and miss its needles. The
stalled-Hub test serves a TCP port on 127.0.0.1 that accepts connections and never answers.
"""

from __future__ import annotations

import copy
import json
import shutil
import socket
import threading
import time
import typing
from pathlib import Path

import cli_runner
import pytest
import yaml
from conftest import REPO
from pydantic import BaseModel
from sentinel import assert_unchanged, make_tree, snapshot

NAN, INF = float("nan"), float("inf")

# A valid recipe for the tiny DINOv2 (as tests/test_cli_bad_input.py's); each row breaks one value.
BASE = {
    "model": None,
    "reduction": {"method": "topk-cls", "prune_layers": [1, 2], "keep_rate": [0.5, 0.5]},
    "export": {"image_size": 56},
    "verify": {
        "parity": {"samples": 2},
        "accuracy": {"samples_per_class": 1, "prototypes_per_class": 1, "metrics": {"feature_cosine": {"min": 0.0}}},
    },
    "bench": {"enabled": False},
}


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error:"), res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def _set(d: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[last] = value


def _recipe(model: str, over: dict) -> dict:
    d = copy.deepcopy(BASE)
    d["model"] = model
    for k, v in over.items():
        _set(d, k, v)
    return d


VOCAB = {"task": "vocab-trim", "model": None, "corpus": {"sources": [{"path": "corpus.txt"}]}}


def _billion_laughs() -> str:
    lines = ["model: x", 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    prev = "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
        prev = name
    lines.append("reduction: {method: topk-cls, prune_layers: *i}")
    return "\n".join(lines) + "\n"


# (id, recipe: dict of overrides on test_cli_bad_input.BASE | ("vocab", overrides) | raw YAML text, needles)
RECIPE_ROWS = [
    ("atol-inf", {"verify.parity.atol": INF}, ["verify.parity.atol", "finite", "(0, 1]"]),
    ("atol-nan-string", {"verify.parity.atol": "nan"}, ["verify.parity.atol", "(0, 1]"]),
    ("keep_rate-true", {"reduction.keep_rate": True}, ["reduction.keep_rate", "boolean"]),
    ("keep_rate-list-true", {"reduction.keep_rate": [0.5, True]}, ["reduction.keep_rate[1]", "boolean"]),
    ("keep-empty", {"reduction.keep_rate": ..., "reduction.keep": []}, ["reduction.keep", "empty"]),
    (
        "min-nan",
        {"verify.accuracy.metrics": {"feature_cosine": {"min": NAN}}},
        ["verify.accuracy.metrics.feature_cosine.min", "finite"],
    ),
    (
        "max_drop-inf",
        {"verify.accuracy.metrics": {"feature_cosine": {"max_drop": INF}}},
        ["verify.accuracy.metrics.feature_cosine.max_drop", "finite"],
    ),
    ("metrics-empty", {"verify.accuracy.metrics": {}}, ["verify.accuracy.metrics", "empty"]),
    (
        "iterations-1e9",
        {"reduction": {"method": "zero-tprune", "prune_layers": [1, 2], "keep_rate": 0.5, "iterations": 1e9}},
        ["reduction.iterations", "1000000000", "1..1000"],
    ),
    (
        "iterations-list-0",
        {"reduction": {"method": "zero-tprune", "prune_layers": [1, 2], "keep_rate": 0.5, "iterations": [5, 0]}},
        ["reduction.iterations[1]", "1..1000"],
    ),
    ("tome-r-negative", {"reduction": {"method": "tome", "r": [1, -1]}}, ["reduction.r[1]", "0..3839"]),
    (
        "temperature-inf",
        {"reduction": {"method": "zero-tprune", "prune_layers": [1], "keep_rate": 0.5, "temperature": INF}},
        ["reduction.temperature", "finite"],
    ),
    ("repeats-1e12", {"bench": {"enabled": True, "repeats": 1e12}}, ["bench.repeats", "1..10000"]),
    ("warmup-true", {"bench": {"enabled": True, "warmup": True}}, ["bench.warmup", "boolean"]),
    ("threads-100000", {"bench": {"enabled": True, "threads": 100000}}, ["bench.threads", "CPU cores"]),
    ("batch_sizes-empty", {"bench": {"enabled": True, "batch_sizes": []}}, ["bench.batch_sizes", "empty"]),
    ("batch-true", {"export.batch": True}, ["export.batch", "boolean"]),
    ("image_size-inf", {"export.image_size": INF}, ["export.image_size", "14..4096"]),
    ("crop_scale-nan", {"verify.accuracy.crop_scale": [NAN, 0.5]}, ["verify.accuracy.crop_scale[0]", "finite"]),
    ("seed-negative", {"verify.accuracy.seed": -1}, ["verify.accuracy.seed", "0..4294967295"]),
    ("deploy-atol-inf", {"deploy.atol": INF}, ["deploy.atol", "finite"]),
    ("key-with-newline", {"verify.parity": {"atol\nx": 1}}, ["verify.parity", "unknown field"]),
    (
        "visual-keep",
        {"task": "visual-tokens", "reduction": {"method": "fopru-rank", "keep": 100000}},
        ["reduction.keep", "1..3839"],
    ),
    (
        "visual-alpha-nan",
        {"task": "visual-tokens", "reduction": {"method": "hired", "keep": 4, "alpha": NAN}},
        ["reduction.alpha", "finite"],
    ),
    (
        "visual-prompt_tokens",
        {"task": "visual-tokens", "reduction": {"method": "fopru-rank", "keep": 4}, "vision": {"prompt_tokens": -5}},
        ["vision.prompt_tokens", "0..131072"],
    ),
    (
        "visual-grid-true",
        {"task": "visual-tokens", "reduction": {"method": "fopru-rank", "keep": 4}, "vision": {"grid": [True, 2]}},
        ["vision.grid[0]", "boolean"],
    ),
    ("vocab-seq_len", ("vocab", {"export": {"seq_len": 100000}}), ["export.seq_len", "2..8192"]),
    (
        "vocab-heldout-nan",
        ("vocab", {"corpus": {"sources": [{"path": "corpus.txt"}], "heldout_fraction": NAN}}),
        ["corpus.heldout_fraction", "finite"],
    ),
    ("vocab-min_frequency-true", ("vocab", {"trim": {"min_frequency": True}}), ["trim.min_frequency", "boolean"]),
    ("vocab-repeats", ("vocab", {"bench": {"repeats": 1e12}}), ["bench.repeats", "1..10000"]),
    ("vocab-path-empty", ("vocab", {"corpus": {"sources": [{"path": []}]}}), ["corpus.sources[0].path", "empty"]),
    ("deep-yaml", "model: x\nreduction: " + "[" * 10000 + "]" * 10000 + "\n", ["r.yaml", "nested too deeply"]),
    ("deep-yaml-parsed", "model: x\nreduction: " + "[" * 100 + "]" * 100 + "\n", ["r.yaml", "nested more than"]),
    ("recursive-alias", "model: x\nreduction: &a [*a]\n", ["r.yaml", "nested more than"]),
    (
        "python-tag",
        "model: !!python/object/apply:os.system ['touch pwned']\nreduction: {method: random}\n",
        ["r.yaml", "YAML tag refused", "python/object/apply"],
    ),
    ("billion-laughs", _billion_laughs(), ["r.yaml", "aliases are expanded"]),
    ("int-400-digits", {"bench": {"enabled": True, "repeats": 10**400}}, ["bench.repeats", "1..10000", "digits"]),
    (
        "int-5000-digits",
        "model: x\nreduction: {method: random}\nbench: {repeats: " + "1" * 5000 + "}\n",
        ["r.yaml", "YAML value cannot be read"],
    ),
    ("markup-in-value", {"verify.parity.atol": "[bold]x"}, ["verify.parity.atol", "(0, 1]"]),
]


def _write_recipe(tmp_path: Path, spec) -> Path:
    p = tmp_path / "r.yaml"
    missing_model = str(tmp_path / "not-loaded")  # never read: recipe errors come first
    if isinstance(spec, str):
        p.write_text(spec)
    elif isinstance(spec, tuple):
        d = copy.deepcopy(VOCAB)
        d["model"] = missing_model
        d.update(copy.deepcopy(spec[1]))
        p.write_text(yaml.safe_dump(d))
    else:
        d = _recipe(missing_model, {k: v for k, v in spec.items() if v is not ...})
        for k, v in spec.items():
            if v is ...:
                *parents, last = k.split(".")
                cur = d
                for part in parents:
                    cur = cur[part]
                cur.pop(last, None)
        p.write_text(yaml.safe_dump(d))
    return p


def run_cli(*args, env=None, timeout=600):
    return cli_runner.run_cli(*args, cwd=REPO, env=env, timeout=timeout)


# Rows run through the CLI (a subprocess each, seconds of imports); the others call the same loader in-process.
CLI_ROWS = {
    "atol-inf",
    "keep_rate-true",
    "min-nan",
    "iterations-1e9",
    "repeats-1e12",
    "threads-100000",
    "batch_sizes-empty",
    "crop_scale-nan",
    "key-with-newline",
    "visual-keep",
    "vocab-seq_len",
    "deep-yaml",
    "python-tag",
    "billion-laughs",
    "image_mean-abc",
    "patch_size-0",
}


def _in_process_error(call) -> str:
    """The one-line message of the InputError ``call`` raises, as the CLI would print it."""
    from tokexport.errors import InputError

    with pytest.raises(InputError) as e:
        call()
    return f"error: {e.value}"


def _assert_line(line: str, *needles) -> None:
    assert "\n" not in line and "\r" not in line, line
    for n in needles:
        assert n in line, (n, line)


@pytest.mark.parametrize("row,spec,needles", [pytest.param(i, s, n, id=i) for i, s, n in RECIPE_ROWS])
def test_bad_recipe_value(tmp_path, row, spec, needles):
    make_tree(tmp_path / "user")
    recipe = _write_recipe(tmp_path, spec)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    if row in CLI_ROWS:
        t0 = time.time()
        res = run_cli("convert", str(recipe), "--out", str(out), timeout=300)
        assert_one_line_error(res, *needles)
        assert not res.stdout.strip(), res.stdout
        line = res.stderr.strip()
        assert time.time() - t0 < 120  # generous: a recipe error needs no model (seconds of imports)
    else:
        from tokexport.recipe import load_recipe

        line = _in_process_error(lambda: load_recipe(recipe))
        _assert_line(line, *needles)
    assert str(recipe) in line
    assert "model:" not in line, line  # the model was never looked at
    assert not out.exists()
    assert_unchanged(before, tmp_path)
    assert not (tmp_path / "pwned").exists() and not (REPO / "pwned").exists()


def _mutate_json(path: Path, key, value) -> None:
    data = json.loads(path.read_text())
    if key is None:
        data = value
    else:
        data[key] = value
    path.write_text(json.dumps(data))


# (id, file in the model directory, key (None: the whole document), value, needles)
MODEL_DIR_ROWS = [
    ("image_mean-abc", "preprocessor_config.json", "image_mean", "abc", ["preprocessor_config.json", "image_mean"]),
    (
        "image_mean-nan",
        "preprocessor_config.json",
        "image_mean",
        [0.5, NAN, 0.5],
        ["preprocessor_config.json", "image_mean", "finite"],
    ),
    (
        "image_std-zero",
        "preprocessor_config.json",
        "image_std",
        [0.5, 0, 0.5],
        ["preprocessor_config.json", "image_std", "(0, 10]"],
    ),
    (
        "crop_size-string",
        "preprocessor_config.json",
        "crop_size",
        {"height": "big", "width": "big"},
        ["preprocessor_config.json", "crop_size.height"],
    ),
    ("preprocessor-not-object", "preprocessor_config.json", None, [1, 2], ["preprocessor_config.json", "JSON object"]),
    ("patch_size-0", "config.json", "patch_size", 0, ["config.json", "patch_size", "1..1024"]),
    ("patch_size-abc", "config.json", "patch_size", "abc", ["config.json", "patch_size"]),
    ("image_size-bool", "config.json", "image_size", True, ["config.json", "image_size", "boolean"]),
    (
        "hidden_size-not-multiple",
        "config.json",
        "hidden_size",
        33,
        ["config.json", "hidden_size", "num_attention_heads"],
    ),
    ("num_hidden_layers-negative", "config.json", "num_hidden_layers", -1, ["config.json", "num_hidden_layers"]),
]


@pytest.mark.parametrize(
    "row,fname,key,value,needles", [pytest.param(i, f, k, v, n, id=i) for i, f, k, v, n in MODEL_DIR_ROWS]
)
def test_bad_model_directory_value(tmp_path, tiny_models, row, fname, key, value, needles):
    make_tree(tmp_path / "user")
    model = tmp_path / "model"
    shutil.copytree(tiny_models["dinov2"], model)
    _mutate_json(model / fname, key, value)
    d = _recipe(str(model), {})
    d["export"].pop("image_size")  # the preprocessor's crop size is read
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(d))
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    if row in CLI_ROWS:
        res = run_cli("convert", str(recipe), "--out", str(out), timeout=300)
        assert_one_line_error(res, str(model / fname), *needles)
    else:
        from tokexport.load import load_model

        _assert_line(_in_process_error(lambda: load_model(str(model), tmp_path)), str(model / fname), *needles)
    assert not out.exists()
    assert_unchanged(before, tmp_path)


def test_oversized_recipe_file(tmp_path):
    recipe = tmp_path / "big.yaml"
    recipe.write_text("model: x\ndescription: '" + "a" * (5 * 2**20) + "'\n")
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    res = run_cli("convert", str(recipe), "--out", str(out), timeout=300)
    assert_one_line_error(res, "big.yaml", "MiB")
    assert not out.exists()
    assert_unchanged(before, tmp_path)


class _StalledHub:
    """A TCP server on 127.0.0.1 that accepts connections and never answers (bounded: it stops accepting
    after ``seconds``)."""

    def __init__(self, seconds: float = 180.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._deadline = time.time() + seconds
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while not self._stop.is_set() and time.time() < self._deadline:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.conns.append(conn)  # held open, never read or written

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        for c in self.conns:
            c.close()
        self.sock.close()


def test_stalled_hub_times_out_with_one_line(tmp_path):
    """A Hub endpoint that accepts TCP and then stalls: exit 5 within TOKEXPORT_HUB_TIMEOUT (+ start-up), one
    line naming the model id and the fixes, nothing written."""
    make_tree(tmp_path / "user")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_recipe("facebook/dinov2-small", {})))
    out = tmp_path / "out"
    hf_home = tmp_path / "hf-home"  # the Hub client's own cache: allowed to appear
    before = snapshot(tmp_path)
    timeout = 3
    with _StalledHub() as hub:
        t0 = time.time()
        res = run_cli(
            "convert",
            str(recipe),
            "--out",
            str(out),
            timeout=240,
            env={
                "HF_HUB_OFFLINE": "0",
                "TRANSFORMERS_OFFLINE": "0",
                "HF_HOME": str(hf_home),
                "HF_ENDPOINT": f"http://127.0.0.1:{hub.port}",
                "TOKEXPORT_HUB_TIMEOUT": str(timeout),
                "NO_PROXY": "127.0.0.1",
                "no_proxy": "127.0.0.1",
            },
        )
        elapsed = time.time() - t0
        assert hub.conns, "the client never reached the stalled endpoint"
    assert res.returncode == 5, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.stderr
    for needle in ("facebook/dinov2-small", f"within {timeout} s", "TOKEXPORT_HUB_TIMEOUT", "hf download"):
        assert needle in lines[0], (needle, lines[0])
    # start-up (imports) takes seconds on a loaded 2-core machine; the download itself is cut at 3 s
    assert elapsed < timeout + 120, elapsed
    assert not out.exists()
    assert_unchanged(before, tmp_path, allow=("hf-home",))


def test_hub_timeout_setting(monkeypatch):
    from tokexport.errors import InputError
    from tokexport.load import DEFAULT_HUB_TIMEOUT, hub_timeout

    monkeypatch.delenv("TOKEXPORT_HUB_TIMEOUT", raising=False)
    assert hub_timeout() == DEFAULT_HUB_TIMEOUT
    monkeypatch.setenv("TOKEXPORT_HUB_TIMEOUT", "2.5")
    assert hub_timeout() == 2.5
    for bad in ("0", "inf", "nan", "soon", "true"):
        monkeypatch.setenv("TOKEXPORT_HUB_TIMEOUT", bad)
        with pytest.raises(InputError, match="TOKEXPORT_HUB_TIMEOUT"):
            hub_timeout()


# -- every recipe number is bounded and its range documented ------------------------------------------------------


def _config_models() -> list[type[BaseModel]]:
    from tokexport.recipe import Recipe
    from tokexport.reduce import METHODS
    from tokexport.vlm.select import VISUAL_METHODS
    from tokexport.vocab.recipe import VocabRecipe

    roots = [
        Recipe,
        VocabRecipe,
        *(m.config_cls for m in METHODS.values()),
        *(m.config_cls for m in VISUAL_METHODS.values()),
    ]
    seen: list[type[BaseModel]] = []
    stack = list(roots)
    while stack:
        m = stack.pop()
        if m in seen:
            continue
        seen.append(m)
        for f in m.model_fields.values():
            stack.extend(_nested_models(f.annotation))
    return seen


def _nested_models(ann) -> list[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    return [m for a in typing.get_args(ann) for m in _nested_models(a)]


def _numbers(ann) -> list:
    """The bounds.Range of every number inside an annotation; None for a number without one."""
    from tokexport.bounds import range_of

    if typing.get_origin(ann) is typing.Literal:
        return []
    r = range_of(ann)
    if r is not None:
        return [r]
    if ann in (int, float):
        return [None]
    if isinstance(ann, type) and (issubclass(ann, BaseModel) or ann in (bool, str)):
        return []
    return [x for a in typing.get_args(ann) for x in _numbers(a)]


def test_every_recipe_number_is_bounded_and_documented():
    unbounded, undocumented = [], []
    models = _config_models()
    assert len(models) > 20
    for m in models:
        for name, f in m.model_fields.items():
            if name == "method":
                continue
            from tokexport.bounds import Range

            own = [x for x in f.metadata if isinstance(x, Range)]  # a top-level Annotated type lands here
            for r in own or _numbers(f.annotation):
                if r is None:
                    unbounded.append(f"{m.__name__}.{name}")
                elif r.text not in (f.description or ""):
                    undocumented.append(f"{m.__name__}.{name} ({r.text})")
    assert not unbounded, f"numbers without a bounds type: {unbounded}"
    assert not undocumented, f"ranges missing from the Field description: {undocumented}"


@pytest.mark.parametrize(
    "value,ok",
    [
        (0.5, 0.5),
        (1, 1.0),
        ("1e-3", 0.001),
        ("2.5e-1", 0.25),
        (True, None),
        (False, None),
        (NAN, None),
        (INF, None),
        (-INF, None),
        ("nan", None),
        ("inf", None),
        ("abc", None),
        (None, None),
        ([0.5], None),
        ({"a": 1}, None),
        (0, None),
        (1.0000001, None),
    ],
)
def test_real(value, ok):
    from tokexport.bounds import BoundsError, check_real

    if ok is None:
        with pytest.raises(BoundsError, match=r"\(0, 1\]"):
            check_real(value, 0, 1, lo_open=True)
    else:
        assert check_real(value, 0, 1, lo_open=True) == ok


@pytest.mark.parametrize(
    "value,ok",
    [
        (3, 3),
        (3.0, 3),
        ("15", 15),
        ("1e2", 100),
        (True, None),
        (2.5, None),
        (NAN, None),
        (INF, None),
        ("1e9", None),
        (10**12, None),
        (0, None),
        ("x", None),
    ],
)
def test_count(value, ok):
    from tokexport.bounds import BoundsError, check_count

    if ok is None:
        with pytest.raises(BoundsError, match=r"1\.\.1000"):
            check_count(value, 1, 1000)
    else:
        assert check_count(value, 1, 1000) == ok and type(check_count(value, 1, 1000)) is int


def test_shipped_recipes_still_validate():
    from tokexport.recipe import load_recipe

    files = sorted((REPO / "recipes").rglob("*.yaml"))
    assert files
    for p in files:
        load_recipe(p)
