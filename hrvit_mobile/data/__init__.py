"""Segmentation datasets: one sample is ``(image, mask)``.

``image`` is float32 (3, H, W), ImageNet-normalized RGB; ``mask`` is int64 (H, W) class indices with
:data:`~hrvit_mobile.metrics.IGNORE_INDEX` (255) for pixels no metric or loss counts. Every loader
yields that, so training, QAT, calibration and evaluation take any of them.
"""

from hrvit_mobile.data.ade20k import ADE20KSegmentation
from hrvit_mobile.data.cityscapes import CityscapesSegmentation
from hrvit_mobile.data.folder import (
    IMAGE_EXTENSIONS,
    DatasetError,
    FolderSegmentation,
    SegmentationDataset,
    normalize_image,
)
from hrvit_mobile.data.layouts import detect_layout, open_dataset
from hrvit_mobile.data.synthetic import SYNTHETIC_CLASSES, generate_sample, write_synthetic

__all__ = [
    "IMAGE_EXTENSIONS",
    "SYNTHETIC_CLASSES",
    "ADE20KSegmentation",
    "CityscapesSegmentation",
    "DatasetError",
    "FolderSegmentation",
    "SegmentationDataset",
    "detect_layout",
    "generate_sample",
    "normalize_image",
    "open_dataset",
    "write_synthetic",
]
