"""MNIST and Fashion-MNIST: a registry of their files, and a loader that fetches and verifies them.

MNIST: LeCun, Cortes, Burges, "The MNIST database of handwritten digits" (CC BY-SA 3.0).
Fashion-MNIST: Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", arXiv:1708.07747 (MIT license).

Checksums are sha256 of the decompressed IDX files, since re-wrapped `.gz` copies differ in their
compressed bytes only. Fashion-MNIST's were computed from Debian's `dataset-fashion-mnist` package
and match the published md5 of the decompressed originals.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import torch

from synthgrad.data.download import download_file
from synthgrad.data.idx import read_idx
from synthgrad.data.splits import ImageSplits
from synthgrad.errors import DatasetError


@dataclass(frozen=True)
class IdxFile:
    """One decompressed IDX file of a dataset, identified by its content."""

    name: str
    """File name without `.gz`, e.g. `train-images-idx3-ubyte`."""
    size: int
    """Decompressed size in bytes."""
    sha256: str
    """Hex sha256 of the decompressed content."""


@dataclass(frozen=True)
class IdxDatasetSpec:
    """Everything needed to fetch and verify one IDX image-classification dataset."""

    name: str
    num_classes: int
    mirrors: tuple[str, ...]
    """Base URLs, tried in order; each serves `<base><file name>.gz`."""
    train_images: IdxFile
    train_labels: IdxFile
    test_images: IdxFile
    test_labels: IdxFile


def _spec(
    name: str, mirrors: tuple[str, ...], sha256s: tuple[str, str, str, str]
) -> IdxDatasetSpec:
    """A spec with MNIST's layout: 60000 train and 10000 test images of 28x28, 10 classes."""
    train_images, train_labels, test_images, test_labels = sha256s
    return IdxDatasetSpec(
        name=name,
        num_classes=10,
        mirrors=mirrors,
        train_images=IdxFile("train-images-idx3-ubyte", 16 + 60000 * 28 * 28, train_images),
        train_labels=IdxFile("train-labels-idx1-ubyte", 8 + 60000, train_labels),
        test_images=IdxFile("t10k-images-idx3-ubyte", 16 + 10000 * 28 * 28, test_images),
        test_labels=IdxFile("t10k-labels-idx1-ubyte", 8 + 10000, test_labels),
    )


IDX_DATASETS: Mapping[str, IdxDatasetSpec] = MappingProxyType({
    "mnist": _spec(
        "mnist",
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    ),
    "fashion-mnist": _spec(
        "fashion-mnist",
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    ),
})
"""The registered IDX datasets by name; read-only so no caller can change what others load."""


def load_idx_files(
    spec: IdxDatasetSpec, root: str | os.PathLike, *, download: bool = True
) -> ImageSplits:
    """Load the dataset described by `spec` from `root`, downloading missing files if allowed.

    Every file is checked against the spec's sha256 before it is decoded, so a truncated or
    tampered file fails loudly instead of training on wrong data.

    Args:
        spec: the files, their checksums and mirrors (a registry entry, or your own).
        root: the directory that holds the four files directly, each as `X` or `X.gz`; a raw `X`
            is preferred because it needs no decompression.
        download: fetch missing files into `root` as `X.gz`; if False a missing file is an error.

    Returns:
        ImageSplits with uint8 images (N, H, W) and int64 labels (N,).

    Raises:
        DatasetError: a file is missing (and `download` is False), cannot be downloaded, fails
            its checksum, is not a valid IDX file, or images and labels disagree in number.
    """
    root = Path(root)

    def load(file: IdxFile, ndim: int) -> torch.Tensor:
        path = _locate(spec, file, root, download)
        return read_idx(path, ndim=ndim, sha256=file.sha256)

    train_images, train_labels = load(spec.train_images, 3), load(spec.train_labels, 1)
    test_images, test_labels = load(spec.test_images, 3), load(spec.test_labels, 1)
    _check_counts(root, spec.train_images, train_images, spec.train_labels, train_labels)
    _check_counts(root, spec.test_images, test_images, spec.test_labels, test_labels)
    return ImageSplits(
        train_images=train_images,
        train_labels=train_labels.long(),
        test_images=test_images,
        test_labels=test_labels.long(),
        num_classes=spec.num_classes,
        name=spec.name,
    )


def _locate(spec: IdxDatasetSpec, file: IdxFile, root: Path, download: bool) -> Path:
    """The path of `file` in `root` (raw or `.gz`); if missing and allowed, download it as `.gz`."""
    for candidate in (root / file.name, root / f"{file.name}.gz"):
        if candidate.is_file():
            return candidate
    urls = [f"{mirror}{file.name}.gz" for mirror in spec.mirrors]
    if not download:
        where = f"{root}, which does not exist" if not root.exists() else str(root)
        by_hand = f"download {urls[0]} by hand into {root}" if urls else f"put it in {root}"
        raise DatasetError(
            f"{spec.name}: {file.name} (or {file.name}.gz) is missing from {where}. "
            f"Set {{0}}=True to fetch it, or {by_hand}.",
            "download",
        )
    return download_file(urls, root / f"{file.name}.gz", sha256=file.sha256, size=file.size)


def _check_counts(
    root: Path,
    images_file: IdxFile,
    images: torch.Tensor,
    labels_file: IdxFile,
    labels: torch.Tensor,
) -> None:
    """Raise unless there is exactly one label per image."""
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{images_file.name} in {root} has {images.shape[0]} images but {labels_file.name} "
            f"has {labels.shape[0]} labels; the two files must come from the same split."
        )
