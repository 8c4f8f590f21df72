"""Tests for synthgrad.data.cifar10 and `load_dataset`, the loader by name.

The real archive is not needed: tiny batch files in CIFAR-10's own binary format (a label byte, then
3x32x32 channel-major pixels, per record) are written to tmp_path, four records per file, through a
spec that differs from `CIFAR10_SPEC` only in its record count, mirrors and archive md5.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from synthgrad.data import DATASET_NAMES, DatasetError, ImageSplits, load_dataset
from synthgrad.data.cifar10 import CIFAR10_SPEC, Cifar10Spec, load_cifar10_files

RECORDS = 4  # per batch file
RECORD_BYTES = 1 + 3 * 32 * 32
FOLDER = CIFAR10_SPEC.folder
ARCHIVE = CIFAR10_SPEC.archive_name
FILES = CIFAR10_SPEC.train_files + CIFAR10_SPEC.test_files
META = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n"


def _encode(images: np.ndarray, labels: np.ndarray) -> bytes:
    """CIFAR-10 binary records: per image, its label byte then its (3, 32, 32) pixels in C order."""
    flat = images.reshape(len(images), -1)
    return np.concatenate([labels[:, None], flat], axis=1).astype(np.uint8).tobytes()


_rng = np.random.default_rng(0)
BATCHES = {  # file name -> (images (RECORDS, 3, 32, 32) uint8, labels (RECORDS,))
    name: (
        _rng.integers(0, 256, (RECORDS, 3, 32, 32), dtype=np.uint8),
        (np.arange(RECORDS) + RECORDS * i) % 10,  # every class appears across the files
    )
    for i, name in enumerate(FILES)
}
CONTENTS = {name: _encode(*batch) for name, batch in BATCHES.items()}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _spec(urls: tuple[str, ...] = (), archive_md5: str = "0" * 32) -> Cifar10Spec:
    """CIFAR-10's spec with RECORDS records per file and the given mirrors and archive md5."""
    return dataclasses.replace(
        CIFAR10_SPEC, records_per_file=RECORDS, urls=urls, archive_md5=archive_md5
    )


