"""Character-level text: vocabulary, 90/10 split, streams, and clear errors on bad files."""
import pytest

from synthgrad.data.text import load_text, split_text, stream_batches
from synthgrad.errors import SynthgradError


def test_split_keeps_the_first_ninety_percent_for_training(tmp_path):
    text = "abcdefghij" * 10
    (tmp_path / "t.txt").write_text(text)
    corpus = load_text(tmp_path / "t.txt")
    assert corpus.vocabulary == "abcdefghij" and corpus.vocab_size == 10
    assert len(corpus.train) == 90 and len(corpus.validation) == 10
    assert "".join(corpus.vocabulary[i] for i in corpus.validation.tolist()) == text[90:]


def test_utf8_characters_are_single_symbols():
    corpus = split_text("héllo wörld! " * 3)
    assert "é" in corpus.vocabulary and "ö" in corpus.vocabulary


def test_streams_are_contiguous_rows():
    corpus = split_text("".join(chr(65 + i % 26) for i in range(1000)))
    streams = stream_batches(corpus.train, 4)
    assert streams.shape == (4, 225)
    assert streams[1, 0] == corpus.train[225]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"caf\xe9 latin-1 text, not utf-8 at all", "is not UTF-8 text"),
    (b"short", "too few"),
])
def test_bad_text_files_give_one_clear_message(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(SynthgradError, match=message) as error:
        load_text(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(SynthgradError, match="no such file"):
        load_text(tmp_path / "nope.txt")
    with pytest.raises(SynthgradError, match="is a directory"):
        load_text(tmp_path)
