"""The visual-token task (tokexport.tasks.visual_tokens) through the one driver (tokexport.tasks.run):
bare CLIP / SigLIP towers and the tiny LLaVA / LLaVA-NeXT twins run end to end, every report keeps the
report contract, attention_mass is an information-only figure that no recipe may gate, and bad
visual recipes fail before anything is written."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from conftest import REPO

from tokexport.errors import InputError
from tokexport.recipe import Recipe, load_recipe
from tokexport.stages.report_schema import validate_report
from tokexport.tasks.run import run

_VERIFY = {
    "parity": {"atol": 1e-4, "mean_atol": 1e-5, "samples": 3},
    "accuracy": {
        "samples_per_class": 1,
        "prototypes_per_class": 1,
        # random weights: a real floor all the same (>= 0.78 measured on the tiny towers)
        "metrics": {"feature_cosine": {"min": 0.5}},
    },
}

TOWER_CASES = {
    # one view, CLS significance, dynamic batch, bench on
    "clip-tower": (
        "clip-vision",
        {
            "task": "visual-tokens",
            "vision": {"feature_layer": -2, "prompt_tokens": 32},
            "reduction": {"method": "fopru-rank", "keep": 4},
            "bench": {"batch_sizes": [1, 2], "warmup": 1, "repeats": 2},
        },
    ),
    # anyres 2×2 + full view, no CLS (received significance), fixed export batch 2 (parity pads 3 → 4)
    "siglip-anyres": (
        "siglip-vision",
        {
            "task": "visual-tokens",
            "vision": {"feature_layer": -2, "grid": [2, 2], "eval_layer": 1, "eval_source": "received"},
            "reduction": {
                "method": "hired",
                "keep_rate": 0.25,
                "alpha": 0.5,
                "select_layer": -2,
                "alloc_layer": 0,
                "source": "received",
            },
            "export": {"batch": 2},
            "bench": {"batch_sizes": [2], "warmup": 1, "repeats": 2},
        },
    ),
}
TWIN_CASES = {"tiny-llava": "llava-1.5-tiny-fopru-rank", "tiny-llava-next": "llava-next-tiny-hired"}
CASES = [*TOWER_CASES, *TWIN_CASES]
GATED = ("feature_cosine", "attn_pooled_cosine", "instance_top1")


def _tower_recipe(tiny_models, case: str, **over) -> Recipe:
    kind, extra = TOWER_CASES[case]
    d = {"model": str(tiny_models[kind]), "verify": copy.deepcopy(_VERIFY), **copy.deepcopy(extra)}
    for key, v in over.items():
        cur = d
        *parents, last = key.split(".")
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[last] = v
    return Recipe.model_validate(d)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The generated tiny LLaVA twins in a private models directory (set for the whole module)."""
    from tokexport import zoo

    d = tmp_path_factory.mktemp("zoo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOKEXPORT_MODELS_DIR", str(d))
        mp.setenv("HF_HUB_OFFLINE", "1")
        for name in TWIN_CASES:
            zoo.fetch(name)
        yield d


@pytest.fixture(scope="module")
def recipes(tiny_models, twins):
    """case → (recipe, base_dir)."""
    out = {c: (_tower_recipe(tiny_models, c), tiny_models["vit"].parent) for c in TOWER_CASES}
    for c, name in TWIN_CASES.items():
        out[c] = (load_recipe(REPO / "recipes" / "tiny" / f"{name}.yaml"), REPO / "recipes" / "tiny")
    return out


@pytest.fixture(scope="module")
def runs(recipes, tmp_path_factory):
    """case → Result of the driver (each case run once for the module)."""
    root = tmp_path_factory.mktemp("runs")
    cache = {}

    def get(case):
        if case not in cache:
            recipe, base = recipes[case]
            cache[case] = run(recipe, base, root / case, label=f"{case}.yaml")
        return cache[case]

    return get


@pytest.mark.parametrize("case", CASES)
def test_driver_runs_visual_tokens(runs, case):
    res = runs(case)
    rep = res.report
    assert res.exit_code == 0, rep["failures"]
    assert validate_report(rep) == []
    assert rep["kind"] == "visual-tokens" and rep["passed"] and not rep["failures"]
    assert rep["parity"]["passed"] and rep["parity_baseline"]["passed"]
    red, lay = rep["reduction"], rep["reduction"]["layout"]
    assert red["visual_tokens_in"] == lay["views"] * lay["grid"][0] * lay["grid"][1]
    k = red["visual_tokens_out"]
    assert 0 < k < red["visual_tokens_in"]
    assert rep["export"]["outputs"]["positions"][1] == k and rep["export"]["outputs"]["visual_tokens"][1] == k
    assert rep["export"]["target"] == rep["recipe"]["export"]["target"]
    assert rep["export"]["inputs"] == {"pixel_values": rep["export"]["input_shape"]}
    assert 0 < rep["llm"]["prefill_flops_saved"] < 1
    # attention mass: an information-only figure, never a gate
    m = rep["accuracy"]["metrics"]
    assert set(GATED) | {"attention_mass"} <= set(m)
    am = m["attention_mass"]
    assert am["info"] is True and 0 < am["value"] < 1 and "passed" not in am and "threshold" not in am
    for name in GATED:
        assert m[name]["better"] == "higher" and m[name]["delta"] == pytest.approx(
            m[name]["reduced"] - m[name]["original"]
        )
    assert m["feature_cosine"]["passed"] is True and m["attn_pooled_cosine"]["passed"] is None
    # honest baselines at the same K on the same crops (tokexport.vlm.baselines), every layout and model
    b = rep["baselines"]
    assert b["budget"]["visual_tokens_kept"] == red["params"]["k"] <= k
    assert len(b["baselines"]["random"]["seeds"]) >= 5 and "uniform" in b["baselines"]
    assert set(b["margins"]) == set(GATED) and b["data"]["samples"] == rep["accuracy"]["samples"]
    # bench: the generic side-by-side, plus the selection overhead of each batch and the note
    for row in rep["bench"]["batches"].values():
        assert row["selection_overhead"] == pytest.approx(row["reduced_ms"] / row["baseline_ms"] - 1.0)
    assert "selection overhead" in rep["bench"]["note"]
    # deploy bundle: the sample feed at the export batch, under the graph's input name
    batch = rep["export"]["batch"]
    sample = np.load(res.out_dir / "deploy" / "inputs" / "input_0.npy")
    assert sample.shape == (1 if batch == "dynamic" else batch, *rep["export"]["input_shape"][1:])
    md = (res.out_dir / "report.md").read_text()
    assert "## Visual tokens" in md and f"{red['visual_tokens_in']} → {k}" in md
    assert "| attention_mass |" in md and "info |" in md


