"""Resolve the recipe's model (bundled name, local directory, Hub id) and load it with transformers.

The task and model class come from optimum's TasksManager (the checkpoint's architecture class →
task → Auto class); architectures optimum does not map fall back to the class named in config.json.
"""
from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn

from .adapters import Adapter, adapter_for
from .errors import InputError
from .zoo import resolve_bundled

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    model: nn.Module
    config: object
    adapter: Adapter
    task: str
    source: str  # what the recipe said
    source_kind: str  # bundled | local | hub
    path: Path
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_source(model: str, base_dir: Path) -> tuple[Path, str]:
    """(directory, kind). Hub ids are downloaded (or read from the local HF cache)."""
    bundled = resolve_bundled(model)
    if bundled is not None:
        return bundled, "bundled"
    candidate = Path(model).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    if candidate.exists():
        if not candidate.is_dir():
            raise InputError(f"model: {candidate} is a file; point model at a Hugging Face model directory")
        if not (candidate / "config.json").is_file():
            raise InputError(f"model: {candidate} has no config.json; it is not a Hugging Face model directory")
        return candidate, "local"
    if not _HUB_ID.match(model) or model.startswith((".", "/", "~")):
        raise InputError(
            f"model: {model!r} is not a bundled model, an existing directory (looked at {candidate}), or a Hub id (org/name)"
        )
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
    try:  # already in the local Hugging Face cache?
        return Path(snapshot_download(model, allow_patterns=patterns, local_files_only=True)), "hub"
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        raise InputError(
            f"model: {model!r} is not in the local Hugging Face cache and the Hub cannot be reached (no network); "
            f"download it on a connected machine (`hf download {model} --local-dir DIR`) and set model: DIR"
        )
    try:
        return Path(snapshot_download(model, allow_patterns=patterns)), "hub"
    except Exception as e:  # network errors, 404, gated repos
        raise InputError(f"model: could not download {model!r} from the Hugging Face Hub: {str(e).splitlines()[0]}") from None


def _model_class(config, task: str):
    import transformers
    from optimum.exporters.tasks import TasksManager

    archs = list(getattr(config, "architectures", None) or [])
    arch_cls = getattr(transformers, archs[0], None) if archs else None
    if task == "auto":
        inferred = None
        if arch_cls is not None:
            try:
                inferred = TasksManager.infer_task_from_model(arch_cls)
            except (ValueError, KeyError, RuntimeError):
                inferred = None
        if inferred is None:
            inferred = "image-classification" if archs and "ForImageClassification" in archs[0] else "feature-extraction"
        task = inferred
    if task not in ("feature-extraction", "image-classification"):
        raise InputError(f"task: {task!r} is not supported for vision token reduction (feature-extraction, image-classification)")
    auto_cls = TasksManager.get_model_class_for_task(task, framework="pt", library="transformers")
    # Architectures the Auto mapping does not cover (e.g. DeiTForImageClassificationWithTeacher) load by name.
    if arch_cls is not None and task == "image-classification" and "ForImageClassification" in archs[0]:
        return task, arch_cls
    return task, auto_cls


def _preprocessing(path: Path, adapter: Adapter, image_size: int | None):
    mean, std, crop = IMAGENET_MEAN, IMAGENET_STD, None
    pp = path / "preprocessor_config.json"
    if pp.is_file():
        try:
            cfg = json.loads(pp.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"{pp}: invalid JSON ({e.msg}, line {e.lineno})") from None
        mean = tuple(cfg.get("image_mean", mean))
        std = tuple(cfg.get("image_std", std))
        c = cfg.get("crop_size") if cfg.get("do_center_crop", True) else None
        if isinstance(c, dict):
            crop = c.get("height") or c.get("shortest_edge")
        elif isinstance(c, int):
            crop = c
        if crop is None:
            s = cfg.get("size")
            crop = (s.get("height") or s.get("shortest_edge")) if isinstance(s, dict) else s
    size = image_size or crop or adapter.default_image_size()
    return int(size), mean, std


def load_model(model: str, base_dir: Path, family: str | None = None, task: str = "auto",
               image_size: int | None = None, before_weights: Callable[[Adapter, int], None] | None = None) -> LoadedModel:
    """Load the checkpoint. ``before_weights(adapter, image_size)`` runs once the config is read and
    before the weights load, so recipe checks that need the architecture fail fast."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI shows its own progress
    path, kind = resolve_source(model, base_dir)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, json.JSONDecodeError, KeyError) as e:
        raise InputError(f"model: cannot read {path}/config.json: {str(e).splitlines()[0]}") from None
    adapter = adapter_for(config, family)
    size, mean, std = _preprocessing(path, adapter, image_size)
    adapter.n_tokens(size)  # validates the patch grid
    if before_weights is not None:
        before_weights(adapter, size)
    task, cls = _model_class(config, task)
    try:
        net, info = cls.from_pretrained(path, attn_implementation="sdpa", output_loading_info=True, dtype=torch.float32)
    except Exception as e:  # corrupt / truncated weights, wrong class
        raise InputError(
            f"model: cannot load weights from {path}: {str(e).splitlines()[0][:200]}; re-fetch or re-save the checkpoint"
        ) from None
    missing = [k for k in info.get("missing_keys", []) if "mask_token" not in k]
    if missing:
        raise InputError(
            f"model: {path} is missing {len(missing)} weights (e.g. {missing[0]}); the checkpoint is incomplete or for another architecture"
        )
    net.eval()
    adapter.layers(net)  # validates the structure
    return LoadedModel(model=net, config=config, adapter=adapter, task=task, source=model, source_kind=kind,
                       path=path, image_size=size, mean=mean, std=std)
