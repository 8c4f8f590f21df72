"""Character-level text for language modelling: a vocabulary, and a train / validation split.

Any UTF-8 text file. The vocabulary is the sorted set of characters of the whole file; the first 90%
of the characters train, the last 10% validate (held out, read in order). Tiny Shakespeare is the
benchmark here (the DNI paper, section 3.1, used Penn Treebank characters).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from synthgrad.errors import DatasetError, InvalidConfig

TRAIN_FRACTION = 0.9
"""Share of the characters (from the start) that train; the rest is the held-out validation tail."""


@dataclass
class CharCorpus:
    """``train`` and ``validation`` as 1-D int64 tensors of character indices into ``vocabulary``."""

    vocabulary: str
    train: Tensor
    validation: Tensor

    @property
    def vocab_size(self) -> int:
        return len(self.vocabulary)


def load_text(path: Path, *, min_chars: int = 20) -> CharCorpus:
    """Read ``path`` as UTF-8 and split it; raises ``DatasetError`` naming the ``text`` field for a missing,
    non-UTF-8, empty or too short (fewer than ``min_chars`` characters) file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"{{0}} {path}: no such file; pass a UTF-8 text file", "text") from None
    except IsADirectoryError:
        raise DatasetError(f"{{0}} {path} is a directory; pass a UTF-8 text file", "text") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{{0}} {path} is not UTF-8 text (byte {error.start} cannot be decoded); "
                           "convert it to UTF-8, e.g. with iconv", "text") from None
    if not text:
        raise DatasetError(f"{{0}} {path} is empty; pass a file with some text in it", "text")
    if len(text) < min_chars:
        raise DatasetError(f"{{0}} {path} has {len(text)} characters, too few to split into training "
                           f"and validation text; pass one with at least {min_chars}", "text")
    return split_text(text)


def split_text(text: str) -> CharCorpus:
    """Index ``text`` by its sorted characters and split it 90% / 10% (train first)."""
    vocabulary = "".join(sorted(set(text)))
    index = {char: position for position, char in enumerate(vocabulary)}
    encoded = torch.tensor([index[char] for char in text], dtype=torch.long)
    cut = int(len(encoded) * TRAIN_FRACTION)
    return CharCorpus(vocabulary, encoded[:cut], encoded[cut:])


def stream_batches(data: Tensor, batch_size: int) -> Tensor:
    """Cut ``data`` into ``batch_size`` contiguous streams ``(B, len(data) // B)``, dropping the rest;
    row b continues where row b of the previous window stopped, so the state carries over."""
    columns = len(data) // batch_size
    if columns < 2:
        raise InvalidConfig(f"the text is too short for {{0}} {batch_size}: choose a smaller {{0}}", "batch_size")
    return data[: columns * batch_size].view(batch_size, columns)
