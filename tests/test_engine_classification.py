"""Tests for the engine training a ``ClassificationTask``: the loop, its metrics and checkpoint, the
learning-rate schedule, the optimizer's groups, ``synth_every``, stochastic updates, and the evaluator.

Most tests train a small DecoupledSequential on a linearly separable two-class problem in 20
dimensions (a fraction of a second each). One test trains the default cDNI MLP on real MNIST, read
from ``$SYNTHGRAD_DATA/mnist`` (default: ``shared/data`` beside the repository).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from training import train_classifier as train

from synthgrad import (
    DecoupledSequential,
    InvalidConfig,
    LinearSynthesizer,
    Split,
    TrainConfig,
    TrainingInterrupted,
    block_parameters,
    synthesizer_parameters,
)
from synthgrad.engine.classification import evaluate_classifier
from synthgrad.engine.optim import build_optimizer
from synthgrad.engine.task import parameter_groups
from synthgrad.experiments.classifier import load_splits
from synthgrad.experiments.image_models import build_mlp

DIM, HIDDEN, NUM_CLASSES = 20, 32, 2



def _separable(num_examples: int, seed: int) -> Split:
    """Points ``(N, 20)`` from a standard normal, labelled by the side of one fixed hyperplane."""
    normal = torch.randn(DIM, generator=torch.Generator().manual_seed(123))  # the same for every split
    inputs = torch.randn(num_examples, DIM, generator=torch.Generator().manual_seed(seed))
    return Split(inputs, (inputs @ normal > 0).long())


def _model(*, use_context: bool = True, seed: int = 0, cut: tuple[bool, bool] = (True, True)) -> DecoupledSequential:
    """20 -> 32 -> 32 -> 2 with ReLU, a linear synthesizer on each hidden activation that ``cut`` asks for."""
    torch.manual_seed(seed)
    blocks = [nn.Sequential(nn.Linear(DIM, HIDDEN), nn.ReLU()), nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU()),
              nn.Linear(HIDDEN, NUM_CLASSES)]
    context_dim = NUM_CLASSES if use_context else 0
    return DecoupledSequential(blocks, [LinearSynthesizer(HIDDEN, context_dim=context_dim) if is_cut else None
                                        for is_cut in cut])


def _config(**overrides) -> dict:
    return {"batch_size": 32, "lr": 1e-2, "synth_lr": 1e-2, "use_context": True, "progress": False, **overrides}


def _read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _clone(parameters) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in parameters]


def _same(left: list[torch.Tensor], right: list[torch.Tensor]) -> bool:
    assert len(left) == len(right)
    return all(torch.equal(a, b) for a, b in zip(left, right))


# -------------------------------------------------------------------------------------- learning


def test_decoupled_training_learns_a_separable_problem(tmp_path):
    model = _model()
    summary = train(model, _separable(512, seed=1), _separable(512, seed=2), _config(epochs=20), tmp_path)
    # Measured 0.92-0.95 over model seeds 0-3 (plain backprop: 0.95-0.96); chance is 0.5.
    assert summary["test_acc"] >= 0.88
    assert summary["best_test_acc"] >= summary["test_acc"]
    assert summary["steps"] == 20 * (512 // 32) and summary["epochs"] == 20
    assert summary["train_seconds"] > 0
    # Both synthesizers learned to point along the gradient they receive (measured 0.8-0.9 and 0.5-0.6).
    assert summary["sg/cos/0"] > 0.3 and summary["sg/cos/1"] > 0.3
    assert model.training  # train() leaves the model in training mode, as it found it


def test_synthesizer_statistics_only_on_every_nth_and_the_last_step(tmp_path):
    train(_model(), _separable(320, seed=1), _separable(100, seed=2),
          _config(steps=25, log_every=4, stats_every=10), tmp_path)
    records = _read_records(tmp_path)
    assert [record["step"] for record in records if "sg/cos/0" in record] == [10, 20, 25]
    assert all(("sg/cos/1" in record) == ("sg/cos/0" in record) for record in records)


def test_metrics_records_cadence_and_keys(tmp_path):
    """320 examples in batches of 32: 10 steps per epoch. A record every 4 steps, every epoch (with
    test metrics) and at the last step."""
    seen = []
    summary = train(_model(), _separable(320, seed=1), _separable(100, seed=2),
                    _config(steps=25, log_every=4, stats_every=1), tmp_path, on_record=seen.append)
    records = _read_records(tmp_path)
    assert records == seen
    assert [record["step"] for record in records] == [4, 8, 10, 12, 16, 20, 24, 25]
    assert [record["step"] for record in records if "test/acc" in record] == [10, 20, 25]
    train_keys = {"step", "epoch", "train/loss", "train/acc", "sg/loss/0", "sg/cos/0", "sg/loss/1", "sg/cos/1"}
    for record in records:
        evaluation_keys = {"test/loss", "test/acc", "sg/cos_true/0", "sg/cos_true/1"}  # true-gradient cosines too
        assert set(record) == train_keys | (evaluation_keys if "test/acc" in record else set())
        assert record["epoch"] == pytest.approx(record["step"] / 10)
        assert 0.0 <= record["train/acc"] <= 1.0 and record["train/loss"] > 0
        assert -1.0 <= record["sg/cos/0"] <= 1.0 and record["sg/loss/0"] >= 0

    assert summary["steps"] == 25 and summary["epochs"] == pytest.approx(2.5)
    last = records[-1]
    assert summary["test_acc"] == last["test/acc"] and summary["test_loss"] == last["test/loss"]
    assert summary["best_test_acc"] == max(record["test/acc"] for record in records if "test/acc" in record)
    assert {key: summary[key] for key in summary if key.startswith("sg/")} == \
        {key: last[key] for key in last if key.startswith("sg/")}

    checkpoint = torch.load(tmp_path / "final.pt")
    assert checkpoint["step"] == 25 and checkpoint["config"]["steps"] == 25
    assert set(checkpoint) >= {"model", "optimizer", "scheduler"}
    fresh = _model(seed=1)
    fresh.load_state_dict(checkpoint["model"])
    assert evaluate_classifier(fresh, _separable(100, seed=2))["test/acc"] == last["test/acc"]


def test_steps_override_epochs_across_epoch_boundaries(tmp_path):
    summary = train(_model(), _separable(64, seed=1), _separable(64, seed=2), _config(epochs=1, steps=7), tmp_path)
    assert summary["steps"] == 7 and summary["epochs"] == pytest.approx(3.5)  # 2 steps per epoch


def test_metric_keys_name_the_cut_block_when_some_boundaries_are_uncut(tmp_path):
    model = _model(cut=(False, True))
    assert list(model.interfaces) == ["1"]  # the interface after block 1
    summary = train(model, _separable(64, seed=1), _separable(64, seed=2), _config(steps=2), tmp_path)
    assert {key for key in summary if key.startswith("sg/")} == {"sg/loss/1", "sg/cos/1", "sg/cos_true/1"}


# ------------------------------------------------------------------------------ schedule, optimizer


@pytest.fixture
def step_learning_rates():
    """The learning rate of each param group, recorded just before every ``optimizer.step()``."""
    learning_rates: list[list[float]] = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: learning_rates.append([group["lr"] for group in optimizer.param_groups]))
    yield learning_rates
    handle.remove()


def test_cosine_schedule_anneals_every_group_to_zero(tmp_path, step_learning_rates):
    config = _config(steps=40, lr=0.02, synth_lr=0.005, lr_schedule="cosine")
    train(_model(), _separable(320, seed=1), _separable(64, seed=2), config, tmp_path)
    block_lrs, synth_lrs = zip(*step_learning_rates)  # decoupled_lr unset: the blocks below the top cut take lr
    assert len(block_lrs) == 40
    assert block_lrs[0] == pytest.approx(0.02) and synth_lrs[0] == pytest.approx(0.005)
    assert all(later < earlier for earlier, later in zip(block_lrs, block_lrs[1:]))
    assert block_lrs[20] == pytest.approx(0.01) and synth_lrs[20] == pytest.approx(0.0025)  # half way: half
    assert block_lrs[-1] < 0.01 * 0.02  # the last step is taken at a tiny rate (factor 0.0015)
    checkpoint = torch.load(tmp_path / "final.pt")
    assert checkpoint["scheduler"]["_last_lr"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert [group["lr"] for group in checkpoint["optimizer"]["param_groups"]] == pytest.approx([0, 0], abs=1e-12)


def test_constant_schedule_keeps_the_rates(tmp_path, step_learning_rates):
    config = _config(steps=10, lr=0.02, synth_lr=0.005, lr_schedule="constant")
    summary = train(_model(), _separable(320, seed=1), _separable(64, seed=2), config, tmp_path)
    assert summary["steps"] == 10
    assert step_learning_rates == [pytest.approx([0.02, 0.005])] * 10
    checkpoint = torch.load(tmp_path / "final.pt")
    assert [group["lr"] for group in checkpoint["optimizer"]["param_groups"]] == pytest.approx([0.02, 0.005])


def test_warmup_scales_every_rate_up_linearly_then_the_schedule_takes_over(tmp_path, step_learning_rates):
    config = _config(steps=10, lr=0.02, synth_lr=0.005, lr_schedule="constant", warmup_steps=4)
    train(_model(), _separable(320, seed=1), _separable(64, seed=2), config, tmp_path)
    assert step_learning_rates == [pytest.approx([0.02 * f, 0.005 * f]) for f in (0.25, 0.5, 0.75)] + \
        [pytest.approx([0.02, 0.005])] * 7


def test_sgd_with_momentum(tmp_path):
    config = _config(steps=5, optimizer="sgd", momentum=0.9)
    train(_model(), _separable(320, seed=1), _separable(64, seed=2), config, tmp_path)
    groups = torch.load(tmp_path / "final.pt")["optimizer"]["param_groups"]
    assert [group["momentum"] for group in groups] == [0.9, 0.9]


def test_backprop_model_has_one_param_group(tmp_path):
    model = _model(cut=(False, False))
    summary = train(model, _separable(320, seed=1), _separable(64, seed=2), _config(steps=3), tmp_path)
    assert not [key for key in summary if key.startswith("sg/")]
    assert len(torch.load(tmp_path / "final.pt")["optimizer"]["param_groups"]) == 1


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 65}, "batch_size 65 is larger than the 64 training examples"),
    ({"optimizer": "rmsprop"}, "optimizer must be one of adam, sgd, got 'rmsprop'"),
    ({"lr_schedule": "linear"}, "lr_schedule must be one of cosine, constant"),
    ({"on_divergence": "ignore"}, "on_divergence must be one of stop, skip, got 'ignore'"),
    ({"steps": 0}, "steps must be positive"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ({"log_every": 0}, "log_every must be positive, got 0"),
    ({"log_every": 10, "checkpoint_every": 15}, "checkpoint_every 15 must be a multiple of log_every 10"),
])
def test_invalid_config_raises_a_clear_error(tmp_path, overrides, message):
    with pytest.raises(InvalidConfig, match=message):
        train(_model(), _separable(64, seed=1), _separable(64, seed=2), _config(**{"steps": 1, **overrides}), tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_batch_equal_to_the_data_is_fine(tmp_path):
    summary = train(_model(), _separable(64, seed=1), _separable(64, seed=2), _config(batch_size=64, steps=2),
                    tmp_path)
    assert summary["steps"] == 2 and summary["epochs"] == 2


# ---------------------------------------------------------------------------------- synth_every


def _trained_parameters(tmp_path: Path, name: str, **overrides) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    model = _model()
    run_dir = tmp_path / name
    run_dir.mkdir()
    config = _config(lr_schedule="constant", optimizer="adam", **overrides)
    train(model, _separable(320, seed=1), _separable(64, seed=2), config, run_dir)
    return _clone(block_parameters(model)), _clone(synthesizer_parameters(model))


def test_synth_every_leaves_synthesizers_alone_between_updates(tmp_path):
    initial_synth = _clone(synthesizer_parameters(_model()))
    blocks_1, synth_1 = _trained_parameters(tmp_path, "one", steps=1, synth_every=2)
    blocks_2, synth_2 = _trained_parameters(tmp_path, "two", steps=2, synth_every=2)
    blocks_3, synth_3 = _trained_parameters(tmp_path, "three", steps=3, synth_every=2)
    assert not _same(synth_1, initial_synth)  # step 0 updates the synthesizers
    assert _same(synth_2, synth_1)  # step 1 does not ...
    assert not _same(blocks_2, blocks_1)  # ... though the blocks did learn at step 1
    assert not _same(synth_3, synth_2)  # step 2 updates them again

    _, synth_every_step = _trained_parameters(tmp_path, "control", steps=2, synth_every=1)
    assert not _same(synth_every_step, synth_1)  # the control: with synth_every=1, step 1 moves them


# ------------------------------------------------------------------------------------- evaluate


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_matches_a_direct_computation_and_restores_the_mode(training):
    model = _model()
    model.train(training)
    split = _separable(250, seed=5)
    result = evaluate_classifier(model, split, batch_size=100)  # batches of 100, 100, 50
    assert model.training is training
    assert all(module.training is training for module in model.modules())

    model.eval()
    with torch.no_grad():
        logits = model(split.inputs)
    expected_loss = nn.functional.cross_entropy(logits, split.labels).item()
    expected_acc = (logits.argmax(dim=1) == split.labels).float().mean().item()
    assert result["test/loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert result["test/acc"] == pytest.approx(expected_acc)


def test_evaluate_restores_training_mode_after_an_error():
    model = _model()
    model.train()
    bad = Split(torch.randn(10, DIM + 1), torch.zeros(10, dtype=torch.long))  # wrong feature size
    with pytest.raises(RuntimeError):
        evaluate_classifier(model, bad)
    assert model.training


def test_evaluate_uses_batch_norm_running_statistics():
    """In eval mode BatchNorm uses its running statistics: a batch of one example gives that
    example's prediction, not a normalised-to-zero one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, NUM_CLASSES))
    split = _separable(10, seed=3)
    assert evaluate_classifier(model, split, batch_size=1) == pytest.approx(evaluate_classifier(model, split,
                                                                                                batch_size=10))
    assert model.training


