"""The train and test splits of an image-classification dataset, as every loader returns them."""

from __future__ import annotations

from dataclasses import dataclass

import torch


# eq=False: tensors have no single truth value, so a generated __eq__ would raise.
@dataclass(frozen=True, eq=False)
class ImageSplits:
    """A dataset's train and test splits as tensors, ready to batch.

    Images are uint8 with pixels in [0, 255]: (N, H, W) for the grayscale IDX datasets
    ((N, 28, 28) for MNIST and Fashion-MNIST), (N, C, H, W) for colour ones ((N, 3, 32, 32) for
    CIFAR-10). Labels are int64 (N,) in [0, num_classes).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    name: str
