"""Dataset loading: download with verification, IDX and CIFAR-10 decoding, a registry by name."""

from synthgrad.data.cifar10 import CIFAR10_SPEC, Cifar10Spec, load_cifar10, load_cifar10_files
from synthgrad.data.download import DEFAULT_TIMEOUT_S, download_file, verify_file
from synthgrad.errors import DatasetError
from synthgrad.data.idx import read_idx
from synthgrad.data.idx_datasets import (
    IDX_DATASETS,
    IdxDatasetSpec,
    IdxFile,
    load_idx_dataset,
    load_idx_files,
)
from synthgrad.data.registry import DATASET_NAMES, IMAGE_SHAPES, load_dataset
from synthgrad.data.splits import ImageSplits

__all__ = [
    "CIFAR10_SPEC",
    "Cifar10Spec",
    "DATASET_NAMES",
    "DEFAULT_TIMEOUT_S",
    "DatasetError",
    "IDX_DATASETS",
    "IMAGE_SHAPES",
    "IdxDatasetSpec",
    "IdxFile",
    "ImageSplits",
    "download_file",
    "load_cifar10",
    "load_cifar10_files",
    "load_dataset",
    "load_idx_dataset",
    "load_idx_files",
    "read_idx",
    "verify_file",
]