# ------------------------------------------------------------------------------------ real MNIST


def test_cdni_mlp_learns_mnist_in_500_steps(tmp_path, data_root):
    """The default cDNI MLP (3 x 256 units, linear synthesizers on [activation, label]), 500 steps of
    batch 128 with the default Adam and cosine schedule: about 3 s on one core.

    Measured test accuracy 0.953-0.955 (seeds 0-2) after 500 steps. After 300 steps it was only
    0.928-0.930, too close to the 0.93 this test wants, hence 500. Plain DNI (MLP synthesizers on the
    activation alone) is not tested here: after 300 steps it reached only 0.75-0.80 (seeds 0-2), below
    the ~0.85 the output layer alone would reach, and took five times as long.
    """
    train_split, test_split, note = load_splits("mnist", str(data_root / "mnist"), download=False, dry_run=False)
    assert note == "" and len(train_split.labels) == 60000 and len(test_split.labels) == 10000
    torch.manual_seed(0)
    model = build_mlp("cdni")
    summary = train(model, train_split, test_split, dict(steps=500, batch_size=128, use_context=True, seed=0,
                                                         progress=False), tmp_path)
    assert summary["steps"] == 500
    assert summary["test_acc"] >= 0.93
    # Every cut's synthetic gradient points along its target (measured 0.82-0.85 at every cut).
    assert all(summary[f"sg/cos/{cut}"] > 0.5 for cut in range(3))


