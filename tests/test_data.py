"""Tests for synthgrad.data: its public names, IDX decoding, verified atomic downloads, and the
MNIST-family loader.

Real MNIST is read from `$SYNTHGRAD_DATA/mnist` (default: the `shared/data` directory beside the
repository). Everything else uses tiny IDX files written to tmp_path and an HTTP server on loopback.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import synthgrad.data
from synthgrad.data import DatasetError, load_dataset
from synthgrad.data.download import download_file, verify_file
from synthgrad.data.idx import read_idx
from synthgrad.data.idx_datasets import IDX_DATASETS, IdxDatasetSpec, IdxFile, load_idx_files
from synthgrad.errors import SynthgradError

# From shared/data/README.md.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def _idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: magic 0x000008<ndim>, big-endian sizes, then the elements."""
    header = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write(path: Path, data: bytes) -> Path:
    """Write `data` to `path`, gzipped when the name ends in `.gz`."""
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


_rng = np.random.default_rng(0)
TINY = {
    "train-images-idx3-ubyte": _idx_bytes(_rng.integers(0, 256, (5, 4, 3))),
    "train-labels-idx1-ubyte": _idx_bytes(np.array([0, 1, 2, 1, 0])),
    "t10k-images-idx3-ubyte": _idx_bytes(_rng.integers(0, 256, (2, 4, 3))),
    "t10k-labels-idx1-ubyte": _idx_bytes(np.array([2, 0])),
}


def _tiny_spec(mirrors: tuple[str, ...] = (), contents: dict[str, bytes] = TINY) -> IdxDatasetSpec:
    """A 3-class dataset of 4x3 images whose checksums match `contents`."""

    def file(name: str) -> IdxFile:
        return IdxFile(name, len(contents[name]), _sha256(contents[name]))

    return IdxDatasetSpec(
        name="tiny",
        num_classes=3,
        mirrors=mirrors,
        train_images=file("train-images-idx3-ubyte"),
        train_labels=file("train-labels-idx1-ubyte"),
        test_images=file("t10k-images-idx3-ubyte"),
        test_labels=file("t10k-labels-idx1-ubyte"),
    )


# --- the public names ----------------------------------------------------------------------------


def test_public_names() -> None:
    assert sorted(synthgrad.data.__all__) == [
        "DATASET_NAMES", "DatasetError", "IMAGE_SHAPES", "ImageSplits", "load_dataset"
    ]
    assert all(hasattr(synthgrad.data, name) for name in synthgrad.data.__all__)
    assert issubclass(DatasetError, SynthgradError)  # the command line catches it with the rest


# --- real MNIST ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist(data_root):
    return load_dataset("mnist", data_root / "mnist", download=False)


def test_mnist_shapes_dtypes_and_label_counts(mnist) -> None:
    assert mnist.name == "mnist" and mnist.num_classes == 10
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10000, 28, 28) and mnist.test_images.dtype == torch.uint8
    assert mnist.train_labels.dtype == torch.int64 and mnist.test_labels.dtype == torch.int64
    assert torch.bincount(mnist.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(mnist.test_labels).tolist() == MNIST_TEST_COUNTS
    assert mnist.train_images.max() == 255 and mnist.train_images.min() == 0


def test_registry_names_and_file_sizes() -> None:
    assert set(IDX_DATASETS) == {"mnist", "fashion-mnist"}
    for spec in IDX_DATASETS.values():
        assert spec.train_images.size == 47040016 and spec.test_labels.size == 10008
        assert all(mirror.endswith("/") for mirror in spec.mirrors)


# --- read_idx ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images", "images.gz"])
def test_read_idx_raw_and_gzipped(tmp_path: Path, name: str) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    tensor = read_idx(_write(tmp_path / name, _idx_bytes(array)), ndim=3)
    assert tensor.dtype == torch.uint8
    assert torch.equal(tensor, torch.from_numpy(array))
    tensor[0, 0, 0] = 7  # the tensor owns writable memory


def test_read_idx_wrong_magic_names_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "notes.txt", b"this is not an IDX file at all")
    with pytest.raises(DatasetError, match=r"notes\.txt is not an IDX file.*magic number"):
        read_idx(path)


def test_read_idx_wrong_number_of_dimensions(tmp_path: Path) -> None:
    path = _write(tmp_path / "labels", _idx_bytes(np.zeros(4)))
    with pytest.raises(DatasetError, match=r"labels has 1 dimension\(s\).*expected 3"):
        read_idx(path, ndim=3)


@pytest.mark.parametrize(
    "cut, problem", [(-1, "is truncated: its header"), (6, "is truncated: it ends inside")]
)
def test_read_idx_truncated_raw(tmp_path: Path, cut: int, problem: str) -> None:
    data = _idx_bytes(np.zeros((2, 3, 4)))
    path = _write(tmp_path / "images", data[:cut])
    with pytest.raises(DatasetError, match=rf"images {problem}"):
        read_idx(path)


