"""Shared fixtures: tiny randomly initialised checkpoints of every supported family (shape/graph
tests only), saved in Hugging Face layout so the real loading code path is exercised."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
            image_size=56, patch_size=14)


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
        cfg = T.ViTConfig(**TINY, num_labels=5, id2label={i: f"c{i}" for i in range(5)},
                          label2id={f"c{i}": i for i in range(5)})
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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {k: make_tiny(k, root / k) for k in TINY_KINDS}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def real_model_dir() -> Path | None:
    """The bundled DINOv2-S, when fetched (CI fetches it before the tests)."""
    base = Path(os.environ.get("TOKEXPORT_MODELS_DIR", REPO / "models"))
    p = base / "dinov2-small"
    return p if (p / "model.safetensors").is_file() else None