def test_decoupled_lr_gives_the_blocks_below_the_top_cut_their_own_group():
    model = _model()
    optimizer = build_optimizer(parameter_groups(model), TrainConfig(lr=0.1, synth_lr=0.01, decoupled_lr=0.001))
    lrs = {id(param): group["lr"] for group in optimizer.param_groups for param in group["params"]}
    assert {lrs[id(p)] for p in model.decoupled_parameters()} == {0.001}
    assert {lrs[id(p)] for p in model.blocks[-1].parameters()} == {0.1}
    assert {lrs[id(p)] for p in synthesizer_parameters(model)} == {0.01}
    assert len(lrs) == len(list(model.parameters()))
    plain = torch.nn.Linear(3, 2)  # a model without cuts has nothing that learns from synthetic gradients
    groups = build_optimizer(parameter_groups(plain), TrainConfig(decoupled_lr=0.001)).param_groups
    assert [(group["name"], group["lr"]) for group in groups] == [("blocks", 1e-3)]


# ------------------------------------------------------------------------------ stochastic updates


def test_update_probability_zero_freezes_every_block_while_synthesizers_learn(tmp_path):
    initial_blocks, initial_synth = _clone(block_parameters(_model())), _clone(synthesizer_parameters(_model()))
    blocks, synth = _trained_parameters(tmp_path, "frozen", steps=5, update_prob=0.0)
    assert _same(blocks, initial_blocks)
    assert not _same(synth, initial_synth)


