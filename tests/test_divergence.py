"""The divergence guard: a non-finite loss, synthetic gradient or weight stops the run within one step,
naming the step, the tensors and the last good checkpoint, which stays intact; or, when asked, the step
is skipped without touching weights or optimizer state and the synthesizers slow down."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from training import train_classifier as train

from synthgrad import DecoupledSequential, LinearSynthesizer, Split, TrainConfig, TrainingDiverged
from synthgrad.cli import DIVERGED_STATUS, main
from synthgrad.engine.guard import MAX_CONSECUTIVE_SKIPS, SKIP_SYNTH_LR_FACTOR, part_of


class PoisonAfter(nn.Module):
    """Identity, until its ``calls``-th call in training mode, when it returns NaN: a synthesizer
    blowing up, in a form the test controls."""

    def __init__(self, calls: int) -> None:
        super().__init__()
        self.remaining = calls
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        if self.training:
            self.remaining -= 1
            if self.remaining <= 0:
                return x * torch.nan
        return x * self.scale


class PoisonedSynthesizer(LinearSynthesizer):
    """A cDNI synthesizer whose output (the synthetic gradient) is NaN on its calls in ``poisoned``
    (counted from 1, training mode): the loss never sees it, only the gradients below the cut do."""

    def __init__(self, dim: int, poisoned: range) -> None:
        super().__init__(dim, context_dim=2)
        self.calls, self.poisoned = 0, poisoned

    def forward(self, activation, context=None):
        self.calls += 1
        synthetic_grad = super().forward(activation, context)
        return synthetic_grad * torch.nan if self.calls in self.poisoned else synthetic_grad


def _poisoned_model(poisoned: range) -> DecoupledSequential:
    """8 -> 16 (BatchNorm, whose running statistics a skipped step must not move) -> 2, one cut."""
    torch.manual_seed(0)
    return DecoupledSequential([nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU()), nn.Linear(16, 2)],
                               [PoisonedSynthesizer(16, poisoned)])


def _config(**overrides) -> dict:
    settings = dict(steps=40, batch_size=32, num_classes=2, use_context=True, log_every=10, checkpoint_every=10,
                    progress=False)
    return {**settings, **overrides}


def _data(n: int = 256, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 8, generator=generator)
    return Split(inputs, (inputs[:, 0] > 0).long())


def test_non_finite_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = DecoupledSequential([nn.Sequential(nn.Linear(8, 16), nn.ReLU(), PoisonAfter(25)), nn.Linear(16, 2)],
                                [LinearSynthesizer(16, context_dim=2)])
    config = _config()
    with pytest.raises(TrainingDiverged) as raised:
        train(model, _data(), _data(seed=1), config, tmp_path)
    message = str(raised.value)
    assert "training diverged at step 25" in message
    assert str(tmp_path / "checkpoint-00000020.pt") in message
    checkpoint = torch.load(tmp_path / "checkpoint-00000020.pt", weights_only=True)
    assert checkpoint["step"] == 20
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["model"].values() if tensor.is_floating_point())
    assert not (tmp_path / "final.pt").exists()


def test_non_finite_synthetic_gradient_stops_before_any_weight_moves(tmp_path):
    """The loss stays finite; the gradients below the cut do not. Nothing is applied: every weight is
    still finite after the stop."""
    model = _poisoned_model(range(25, 26))
    with pytest.raises(TrainingDiverged) as raised:
        train(model, _data(), _data(seed=1), _config(), tmp_path)
    message = str(raised.value)
    assert "training diverged at step 25" in message
    assert "gradient in block 0" in message and "gradient in synthesizer at cut 0" in message
    assert f"the last good checkpoint is {tmp_path / 'checkpoint-00000020.pt'}" in message
    assert all(torch.isfinite(param).all() for param in model.parameters())
    assert all(torch.isfinite(buffer).all() for buffer in model.buffers())


@pytest.mark.parametrize("name, part", [("blocks.0.0.weight", "gradient and weights in block 0"),
                                        ("interfaces.0.synthesizer.net.0.weight",
                                         "gradient and weights in synthesizer at cut 0")])
def test_non_finite_weight_stops_the_next_step(tmp_path, name, part):
    """A block's non-finite weight shows in the loss, a synthesizer's in its synthetic gradient."""
    model = _poisoned_model(range(0))
    with torch.no_grad():
        dict(model.named_parameters())[name][0, 0] = torch.inf
    with pytest.raises(TrainingDiverged, match=f"training diverged at step 1: .*{part}"):
        train(model, _data(), _data(seed=1), _config(), tmp_path)


def test_skip_leaves_weights_and_optimizer_state_untouched_and_slows_the_synthesizers(tmp_path):
    """Step 5 of 8 is poisoned. A checkpoint after every step: the one after step 5 must equal the one
    after step 4 in every weight, buffer and optimizer state, except the synthesizers' learning rate."""
    config = _config(steps=8, log_every=1, checkpoint_every=1, keep_checkpoints=100, lr_schedule="constant",
                     on_divergence="skip")
    model = _poisoned_model(range(5, 6))
    summary = train(model, _data(), _data(seed=1), config, tmp_path)
    assert summary["steps"] == 8 and math.isfinite(summary["test_loss"])

    before, after = (torch.load(tmp_path / f"checkpoint-0000000{step}.pt", weights_only=True) for step in (4, 5))
    assert before["model"].keys() == after["model"].keys()
    for key in before["model"]:  # weights and BatchNorm's running statistics
        assert torch.equal(before["model"][key], after["model"][key]), key
    moments = [(index, name) for index, state in before["optimizer"]["state"].items() for name in state]
    assert moments and all(torch.equal(before["optimizer"]["state"][index][name],
                                       after["optimizer"]["state"][index][name]) for index, name in moments)
    lr, synth_lr = TrainConfig.lr, TrainConfig.synth_lr
    block_group, synth_group = (group["lr"] for group in after["optimizer"]["param_groups"])
    assert block_group == lr and synth_group == synth_lr * SKIP_SYNTH_LR_FACTOR
    assert after["scheduler"]["base_lrs"] == [lr, synth_lr * SKIP_SYNTH_LR_FACTOR]

    records = {record["step"]: record for record in map(json.loads, (tmp_path / "metrics.jsonl").open())}
    assert [records[step]["train/skipped_steps"] for step in range(1, 9)] == [0, 0, 0, 0, 1, 0, 0, 0]
    assert math.isnan(records[5]["train/loss"])  # the only step of that interval was skipped
    assert records[8]["train/synth_lr"] == synth_lr * SKIP_SYNTH_LR_FACTOR
    assert not torch.equal(after["model"]["blocks.0.0.weight"], torch.load(tmp_path / "final.pt")["model"]["blocks.0.0.weight"])


