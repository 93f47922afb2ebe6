"""The deploy form: HRViT re-parameterised for one fixed input size, for export to phones."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from hrvit_mobile.deploy.modules import (
    FACTORED_DES_MIN_CHANNELS,
    DeployFusion,
    DeploySegformerHead,
    DeployStage,
    DeployStem,
)
from hrvit_mobile.models.hrvit import HRViTStage
from hrvit_mobile.models.multiscale import HRViTFusionBlock
from hrvit_mobile.models.segmentor import HRViTSegmentor
from hrvit_mobile.sizes import parse_img_size, validate_img_size


class DeployHRViT(nn.Module):
    """HRViT + SegFormer head for a (batch_size, 3, H, W) input; returns (batch, classes, H/4, W/4).

    Built by :func:`deploy`; holds no reference to the training form. DES shortcuts of at least
    ``factored_des_from`` channels keep their two Kronecker factors, narrower ones (all of them when
    ``None``) become dense linears.
    """

    def __init__(
        self, model: HRViTSegmentor, img_size: tuple[int, int], batch_size: int = 1,
        factored_des_from: int | None = FACTORED_DES_MIN_CHANNELS,
    ) -> None:
        super().__init__()
        self.name = model.name
        self.num_classes = model.num_classes
        self.img_size = img_size
        self.batch_size = batch_size
        height, width = img_size[0] // 4, img_size[1] // 4
        self.stem = DeployStem(model.backbone.stem)
        layers: list[nn.Module] = []
        for layer in model.backbone.features:
            if isinstance(layer, HRViTFusionBlock):
                layers.append(DeployFusion(layer))
            elif isinstance(layer, HRViTStage):
                sizes = [(height >> i, width >> i) for i in range(len(layer.branches))]
                layers.append(DeployStage(layer, sizes, batch_size, factored_des_from))
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
    batch_size: int = 1,
    factored_des_from: int | None = FACTORED_DES_MIN_CHANNELS,
) -> DeployHRViT:
    """The deploy form of ``model`` for one input size (default: the size the model was created for).

    DES shortcuts with at least ``factored_des_from`` channels stay factored (``None``: every one
    dense, the form before factoring was measured better). The training form is left untouched.
    Raises :class:`~hrvit_mobile.sizes.InvalidImageSizeError`
    naming the nearest valid sizes when the network cannot take ``img_size``.
    """
    size = validate_img_size(parse_img_size(img_size if img_size is not None else model.img_size))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    source = copy.deepcopy(model).float().eval()
    return DeployHRViT(source, size, batch_size, factored_des_from).eval().requires_grad_(False)


__all__ = ["FACTORED_DES_MIN_CHANNELS", "DeployHRViT", "deploy"]
