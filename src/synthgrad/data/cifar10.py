"""CIFAR-10, binary version: fetch and verify the archive, extract it safely, decode its batches.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech. report, University of
Toronto, 2009; https://www.cs.toronto.edu/~kriz/cifar.html.

`cifar-10-binary.tar.gz` holds the folder `cifar-10-batches-bin/`: `data_batch_1.bin` ...
`data_batch_5.bin` (the 50000 train images) and `test_batch.bin` (10000 test images), 10000
records each. A record is 3073 bytes: one label byte in 0..9, then 3072 pixel bytes, the 1024 red
values of the 32x32 image row by row, then the green, then the blue, i.e. (3, 32, 32),
channel-major. Labels name, in order: airplane, automobile, bird, cat, deer, dog, frog, horse,
ship, truck (`batches.meta.txt`).
"""

from __future__ import annotations

import gzip
import os
import secrets
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from synthgrad.data.download import download_file, verify_file
from synthgrad.data.splits import ImageSplits
from synthgrad.errors import DatasetError

_IMAGE_SHAPE = (3, 32, 32)  # (C, H, W), channel-major as stored
_RECORD_BYTES = 1 + 3 * 32 * 32  # one label byte, then the pixels
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Cifar10Spec:
    """Everything needed to fetch, verify and decode a dataset in CIFAR-10's binary format."""

    name: str
    num_classes: int
    urls: tuple[str, ...]
    """Mirrors of the archive, tried in order."""
    archive_name: str
    """File name of the `.tar.gz` archive in the data directory."""
    archive_md5: str
    """Hex md5 of the archive's (compressed) bytes."""
    folder: str
    """The folder the archive extracts to, holding the batch files."""
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    records_per_file: int
    """Records (images) in each batch file; a file must be exactly this many 3073-byte records."""


CIFAR10_SPEC = Cifar10Spec(
    name="cifar-10",
    num_classes=10,
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
    archive_name="cifar-10-binary.tar.gz",
    # md5, not sha256: the publisher gives only this md5 for the archive. It guards against
    # corruption and truncation; the archive comes over https from its publisher.
    archive_md5="c32a1d4ab5d03f1284b67883e8d87530",
    folder="cifar-10-batches-bin",
    train_files=tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    test_files=("test_batch.bin",),
    records_per_file=10000,
)
"""The published CIFAR-10 binary archive."""


def load_cifar10_files(
    spec: Cifar10Spec, root: str | os.PathLike, *, download: bool = True
) -> ImageSplits:
    """Load the dataset described by `spec` from `root`, extracting or downloading it if needed.

    `root` may hold, in order of preference: the extracted folder (`spec.folder`, e.g.
    `cifar-10-batches-bin/`); the `.bin` batch files directly; or the archive, which is checked
    against `spec.archive_md5` and extracted into `root`. If it holds none of them and `download`
    is True, the archive is downloaded into `root`, verified and extracted; it is kept, so the
    folder can be extracted again from it.

    Each batch file must be exactly `spec.records_per_file` records and its labels must lie in
    [0, num_classes), so a truncated or foreign file fails loudly instead of training on wrong data.

    Args:
        spec: the files, archive checksum and mirrors (`CIFAR10_SPEC`, or your own).
        root: the data directory.
        download: fetch the archive if needed; if False its absence is an error.

    Returns:
        ImageSplits with uint8 images (N, 3, 32, 32) and int64 labels (N,).

    Raises:
        DatasetError: nothing to load in `root` (and `download` is False); the download fails;
            the archive fails its checksum, is not a valid `.tar.gz`, lacks the folder, or has a
            member that would land outside it; a batch file is missing, has the wrong size, or a
            label out of range.
    """
    root = Path(root)
    folder = _locate_folder(spec, root, download)
    for name in spec.train_files + spec.test_files:
        if not (folder / name).is_file():
            raise DatasetError(
                f"{spec.name}: {name} is missing from {folder}. {_fix(spec, root, folder)}"
            )
    train_images, train_labels = _read_batches(spec, root, folder, spec.train_files)
    test_images, test_labels = _read_batches(spec, root, folder, spec.test_files)
    return ImageSplits(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=spec.num_classes,
        name=spec.name,
    )