def test_read_idx_trailing_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path / "images", _idx_bytes(np.zeros((2, 3))) + b"\0")
    with pytest.raises(DatasetError, match=r"images has trailing bytes.*\(2, 3\)"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    compressed = gzip.compress(_idx_bytes(np.arange(200).reshape(10, 20)))
    path = tmp_path / "images.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DatasetError, match=r"images\.gz is not a valid gzip file.*truncated"):
        read_idx(path)


def test_read_idx_checksum_mismatch(tmp_path: Path) -> None:
    path = _write(tmp_path / "labels.gz", _idx_bytes(np.zeros(4)))
    with pytest.raises(DatasetError, match=r"labels\.gz is corrupt or truncated.*Delete it"):
        read_idx(path, sha256="0" * 64)


# --- load_idx_files / load_idx_dataset -----------------------------------------------------------


def test_load_raw_and_gzipped_files(tmp_path: Path) -> None:
    for i, (name, data) in enumerate(TINY.items()):
        _write(tmp_path / (name if i % 2 else f"{name}.gz"), data)
    splits = load_idx_files(_tiny_spec(), tmp_path, download=False)
    assert splits.name == "tiny" and splits.num_classes == 3
    assert splits.train_images.shape == (5, 4, 3) and splits.test_images.shape == (2, 4, 3)
    assert splits.train_labels.dtype == torch.int64
    assert splits.train_labels.tolist() == [0, 1, 2, 1, 0] and splits.test_labels.tolist() == [2, 0]


def test_missing_file_without_download(tmp_path: Path) -> None:
    for name, data in TINY.items():
        if name != "t10k-labels-idx1-ubyte":
            _write(tmp_path / name, data)
    spec = _tiny_spec(mirrors=("https://example.invalid/tiny/",))
    with pytest.raises(DatasetError) as info:
        load_idx_files(spec, tmp_path, download=False)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message and str(tmp_path) in message
    assert "https://example.invalid/tiny/t10k-labels-idx1-ubyte.gz" in message
    assert "download=True" in message and "--" not in message  # the argument, not a flag
    assert info.value.fields == ("download",)  # which the command line may spell its own way


def test_missing_file_of_a_spec_without_mirrors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=rf"train-images-idx3-ubyte.*put it in {tmp_path}"):
        load_idx_files(_tiny_spec(), tmp_path, download=False)


def test_missing_directory_without_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nowhere", download=False)


def test_corrupt_file_fails_checksum(tmp_path: Path) -> None:
    for name, data in TINY.items():
        _write(tmp_path / name, data)
    corrupt = bytearray(TINY["train-images-idx3-ubyte"])
    corrupt[-1] ^= 0xFF  # same size, valid IDX, wrong pixel
    _write(tmp_path / "train-images-idx3-ubyte", bytes(corrupt))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte is corrupt.*Delete"):
        load_idx_files(_tiny_spec(), tmp_path, download=False)


def test_truncated_file_fails(tmp_path: Path) -> None:
    for name, data in TINY.items():
        _write(tmp_path / name, data)
    _write(tmp_path / "t10k-images-idx3-ubyte", TINY["t10k-images-idx3-ubyte"][:-5])
    with pytest.raises(DatasetError, match=r"t10k-images-idx3-ubyte is corrupt or truncated"):
        load_idx_files(_tiny_spec(), tmp_path, download=False)


def test_images_and_labels_count_mismatch(tmp_path: Path) -> None:
    contents = dict(TINY, **{"train-labels-idx1-ubyte": _idx_bytes(np.array([0, 1, 2, 1]))})
    for name, data in contents.items():
        _write(tmp_path / name, data)
    with pytest.raises(DatasetError, match=r"5 images but train-labels-idx1-ubyte has 4 labels"):
        load_idx_files(_tiny_spec(contents=contents), tmp_path, download=False)


def test_missing_files_are_downloaded_verified(tmp_path: Path, server, closed_url: str) -> None:
    base_url, served = server
    for name, data in TINY.items():
        _write(served / f"{name}.gz", data)
    root = tmp_path / "data"  # does not exist yet: downloading creates it
    splits = load_idx_files(_tiny_spec(mirrors=(closed_url, base_url)), root)
    assert splits.test_labels.tolist() == [2, 0]
    assert sorted(p.name for p in root.iterdir()) == sorted(f"{name}.gz" for name in TINY)


def test_offline_download_names_file_urls_and_fix(tmp_path: Path, closed_url: str) -> None:
    spec = _tiny_spec(mirrors=(closed_url, closed_url + "mirror2/"))
    with pytest.raises(DatasetError) as info:
        load_idx_files(spec, tmp_path)
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message
    assert f"{closed_url}train-images-idx3-ubyte.gz" in message
    assert f"{closed_url}mirror2/train-images-idx3-ubyte.gz" in message
    assert f"by hand from one of these URLs into {tmp_path}" in message
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


# --- download_file -------------------------------------------------------------------------------


