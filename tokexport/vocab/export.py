"""Static-shape ONNX of a text encoder (input_ids, attention_mask -> hidden states + pooled,
L2-normalised embedding) or a causal decoder (input_ids, attention_mask -> logits, no KV cache).
Sequence length is fixed by the recipe (TensorRT engines are built for it); batch is fixed or the
only dynamic axis. Uses the TorchScript exporter for opset <= 17 as tokexport.export does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..export import choose_exporter, pin_shapes, run_exporter

INPUTS = ("input_ids", "attention_mask")


class EncoderGraph(nn.Module):
    """What a sentence-embedding deployment runs: hidden states and the pooled, normalised embedding."""

    outputs = ("last_hidden_state", "sentence_embedding")

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.model = model
        self.pooling = pooling

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return hidden, F.normalize(pooled, p=2.0, dim=-1)


class DecoderGraph(nn.Module):
    """Full-sequence logits without a KV cache (prefill-style; right padding leaves valid positions exact)."""

    outputs = ("logits",)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return (self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits,)


def graph_for(model: nn.Module, architecture: str, pooling: str) -> nn.Module:
    return (DecoderGraph(model) if architecture == "decoder" else EncoderGraph(model, pooling)).eval()


def run_graph(graph: nn.Module, input_ids, attention_mask) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        out = graph(torch.as_tensor(input_ids), torch.as_tensor(attention_mask))
    return dict(zip(graph.outputs, out))


@dataclass
class TextExportInfo:
    path: Path
    exporter: str
    opset: int
    output_shapes: dict[str, list]


def export_text_onnx(
    graph: nn.Module, example: dict[str, torch.Tensor], path: Path, opset: int, dynamic_batch: bool
) -> TextExportInfo:
    exporter = choose_exporter(opset, "auto")
    names = list(graph.outputs)
    args = tuple(example[n] for n in INPUTS)
    with torch.inference_mode():
        ref = dict(zip(names, graph(*args)))
    m = run_exporter(graph, args, path, opset, exporter, list(INPUTS), names, dynamic_batch)
    batch = "batch" if dynamic_batch else int(args[0].shape[0])
    shapes = {n: [batch, *example[n].shape[1:]] for n in INPUTS}
    shapes.update({n: [batch, *t.shape[1:]] for n, t in ref.items()})
    pin_shapes(m, path, shapes)
    return TextExportInfo(path=path, exporter=exporter, opset=opset, output_shapes={n: shapes[n] for n in names})
