"""The README's set-up commands are real, CI calls the README's test command, every CLI command has
--help, and the shipped recipes validate."""

from __future__ import annotations

import re

import pytest
from conftest import REPO
from test_cli_bad_input import run_cli

README = (REPO / "README.md").read_text()


def _bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one():
    blocks = [b.strip() for b in _bash_blocks(README)]
    install = (
        "bash scripts/install.sh && .venv/bin/tokexport convert recipes/dinov2-small-zero-tprune.yaml --out out/zt"
    )
    tests = ".venv/bin/python -m pytest -q"
    assert install in blocks and tests in blocks
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/install.sh" in ci and tests in ci
    assert (REPO / "scripts" / "install.sh").is_file()
    assert "RESULTS_PLACEHOLDER" not in README


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["convert"],
        ["models"],
        ["models", "list"],
        ["models", "fetch"],
        ["recipes"],
        ["recipes", "list"],
        ["recipes", "schema"],
        ["inspect"],
        ["check-target"],
        ["bundle"],
        ["build"],
        ["check"],
        ["sweep"],
        ["search"],
    ],
)
def test_help_on_every_command(cmd):
    res = run_cli(*cmd, "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout


def test_shipped_recipes_validate_and_list():
    from tokexport.recipe import load_recipe

    paths = sorted((REPO / "recipes").rglob("*.yaml"))
    names = {p.name for p in paths}
    assert {
        "dinov2-small-zero-tprune.yaml",
        "dinov2-small-topk-cls.yaml",
        "dinov2-small-random.yaml",
        "dinov2-small-fopru-rank.yaml",
        "dinov2-small-fopru-row.yaml",
        "dinov2-small-hired.yaml",
        "llava-1.5-7b-fopru-rank.yaml",
        "llava-v1.6-mistral-7b-hired.yaml",
        "llava-1.5-tiny-fopru-rank.yaml",
        "llava-next-tiny-hired.yaml",
        "dinov2-small-tome.yaml",
        "e5-small-vocab-en-pt.yaml",
        "gemma3-270m-vocab-fr.yaml",
        "smollm2-135m-vocab-en.yaml",
        "minilm-l6-vocab-en.yaml",
    } <= names
    for p in paths:
        load_recipe(p)
    zt, cls, rnd = (
        load_recipe(REPO / "recipes" / f"dinov2-small-{m}.yaml") for m in ("zero-tprune", "topk-cls", "random")
    )
    # the baselines compare at equal FLOPs: same schedule
    for r in (cls, rnd):
        assert (r.reduction.prune_layers, r.reduction.keep_rate, r.reduction.rounding) == (
            zt.reduction.prune_layers,
            zt.reduction.keep_rate,
            zt.reduction.rounding,
        )
    assert zt.reduction.prune_layers == [2, 5, 8] and zt.reduction.keep_rate == [0.9, 0.8, 0.7]
    out = run_cli("recipes", "list").stdout
    assert "zero-tprune" in out and "topk-cls" in out and "hired" in out and "tiny" in out


def test_models_list_shows_bundled():
    res = run_cli("models", "list")
    assert res.returncode == 0 and "dinov2-small" in res.stdout


def test_documented_recipe_paths_exist():
    """Every `recipes/....yaml` the docs name works from the repository root (recipes/ links to the
    package's tokexport/recipes) and, by name, from anywhere (`tokexport convert NAME`)."""
    from tokexport.shipped import find_shipped_recipe

    docs = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    named = {m for d in docs for m in re.findall(r"recipes/[\w./-]+\.yaml", d.read_text())}
    assert "recipes/dinov2-small-zero-tprune.yaml" in named
    for rel in sorted(named):
        assert (REPO / rel).is_file(), rel
        assert find_shipped_recipe(rel) == REPO / "tokexport" / rel, rel
