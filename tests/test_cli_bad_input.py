"""Every kind of bad input: one line naming the file/field and the fix, exit 2, no traceback,
nothing written."""

from __future__ import annotations

from pathlib import Path

import cli_runner
import pytest
import yaml

BASE = {
    "model": None,  # filled per test
    "reduction": {"method": "topk-cls", "prune_layers": [1, 2], "keep_rate": [0.5, 0.5]},
    "export": {"image_size": 56},
    "verify": {
        "parity": {"samples": 2},
        "accuracy": {"samples_per_class": 1, "prototypes_per_class": 1, "metrics": {"feature_cosine": {"min": 0.0}}},
    },
    "bench": {"enabled": False},
}


def run_cli(*args, cwd=None, env=None):
    """`python -m tokexport ARGS` in a process of its own (tests/cli_runner.py)."""
    return cli_runner.run_cli(*args, cwd=cwd, env=env, timeout=600)


def write(tmp_path: Path, data, name="r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def recipe(model, /, **over):
    d = yaml.safe_load(yaml.safe_dump(BASE))
    d["model"] = str(model)
    for k, v in over.items():
        cur = d
        *parents, last = k.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        if v is ...:
            cur.pop(last, None)
        else:
            cur[last] = v
    return d


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    for n in needles:
        assert n in err, (n, err)


def assert_nothing_written(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp-")]


@pytest.fixture
def out(tmp_path):
    return tmp_path / "outdir"


def test_missing_recipe(tmp_path, out):
    res = run_cli("convert", str(tmp_path / "nope.yaml"), "--out", str(out))
    assert_one_line_error(res, "nope.yaml", "not found")
    assert_nothing_written(out)


def test_yaml_syntax_error(tmp_path, out):
    p = write(tmp_path, "model: x\nreduction: [unclosed\n")
    res = run_cli("convert", str(p), "--out", str(out))
    assert_one_line_error(res, "r.yaml", "line", "YAML syntax error")
    assert_nothing_written(out)


@pytest.mark.parametrize(
    "over,needles",
    [
        ({"reduction.kep_rate": 0.5}, ["reduction.kep_rate", "did you mean 'keep_rate'"]),
        ({"exprt": {"opset": 17}}, ["exprt", "did you mean 'export'"]),
        ({"reduction.keep_rate": 1.5}, ["reduction.keep_rate[0]", "(0, 1]"]),
        ({"reduction.keep_rate": [0.5, 0.0]}, ["reduction.keep_rate[1]"]),
        ({"reduction.prune_layers": [1, 9]}, ["reduction.prune_layers[1]", "out of range"]),
        ({"reduction.prune_layers": [2, 1]}, ["reduction.prune_layers", "strictly increasing"]),
        ({"reduction.method": "tome-ish"}, ["reduction.method", "unknown method", "zero-tprune"]),
        ({"export.opset": 18}, ["export", "TensorRT 8.6"]),
        ({"verify.accuracy.metrics": {"top1_acc": {"min": 0.5}}}, ["top1_acc", "did you mean"]),
        ({"verify.accuracy.metrics": {"top1_agreement": {"min": 0.5}}}, ["top1_agreement", "classification head"]),
        ({"export.batch": 1, "bench.enabled": True}, ["bench.batch_sizes"]),
        ({"model": ...}, ["model", "required"]),
        ({"export.batch": 0}, ["export", "batch"]),
        ({"export.batch": "big"}, ["export.batch"]),
        ({"export.trt_target": "7.1"}, ["export.trt_target"]),
        ({"bench.repeats": 0}, ["bench.repeats"]),
        ({"bench.batch_sizes": [1, -8]}, ["bench.batch_sizes[1]"]),
        ({"verify.parity.atol": -1}, ["verify.parity.atol"]),
        ({"verify.parity.tie_margin": "tiny"}, ["verify.parity.tie_margin"]),
        ({"verify.parity.tie_margin": 0.5}, ["verify.parity.tie_margin"]),
        ({"verify.accuracy.crop_scale": [0.9, 0.2]}, ["crop_scale"]),
        ({"verify.accuracy.metrics": {"feature_cosine": {}}}, ["min and/or max_drop"]),
        ({"deploy.atol": 0}, ["deploy.atol"]),
        ({"deploy.fp16": "maybe"}, ["deploy.fp16"]),
        ({"vision": {"grid": [2, 2]}}, ["vision", "task: visual-tokens"]),
        (
            {"task": "visual-tokens", "reduction": {"method": "fopru-rank", "keep": 4}, "vision": {"grid": [0, 2]}},
            ["vision", "grid"],
        ),
        (
            {
                "task": "visual-tokens",
                "reduction": {"method": "fopru-rank", "keep": 4},
                "verify.generation": {"prompts": []},
            },
            ["verify.generation.prompts"],
        ),
        ({"task": "visual-tokens", "reduction": {"method": "hired", "keep": 4, "alpha": 1.5}}, ["reduction.alpha"]),
        (
            {"task": "visual-tokens", "reduction": {"method": "fopru-rank", "keep": 4, "source": "col"}},
            ["reduction.source"],
        ),
        ({"reduction.iterations": [5, 5, 5]}, ["reduction"]),
        ({"verify.baselines": {"random_seeds": 3}}, ["verify.baselines.random_seeds", "5..64"]),
        ({"verify.baselines": {"resamples": 10}}, ["verify.baselines.resamples"]),
        ({"verify.vs_baselines": {"bound": "median"}}, ["verify.vs_baselines.bound"]),
        ({"verify.vs_baselines": {"min_margin": 2}}, ["verify.vs_baselines.min_margin", "[-1, 1]"]),
        ({"verify.vs_baselines": {"metrics": []}}, ["verify.vs_baselines.metrics"]),
        (
            {"verify.vs_baselines": {"min_margin": 0}, "verify.baselines": {"enabled": False}},
            ["vs_baselines needs verify.baselines.enabled"],
        ),
        ({"export.precision": "int4"}, ["export.precision"]),
        ({"export.fold": "maybe"}, ["export.fold"]),
        ({"bench.provider": "rocm"}, ["bench.provider"]),
        ({"bench.provider_options": {"device_id": -1}}, ["bench.provider_options"]),
    ],
)
def test_bad_fields(tmp_path, out, tiny_models, over, needles):
    p = write(tmp_path, recipe(tiny_models["dinov2"], **over))
    res = run_cli("convert", str(p), "--out", str(out))
    assert_one_line_error(res, *needles)
    assert_nothing_written(out)


def test_missing_model_directory(tmp_path, out):
    p = write(tmp_path, recipe(tmp_path / "no-such-dir"))
    assert_one_line_error(run_cli("convert", str(p), "--out", str(out)), "model:", "no-such-dir")
    assert_nothing_written(out)


def test_directory_without_config(tmp_path, out):
    (tmp_path / "empty").mkdir()
    p = write(tmp_path, recipe(tmp_path / "empty"))
    assert_one_line_error(run_cli("convert", str(p), "--out", str(out)), "no config.json")
    assert_nothing_written(out)


def test_corrupt_weights(tmp_path, out, tiny_models):
    import shutil

    bad = tmp_path / "corrupt"
    shutil.copytree(tiny_models["dinov2"], bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    p = write(tmp_path, recipe(bad))
    assert_one_line_error(run_cli("convert", str(p), "--out", str(out)), "cannot load weights", str(bad))
    assert_nothing_written(out)


def test_hub_id_without_network(tmp_path, out):
    p = write(tmp_path, recipe("facebook/dinov2-small"))
    # an unreachable endpoint: deterministic whatever network the machine has
    res = run_cli(
        "convert",
        str(p),
        "--out",
        str(out),
        env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")},
    )
    assert_one_line_error(res, "facebook/dinov2-small", "no network", "hf download")
    assert_nothing_written(out)


def test_unsupported_architecture(tmp_path, out):
    import transformers

    d = tmp_path / "bert"
    transformers.BertModel(
        transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(d)
    p = write(tmp_path, recipe(d))
    assert_one_line_error(run_cli("convert", str(p), "--out", str(out)), "unsupported architecture", "bert")
    assert_nothing_written(out)


def test_image_size_not_multiple_of_patch(tmp_path, out, tiny_models):
    p = write(tmp_path, recipe(tiny_models["dinov2"], **{"export.image_size": 50}))
    assert_one_line_error(run_cli("convert", str(p), "--out", str(out)), "image_size", "patch size")


def test_existing_output_needs_force(tmp_path, tiny_models):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    p = write(tmp_path, recipe(tiny_models["dinov2"]))
    assert_one_line_error(run_cli("convert", str(p), "--out", str(out)), str(out), "--force")
    assert (out / "keep.txt").read_text() == "mine"


def test_inspect_bad_file(tmp_path):
    f = tmp_path / "x.onnx"
    f.write_text("not onnx")
    assert_one_line_error(run_cli("inspect", str(f)), "x.onnx")
    assert_one_line_error(run_cli("inspect", str(tmp_path / "missing.onnx")), "missing.onnx")


def test_unknown_bundled_model_fetch():
    assert_one_line_error(run_cli("models", "fetch", "dinov3-huge"), "dinov3-huge", "dinov2-small")


def test_output_path_is_a_file(tmp_path, tiny_models):
    f = tmp_path / "afile"
    f.write_text("mine")
    p = write(tmp_path, recipe(tiny_models["dinov2"]))
    assert_one_line_error(run_cli("convert", str(p), "--out", str(f), "--force"), str(f), "not a directory")
    assert f.read_text() == "mine"


# ------------------------------------------------------------------- library messages name parameters, the CLI flags


def test_library_names_the_parameter_cli_the_flag(tmp_path, tiny_models):
    """One message, two renderings (tokexport.errors.option): the library's own message names the Python
    parameter, what the CLI prints names the command's flag."""
    from tokexport.errors import InputError
    from tokexport.fanout import check_backend
    from tokexport.sweep import parse_keep_rates

    with pytest.raises(InputError) as e:
        parse_keep_rates("2")
    assert str(e.value).startswith("keep_rates: 2 is outside (0, 1]") and "--" not in str(e.value), str(e.value)
    assert e.value.lines(cli=True) == ["--keep-rates: 2 is outside (0, 1]; a keep rate is the fraction of tokens kept"]
    with pytest.raises(InputError) as e:
        check_backend("ray", 2, None)
    assert str(e.value).startswith("jobs: only for backend='local'; ") and "--" not in str(e.value), str(e.value)
    p = write(tmp_path, recipe(tiny_models["dinov2"]))
    out = tmp_path / "o"
    res = run_cli("sweep", str(p), "--keep-rates", "2", "--out", str(out))
    assert_one_line_error(res, "error: --keep-rates: 2 is outside (0, 1]")
    assert "keep_rates" not in res.stderr
    assert_nothing_written(out)


# A flag inside a library's error message is the CLI's business (tokexport.errors.option names the parameter);
# these name the flags of a command the message tells the user to run, not an argument of the raising function.
FLAG_ADVICE = {
    r"`tokexport models fetch \{\}( --force)?`": "zoo: advice to run the fetch command (its --force)",
    r"\(--force replaces only folders tokexport fetched\)": "zoo: explains the fetch command's --force, beside "
    "the advice to run it",
    r"--force-reinstall": "pip's flag, in the advice to reinstall a package",
    r"pip install --no-deps ": "pip's flag, in the install command of a package",
    r"`ray start --head`": "Ray's command to start a cluster",
    r"`hf download \{\} --local-dir DIR`": "the Hugging Face CLI's command to download a model",
}
# its own argparse CLI, copied onto the device: its messages are that CLI's
FLAG_EXEMPT_FILES = ("tokexport/device/verify_on_device.py",)
_FLAG = r"(?<![\w-])--[A-Za-z]"


def _error_names() -> set[str]:
    import tokexport.errors as errors

    return {n for n, c in vars(errors).items() if isinstance(c, type) and issubclass(c, BaseException)}


def flag_offenders(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string in a raised exception (``raise X(...)``) or an error built to be raised
    (a call of a class named ``...Error`` or one of tokexport.errors') that names a command-line flag;
    ``option(...)``'s own arguments and :data:`FLAG_ADVICE` excepted."""
    import ast
    import re

    names = _error_names()

    def callee(node) -> str:
        f = node.func
        return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""

    def texts(node):
        if isinstance(node, ast.Call) and callee(node) == "option":
            return
        if isinstance(node, ast.JoinedStr):
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            return
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value
            return
        for child in ast.iter_child_nodes(node):
            yield from texts(child)

    roots = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            roots.append(node.exc)
        elif isinstance(node, ast.Call) and (callee(node).endswith(("Error", "Errors")) or callee(node) in names):
            roots.append(node)
    found = set()
    for root in roots:
        for line, text in texts(root):
            for allowed in FLAG_ADVICE:
                text = re.sub(allowed, "", text)
            if re.search(_FLAG, text):
                found.add((line, text))
    return sorted(found)


def test_flag_check_finds_a_flag_in_a_library_error():
    src = (
        "from tokexport.errors import InputError, option\n"
        "def f(x, force):\n"
        "    if x > 1:\n"
        '        raise InputError(f"--keep-rates: {x} is outside (0, 1]")\n'
        "    if not force:\n"
        '        return InputError("exists; pass " + "--force to replace it")\n'
        "    raise ValueError(f\"{option('keep_rates')}: {x}; pass {option('force', 'force=True', '--force')}; \"\n"
        '                     f"or run `tokexport models fetch {x} --force`, or `pip install --force-reinstall x`")\n'
    )
    assert [line for line, _ in flag_offenders(src)] == [4, 6], flag_offenders(src)


def test_library_errors_name_no_flags():
    """Outside tokexport/cli/, a raised message names the library's parameter (tokexport.errors.option),
    never a command-line flag: the CLI adds the flag when it prints the error."""
    root = Path(__file__).resolve().parent.parent
    bad = []
    for path in sorted((root / "tokexport").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("tokexport/cli/") or rel in FLAG_EXEMPT_FILES:
            continue
        bad += [f"{rel}:{line}: {text!r}" for line, text in flag_offenders(path.read_text(encoding="utf-8"))]
    assert not bad, "library errors that name a command-line flag (use tokexport.errors.option):\n" + "\n".join(bad)
