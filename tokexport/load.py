"""Resolve the recipe's model (bundled name, local directory, Hub id) and load it with transformers.

The task and model class come from optimum's TasksManager (the checkpoint's architecture class →
task → Auto class); architectures optimum does not map fall back to the class named in config.json.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from .adapters import Adapter, adapter_for
from .adapters.base import check_config_values
from .bounds import BoundsError, check_count, check_real, show
from .checkpoints import weights_kwargs
from .errors import EnvironmentProblem, InputError
from .files import check_model_dir, read_json
from .zoo import resolve_bundled

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Overall limit on one Hub download (seconds); per-request limits are set from it too.
HUB_TIMEOUT_ENV = "TOKEXPORT_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT = 300.0
# Ranges of the preprocessor values the pipeline reads (0..1 pixel scale, as transformers' processors).
MEAN_RANGE = (-10.0, 10.0)
STD_RANGE = (0.0, 10.0)  # open at 0
SIZE_RANGE = (1, 4096)


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


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint (its own port: HF_ENDPOINT may name one) opens."""
    url = urlparse(_hub_endpoint())
    host = url.hostname or "huggingface.co"
    try:
        port = url.port or (80 if url.scheme == "http" else 443)
    except ValueError:
        port = 443
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_timeout() -> float:
    """Seconds one Hub download may take in all (``TOKEXPORT_HUB_TIMEOUT``, default 300)."""
    raw = os.environ.get(HUB_TIMEOUT_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_HUB_TIMEOUT
    try:
        return check_real(raw, 0, 86400, lo_open=True)
    except BoundsError as e:
        raise InputError(
            f"{HUB_TIMEOUT_ENV}={show(raw)}: {e} (seconds); unset it for the default {DEFAULT_HUB_TIMEOUT:g}"
        ) from None


def _limit_hub_requests(seconds: float) -> None:
    """Per-request timeouts for huggingface_hub (its default client waits forever for an answer), unless
    the user installed their own client factory."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import _http

        per_request = max(1.0, min(seconds, 60.0))
        constants.HF_HUB_ETAG_TIMEOUT = min(constants.HF_HUB_ETAG_TIMEOUT, per_request)
        constants.HF_HUB_DOWNLOAD_TIMEOUT = min(constants.HF_HUB_DOWNLOAD_TIMEOUT, per_request)
        default = getattr(_http, "default_client_factory", None)
        if default is not None and getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) is default:

            def factory():
                client = default()
                client.timeout = per_request  # httpx: connect, read, write and pool timeouts
                return client

            _http.set_client_factory(factory)
    except Exception:  # noqa: BLE001 (private API of one release: the overall timeout still holds)
        pass


def _is_timeout(e: BaseException) -> bool:
    seen = 0
    while e is not None and seen < 16:
        if isinstance(e, (TimeoutError, socket.timeout)) or "Timeout" in type(e).__name__ or "timed out" in str(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _stalled(model: str, seconds: float) -> EnvironmentProblem:
    return EnvironmentProblem(
        f"model: downloading {model!r} from the Hugging Face Hub ({_hub_endpoint()}) did not finish within "
        f"{seconds:g} s; check the network or proxy and retry, raise {HUB_TIMEOUT_ENV} (seconds), or download it on "
        f"a connected machine (`hf download {model} --local-dir DIR`) and set model: DIR"
    )


def _download(model: str, patterns: list[str]) -> Path:
    """snapshot_download with an overall deadline: it runs in a daemon thread that is abandoned (and ends
    with the process) when the Hub stalls."""
    from huggingface_hub import snapshot_download

    seconds = hub_timeout()
    _limit_hub_requests(seconds)
    box: dict = {}

    def work():
        try:
            box["path"] = snapshot_download(model, allow_patterns=patterns, etag_timeout=max(1.0, min(seconds, 60.0)))
        except BaseException as e:  # noqa: BLE001 (handed to the caller)
            box["error"] = e

    t = threading.Thread(target=work, name=f"tokexport-hub-{model}", daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise _stalled(model, seconds)
    if "error" in box:
        e = box["error"]
        if _is_timeout(e):
            raise _stalled(model, seconds)
        if not isinstance(e, Exception):
            raise e
        first = (str(e).splitlines() or [type(e).__name__])[0][:300]
        raise InputError(f"model: could not download {model!r} from the Hugging Face Hub: {first}")
    return Path(box["path"])


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
    except Exception:  # noqa: BLE001  (a cache miss raises one of several hub error types: then ask the hub)
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        raise InputError(
            f"model: {model!r} is not in the local Hugging Face cache and the Hub cannot be reached (no network); "
            f"download it on a connected machine (`hf download {model} --local-dir DIR`) and set model: DIR"
        )
    return _download(model, patterns), "hub"  # network errors, 404, gated repos: one line; a stall: exit 5


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
            inferred = (
                "image-classification" if archs and "ForImageClassification" in archs[0] else "feature-extraction"
            )
        task = inferred
    if task not in ("feature-extraction", "image-classification"):
        raise InputError(
            f"task: {task!r} is not supported for vision token reduction (feature-extraction, image-classification)"
        )
    auto_cls = TasksManager.get_model_class_for_task(task, framework="pt", library="transformers")
    # Architectures the Auto mapping does not cover (e.g. DeiTForImageClassificationWithTeacher) load by name.
    if arch_cls is not None and task == "image-classification" and "ForImageClassification" in archs[0]:
        return task, arch_cls
    return task, auto_cls


def read_json_file(p: Path) -> dict:
    """A model directory's JSON file as a mapping, or InputError naming it (unreadable, not JSON, too
    large, nested too deeply, not an object)."""
    data = read_json(p, "model file", finite=True)
    if not isinstance(data, dict):
        raise InputError(f"{p}: expected a JSON object (a mapping of settings), got {type(data).__name__}")
    return data


def _channels(pp: Path, name: str, value, lo: float, hi: float, lo_open: bool = False) -> tuple[float, float, float]:
    """Per-channel normalisation values: 3 numbers (or one for every channel), each finite in range."""
    rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if isinstance(value, (list, tuple)):
        items = list(value) * 3 if len(value) == 1 else list(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value] * 3  # one value for every channel, as transformers' processors accept
    else:
        items = []
    if len(items) != 3:
        raise InputError(
            f"{pp}: {name}: expected 3 numbers (one per RGB channel) in {rng}, got {show(value)}; "
            f"fix {name} in that file"
        )
    try:
        return tuple(check_real(v, lo, hi, lo_open=lo_open) for v in items)  # type: ignore[return-value]
    except BoundsError as e:
        raise InputError(
            f"{pp}: {name}: {e} (one number per RGB channel, on the 0..1 pixel scale); fix {name} in that file"
        ) from None


def _side(pp: Path, name: str, value) -> int | None:
    """A square side from crop_size/size: an int, [height, width], or {height, width | shortest_edge}."""
    if value is None:
        return None
    key = name
    if isinstance(value, dict):
        for k in ("height", "shortest_edge"):
            if value.get(k) is not None:
                key, value = f"{name}.{k}", value[k]
                break
        else:
            return None  # e.g. {longest_edge: ...}: not a crop side; fall back
    elif isinstance(value, (list, tuple)) and len(value) in (1, 2):
        key, value = f"{name}[0]", value[0]
    try:
        return check_count(value, *SIZE_RANGE)
    except BoundsError as e:
        raise InputError(
            f"{pp}: {key}: {e} (pixels); fix {name} in that file, or set export.image_size in the recipe"
        ) from None


def read_preprocessor(path: Path) -> tuple[tuple | None, tuple | None, int | None]:
    """(image_mean, image_std, crop side) from a model directory's preprocessor_config.json, each None
    when absent; every value checked (finite, in range, of the right type) or InputError naming the
    file and the field."""
    pp = path / "preprocessor_config.json"
    if not pp.is_file():
        return None, None, None
    cfg = read_json_file(pp)
    mean = std = None
    if cfg.get("image_mean") is not None:
        mean = _channels(pp, "image_mean", cfg["image_mean"], *MEAN_RANGE)
    if cfg.get("image_std") is not None:
        std = _channels(pp, "image_std", cfg["image_std"], *STD_RANGE, lo_open=True)
    center = cfg.get("do_center_crop", True)
    if not isinstance(center, bool) and center is not None:
        raise InputError(f"{pp}: do_center_crop: expected true or false, got {show(center)}; fix it in that file")
    crop = _side(pp, "crop_size", cfg.get("crop_size")) if center is not False else None
    if crop is None:
        crop = _side(pp, "size", cfg.get("size"))
    return mean, std, crop


def _preprocessing(path: Path, adapter: Adapter, image_size: int | None):
    mean, std, crop = read_preprocessor(path)
    mean, std = mean or IMAGENET_MEAN, std or IMAGENET_STD
    if image_size:
        size, where = image_size, "export.image_size"
    elif crop:
        size, where = crop, f"{path / 'preprocessor_config.json'}: crop size"
    else:
        size, where = adapter.default_image_size(), f"{path / 'config.json'}: image_size"
    patch = adapter.patch_size
    if size % patch:
        fix = "" if image_size else "; set export.image_size in the recipe"
        raise InputError(f"{where} {size} is not a multiple of the patch size {patch}{fix}")
    return int(size), mean, std


def load_model(
    model: str,
    base_dir: Path,
    family: str | None = None,
    task: str = "auto",
    image_size: int | None = None,
    before_weights: Callable[[Adapter, int], None] | None = None,
    allow_pickle: bool | None = None,
) -> LoadedModel:
    """Load the checkpoint. ``before_weights(adapter, image_size)`` runs once the config is read and
    before the weights load, so recipe checks that need the architecture fail fast. Safetensors weights
    only, unless ``allow_pickle`` (default: the running conversion's recipe, :mod:`tokexport.checkpoints`)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the CLI shows its own progress
    path, kind = resolve_source(model, base_dir)
    check_model_dir(path)  # regular files only: a FIFO would hang transformers
    weights = weights_kwargs(path, allow_pickle)  # a pickle-only checkpoint: refused before anything loads
    cfg_file = path / "config.json"
    # The values the pipeline reads, checked in the file itself first: one line naming the field, not a
    # transformers traceback (a wrong type) or a division by zero later (patch_size: 0).
    check_config_values(read_json_file(cfg_file), str(cfg_file))
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 (OSError, ValueError, transformers' strict config validation, ...)
        first = " ".join(str(e).split())[:300] or type(e).__name__
        raise InputError(f"model: cannot read {cfg_file}: {first}") from None
    adapter = adapter_for(config, family, source=str(cfg_file))
    size, mean, std = _preprocessing(path, adapter, image_size)
    adapter.n_tokens(size)  # validates the patch grid
    if before_weights is not None:
        before_weights(adapter, size)
    task, cls = _model_class(config, task)
    try:
        net, info = cls.from_pretrained(
            path, attn_implementation="sdpa", output_loading_info=True, dtype=torch.float32, **weights
        )
    except Exception as e:  # noqa: BLE001  (corrupt / truncated weights, wrong class: transformers raises many types)
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
    return LoadedModel(
        model=net,
        config=config,
        adapter=adapter,
        task=task,
        source=model,
        source_kind=kind,
        path=path,
        image_size=size,
        mean=mean,
        std=std,
    )
