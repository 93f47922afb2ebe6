"""HRViT model definitions (training form, official key layout)."""

from hrvit_mobile.models.hrvit import HRViT, HRViTConfig
from hrvit_mobile.models.segmentor import (
    HRViTSegmentor,
    create_model,
    get_config,
    list_models,
    register_model,
)

__all__ = [
    "HRViT",
    "HRViTConfig",
    "HRViTSegmentor",
    "create_model",
    "get_config",
    "list_models",
    "register_model",
]
