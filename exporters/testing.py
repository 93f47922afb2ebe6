"""A tiny stand-in segmenter for smoke-testing the exporters in seconds.

It has the operator mix that matters to the converters — strided convs, BatchNorm, LayerNorm, a
softmax attention, depthwise conv, GELU, bilinear upsampling — and the deploy form's contract:
normalized float32 (1, 3, H, W) in, (1, K, H/4, W/4) logits out. Not a real model: weights are random.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class TinySegmenter(nn.Module):
    def __init__(self, num_classes: int = 5, channels: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        c = channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, 2, 1)
        )
        self.down = nn.Conv2d(c, c, 3, 2, 1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = nn.Linear(c, c)
        self.head = nn.Conv2d(c, num_classes, 1)
        # deterministic, non-degenerate weights (BN statistics included) without touching the global RNG
        with torch.no_grad():
            for name, p in self.named_parameters():
                r = torch.randn(p.shape, generator=g)
                if p.dim() > 1:
                    p.copy_(r / p[0].numel() ** 0.5)
                else:
                    p.copy_(0.05 * r if name.endswith("bias") else 1 + 0.1 * r)
            bn = self.stem[1]
            bn.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(c, generator=g))
        self.scale = c**-0.5
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # 1/4
        b, c, h, w = x.shape
        y = self.down(x)  # 1/8
        hh, ww = y.shape[-2:]
        t = y.flatten(2).transpose(1, 2)
        q, k, v = self.qkv(self.norm(t)).chunk(3, dim=-1)
        a = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        t = t + self.proj(a @ v)
        y = t.transpose(1, 2).reshape(b, c, hh, ww)
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return self.head(F.gelu(x + y))


class RewrittenOps(nn.Module):
    """A graph of the ops the exporters rewrite without a retrace (``exporters/decompose.py``,
    ``exporters/pass_rewrites.py``): convolutions and transposed ones with defaults given and omitted,
    softmax, transposes, reshapes of contiguous, viewable and non-viewable inputs (with -1 sizes),
    slices, casts; (1, 3, H, W) in, H and W multiples of 4, (1, 8, H, W) out."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, 2, 1)
        self.depthwise = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
        self.upsample = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=8)
        self.register_buffer("bias", torch.randn(1, 1, 1, generator=g))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(F.relu(self.stem(x)))  # (1, 8, h, w)
        c, h, w = x.shape[1:]
        t = x.reshape(1, c, -1).transpose(1, 2)  # a view, then (1, h * w, 8) non-contiguous
        q = t.reshape(4, h * w // 4, c)  # a copy first: not viewable
        a = torch.softmax(torch.bmm(q, q.transpose(-1, -2)) + self.bias, dim=-1)
        y = torch.bmm(a, q).reshape(1, h * w, c).transpose(1, 2).reshape(1, c, h, w)
        y = y + t.reshape(1, -1).reshape(1, c, h, -1).mean() + x.reshape(-1, h * w).reshape(1, c, h, -1)
        y = torch.cat([y[:, :4], x[:, 4:]], dim=1).to(torch.float16).to(torch.float32)
        y = F.conv2d(y, self.depthwise.weight, stride=1, padding=[2, 2], groups=8)
        again = F.conv_transpose2d(y, self.upsample.weight, stride=2, output_padding=0, groups=8)
        return self.upsample(y) + again


def node_descriptions(
    graph: torch.fx.Graph, meta_keys: tuple[str, ...] | None = None
) -> list[tuple[Any, ...]]:
    """Every node of ``graph`` as the rest of a lowering sees it, for comparing a rewrite with the pass it
    stands for: name, op, target, arguments, the fake value's shapes, strides and dtypes, and metadata.
    With ``meta_keys``, those keys of compute nodes and the sorted key names; without, every key's
    value of every node (printed) and the provenance chain (``from_node``: names and pass names)."""
    import torch.utils._pytree as pytree

    def value(v: Any) -> str:
        return str(pytree.tree_map(
            lambda t: (tuple(t.shape), t.stride(), t.dtype) if isinstance(t, torch.Tensor) else t, v))

    rows = []
    for node in graph.nodes:
        if meta_keys is not None:
            meta: tuple[Any, ...] = ()
            if node.op == "call_function":
                meta = (*(str(node.meta.get(k)) for k in meta_keys), tuple(sorted(node.meta)))
        else:
            chain, sources = [], node.meta.get("from_node") or []
            source = sources[-1] if sources else None
            while source is not None:
                chain.append((source.name, source.pass_name))
                source = source.from_node[-1] if source.from_node else None
            meta = (tuple(sorted((k, str(v)) for k, v in node.meta.items() if k not in ("val", "from_node"))),
                    len(sources), tuple(chain))
        rows.append((node.name, node.op, str(node.target), str(node.args), str(node.kwargs),
                     value(node.meta.get("val")), meta))
    return rows


def debug_handle_groups(ep: Any) -> list[int]:
    """Which compute nodes share an ExecuTorch debug handle (same greatest ancestor in ``from_node``),
    in graph order: what a rewrite must keep for the Inspector to map a program back as before."""
    from executorch.exir.debug_handle_utils import get_greatest_ancestor_node_identifier

    seen: dict[str, int] = {}
    return [
        seen.setdefault(get_greatest_ancestor_node_identifier(n), len(seen))
        for n in ep.graph.nodes
        if n.op not in ("placeholder", "output")
    ]


def mlpackage_contents(package: Any) -> tuple[bytes, bytes]:
    """An .mlpackage's ML program message without its conversion date (deterministically serialized) and
    its weight file (empty when a small model keeps every constant inline): what two conversions of one
    model must share byte for byte."""
    from pathlib import Path

    from coremltools.proto import Model_pb2

    path = Path(package) / "Data" / "com.apple.CoreML"
    program = Model_pb2.Model()
    program.ParseFromString((path / "model.mlmodel").read_bytes())
    del program.description.metadata.userDefined["com.github.apple.coremltools.conversion_date"]
    weights = path / "weights" / "weight.bin"
    return program.SerializeToString(deterministic=True), weights.read_bytes() if weights.exists() else b""
