"""The deploy form: HRViT re-parameterised for one fixed input size, for export to phones.

:func:`deploy` builds it from a training-form model; :class:`DeployOptions` pick its layers (layout,
upsampler, norm form, DES form), and :func:`with_options` gives a built deploy form in other options.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import Tensor, nn

from hrvit_mobile.deploy.channels_first import ChannelsFirstBranch, layout_of, use_channels_first
from hrvit_mobile.deploy.fold import NearestUpsample, set_upsampler
from hrvit_mobile.deploy.modules import (
    DeployBranch,
    DeployFusion,
    DeploySegformerHead,
    DeployStage,
    DeployStem,
)
from hrvit_mobile.deploy.options import FACTORED_DES_MIN_CHANNELS, DeployOptions
from hrvit_mobile.models.hrvit import HRViTStage
from hrvit_mobile.models.multiscale import HRViTFusionBlock
from hrvit_mobile.models.norm import DelegableLayerNorm, NativeLayerNorm
from hrvit_mobile.models.segmentor import HRViTSegmentor
from hrvit_mobile.sizes import parse_img_size, validate_img_size


class DeployHRViT(nn.Module):
    """HRViT + SegFormer head for a (batch_size, 3, H, W) input; returns (batch, classes, H/4, W/4).

    Built by :func:`deploy`; holds no reference to the training form. ``options`` pick the layers
    (:class:`DeployOptions`): e.g. DES shortcuts of at least ``options.factored_des_from`` channels keep
    their two Kronecker factors, narrower ones (all of them when ``None``) become dense linears.
    """

    def __init__(
        self, model: HRViTSegmentor, img_size: tuple[int, int], batch_size: int = 1,
        options: DeployOptions | None = None,
    ) -> None:
        super().__init__()
        options = options or DeployOptions()
        self.options = options
        self.name = model.name
        self.num_classes = model.num_classes
        self.img_size = img_size
        self.batch_size = batch_size
        height, width = img_size[0] // 4, img_size[1] // 4
        self.stem = DeployStem(model.backbone.stem)
        layers: list[nn.Module] = []
        for layer in model.backbone.features:
            if isinstance(layer, HRViTFusionBlock):
                layers.append(DeployFusion(layer, options.upsampler))
            elif isinstance(layer, HRViTStage):
                sizes = [(height >> i, width >> i) for i in range(len(layer.branches))]
                branch = ChannelsFirstBranch if options.layout == "channels_first" else DeployBranch
                layers.append(DeployStage(layer, sizes, batch_size, options.factored_des_from,
                                          native_norm=options.norm == "native", branch=branch))
            else:  # pragma: no cover - the backbone holds only these two kinds
                raise TypeError(f"unexpected backbone layer {type(layer).__name__}")
        self.features = nn.ModuleList(layers)
        self.decode_head = DeploySegformerHead(model.decode_head, (height, width))

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, 3, *self.img_size)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, self.num_classes, self.img_size[0] // 4, self.img_size[1] // 4)

    def forward(self, x: Tensor) -> Tensor:
        feats = [self.stem(x)]
        for layer in self.features:
            feats = layer(feats)
        return self.decode_head(feats)


@torch.no_grad()
def deploy(
    model: HRViTSegmentor,
    img_size: tuple[int, int] | str | int | None = None,
    options: DeployOptions | None = None,
    batch_size: int = 1,
    factored_des_from: int | None = FACTORED_DES_MIN_CHANNELS,
) -> DeployHRViT:
    """The deploy form of ``model`` for one input size (default: the size the model was created for).

    ``options`` pick the layers (default: the form every consumer takes); without them,
    ``factored_des_from`` picks the DES form: shortcuts with at least that many channels stay factored
    (``None``: every one dense). The training form is left untouched. Raises
    :class:`~hrvit_mobile.sizes.InvalidImageSizeError` naming the nearest valid sizes when the network
    cannot take ``img_size``.
    """
    size = validate_img_size(parse_img_size(img_size if img_size is not None else model.img_size))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if options is None:
        options = DeployOptions(factored_des_from=factored_des_from)
    elif factored_des_from not in (FACTORED_DES_MIN_CHANNELS, options.factored_des_from):
        raise ValueError("give factored_des_from in the options when options are given")
    source = copy.deepcopy(model).float().eval()
    return DeployHRViT(source, size, batch_size, options).eval().requires_grad_(False)


def _token_norms(model: nn.Module) -> list[tuple[nn.Module, str, DelegableLayerNorm]]:
    """(parent, name, norm) of every token-layout deploy norm (delegable or native)."""
    return [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
            if type(child) in (DelegableLayerNorm, NativeLayerNorm)]


@torch.no_grad()
def with_options(model: nn.Module, options: DeployOptions) -> nn.Module:
    """The deploy form ``model`` in ``options``' layout, upsampler and norm form: ``model`` itself when it
    already is, else a copy (the caller's module is never changed). The DES form is fixed when a deploy
    form is built; a module that is not a deploy form (a quantized GraphModule after QAT, which keeps the
    form it was trained in) comes back as it is. A channels-first form does not go back to tokens."""
    native = options.norm == "native"
    to_channels_first = options.layout == "channels_first" and layout_of(model) == "tokens"
    upsamplers = [m for m in model.modules()
                  if isinstance(m, NearestUpsample) and m.mode != options.upsampler]
    norms = [n for _, _, n in _token_norms(model) if (type(n) is NativeLayerNorm) != native]
    if not (to_channels_first or upsamplers or norms):
        return model
    model = copy.deepcopy(model)
    if to_channels_first:
        use_channels_first(model)
    set_upsampler(model, options.upsampler)
    for parent, name, norm in _token_norms(model):
        if (type(norm) is NativeLayerNorm) != native:
            form = NativeLayerNorm if native else DelegableLayerNorm
            swapped = form(norm.mean_row.shape[-1], norm.eps, norm.weight, norm.bias)
            setattr(parent, name, swapped.requires_grad_(any(p.requires_grad for p in norm.parameters())))
    if isinstance(model, DeployHRViT):
        model.options = dataclasses.replace(
            model.options, layout=layout_of(model), upsampler=options.upsampler, norm=options.norm)
    return model


__all__ = ["FACTORED_DES_MIN_CHANNELS", "DeployHRViT", "DeployOptions", "deploy", "with_options"]
