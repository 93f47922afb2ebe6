"""Exact re-parameterisations used by the deploy form: each returns new modules that compute the
same function as the training-form modules they replace (up to float rounding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hrvit_mobile.models.mlp import DES, MixConv2d
from hrvit_mobile.models.norm import DelegableLayerNorm


def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[Tensor, Tensor]:
    """Per-channel (scale, shift) with ``bn(x) == x * scale + shift`` in eval mode."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> nn.Conv2d:
    """conv -> BN as one conv with bias."""
    scale, shift = bn_scale_shift(bn)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
    )
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    fused.bias.copy_(bias * scale + shift)
    return fused


def fold_bn_into_linear(
    linear: nn.Linear | nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm
) -> nn.Linear:
    """linear (or 1x1 conv) -> BN over features as one linear on channel-last tokens."""
    scale, shift = bn_scale_shift(bn)
    weight = linear.weight.flatten(1)
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    fused.weight.copy_(weight * scale[:, None])
    fused.bias.copy_(linear.bias * scale + shift)
    return fused


def fold_affine_into_linear(
    norm: nn.LayerNorm, linear: nn.Linear
) -> tuple[DelegableLayerNorm, nn.Linear]:
    """LayerNorm(affine) -> linear as LayerNorm(no affine) -> linear: one elementwise pass fewer."""
    plain = DelegableLayerNorm.from_layer_norm(norm, affine=False)
    fused = nn.Linear(linear.in_features, linear.out_features, bias=True)
    fused.weight.copy_(linear.weight * norm.weight[None, :])
    fused.bias.copy_(linear.weight @ norm.bias + linear.bias)
    return plain, fused


def linear_as_conv1x1(linear: nn.Linear) -> nn.Conv2d:
    """The same map on (B, C, H, W): a 1x1 conv holding the linear's weight and bias."""
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


class NearestUpsample(nn.ConvTranspose2d):
    """Nearest-neighbour upsampling by an integer factor as a depthwise transposed conv of ones.

    Exact (each input pixel fills its factor x factor block) and what every PyTorch consumer takes
    (Core ML's converter included). Two subclasses compute the same with other ops, for the runtimes
    that run those faster (:data:`UPSAMPLERS`); every form holds the same parameters under the same
    names, so state dicts and QAT checkpoints are the same. Each form is its own class because LiteRT
    names its tensors after the module's class: one class with a mode would rename them.
    """

    mode = "transposed_conv"

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__(channels, channels, factor, stride=factor, groups=channels, bias=False)
        self.factor = factor
        with torch.no_grad():
            self.weight.fill_(1.0)


class ResizeNearest(NearestUpsample):
    """The same map as ``F.interpolate(mode="nearest")``: equal outputs, one resize op.

    For LiteRT, which has RESIZE_NEAREST_NEIGHBOR; litert-torch splits a grouped transposed conv into
    one slice + TRANSPOSE_CONV per channel (640 of each on b1).
    """

    mode = "resize"

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode="nearest")


