"""HRViT + SegFormer head as one segmentation model, the registry of variants and ``create_model``."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from hrvit_mobile.errors import HRViTMobileError
from hrvit_mobile.models.hrvit import HRViT, HRViTConfig
from hrvit_mobile.models.segformer_head import SegformerHead
from hrvit_mobile.sizes import parse_img_size, validate_img_size

_MODEL_CONFIGS: dict[str, HRViTConfig] = {}


def register_model(name: str) -> Callable[[Callable[[], HRViTConfig]], Callable[[], HRViTConfig]]:
    """Decorator that registers a function returning a variant's :class:`HRViTConfig`."""

    def wrap(fn: Callable[[], HRViTConfig]) -> Callable[[], HRViTConfig]:
        _MODEL_CONFIGS[name] = fn()
        return fn

    return wrap


@register_model("hrvit_b1")
def _hrvit_b1() -> HRViTConfig:
    return HRViTConfig(
        channel_list=(
            (32,), (32, 64), (32, 64, 128), (32, 64, 128), (32, 64, 128, 256), (32, 64, 128, 256)
        ),
        block_list=((1,), (1, 1), (1, 1, 6), (1, 1, 6), (1, 1, 6, 2), (1, 1, 2, 2)),
        dim_head=32,
        mlp_ratio_list=(4, 4, 4, 4),
        head_channels=256,
    )


@register_model("hrvit_b2")
def _hrvit_b2() -> HRViTConfig:
    return HRViTConfig(
        channel_list=(
            (48,), (48, 96), (48, 96, 240), (48, 96, 240), (48, 96, 240, 384), (48, 96, 240, 384)
        ),
        block_list=((1,), (1, 1), (1, 1, 6), (1, 1, 6), (1, 1, 6, 2), (1, 1, 6, 2)),
        dim_head=24,
        mlp_ratio_list=(2, 3, 3, 3),
        head_channels=256,
    )


@register_model("hrvit_b3")
def _hrvit_b3() -> HRViTConfig:
    return HRViTConfig(
        channel_list=(
            (64,), (64, 128), (64, 128, 256), (64, 128, 256), (64, 128, 256, 512), (64, 128, 256, 512)
        ),
        block_list=((1,), (1, 1), (1, 1, 6), (1, 1, 6), (1, 1, 6, 3), (1, 1, 6, 3)),
        dim_head=32,
        mlp_ratio_list=(2, 2, 2, 2),
        head_channels=768,
    )


@register_model("hrvit_nano")
def _hrvit_nano() -> HRViTConfig:
    # Not a paper variant: every HRViT part (4 branches, stripe padding, head-splitting rules,
    # fusion both ways) at a size that exports and lowers in seconds, for tests and smoke runs.
    return HRViTConfig(
        channel_list=((16,), (16, 32), (16, 32, 64), (16, 32, 64, 96)),
        block_list=((1,), (1, 1), (1, 1, 2), (1, 1, 1, 1)),
        dim_head=16,
        mlp_ratio_list=(2, 2, 2, 2),
        stem_channels=32,
        head_channels=64,
    )


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_MODEL_CONFIGS)


def get_config(name: str) -> HRViTConfig:
    if name not in _MODEL_CONFIGS:
        raise HRViTMobileError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODEL_CONFIGS[name]


class HRViTSegmentor(nn.Module):
    """``backbone`` + ``decode_head``: the official mmseg ``EncoderDecoder`` key layout.

    Forward returns logits at 1/4 of the input resolution, like the official decode head.
    """

    def __init__(
        self,
        name: str,
        config: HRViTConfig,
        num_classes: int = 150,
        img_size: tuple[int, int] = (512, 512),
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.name = name
        self.config = config
        self.num_classes = num_classes
        self.img_size = img_size
        self.backbone = HRViT(config, drop_path_rate=drop_path_rate)
        self.decode_head = SegformerHead(config.out_channels, config.head_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_head(self.backbone(x))


def create_model(
    name: str,
    num_classes: int = 150,
    img_size: tuple[int, int] | str | int = (512, 512),
    drop_path_rate: float = 0.0,
) -> HRViTSegmentor:
    """Build the training form of a registered variant (random init, eval mode off).

    ``img_size`` is the default input size that :func:`hrvit_mobile.deploy` bakes in.
    """
    if num_classes < 1:
        raise HRViTMobileError(f"num_classes must be >= 1, got {num_classes}")
    size = validate_img_size(parse_img_size(img_size))
    return HRViTSegmentor(name, get_config(name), num_classes, size, drop_path_rate)
