"""Dataset loading: download with verification, IDX decoding, the MNIST-family registry."""

from synthgrad.data.download import DEFAULT_TIMEOUT_S, download_file
from synthgrad.data.errors import DatasetError
from synthgrad.data.idx import read_idx
from synthgrad.data.idx_datasets import (
    IDX_DATASETS,
    IdxDatasetSpec,
    IdxFile,
    ImageSplits,
    load_idx_dataset,
    load_idx_files,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DatasetError",
    "IDX_DATASETS",
    "IdxDatasetSpec",
    "IdxFile",
    "ImageSplits",
    "download_file",
    "load_idx_dataset",
    "load_idx_files",
    "read_idx",
]
