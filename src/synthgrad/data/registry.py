"""Every dataset by name: one `load_dataset` for MNIST, Fashion-MNIST and CIFAR-10 alike."""

from __future__ import annotations

import functools
import os
from types import MappingProxyType
from typing import Callable, Mapping

from synthgrad.data.cifar10 import CIFAR10_SPEC, load_cifar10_files
from synthgrad.data.idx_datasets import IDX_DATASETS, load_idx_files
from synthgrad.data.splits import ImageSplits
from synthgrad.errors import DatasetError

# Each loader takes (root, *, download) and returns the dataset's splits.
_LOADERS: Mapping[str, Callable[..., ImageSplits]] = MappingProxyType({
    **{name: functools.partial(load_idx_files, spec) for name, spec in IDX_DATASETS.items()},
    CIFAR10_SPEC.name: functools.partial(load_cifar10_files, CIFAR10_SPEC),
})

DATASET_NAMES: tuple[str, ...] = tuple(_LOADERS)
"""The names `load_dataset` accepts: "mnist", "fashion-mnist", "cifar-10"."""

IMAGE_SHAPES: Mapping[str, tuple[int, int, int]] = MappingProxyType({
    **{name: (1, 28, 28) for name in IDX_DATASETS},
    CIFAR10_SPEC.name: (3, 32, 32),
})
"""Each dataset's image shape (C, H, W), known without loading it: to build a model for it, or to
refuse a model that does not fit, before any data is read."""


def load_dataset(name: str, root: str | os.PathLike, *, download: bool = True) -> ImageSplits:
    """Load a dataset by name from its own data directory, downloading it if allowed.

    Args:
        name: one of `DATASET_NAMES`.
        root: the directory of this dataset's files (e.g. `data/mnist`, `data/cifar-10`); what it
            may hold is described by `load_idx_files` and `load_cifar10_files`.
        download: fetch missing files into `root`; if False they must already be there.

    Returns:
        ImageSplits: uint8 images (N, 28, 28) for the IDX datasets, (N, 3, 32, 32) for CIFAR-10;
        int64 labels (N,).

    Raises:
        DatasetError: unknown name (the message lists the known ones), or any failure to find,
            download, verify or decode the dataset's files.
    """
    if name not in _LOADERS:
        allowed = ", ".join(repr(known) for known in DATASET_NAMES)
        raise DatasetError(f"unknown dataset {name!r}; choose one of {allowed}.")
    return _LOADERS[name](root, download=download)