@pytest.mark.parametrize("case", list(TWIN_CASES))
def test_twins_generation(runs, case):
    rep = runs(case).report
    gen = rep["accuracy"]["generation"]
    assert gen["decoding"] == "greedy" and len(gen["samples"]) == 2
    assert all(len(s["full"]) == len(s["reduced"]) == 4 for s in gen["samples"])
    m = rep["accuracy"]["metrics"]
    for name in ("generation_exact_match", "generation_token_agreement"):
        assert m[name]["original"] == 1.0 and 0 <= m[name]["reduced"] <= 1 and m[name]["passed"] is None
    assert rep["model"]["kind"] == ("llava" if case == "tiny-llava" else "llava_next")


def test_console_lines(runs, recipes):
    from tokexport.tasks.run import make_task

    rep = runs("tiny-llava-next").report
    recipe, base = recipes["tiny-llava-next"]
    lines = make_task(recipe, base, "x").console_lines(rep)
    assert any(line.startswith("Layout: 5 view(s) of 4×4 patches (full image + 2×2 sub-images)") for line in lines)
    assert any(line.startswith("Visual tokens to the LLM: 80 → 20") for line in lines)
    assert not any(line.startswith("- ") for line in lines)


@pytest.mark.parametrize(
    "over,needles",
    [
        (
            {"verify.accuracy.metrics": {"attention_mass": {"min": 0.5}}},
            ["verify.accuracy.metrics.attention_mass", "cannot gate", "information only"],
        ),
        (
            {"verify.accuracy.metrics": {"feature_cosine": {"min": 0.5}, "attention_mass": {"max_drop": 0.9}}},
            ["attention_mass", "cannot gate"],
        ),
        ({"verify.accuracy.metrics": {"top1_agreement": {"min": 0.5}}}, ["top1_agreement", "not measured"]),
        ({"verify.generation": {"prompts": ["hi"]}}, ["verify.generation", "LLaVA"]),
        (
            {"verify.vs_baselines": {"metrics": ["attention_mass"]}},
            ["verify.vs_baselines.metrics", "attention_mass", "feature_cosine"],
        ),
        ({"vision.grid": [2, 3]}, ["square grids"]),
        ({"reduction": {"method": "fopru-rank", "keep": 400}}, ["keep", "exceeds"]),
        ({"reduction": {"method": "fopru-rank", "keep": 4, "select_layer": 3}}, ["deeper than the feature layer"]),
        ({"vision.eval_source": "cls"}, ["CLS"]),  # on the SigLIP tower below
    ],
)
def test_bad_visual_recipes_write_nothing(tiny_models, tmp_path, over, needles):
    case = "siglip-anyres" if over.get("vision.eval_source") == "cls" else "clip-tower"
    if case == "clip-tower":
        over = {"bench.enabled": False, **over}
    recipe = _tower_recipe(tiny_models, case, **over)
    out = tmp_path / "out"
    with pytest.raises(InputError) as e:
        run(recipe, tiny_models["vit"].parent, out, label="r.yaml")
    msg = str(e.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_attention_mass_threshold_refused_before_loading(tmp_path):
    """The recipe is refused before the model is even looked at."""
    recipe = Recipe.model_validate(
        {
            "model": str(tmp_path / "no-such-model"),
            "task": "visual-tokens",
            "reduction": {"method": "fopru-rank", "keep": 4},
            "verify": {"accuracy": {"metrics": {"attention_mass": {"min": 0.3}}}},
        }
    )
    with pytest.raises(InputError, match="attention_mass: cannot gate"):
        run(recipe, tmp_path, tmp_path / "out", label="r.yaml")


def test_protected_paths_name_the_local_model(tiny_models, recipes):
    from tokexport.tasks.run import model_paths

    recipe, base = recipes["clip-tower"]
    assert model_paths(recipe.model, base) == [tiny_models["clip-vision"]]
    recipe, base = recipes["tiny-llava"]
    [p] = model_paths(recipe.model, base)
    assert p.name == "tiny-llava" and (p / "config.json").is_file()
