"""The README's headline results (its *Results at a glance*), rerun end to end through the command line on
real data and held to the thresholds the docs state (the issues' targets where they have them).

Marked slow: these 11 tests train for tens of minutes on two cores, so CI runs the fast suite only and
``pytest -m slow`` runs these. Each test names the docs page and section whose numbers it checks; the values
measured there (seed 0 unless stated, the seed every command here uses) are in its docstring. A test that
fails here means a change moved a published number: rerun the section's command and update both.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthgrad.cli import main

pytestmark = pytest.mark.slow


def _run(argv: list[str], environ: dict[str, str], out: Path) -> dict:
    """``synthgrad argv --out out``, which must succeed; its ``summary.json``."""
    assert main([*argv, "--no-progress", "--out", str(out)], environ) == 0
    return json.loads((out / "summary.json").read_text())


def _test_errors(model: str, methods: tuple[str, ...], environ: dict[str, str], out: Path) -> dict[str, float]:
    """Final test error % of ``synthgrad train --model model --method M`` for each of ``methods``."""
    return {method: 100 * (1 - _run(["train", "--model", model, "--method", method], environ, out / method)["test_acc"])
            for method in methods}


def test_the_default_job_reaches_98_percent(tmp_path, environ):
    """The README's first command, ``synthgrad train`` (cDNI MLP, 10 epochs): 98.49% in docs/mnist.md,
    *Every layer decoupled* (median of seeds 0-2)."""
    assert _run(["train"], environ, tmp_path / "run")["test_acc"] >= 0.98


@pytest.mark.parametrize("model", ["fcn3", "fcn4", "fcn5", "fcn6"])
def test_cdni_is_within_half_a_point_of_backprop(model, tmp_path, environ):
    """docs/mnist.md, *The paper's Table 1: fully connected nets*: cDNI within 0.5 points of backprop at every
    FCN depth (issue 3's target); measured 0.07, 0.08, 0.36 and 0.33 points behind."""
    errors = _test_errors(model, ("backprop", "cdni"), environ, tmp_path)
    assert errors["cdni"] - errors["backprop"] <= 0.5, errors


def test_dni_teaches_the_lower_layers_on_fcn3(tmp_path, environ):
    """docs/mnist.md, *The paper's Table 1: fully connected nets*, FCN 3 layers: backprop 1.54% < DNI 3.33%
    < No Bprop 9.77%. DNI trails backprop, but its lower layers learn: far more than the frozen ones of
    No Bprop."""
    errors = _test_errors("fcn3", ("backprop", "dni", "no-backprop"), environ, tmp_path)
    assert errors["backprop"] < errors["dni"] < errors["no-backprop"] - 3, errors


def test_stochastic_updates_keep_fcn4_cdni_above_97_percent(tmp_path, environ):
    """docs/mnist.md, *Stochastic updates and complete unlock*: each layer updating with probability 0.2
    still reaches 97.98% (issue 3's target: 97.0%)."""
    argv = ["train", "--model", "fcn4", "--method", "cdni", "--update-prob", "0.2"]
    assert _run(argv, environ, tmp_path / "run")["test_acc"] >= 0.97


def test_forward_unlock_keeps_fcn3_cdni_above_96_percent(tmp_path, environ):
    """docs/mnist.md, *Stochastic updates and complete unlock*: blocks fed synthetic inputs reach 98.49%
    (issue 3's target: 96%)."""
    argv = ["train", "--model", "fcn3", "--method", "cdni", "--forward-unlock"]
    assert _run(argv, environ, tmp_path / "run")["test_acc"] >= 0.96


@pytest.mark.parametrize("flags, target", [([], 0.85), (["--cdni"], 0.87)])
def test_the_corrected_gist_reaches_its_documented_accuracy(flags, target, tmp_path, environ):
    """docs/gist.md: DNI 0.862 and cDNI 0.882 after the gist's 1000 iterations (medians of seeds 0-2)."""
    assert _run(["gist", *flags], environ, tmp_path / "run")["test_acc"] >= target


def test_dni_copies_longer_sequences_than_bptt_at_truncation_5(tmp_path):
    """docs/recurrent.md, *Copy and Repeat Copy*, Copy at T=5 in 20 000 batches: DNI solves length 4, BPTT 2
    (every seed)."""
    lengths = {method: _run(["rnn", "copy", "-T", "5", "--method", method, "--steps", "20000"], {},
                            tmp_path / method)["max_length_solved"]
               for method in ("bptt", "dni")}
    assert lengths["dni"] > lengths["bptt"], lengths