def _locate_folder(spec: Cifar10Spec, root: Path, download: bool) -> Path:
    """The folder that holds the batch files, extracting (and first downloading) the archive."""
    nested = root / spec.folder
    if nested.is_dir():
        return nested
    if any((root / name).is_file() for name in spec.train_files + spec.test_files):
        return root
    archive = root / spec.archive_name
    if archive.is_file():
        verify_file(archive, md5=spec.archive_md5, decompress=False)
    elif download:
        download_file(spec.urls, archive, md5=spec.archive_md5, decompress=False)
    else:
        where = f"{root}, which does not exist" if not root.exists() else str(root)
        by_hand = (
            f"download {spec.urls[0]} by hand into {root}" if spec.urls
            else f"put {spec.archive_name} in {root}"
        )
        raise DatasetError(
            f"{spec.name}: neither {spec.folder}/, nor its .bin files, nor {spec.archive_name} "
            f"is in {where}. Set {{0}}=True to fetch it, or {by_hand}.",
            "download",
        )
    _extract(spec, archive, root)
    return nested


def _extract(spec: Cifar10Spec, archive: Path, root: Path) -> None:
    """Extract `spec.folder` from the verified `archive` into `root`, all or nothing.

    Members are written into a hidden temporary folder in `root`, which is renamed into place only
    once complete; it is removed on any failure. Only regular files and folders under
    `spec.folder` are written, and only after their names are checked, so a crafted archive
    cannot write outside `root` (no absolute paths, `..`, or links).
    """
    tmp = root / f".{spec.folder}.{secrets.token_hex(4)}.part"
    try:
        tmp.mkdir()
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = _checked_parts(spec, archive, member)
                if not parts or parts[0] != spec.folder:
                    continue  # the archive's top folder `.`, or not part of the dataset
                target = tmp.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK_BYTES)
                    out.flush()
                    os.fsync(out.fileno())
        if not (tmp / spec.folder).is_dir():
            raise DatasetError(
                f"{archive} has no {spec.folder}/ folder: it is not {spec.archive_name}. "
                "Delete it so it is downloaded again."
            )
        try:
            os.replace(tmp / spec.folder, root / spec.folder)
        except OSError:
            if not (root / spec.folder).is_dir():  # else another process extracted it first
                raise
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"{archive} is not a valid .tar.gz archive ({exc}). "
            "Delete it so it is downloaded again."
        ) from exc
    except OSError as exc:
        raise DatasetError(
            f"cannot extract {archive.name} into {root}: {exc.strerror or exc}. "
            "Choose a data directory you can write to, with space for the extracted files."
        ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _checked_parts(spec: Cifar10Spec, archive: Path, member: tarfile.TarInfo) -> tuple[str, ...]:
    """The path components of a member that is safe to extract; raise for any other member."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or "\\" in member.name:
        problem = "a path outside the folder it is extracted into"
    elif not (member.isfile() or member.isdir()):
        problem = "a link or special file"
    else:
        return path.parts  # `.` components dropped: `./x` is `x`, `.` is ()
    raise DatasetError(
        f"{archive} is unsafe to extract: its member {member.name!r} is {problem}. It is not "
        f"the published {spec.archive_name}; delete it and download it again."
    )


def _read_batches(
    spec: Cifar10Spec, root: Path, folder: Path, names: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The images (N, 3, 32, 32) uint8 and labels (N,) int64 of these batch files, in order."""
    images, labels = zip(*(_read_batch(spec, root, folder / name) for name in names))
    # concatenate copies out of the immutable bytes, so the tensors are writable.
    return (
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels).astype(np.int64)),
    )


def _read_batch(spec: Cifar10Spec, root: Path, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file's images (n, 3, 32, 32) and labels (n,), as uint8 views of its bytes."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    expected = spec.records_per_file * _RECORD_BYTES
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "is too long"
        raise DatasetError(
            f"{path} {problem}: it has {len(data)} bytes, expected {expected} "
            f"({spec.records_per_file} records of {_RECORD_BYTES} bytes, a label byte and "
            f"3x32x32 pixels). It is damaged or not from {spec.archive_name} (the Python and "
            f"MATLAB versions use other formats). {_fix(spec, root, path.parent)}"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(spec.records_per_file, _RECORD_BYTES)
    labels = records[:, 0]  # (n,)
    bad = np.flatnonzero(labels >= spec.num_classes)
    if bad.size:
        raise DatasetError(
            f"{path} is corrupt: record {bad[0]} has label {labels[bad[0]]} "
            f"({bad.size} records are out of range), expected 0..{spec.num_classes - 1}. "
            f"{_fix(spec, root, path.parent)}"
        )
    return records[:, 1:].reshape(-1, *_IMAGE_SHAPE), labels


def _fix(spec: Cifar10Spec, root: Path, folder: Path) -> str:
    """How to restore a good copy of the batch files in `folder`."""
    source = f"{spec.archive_name} ({spec.urls[0]})" if spec.urls else spec.archive_name
    if folder == root / spec.folder:
        return (
            f"Delete {folder} so it is extracted again from {spec.archive_name} in {root} "
            "(downloaded if absent)."
        )
    return f"Replace the .bin files in {folder} with those from {source}."