class BroadcastNearest(NearestUpsample):
    """The same map as a broadcast multiply by ones: (B, C, H, 1, W, 1) * (1, 1, 1, f, 1, f).

    For XNNPACK, which has no nearest resize and runs the depthwise transposed conv as one tiny GEMM
    per channel: on b1 at 512x512 the fusion upsamplers took ~100 of ~540 ms of the ExecuTorch fp32
    run (devtools Inspector, XNNPACK op events), and a broadcast multiply does the same block in
    1/4 to 1/8 of the time. ``x * 1`` is exact, so outputs are bit-identical.
    """

    mode = "broadcast"
    ones: Tensor

    def __init__(self, channels: int, factor: int) -> None:
        super().__init__(channels, factor)
        f = factor
        self.register_buffer("ones", torch.ones(1, 1, 1, f, 1, f), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        f = self.factor
        return (x.reshape(b, c, h, 1, w, 1) * self.ones).reshape(b, c, h * f, w * f)


# the forms of the fusion paths' nearest upsampler; each backend's variant picks the one its runtime
# runs fastest (hrvit_mobile.deploy.DeployOptions.upsampler)
UPSAMPLER_FORMS: dict[str, type[NearestUpsample]] = {
    "transposed_conv": NearestUpsample, "resize": ResizeNearest, "broadcast": BroadcastNearest,
}
UPSAMPLERS = tuple(UPSAMPLER_FORMS)


def nearest_upsample(channels: int, factor: int, mode: str = "transposed_conv") -> NearestUpsample:
    """A nearest upsampler in the ``mode`` form (one of :data:`UPSAMPLERS`)."""
    if mode not in UPSAMPLER_FORMS:
        raise ValueError(f"unknown upsampler {mode!r}; allowed: {', '.join(UPSAMPLERS)}")
    return UPSAMPLER_FORMS[mode](channels, factor)


@torch.no_grad()
def upsampler_in_form(up: NearestUpsample, mode: str) -> NearestUpsample:
    """A new upsampler in the ``mode`` form with ``up``'s parameters (``up`` itself when already in it)."""
    if up.mode == mode:
        return up
    other = nearest_upsample(up.out_channels, up.factor, mode).to(up.weight.device, up.weight.dtype)
    other.weight.copy_(up.weight)
    return other.requires_grad_(up.weight.requires_grad)


def set_upsampler(model: nn.Module, mode: str) -> int:
    """Replace every :class:`NearestUpsample` in ``model`` not in the ``mode`` form by one that is (in
    place: the same names and parameters); returns how many."""
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, NearestUpsample) and child.mode != mode]
    for parent, name, child in found:
        setattr(parent, name, upsampler_in_form(child, mode))
    return len(found)


def use_resize_nearest(model: nn.Module) -> int:
    """:func:`set_upsampler` to ``"resize"`` (LiteRT's form)."""
    return set_upsampler(model, "resize")


def use_broadcast_nearest(model: nn.Module) -> int:
    """:func:`set_upsampler` to ``"broadcast"`` (XNNPACK's form)."""
    return set_upsampler(model, "broadcast")


def merge_mixconv(mix: MixConv2d) -> nn.Conv2d:
    """MixConv's 3x3 (first half) and 5x5 (second half) depthwise convs as one 5x5 depthwise conv."""
    k3, k5 = mix.conv_3.kernel_size[0], mix.conv_5.kernel_size[0]
    channels = mix.conv_3.out_channels + mix.conv_5.out_channels
    merged = nn.Conv2d(channels, channels, k5, padding=k5 // 2, groups=channels, bias=True)
    grow = (k5 - k3) // 2  # zero ring that centres the small kernel in the large one
    merged.weight.copy_(torch.cat([F.pad(mix.conv_3.weight, (grow,) * 4), mix.conv_5.weight]))
    merged.bias.copy_(torch.cat([mix.conv_3.bias, mix.conv_5.bias]))
    return merged


def des_as_dense(des: DES) -> tuple[nn.Linear, nn.Linear]:
    """DES's two Kronecker factors as dense channel linears (right, left) with GELU between.

    The token's channels c = i * p + j form a (k, p) matrix; ``proj_right`` acts on j for every i
    (I_k (x) R) and ``proj_left`` on i for every j (L (x) I_p). Dense maps need no reshapes or
    transposes at run time, which phone runtimes prefer to a few saved MACs.
    """
    eye_k = torch.eye(des.k_in, dtype=des.proj_right.weight.dtype)
    eye_p = torch.eye(des.p, dtype=des.proj_right.weight.dtype)
    right = nn.Linear(des.k_in * des.p, des.k_in * des.p)
    right.weight.copy_(torch.kron(eye_k, des.proj_right.weight))
    right.bias.copy_(des.proj_right.bias.repeat(des.k_in))
    left = nn.Linear(des.k_in * des.p, des.k_out * des.p)
    left.weight.copy_(torch.kron(des.proj_left.weight, eye_p))
    left.bias.copy_(des.proj_left.bias.repeat_interleave(des.p))
    return right, left
