"""Normalisation layers for the deploy form."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DelegableLayerNorm(nn.Module):
    """LayerNorm over the last dim written with ops every phone delegate takes.

    ExecuTorch's XNNPACK delegate has no LayerNorm: ``native_layer_norm`` falls back to a
    single-threaded portable kernel and splits the delegated graph. Here the two means are
    matmuls with a constant (C, 1) column of 1/C, and the rest is elementwise; the affine part is
    optional because the deploy form folds it into the following linear where there is one.
    (``matmul``, not ``F.linear``: coremltools' ``fuse_linear_bias`` pass crashes on a bias-free
    linear whose output is subtracted from its input.)
    """

    def __init__(self, dim: int, eps: float, weight: Tensor | None = None, bias: Tensor | None = None):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean_column", torch.full((dim, 1), 1.0 / dim))
        self.weight = None if weight is None else nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_layer_norm(cls, norm: nn.LayerNorm, affine: bool = True) -> DelegableLayerNorm:
        (dim,) = norm.normalized_shape
        if affine:
            return cls(dim, norm.eps, norm.weight, norm.bias)
        return cls(dim, norm.eps)

    def forward(self, x: Tensor) -> Tensor:
        centred = x - torch.matmul(x, self.mean_column)
        variance = torch.matmul(centred * centred, self.mean_column)
        y = centred * torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            y = y * self.weight + self.bias
        return y
