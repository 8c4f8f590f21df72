"""``synthgrad bench methods``: the dry run writes the table headed by its command, backprop always runs
as the time reference, reruns skip finished cells and redo cells whose options changed, and a bad option
is one line. Cells train on stand-in images (no MNIST needed)."""
import json

import pytest

from synthgrad.bench.methods import MethodsBenchConfig
from synthgrad.cli import main
from synthgrad.errors import InvalidConfig


def _summaries(out):
    return {path.parent.name: path.stat().st_mtime_ns for path in out.glob("*/summary.json")}


def test_dry_run_writes_the_table_and_reruns_only_what_changed(tmp_path, capsys):
    out = tmp_path / "methods"
    argv = ["bench", "methods", "--dry-run", "--no-progress", "--variants", "cdni-full-rank", "--batch-size", "16",
            "--data-dir", str(tmp_path / "no-data"), "--out", str(out)]
    assert main(argv, environ={}) == 0
    lines = (out / "methods.md").read_text().splitlines()
    assert lines[0] == (f"Made by `synthgrad bench methods --variants cdni-full-rank --seeds 0 --epochs 10 "
                        f"--batch-size 16 --out {out} --dry-run`.")
    assert lines[2].startswith("MNIST MLP, seed 0; 1 torch thread")  # the session's one-thread fixture
    rows = [line.split(" | ") for line in lines if line.startswith("| ") and "---" not in line]
    assert [row[0] for row in rows] == ["| method", "| backprop", "| cdni, full-rank synthesizer"]
    assert rows[1][3].endswith("(1.00x)") and rows[1][4] == "– |"
    assert len(rows[2][4].split(", ")) == 3  # a cosine per cut
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["variants"] == ["backprop", "cdni-full-rank"]
    assert results["variants"]["cdni-full-rank"]["cosines"] == ["sg/cos/0", "sg/cos/1", "sg/cos/2"]
    assert json.loads((out / "cdni-full-rank-seed0" / "config.json").read_text())["synth_rank"] is None
    capsys.readouterr()

    finished = _summaries(out)
    assert main(argv, environ={}) == 0
    assert _summaries(out) == finished  # finished cells are read back
    assert main([*argv, "--epochs", "2"], environ={}) == 0
    changed = _summaries(out)
    assert all(changed[cell] != finished[cell] for cell in finished)  # other options: every cell runs again
    assert json.loads((out / "backprop-seed0" / "config.json").read_text())["train"]["epochs"] == 2


def test_an_unknown_variant_is_one_line(tmp_path, capsys):
    assert main(["bench", "methods", "--dry-run", "--variants", "full-rank", "--out", str(tmp_path)], environ={}) == 2
    err = capsys.readouterr().err
    assert err == "synthgrad bench: error: --variants full-rank: choose from backprop, dni, cdni, cdni-full-rank\n"


def test_variants_follow_the_table_order_with_backprop_first():
    assert MethodsBenchConfig(variants=("cdni", "dni")).variants == ("backprop", "dni", "cdni")
    with pytest.raises(InvalidConfig, match="variants \\(none\\)"):  # the library names the field
        MethodsBenchConfig(variants=())
