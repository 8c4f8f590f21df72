"""``synthgrad bench gist``: the dry run writes the table headed by its command, reruns skip finished
cells, and a bad option is one line. Cells train on stand-in images (no MNIST needed)."""
import json

from synthgrad.cli import main


def _summaries(out):
    return {path.parent.name: path.stat().st_mtime_ns for path in out.glob("*/summary.json")}


def test_dry_run_writes_the_table_and_a_rerun_skips_finished_cells(tmp_path, capsys):
    out = tmp_path / "gist"
    argv = ["bench", "gist", "--dry-run", "--no-progress", "--methods", "backprop", "cdni", "--seeds", "0", "1",
            "--data-dir", str(tmp_path / "no-data"), "--out", str(out)]
    assert main(argv, environ={}) == 0
    table = (out / "gist.md").read_text().splitlines()
    assert table[0] == f"Made by `synthgrad bench gist --methods backprop cdni --seeds 0 1 --out {out} --dry-run`."
    assert table[2] == "| method | test accuracy per seed | median | training seconds (median) |"
    assert [row.split(" | ")[0] for row in table[4:]] == ["| backprop", "| cdni"]
    assert capsys.readouterr().out.startswith("Made by `synthgrad bench gist")
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["backprop", "cdni"]
    cdni = results["methods"]["cdni"]
    assert len(cdni["test_acc"]) == 2 and cdni["test_acc_median"] == sum(cdni["test_acc"]) / 2

    finished = _summaries(out)
    assert set(finished) == {"backprop-seed0", "backprop-seed1", "cdni-seed0", "cdni-seed1"}
    (out / "cdni-seed1" / "summary.json").unlink()  # as if cut short
    assert main(argv, environ={}) == 0
    rerun = _summaries(out)
    assert [cell for cell in finished if rerun.get(cell) != finished[cell]] == ["cdni-seed1"]


def test_an_unknown_method_is_one_line(tmp_path, capsys):
    assert main(["bench", "gist", "--dry-run", "--methods", "dni", "no-backprop", "--out", str(tmp_path)],
                environ={}) == 2
    err = capsys.readouterr().err
    assert err == "synthgrad bench: error: --methods dni no-backprop: choose from backprop, dni, cdni\n"
