"""The divergence guard: a non-finite loss stops the run at once, naming the step, the tensors and the
last good checkpoint, which stays intact."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from synthgrad import DecoupledSequential, LinearSynthesizer
from synthgrad.divergence import TrainingDiverged, part_of
from synthgrad.trainer import Split, TrainConfig, train


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


def _data(n: int = 256, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 8, generator=generator)
    return Split(inputs, (inputs[:, 0] > 0).long())


def test_non_finite_loss_stops_at_that_step_and_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = DecoupledSequential([nn.Sequential(nn.Linear(8, 16), nn.ReLU(), PoisonAfter(25)), nn.Linear(16, 2)],
                                [LinearSynthesizer(16, context_dim=2)])
    config = TrainConfig(steps=40, batch_size=32, num_classes=2, use_context=True, log_every=10,
                         checkpoint_every=10, progress=False)
    with pytest.raises(TrainingDiverged) as raised:
        train(model, _data(), _data(seed=1), config, tmp_path)
    message = str(raised.value)
    assert "training diverged at step 25" in message
    assert str(tmp_path / "checkpoint-00000020.pt") in message
    checkpoint = torch.load(tmp_path / "checkpoint-00000020.pt", weights_only=True)
    assert checkpoint["step"] == 20
    assert all(torch.isfinite(tensor).all() for tensor in checkpoint["model"].values() if tensor.is_floating_point())
    assert not (tmp_path / "final.pt").exists()


def test_enormous_learning_rate_exits_with_status_3_and_one_line(tmp_path):
    data = Path(os.environ.get("SYNTHGRAD_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    result = subprocess.run(
        [sys.executable, "-m", "synthgrad.cli", "train", "--lr", "1e30", "--synth-lr", "1e30", "--steps", "50",
         "--no-progress", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SYNTHGRAD_DATA": str(data)},
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