def test_update_probability_moves_each_block_on_a_fraction_of_the_steps(tmp_path):
    model = _model()
    updates = [0] * len(model.blocks)
    previous = [_clone(block.parameters()) for block in model.blocks]

    config = _config(steps=1, update_prob=0.5, lr_schedule="constant")
    train_split, test_split = _separable(320, seed=1), _separable(64, seed=2)
    for step in range(40):  # one step per call, resuming, so that each step's updates can be seen
        run_dir = tmp_path / f"step{step}"
        train(model, train_split, test_split, {**config, "seed": step}, run_dir)
        current = [_clone(block.parameters()) for block in model.blocks]
        for index, (before, after) in enumerate(zip(previous, current)):
            updates[index] += not _same(before, after)
        previous = current
    assert all(8 <= count <= 32 for count in updates), updates  # ~20 of 40 each; never all or none


def test_resume_with_stochastic_updates_is_bit_identical(tmp_path):
    config = _config(steps=8, update_prob=0.5, log_every=1, checkpoint_every=0)
    train_split, test_split = _separable(320, seed=1), _separable(64, seed=2)
    straight = _model()
    train(straight, train_split, test_split, config, tmp_path / "straight")

    interrupted = _model()
    with pytest.raises(TrainingInterrupted) as stopped:
        train(interrupted, train_split, test_split, config, tmp_path / "resumed",
              stop_requested=lambda: True)  # stops (with a checkpoint) after the first step
    resumed = _model()
    train(resumed, train_split, test_split, config, tmp_path / "resumed",
          resume=torch.load(stopped.value.checkpoint, weights_only=False))
    assert _same(_clone(resumed.parameters()), _clone(straight.parameters()))


def test_update_probability_needs_a_decoupled_sequential(tmp_path):
    with pytest.raises(InvalidConfig, match="update_prob < 1 needs a model with blocks"):
        train(nn.Sequential(nn.Linear(DIM, NUM_CLASSES)), _separable(64, seed=1), _separable(32, seed=2),
              _config(steps=1, update_prob=0.5, use_context=False), tmp_path)


def test_frozen_parameters_stay_out_of_the_optimizer():
    model = _model()
    model.blocks[0].requires_grad_(False)
    optimizer = build_optimizer(parameter_groups(model), TrainConfig())
    optimized = {id(param) for group in optimizer.param_groups for param in group["params"]}
    assert not optimized & {id(param) for param in model.blocks[0].parameters()}
    assert {id(param) for param in model.blocks[1].parameters()} <= optimized
