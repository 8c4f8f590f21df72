"""Read one IDX file, the format of MNIST and Fashion-MNIST (LeCun et al., 1998).

An IDX file is a 4-byte big-endian magic number `0x0000TTNN` (TT the element type, 0x08 for
unsigned bytes; NN the number of dimensions), then NN big-endian uint32 sizes, then the elements
in C order. MNIST labels are `0x00000801` (N,) and images `0x00000803` (N, 28, 28).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from synthgrad.errors import DatasetError

_UNSIGNED_BYTE = 0x08


def read_idx(
    path: str | os.PathLike, *, ndim: int | None = None, sha256: str | None = None
) -> torch.Tensor:
    """Read an IDX file of unsigned bytes, gzipped (name ends in `.gz`) or raw, into a tensor.

    The checksum is taken over the same decompressed bytes that are decoded, so a file cannot change
    between being verified and being read.

    Args:
        path: the file.
        ndim: if given, the number of dimensions the file must have (3 for images, 1 for labels).
        sha256: if given, the hex sha256 the decompressed content must have.

    Returns:
        A writable uint8 tensor with the shape stored in the file's header.

    Raises:
        DatasetError: the file cannot be read, is not valid gzip, fails the checksum, is not an
            IDX file of unsigned bytes, has the wrong number of dimensions, or its size disagrees
            with its header.
    """
    path = Path(path)
    data = _read_content(path)
    if sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256.lower():
            raise DatasetError(
                f"{path} is corrupt or truncated: its content ({len(data)} bytes) has sha256 "
                f"{actual}, expected {sha256}. Delete it so it is downloaded again."
            )
    return _decode(data, path, ndim)


def _read_content(path: Path) -> bytes:
    """The file's bytes, decompressed when its name ends in `.gz`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"{path} is not a valid gzip file ({exc}): it is corrupt or truncated. "
            "Delete it and download it again."
        ) from exc


def _decode(data: bytes, path: Path, ndim: int | None) -> torch.Tensor:
    """Check the header against `data` and return the elements as a (d1, ..., dn) uint8 tensor."""
    if len(data) < 4:
        raise DatasetError(f"{path} is not an IDX file: it has only {len(data)} bytes.")
    (magic,) = struct.unpack(">I", data[:4])
    if magic >> 8 != _UNSIGNED_BYTE or magic & 0xFF == 0:
        raise DatasetError(
            f"{path} is not an IDX file of unsigned bytes: its magic number is 0x{magic:08x}, "
            "expected 0x00000801 (labels) or 0x00000803 (images). Check that the path points at "
            "an MNIST-format file."
        )
    file_ndim = magic & 0xFF
    if ndim is not None and file_ndim != ndim:
        raise DatasetError(
            f"{path} has {file_ndim} dimension(s) (magic 0x{magic:08x}), expected {ndim}: "
            "images and labels files may be swapped."
        )
    header_size = 4 + 4 * file_ndim
    if len(data) < header_size:
        raise DatasetError(f"{path} is truncated: it ends inside its {header_size}-byte header.")
    shape = struct.unpack(f">{file_ndim}I", data[4:header_size])
    expected = header_size + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        problem = "is truncated" if len(data) < expected else "has trailing bytes"
        raise DatasetError(
            f"{path} {problem}: its header declares shape {tuple(shape)}, i.e. {expected} bytes, "
            f"but it has {len(data)}. Delete it and download it again."
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)
    # frombuffer views the immutable bytes; copy so the tensor is writable.
    return torch.from_numpy(array.copy())