def test_download_tries_next_mirror_after_404(tmp_path: Path, server) -> None:
    base_url, served = server
    data = TINY["train-labels-idx1-ubyte"]
    (served / "good").mkdir()
    _write(served / "good" / "labels.gz", data)
    dest = download_file(
        [base_url + "labels.gz", base_url + "good/labels.gz"],
        tmp_path / "out" / "labels.gz",
        sha256=_sha256(data),  # of the decompressed content
        size=len(data),
    )
    assert dest.read_bytes() == (served / "good" / "labels.gz").read_bytes()
    assert os.listdir(dest.parent) == ["labels.gz"]


def test_download_names_each_mirrors_reason(tmp_path: Path, server, closed_url: str) -> None:
    base_url, served = server
    (served / "page.gz").write_bytes(b"<html>moved</html>")  # served with 200, but not gzip
    urls = [base_url + "gone.gz", base_url + "page.gz", closed_url + "x.gz"]
    with pytest.raises(DatasetError) as info:
        download_file(urls, tmp_path / "x.gz", sha256="0" * 64)
    message = str(info.value)
    assert f"{base_url}gone.gz (HTTP 404 File not found)" in message  # the server's reason phrase
    assert f"{base_url}page.gz (not a valid gzip file" in message
    assert f"{closed_url}x.gz (" in message and "by hand from one of these URLs" in message


def test_download_into_a_directory_that_cannot_be_made(tmp_path: Path) -> None:
    blocker = _write(tmp_path / "data", b"a file where the data directory should be")
    with pytest.raises(DatasetError, match=rf"cannot write x\.gz into {blocker / 'mnist'}: .*"
                       r"Choose a data directory you can write to\."):
        download_file(["http://127.0.0.1:9/x.gz"], blocker / "mnist" / "x.gz", sha256="0" * 64)


def test_download_raw_file_checksum_is_of_its_bytes(tmp_path: Path, server) -> None:
    base_url, served = server
    _write(served / "blob.bin", b"raw bytes")
    dest = download_file([base_url + "blob.bin"], tmp_path / "blob.bin", sha256=_sha256(b"raw bytes"))
    assert dest.read_bytes() == b"raw bytes"
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any file the user makes


def test_download_checksum_failure_leaves_nothing(tmp_path: Path, server) -> None:
    base_url, served = server
    _write(served / "labels.gz", TINY["train-labels-idx1-ubyte"])
    existing = _write(tmp_path / "labels.gz", b"previous content")
    previous = existing.read_bytes()
    with pytest.raises(DatasetError) as info:
        download_file([base_url + "labels.gz"], existing, sha256="0" * 64, size=8)
    message = str(info.value)
    assert "labels.gz" in message and "expected 8 bytes with sha256 " + "0" * 64 in message
    assert os.listdir(tmp_path) == ["labels.gz"]  # no temporary file beside it
    assert existing.read_bytes() == previous  # and the old file is untouched


def test_download_rejects_non_gzip_body(tmp_path: Path, server) -> None:
    base_url, served = server
    (served / "page.gz").write_bytes(b"<html>not found</html>")  # an error page, not gzip
    with pytest.raises(DatasetError, match="not a valid gzip file"):
        download_file([base_url + "page.gz"], tmp_path / "page.gz", sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_download_archive_checksum_is_of_its_compressed_bytes(tmp_path: Path, server) -> None:
    base_url, served = server
    compressed = gzip.compress(b"an archive")
    (served / "archive.tar.gz").write_bytes(compressed)
    md5 = hashlib.md5(compressed).hexdigest()
    dest = download_file(
        [base_url + "archive.tar.gz"], tmp_path / "archive.tar.gz", md5=md5, decompress=False
    )
    assert dest.read_bytes() == compressed
    # By default a `.gz` name means the checksum is of the decompressed content, which differs.
    with pytest.raises(DatasetError, match=rf"got 10 bytes with md5 [0-9a-f]+, expected md5 {md5}"):
        download_file([base_url + "archive.tar.gz"], tmp_path / "again.tar.gz", md5=md5)
    assert os.listdir(tmp_path) == ["archive.tar.gz"]


def test_download_needs_exactly_one_checksum(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="exactly one of sha256= and md5="):
        download_file(["http://127.0.0.1:9/x"], tmp_path / "x", sha256="0" * 64, md5="0" * 32)
    with pytest.raises(TypeError, match="exactly one of sha256= and md5="):
        download_file(["http://127.0.0.1:9/x"], tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_verify_file_on_disk(tmp_path: Path) -> None:
    data = TINY["train-labels-idx1-ubyte"]
    path = _write(tmp_path / "labels.gz", data)
    verify_file(path, sha256=_sha256(data), size=len(data))  # of the decompressed content
    verify_file(path, md5=hashlib.md5(path.read_bytes()).hexdigest(), decompress=False)
    with pytest.raises(
        DatasetError,
        match=rf"labels\.gz is corrupt or truncated: got {len(data)} bytes with sha256 "
        rf"{_sha256(data)}, expected sha256 0+\. Delete it so it is downloaded again\.",
    ):
        verify_file(path, sha256="0" * 64)
    with pytest.raises(DatasetError, match=r"cannot read .*missing\.gz"):
        verify_file(tmp_path / "missing.gz", sha256="0" * 64)
