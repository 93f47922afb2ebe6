"""Normalisation layers for the deploy form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DelegableLayerNorm(nn.Module):
    """LayerNorm over the last dim written with ops every phone delegate takes.

    ExecuTorch's XNNPACK delegate has no LayerNorm: ``native_layer_norm`` falls back to a
    single-threaded portable kernel and splits the delegated graph. Here the two means are
    linears against a stored (1, C) row of 1/C, with eps as the variance linear's bias, and the rest
    is elementwise; the affine part is optional because the deploy form folds it into the
    following linear where there is one. Why exactly this form (measured, executorch 1.5.1 and
    coremltools 9.0): a ``matmul`` with a (C, 1) column decomposes into expand copies that
    XNNPACK refuses (113 partitions on b1), and a bias-free linear followed by ``+ eps`` crashes
    coremltools' ``fuse_linear_bias`` pass.
    """

    def __init__(self, dim: int, eps: float, weight: Tensor | None = None, bias: Tensor | None = None):
        super().__init__()
        self.eps = eps
        self.register_buffer("mean_row", torch.full((1, dim), 1.0 / dim))
        self.register_buffer("eps_bias", torch.full((1,), eps))
        self.weight = None if weight is None else nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @classmethod
    def from_layer_norm(cls, norm: nn.LayerNorm, affine: bool = True) -> DelegableLayerNorm:
        (dim,) = norm.normalized_shape
        if affine:
            return cls(dim, norm.eps, norm.weight, norm.bias)
        return cls(dim, norm.eps)

    def _mean(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        """Mean over the normalized dim (plus ``bias``), kept as a dim of size 1."""
        return F.linear(x, self.mean_row, bias)

    def forward(self, x: Tensor) -> Tensor:
        centred = x - self._mean(x)
        y = centred * torch.rsqrt(self._mean(centred * centred, self.eps_bias))
        if self.weight is not None:
            y = y * self.weight + self.bias
        return y


class ChannelLayerNorm(DelegableLayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map, the means as 1x1 convs to one channel.

    The channels-first twin of :class:`DelegableLayerNorm` (same arithmetic: a mean row of 1/C,
    eps as the variance conv's bias): delegates that keep feature maps NHWC between convs
    (XNNPACK) run both means as convs with no layout change. A type of its own, so recipes that
    swap :class:`DelegableLayerNorm` by exact type leave it alone.
    """

    def __init__(self, dim: int, eps: float, weight: Tensor | None = None, bias: Tensor | None = None):
        shape = (1, dim, 1, 1)
        super().__init__(
            dim, eps,
            None if weight is None else weight.detach().reshape(shape),
            None if bias is None else bias.detach().reshape(shape),
        )
        self.mean_row = self.mean_row.reshape(shape)

    @classmethod
    def from_delegable(cls, norm: DelegableLayerNorm) -> ChannelLayerNorm:
        return cls(norm.mean_row.shape[1], norm.eps, norm.weight, norm.bias)

    def _mean(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.conv2d(x, self.mean_row, bias)


class NativeLayerNorm(DelegableLayerNorm):
    """:class:`DelegableLayerNorm`'s arithmetic as one ``F.layer_norm`` call.

    For runtimes with a LayerNorm of their own: Core ML turns it into one ``layer_norm`` op where the
    delegable form costs two linears, four elementwise ops (two more with the affine part) and a stored
    mean row per norm (b1: 104 ``layer_norm`` ops replace 692 ops; the w8 package 9.00 -> 8.92 MB).
    Same buffers and parameters as the delegable form it is made from (:meth:`from_delegable`), so the
    state dict is the same; the mean row is simply not read.
    """

    @classmethod
    def from_delegable(cls, norm: DelegableLayerNorm) -> NativeLayerNorm:
        native = cls(norm.mean_row.shape[-1], norm.eps, norm.weight, norm.bias)
        return native.requires_grad_(any(p.requires_grad for p in norm.parameters()))

    def forward(self, x: Tensor) -> Tensor:
        dim = self.mean_row.shape[-1]
        return F.layer_norm(x, (dim,), self.weight, self.bias, self.eps)
