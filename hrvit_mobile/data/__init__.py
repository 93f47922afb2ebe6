"""Segmentation datasets: one sample is ``(image, mask)``.

``image`` is float32 (3, H, W), ImageNet-normalized RGB; ``mask`` is int64 (H, W) class indices with
:data:`~hrvit_mobile.metrics.IGNORE_INDEX` (255) for pixels no metric or loss counts. Every loader
yields that, so training, QAT, calibration and evaluation take any of them.
"""

from hrvit_mobile.data.folder import (
    IMAGE_EXTENSIONS,
    DatasetError,
    FolderSegmentation,
    SegmentationDataset,
    normalize_image,
    open_dataset,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "FolderSegmentation",
    "SegmentationDataset",
    "normalize_image",
    "open_dataset",
]
