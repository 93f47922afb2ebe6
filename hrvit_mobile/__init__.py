"""hrvit-mobile: HRViT semantic segmentation, faithful to the official model, deployable to phones."""

from hrvit_mobile.checkpoint import CheckpointError, load_checkpoint
from hrvit_mobile.deploy import DeployHRViT, deploy
from hrvit_mobile.models import HRViTSegmentor, create_model, list_models
from hrvit_mobile.sizes import InvalidImageSizeError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DeployHRViT",
    "HRViTSegmentor",
    "InvalidImageSizeError",
    "__version__",
    "create_model",
    "deploy",
    "list_models",
    "load_checkpoint",
]