def test_skip_gives_up_after_too_many_skips_in_a_row(tmp_path):
    model = _poisoned_model(range(7, 1000))
    with pytest.raises(TrainingDiverged) as raised:
        train(model, _data(), _data(seed=1), _config(on_divergence="skip"), tmp_path)
    message = str(raised.value)
    assert f"training diverged at step {6 + MAX_CONSECUTIVE_SKIPS}" in message
    assert f"gave up after {MAX_CONSECUTIVE_SKIPS} skipped steps in a row" in message
    assert str(tmp_path / "checkpoint-00000010.pt") in message


def test_enormous_learning_rate_exits_with_status_3_and_one_line(tmp_path, environ):
    result = subprocess.run(
        [sys.executable, "-m", "synthgrad.cli", "train", "--lr", "1e30", "--synth-lr", "1e30", "--steps", "50",
         "--no-progress", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, env={**os.environ, **environ},
    )
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "training diverged at step" in lines[0] and "no checkpoint was written before it" in lines[0]
    assert "block" in lines[0] or "synthesizer at cut" in lines[0]
    assert not (tmp_path / "run" / "summary.json").exists()


@pytest.mark.parametrize("name, part", [
    ("interfaces.2.synthesizer.net.0.weight", "synthesizer at cut 2"),
    ("blocks.1.0.weight", "block 1"),
    ("encoder.0.weight", "encoder.0"),
    ("scale", "scale"),
])
def test_parts_are_named_for_people(name, part):
    assert part_of(name) == part


def test_on_divergence_skip_gives_up_with_status_3(tmp_path, environ, capsys):
    """From the command line: with every weight blown up by an enormous learning rate each step is
    non-finite, so the run skips ten in a row and then stops as it would have without skipping."""
    argv = ["train", "--lr", "1e30", "--synth-lr", "1e30", "--steps", "50", "--layers", "1", "--width", "16",
            "--on-divergence", "skip", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(argv, environ) == DIVERGED_STATUS
    stderr = capsys.readouterr().err
    assert f"gave up after {MAX_CONSECUTIVE_SKIPS} skipped steps in a row" in stderr and stderr.count("\n") == 1
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["on_divergence"] == "skip"