def _write_batches(folder: Path, contents: dict[str, bytes] = CONTENTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return folder


def _tar_gz(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    """A .tar.gz holding `members` (name -> content) and symbolic `links` (name -> target)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def _published_layout() -> dict[str, bytes]:
    """The members of cifar-10-binary.tar.gz: the six batches and the class names in one folder."""
    return {f"{FOLDER}/{name}": data for name, data in CONTENTS.items()} | {
        f"{FOLDER}/batches.meta.txt": META
    }


ARCHIVE_BYTES = _tar_gz(_published_layout())


def _expected(names: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    images = np.concatenate([BATCHES[name][0] for name in names])
    labels = np.concatenate([BATCHES[name][1] for name in names])
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def _assert_tiny_splits(splits: ImageSplits) -> None:
    assert splits.name == "cifar-10" and splits.num_classes == 10
    assert splits.train_images.shape == (5 * RECORDS, 3, 32, 32)
    assert splits.test_images.shape == (RECORDS, 3, 32, 32)
    assert splits.train_images.dtype == torch.uint8 and splits.train_labels.dtype == torch.int64
    train_images, train_labels = _expected(CIFAR10_SPEC.train_files)
    test_images, test_labels = _expected(CIFAR10_SPEC.test_files)
    assert torch.equal(splits.train_images, train_images)
    assert torch.equal(splits.train_labels, train_labels)
    assert torch.equal(splits.test_images, test_images)
    assert torch.equal(splits.test_labels, test_labels)


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder)) if folder.exists() else []


# --- the published spec --------------------------------------------------------------------------


def test_published_spec() -> None:
    assert CIFAR10_SPEC.name == "cifar-10" and CIFAR10_SPEC.num_classes == 10
    assert CIFAR10_SPEC.urls == ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)
    assert CIFAR10_SPEC.archive_md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert CIFAR10_SPEC.folder == "cifar-10-batches-bin"
    assert FILES == tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
    assert CIFAR10_SPEC.records_per_file * RECORD_BYTES == 30730000


@pytest.mark.parametrize("layout", ["extracted folder", "files directly in root"])
def test_load_dataset_uses_the_published_spec(tmp_path: Path, layout: str) -> None:
    folder = _write_batches(tmp_path / FOLDER if layout == "extracted folder" else tmp_path)
    # Four records per file, not the published 10000: rejected by size.
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar-10", tmp_path, download=False)
    message = str(info.value)
    assert f"{folder / 'data_batch_1.bin'} is truncated" in message
    assert f"it has {RECORDS * RECORD_BYTES} bytes, expected 30730000" in message


# --- decoding ------------------------------------------------------------------------------------


def test_decoding_is_channel_major_with_leading_label(tmp_path: Path) -> None:
    # An oracle independent of the loader's reshape: byte 1 + c*1024 + y*32 + x of a record is
    # pixel (c, y, x) of its image, and byte 0 its label.
    def value(record: int, c: int, y: int, x: int) -> int:
        return (record * 7 + c * 101 + y * 13 + x) % 256

    data = bytearray()
    for record in range(RECORDS):
        pixels = bytearray(RECORD_BYTES - 1)
        for c in range(3):
            for y in range(32):
                for x in range(32):
                    pixels[c * 1024 + y * 32 + x] = value(record, c, y, x)
        data += bytes([9 - record]) + pixels
    _write_batches(tmp_path, {name: bytes(data) for name in FILES})

    splits = load_cifar10_files(_spec(), tmp_path, download=False)
    c, y, x = torch.meshgrid(torch.arange(3), torch.arange(32), torch.arange(32), indexing="ij")
    one_file = torch.stack([(record * 7 + c * 101 + y * 13 + x) % 256 for record in range(RECORDS)])
    assert torch.equal(splits.test_images, one_file.to(torch.uint8))
    assert torch.equal(splits.train_images, one_file.repeat(5, 1, 1, 1).to(torch.uint8))
    assert splits.test_labels.tolist() == [9, 8, 7, 6]
    assert splits.train_labels.tolist() == [9, 8, 7, 6] * 5


@pytest.mark.parametrize("layout", ["extracted folder", "files directly in root"])
def test_both_folder_layouts(tmp_path: Path, layout: str) -> None:
    _write_batches(tmp_path / FOLDER if layout == "extracted folder" else tmp_path)
    splits = load_cifar10_files(_spec(), tmp_path, download=False)
    _assert_tiny_splits(splits)
    splits.train_images[0, 0, 0, 0] = 1  # the tensors own writable memory


# --- damaged batch files -------------------------------------------------------------------------


@pytest.mark.parametrize("change, problem", [(-1, "is truncated"), (+1, "is too long")])
def test_wrong_size_names_file_sizes_and_fix(tmp_path: Path, change: int, problem: str) -> None:
    folder = _write_batches(tmp_path / FOLDER)
    data = CONTENTS["data_batch_3.bin"]
    (folder / "data_batch_3.bin").write_bytes(data[:change] if change < 0 else data + b"\0")
    with pytest.raises(DatasetError) as info:
        load_cifar10_files(_spec(), tmp_path, download=False)
    message = str(info.value)
    assert f"{folder / 'data_batch_3.bin'} {problem}" in message
    assert f"it has {len(data) + change} bytes, expected {len(data)}" in message
    assert f"Delete {folder} so it is extracted again from {ARCHIVE}" in message


def test_wrong_size_in_flat_layout_says_where_good_files_come_from(tmp_path: Path) -> None:
    _write_batches(tmp_path)
    (tmp_path / "test_batch.bin").write_bytes(CONTENTS["test_batch.bin"][:100])
    spec = _spec(urls=("https://example.invalid/cifar.tar.gz",))
    with pytest.raises(DatasetError, match=r"test_batch\.bin is truncated: it has 100 bytes.*"
                       r"Replace the \.bin files .* with those from cifar-10-binary\.tar\.gz "
                       r"\(https://example\.invalid/cifar\.tar\.gz\)"):
        load_cifar10_files(spec, tmp_path, download=False)


def test_missing_batch_file_names_it_and_fix(tmp_path: Path) -> None:
    folder = _write_batches(tmp_path / FOLDER)
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(DatasetError) as info:
        load_cifar10_files(_spec(), tmp_path, download=False)
    message = str(info.value)
    assert f"data_batch_4.bin is missing from {folder}" in message
    assert f"Delete {folder} so it is extracted again" in message


def test_label_out_of_range_is_rejected(tmp_path: Path) -> None:
    images, labels = BATCHES["test_batch.bin"]
    bad_labels = labels.copy()
    bad_labels[2] = 10
    contents = dict(CONTENTS, **{"test_batch.bin": _encode(images, bad_labels)})
    _write_batches(tmp_path, contents)
    with pytest.raises(DatasetError, match=r"test_batch\.bin is corrupt: record 2 has label 10.*"
                       r"expected 0\.\.9"):
        load_cifar10_files(_spec(), tmp_path, download=False)


# --- the archive ---------------------------------------------------------------------------------


def test_archive_is_verified_and_extracted_into_root(tmp_path: Path) -> None:
    (tmp_path / ARCHIVE).write_bytes(ARCHIVE_BYTES)
    splits = load_cifar10_files(_spec(archive_md5=_md5(ARCHIVE_BYTES)), tmp_path, download=False)
    _assert_tiny_splits(splits)
    assert _listing(tmp_path) == sorted([ARCHIVE, FOLDER])  # no temporary folder left behind
    assert _listing(tmp_path / FOLDER) == sorted(FILES + ("batches.meta.txt",))
    assert (tmp_path / FOLDER / "batches.meta.txt").read_bytes() == META
    # Later loads read the extracted folder; the archive is no longer needed.
    (tmp_path / ARCHIVE).unlink()
    _assert_tiny_splits(load_cifar10_files(_spec(), tmp_path, download=False))


def test_archive_with_wrong_md5_is_not_extracted(tmp_path: Path) -> None:
    (tmp_path / ARCHIVE).write_bytes(ARCHIVE_BYTES)
    with pytest.raises(DatasetError) as info:
        load_cifar10_files(_spec(archive_md5="0" * 32), tmp_path, download=False)
    message = str(info.value)
    assert f"{tmp_path / ARCHIVE} is corrupt or truncated" in message
    assert f"with md5 {_md5(ARCHIVE_BYTES)}, expected md5 {'0' * 32}" in message
    assert "Delete it so it is downloaded again" in message
    assert _listing(tmp_path) == [ARCHIVE]


def test_archive_that_is_not_tar_gz(tmp_path: Path) -> None:
    garbage = b"<html>not the archive</html>"
    (tmp_path / ARCHIVE).write_bytes(garbage)
    with pytest.raises(DatasetError, match=r"is not a valid \.tar\.gz archive.*Delete it"):
        load_cifar10_files(_spec(archive_md5=_md5(garbage)), tmp_path, download=False)
    assert _listing(tmp_path) == [ARCHIVE]


def test_archive_without_the_folder(tmp_path: Path) -> None:
    archive = _tar_gz(CONTENTS)  # batch files at the top, not in cifar-10-batches-bin/
    (tmp_path / ARCHIVE).write_bytes(archive)
    with pytest.raises(DatasetError, match=rf"has no {FOLDER}/ folder"):
        load_cifar10_files(_spec(archive_md5=_md5(archive)), tmp_path, download=False)
    assert _listing(tmp_path) == [ARCHIVE]


@pytest.mark.parametrize(
    "members, links, problem",
    [
        ({"../escaped.bin": b"x"}, None, "a path outside"),
        ({f"{FOLDER}/../../escaped.bin": b"x"}, None, "a path outside"),
        ({"/tmp/escaped.bin": b"x"}, None, "a path outside"),
        ({}, {f"{FOLDER}/data_batch_1.bin": "/etc/passwd"}, "a link or special file"),
    ],
)
def test_unsafe_archive_member_is_rejected(
    tmp_path: Path, members: dict[str, bytes], links: dict[str, str] | None, problem: str
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    # The unsafe member comes after the good ones, so extraction has begun when it is found.
    archive = _tar_gz(_published_layout() | members, links)
    (root / ARCHIVE).write_bytes(archive)
    with pytest.raises(DatasetError) as info:
        load_cifar10_files(_spec(archive_md5=_md5(archive)), root, download=False)
    message = str(info.value)
    assert f"{root / ARCHIVE} is unsafe to extract" in message and problem in message
    assert "delete it and download it again" in message
    assert _listing(root) == [ARCHIVE]  # nothing extracted, no temporary folder
    assert _listing(tmp_path) == ["root"]  # nothing escaped


# --- download ------------------------------------------------------------------------------------


def test_missing_everything_without_download(tmp_path: Path) -> None:
    spec = _spec(urls=("https://example.invalid/cifar-10-binary.tar.gz",))
    with pytest.raises(DatasetError) as info:
        load_cifar10_files(spec, tmp_path / "nowhere", download=False)
    message = str(info.value)
    assert f"neither {FOLDER}/, nor its .bin files, nor {ARCHIVE}" in message
    assert f"{tmp_path / 'nowhere'}, which does not exist" in message
    assert "download=True" in message and info.value.fields == ("download",)
    assert "https://example.invalid/cifar-10-binary.tar.gz by hand" in message


def test_archive_is_downloaded_verified_and_extracted(
    tmp_path: Path, server, closed_url: str
) -> None:
    base_url, served = server
    (served / ARCHIVE).write_bytes(ARCHIVE_BYTES)
    spec = _spec(urls=(closed_url + ARCHIVE, base_url + ARCHIVE), archive_md5=_md5(ARCHIVE_BYTES))
    root = tmp_path / "data"  # does not exist yet: downloading creates it
    _assert_tiny_splits(load_cifar10_files(spec, root))
    assert _listing(root) == sorted([ARCHIVE, FOLDER])
    assert (root / ARCHIVE).read_bytes() == ARCHIVE_BYTES


def test_failed_download_leaves_nothing(tmp_path: Path, closed_url: str) -> None:
    root = tmp_path / "data"
    with pytest.raises(DatasetError) as info:
        load_cifar10_files(_spec(urls=(closed_url + ARCHIVE,)), root)
    message = str(info.value)
    assert f"could not download {ARCHIVE}" in message and closed_url + ARCHIVE in message
    assert "by hand" in message
    assert _listing(root) == []


def test_download_with_wrong_md5_leaves_nothing(tmp_path: Path, server) -> None:
    base_url, served = server
    (served / ARCHIVE).write_bytes(ARCHIVE_BYTES)
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match=rf"expected md5 {'0' * 32}"):
        load_cifar10_files(_spec(urls=(base_url + ARCHIVE,), archive_md5="0" * 32), root)
    assert _listing(root) == []


# --- load_dataset --------------------------------------------------------------------------------


def test_dataset_names() -> None:
    assert DATASET_NAMES == ("mnist", "fashion-mnist", "cifar-10")


@pytest.mark.parametrize(
    "name, looked_for",
    [
        ("mnist", "train-images-idx3-ubyte"),
        ("fashion-mnist", "train-images-idx3-ubyte"),
        ("cifar-10", "cifar-10-binary.tar.gz"),
    ],
)
def test_load_dataset_dispatches_to_the_dataset_loader(
    tmp_path: Path, name: str, looked_for: str
) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(name, tmp_path, download=False)
    message = str(info.value)
    assert message.startswith(f"{name}: ") and looked_for in message


def test_load_dataset_unknown_name_lists_allowed(tmp_path: Path) -> None:
    with pytest.raises(
        DatasetError, match=r"unknown dataset 'cifar10'; choose one of 'mnist', 'fashion-mnist', "
        r"'cifar-10'\."
    ):
        load_dataset("cifar10", tmp_path)
