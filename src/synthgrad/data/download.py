"""Download one file from a list of mirrors, verified, atomically; verify a file already on disk.

Nothing half-written is ever left at the destination or beside it: the bytes go to a temporary
file in the destination's directory, which is fsynced, verified and only then renamed over the
destination (`os.replace` is atomic within a directory), and removed on any failure.

For a `.gz` destination the checksum is of the decompressed content, because mirrors re-wrap
gzip files (a different timestamp or compression level changes the compressed bytes but not the
data), so a checksum of the compressed bytes would reject good copies. A `.tar.gz` archive is the
other way round: its publisher gives a checksum of the compressed bytes; pass `decompress=False`.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import os
import secrets
import shutil
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO, Sequence

from synthgrad.errors import DatasetError

_TIMEOUT_S = 30.0  # seconds a mirror may take to connect or send more, before the next is tried

_CHUNK_BYTES = 1 << 20
_USER_AGENT = "synthgrad"  # some mirrors refuse urllib's default user agent

_logger = logging.getLogger(__name__)


class _ChecksumMismatch(Exception):
    """A mirror served content other than the expected file; try the next mirror."""


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    timeout: float = _TIMEOUT_S,
    decompress: bool | None = None,
) -> Path:
    """Fetch `dest` from the first of `urls` that serves the expected content.

    Overwrites `dest` if it exists; creates its directory if needed. Mirrors are tried in order; a
    mirror that is unreachable or serves the wrong content is skipped.

    Args:
        urls: mirrors of the same file, tried in order.
        dest: where the file lands.
        sha256: hex sha256 of the (decompressed) content. Give exactly one of `sha256` and `md5`.
        md5: hex md5 of the (decompressed) content, only for files whose publisher gives no
            stronger checksum.
        size: if given, byte size of the (decompressed) content, for a clearer mismatch message.
        timeout: seconds to wait on each connection or read.
        decompress: whether the checksum and size describe the gzip-decompressed content rather
            than the bytes served; default: whether `dest`'s name ends in `.gz`.

    Returns:
        `dest` as a Path.

    Raises:
        DatasetError: no mirror served the expected content (the message names the file, each
            URL with why it failed, and how to place the file by hand), or the directory cannot be
            written.
    """
    dest = Path(dest)
    algorithm, expected = _expected_checksum(sha256, md5)
    if decompress is None:
        decompress = dest.suffix == ".gz"
    if not urls:
        raise DatasetError(f"no URL to download {dest.name} from; put it in {dest.parent} by hand.")
    # A unique hidden name beside dest; open(..., "x") honours the umask, unlike tempfile (0600),
    # so a shared data directory stays readable by everyone it was before.
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        handle = open(tmp, "xb")
    except OSError as exc:
        raise DatasetError(
            f"cannot write {dest.name} into {dest.parent}: {exc.strerror or exc}. "
            "Choose a data directory you can write to."
        ) from exc
    failures = []
    try:
        with handle:
            for url in urls:
                try:
                    _fetch(url, handle, timeout)
                    _verify(tmp, decompress, algorithm, expected, size)
                    break
                except (_ChecksumMismatch, urllib.error.URLError, http.client.HTTPException,
                        OSError) as exc:
                    failures.append(f"{url} ({_describe(exc)})")
            else:
                raise DatasetError(
                    f"could not download {dest.name}; tried " + ", ".join(failures) + ". "
                    f"If this machine is offline, download {dest.name} by hand from one of these "
                    f"URLs into {dest.parent}, or use a data directory that already holds it."
                )
        # Rename only once the handle is closed: Windows cannot replace onto an open file.
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def verify_file(
    path: str | os.PathLike,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    decompress: bool | None = None,
) -> None:
    """Check that a file already on disk has the expected content, as `download_file` does.

    Args:
        path: the file.
        sha256, md5, size, decompress: as for `download_file`.

    Raises:
        DatasetError: the file cannot be read, or its content differs; the message names the file
            and says to delete it so it is downloaded again.
    """
    path = Path(path)
    algorithm, expected = _expected_checksum(sha256, md5)
    if decompress is None:
        decompress = path.suffix == ".gz"
    try:
        _verify(path, decompress, algorithm, expected, size)
    except _ChecksumMismatch as exc:
        raise DatasetError(
            f"{path} is corrupt or truncated: {exc}. Delete it so it is downloaded again."
        ) from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _expected_checksum(sha256: str | None, md5: str | None) -> tuple[str, str]:
    """The hashlib algorithm name and the expected hex digest; exactly one must be given."""
    if (sha256 is None) == (md5 is None):
        raise TypeError("give exactly one of sha256= and md5=")
    return ("sha256", sha256) if sha256 is not None else ("md5", md5)


def _fetch(url: str, handle: BinaryIO, timeout: float) -> None:
    """Replace the temporary file's content with the body served at `url`, flushed to disk."""
    _logger.info("downloading %s", url)
    handle.seek(0)
    handle.truncate()
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        shutil.copyfileobj(response, handle, _CHUNK_BYTES)
    handle.flush()
    os.fsync(handle.fileno())


def _verify(
    path: Path, is_gzip: bool, algorithm: str, expected_digest: str, size: int | None
) -> None:
    """Raise `_ChecksumMismatch` unless the (decompressed) content has this size and digest."""
    # usedforsecurity=False: md5 only detects corruption here, and FIPS builds refuse it otherwise.
    digest = hashlib.new(algorithm, usedforsecurity=False)
    actual_size = 0
    try:
        with (gzip.open(path, "rb") if is_gzip else path.open("rb")) as content:
            while chunk := content.read(_CHUNK_BYTES):
                digest.update(chunk)
                actual_size += len(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise _ChecksumMismatch(f"not a valid gzip file: {exc}") from exc
    actual_digest = digest.hexdigest()
    if actual_digest != expected_digest.lower() or (size is not None and actual_size != size):
        expected = f"{algorithm} {expected_digest}"
        if size is not None:
            expected = f"{size} bytes with {expected}"
        raise _ChecksumMismatch(
            f"got {actual_size} bytes with {algorithm} {actual_digest}, expected {expected}"
        )


def _describe(exc: Exception) -> str:
    """A short reason for one mirror's failure, for the final message."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
