"""The recurrent experiments (``synthgrad.experiments.rnn``) on the engine write their run directories; the
curriculum moves; a resumed run is the uninterrupted one."""
import json
import math

import pytest
import torch
from torch.testing import assert_close

from synthgrad.checkpoints import load_latest_checkpoint
from synthgrad.data.sequence_tasks import copy_batch, repeat_copy_batch, task_dims
from synthgrad.data.text import split_text
from synthgrad.engine import TrainConfig
from synthgrad.errors import InvalidConfig, TrainingInterrupted
from synthgrad.experiments.charlm import validation_bpc
from synthgrad.experiments.recurrent_task import next_chunk_context
from synthgrad.experiments.rnn import run_rnn_experiment
from synthgrad.experiments.rnn_config import RNNConfig, rnn_config, validate_rnn_config
from synthgrad.experiments.sequence_task import scored_loss
from synthgrad.recurrent import LSTMCore, backward_through_chunks
from synthgrad.synthesizers import LinearSynthesizer

TEXT = "the quick brown fox jumps over the lazy dog. " * 200


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_copy_run_follows_the_curriculum_and_writes_its_directory(tmp_path):
    # a threshold every batch meets: the length grows every `curriculum_window` batches
    config = rnn_config("copy", method="dni", truncation=3, hidden_dim=16, batch_size=4, steps=20,
                        threshold=100.0, curriculum_window=2, progress=False, log_every=10)
    summary = run_rnn_experiment(config, tmp_path)
    assert summary["max_length_solved"] == 10 and summary["final_length"] == 11 and summary["steps"] == 20
    assert {"train_seconds", "cpu_seconds", "method", "task", "truncation"} <= set(summary)
    assert {path.name for path in tmp_path.iterdir()} >= {"config.json", "metrics.jsonl", "summary.json", "final.pt"}
    records = _records(tmp_path)
    assert [record["length"] for record in records] == [5, 10]  # the length of each record's last batch
    assert {"step", "length", "train/bpc", "max_length_solved", "sg/loss/state", "sg/cos/state"} <= set(records[0])
    assert all(-1 <= record["sg/cos_true/state"] <= 1 for record in records)  # against the true future gradient
    assert not any("train_seconds" in record or "train/seconds" in record for record in records)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["method"] == "dni" and saved["train"]["log_every"] == saved["train"]["eval_every"] == 10


def test_copy_stops_once_its_max_length_is_solved(tmp_path):
    config = rnn_config("copy", method="bptt", hidden_dim=8, batch_size=2, steps=50, threshold=100.0,
                        curriculum_window=2, max_length=3, log_every=10, progress=False)
    summary = run_rnn_experiment(config, tmp_path)
    assert summary["max_length_solved"] == 3 and summary["steps"] == 6  # lengths 1, 2, 3: two batches each
    assert _records(tmp_path)[-1]["step"] == 6


def test_charlm_run_reports_validation_bpc_and_characters_seen(tmp_path):
    config = rnn_config("charlm", method="dni-aux", truncation=4, hidden_dim=32, batch_size=4, window=16,
                        steps=6, eval_every=3, progress=False)
    summary = run_rnn_experiment(config, tmp_path, corpus=split_text(TEXT))
    assert summary["chars_seen"] == 6 * 4 * 16
    assert 0 < summary["val_bpc"] < 6 and summary["best_val_bpc"] <= summary["val_bpc"]
    records = _records(tmp_path)
    assert [record["chars_seen"] for record in records] == [192, 384]  # a record at every evaluation
    assert all("val/bpc" in record for record in records)
    assert "aux/loss" in records[-1] and "sg/cos/state" in records[-1] and records[-1]["state/norm"] > 0


def test_validation_is_scored_without_dropout_and_leaves_the_core_training():
    corpus = split_text(TEXT)
    torch.manual_seed(0)
    plain = LSTMCore(corpus.vocab_size, 16, corpus.vocab_size)
    dropped = LSTMCore(corpus.vocab_size, 16, corpus.vocab_size, dropout=0.5)
    dropped.load_state_dict(plain.state_dict())
    assert validation_bpc(dropped, corpus, batch_size=4) == pytest.approx(validation_bpc(plain, corpus, batch_size=4))
    assert dropped.training


def test_impossible_configurations_are_refused_naming_the_field():
    with pytest.raises(InvalidConfig, match="method") as error:
        validate_rnn_config(RNNConfig(method="rtrl"))
    assert error.value.fields == ("method",)
    with pytest.raises(InvalidConfig, match="window 128 must be a multiple of truncation 3") as error:
        validate_rnn_config(RNNConfig(task="charlm", truncation=3, window=128))
    assert error.value.spelled({"window": "--window", "truncation": "--truncation"}).startswith(
        "--window 128 must be a multiple of --truncation 3")
    with pytest.raises(InvalidConfig, match="checkpoint_every"):  # the engine's own check, before any work
        validate_rnn_config(RNNConfig(train=TrainConfig(steps=100, checkpoint_every=30, log_every=20)))


def test_engine_settings_follow_the_task():
    copy, charlm = RNNConfig(), RNNConfig(task="charlm")
    assert (copy.train.lr, copy.train.synth_lr, copy.train.lr_schedule, copy.train.steps) == (3e-3, 1e-2, "constant", 4000)
    assert copy.train.log_every == copy.train.eval_every == 50 and charlm.train.log_every == charlm.train.eval_every == 250
    assert rnn_config("charlm", eval_every=100).train.log_every == 100  # records at every evaluation
    assert rnn_config("copy", log_every=20).train.eval_every == 20  # evaluates at every record
    # a checkpoint falls on the first record at least checkpoint_every updates after the last
    assert rnn_config("charlm", eval_every=300).train.checkpoint_every == 1200


def test_only_the_output_phase_is_scored_and_chance_is_one_bit_per_channel():
    generator = torch.Generator().manual_seed(0)
    batch = copy_batch(5, 4, generator)  # 9 steps: 4 patterns, the delimiter, 4 scored steps
    outputs = torch.zeros(5, 9, 8)  # logits 0: every bit predicted with probability 1/2
    bits = scored_loss(outputs, batch, 0, 9).item() / int(batch.mask.sum()) / math.log(2)
    assert bits == pytest.approx(8.0)  # 8 channels, one bit each
    # whatever the core outputs during the input phase and the delimiter costs nothing
    outputs[:, :5] = torch.randn(5, 5, 8) * 10
    assert scored_loss(outputs, batch, 0, 9).item() == pytest.approx(8 * 4 * math.log(2))
    assert scored_loss(outputs[:, :5], batch, 0, 5).item() == 0.0
    # a confident, correct output phase costs (almost) nothing; chunks add up to the whole
    outputs[:, 5:] = (batch.targets[:, 5:] * 2 - 1) * 30
    assert scored_loss(outputs, batch, 0, 9).item() < 1e-9
    repeat = repeat_copy_batch(3, 2, generator, repeats=2)  # 2 + 1 + 4 + 1 steps, the last 5 scored, 9 channels
    logits = torch.zeros(3, 8, 9)
    assert scored_loss(logits[:, :3], repeat, 0, 3).item() + scored_loss(logits[:, 3:], repeat, 3, 8).item() == pytest.approx(
        5 * 9 * math.log(2))


def test_full_bptt_learns_copy_of_length_4_within_a_small_budget(tmp_path):
    # truncation longer than the sequence: plain BPTT. Measured: length 4 solved after about 1150 batches
    # (the curriculum climbs from length 1; about 250-400 batches per length)
    config = rnn_config("copy", method="bptt", truncation=100, lr=1e-2, steps=2500, max_length=4, progress=False)
    summary = run_rnn_experiment(config, tmp_path)
    assert summary["max_length_solved"] == 4 and summary["steps"] < 2500


def test_truncated_bptt_at_T2_gives_the_copy_pattern_inputs_no_gradient():
    """Why BPTT at T=2 cannot learn Copy beyond what its random input weights store (the paper's table
    has it solving length 7): a pattern and its recall are N+1 >= 2 steps apart, never in one chunk of
    2, and the recall steps' inputs are blank, so the input weights of the 8 pattern channels get exactly
    zero gradient. A synthesizer at the boundaries does reach them."""
    torch.manual_seed(0)
    core = LSTMCore(9, 16, 8)
    for length in (1, 2, 5):
        batch = copy_batch(4, length, torch.Generator().manual_seed(length))
        for truncation, synthesizer in ((2, None), (2 * length + 1, None), (2, LinearSynthesizer(core.state_dim))):
            if synthesizer is not None:
                torch.nn.init.normal_(synthesizer.net[0].weight, std=0.1)
            core.zero_grad()
            backward_through_chunks(core, batch.inputs, lambda out, start, stop: scored_loss(out, batch, start, stop),
                                    truncation, synthesizer=synthesizer)
            pattern_grad = core.lstm.weight_ih_l0.grad[:, :8]
            assert (pattern_grad.abs().max() == 0) == (truncation == 2 and synthesizer is None)
            assert core.lstm.bias_ih_l0.grad.abs().max() > 0  # the recall steps still train the LSTM


class _Crash(Exception):
    pass


def _crash_after(step: int):
    def on_record(record):
        if record["step"] >= step:
            raise _Crash
    return on_record


@pytest.mark.parametrize("task", ["copy", "charlm"])
def test_a_resumed_run_continues_exactly_as_the_uninterrupted_one(task, tmp_path):
    options = dict(corpus=split_text(TEXT)) if task == "charlm" else {}
    config = rnn_config(task, method="dni-aux", truncation=4, hidden_dim=16, batch_size=4, steps=12,
                        log_every=2, eval_every=2, window=16, checkpoint_every=4, threshold=6.0,
                        curriculum_window=3, progress=False)
    reference = run_rnn_experiment(config, tmp_path / "reference", **options)
    with pytest.raises(_Crash):  # killed after the record of step 7: checkpoints at 4 (and none at 8 yet)
        run_rnn_experiment(config, tmp_path / "resumed", on_record=_crash_after(7), **options)
    assert sorted(path.name for path in (tmp_path / "resumed").glob("checkpoint-*.pt")) == ["checkpoint-00000004.pt"]
    checkpoint = load_latest_checkpoint(tmp_path / "resumed")
    resumed = run_rnn_experiment(config, tmp_path / "resumed", resume=checkpoint, **options)
    drop = {"train_seconds", "cpu_seconds"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in reference.items() if k not in drop}
    assert _records(tmp_path / "resumed") == _records(tmp_path / "reference")
    final = [torch.load(tmp_path / run / "final.pt", weights_only=True)["model"] for run in ("reference", "resumed")]
    assert final[0].keys() == final[1].keys() and any(key.startswith("aux_head.") for key in final[0])
    for key, value in final[0].items():
        assert torch.equal(value, final[1][key]), key


@pytest.mark.parametrize("task", ["repeat-copy", "charlm"])
def test_a_run_stopped_inside_a_logging_interval_resumes_exactly(task, tmp_path):
    options = dict(corpus=split_text(TEXT)) if task == "charlm" else {}
    config = rnn_config(task, method="dni", truncation=3, hidden_dim=8, batch_size=4, steps=9, log_every=3,
                        window=6, threshold=6.0, curriculum_window=2, dropout=0.2, num_layers=2, progress=False)
    reference = run_rnn_experiment(config, tmp_path / "reference", **options)
    steps = iter(range(100))
    with pytest.raises(TrainingInterrupted) as stopped:  # asked after every step: stops after step 5
        run_rnn_experiment(config, tmp_path / "resumed", stop_requested=lambda: next(steps) == 4, **options)
    assert stopped.value.step == 5
    resumed = run_rnn_experiment(config, tmp_path / "resumed", resume=load_latest_checkpoint(tmp_path / "resumed"),
                                 **options)
    assert resumed["steps"] == 9 and _records(tmp_path / "resumed") == _records(tmp_path / "reference")
    final = [torch.load(tmp_path / run / "final.pt", weights_only=True) for run in ("reference", "resumed")]
    for key, value in final[0]["model"].items():
        assert torch.equal(value, final[1]["model"][key]), key
    assert {k: v for k, v in resumed.items() if "seconds" not in k} == {k: v for k, v in reference.items()
                                                                        if "seconds" not in k}


def test_next_chunk_context_is_the_next_T_steps_inputs_and_targets_then_zeros():
    inputs = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    targets = -torch.arange(2 * 5 * 2, dtype=torch.float32).view(2, 5, 2)
    context = next_chunk_context(inputs, targets, truncation=2)
    assert_close(context(1), torch.cat([inputs, targets], dim=2)[:, 1:3].flatten(1))
    assert context(4).shape == (2, 2 * (3 + 2))
    assert_close(context(4)[:, :5], torch.cat([inputs, targets], dim=2)[:, 4])
    assert not context(4)[:, 5:].any() and not context(5).any()  # past the last step


def test_the_next_chunk_lets_a_synthesizer_predict_its_target_better():
    """On Copy of length 4 at T=3, with the core fixed, a linear synthesizer that also reads the next
    chunk's inputs and targets regresses onto its bootstrapped targets far better than one of the state."""
    truncation, (input_dim, output_dim) = 3, task_dims("copy")
    torch.manual_seed(0)
    core = LSTMCore(input_dim, 16, output_dim)
    final_losses = {}
    for context_dim in (0, truncation * (input_dim + output_dim)):
        generator = torch.Generator().manual_seed(0)
        synthesizer = LinearSynthesizer(core.state_dim, context_dim=context_dim)
        optimizer = torch.optim.Adam(synthesizer.parameters(), lr=1e-2)
        losses = []
        for _ in range(150):
            batch = copy_batch(32, 4, generator)
            context = (next_chunk_context(batch.inputs, batch.targets * batch.mask[:, None], truncation)
                       if context_dim else None)
            optimizer.zero_grad()
            result = backward_through_chunks(core, batch.inputs, lambda out, a, b: scored_loss(out, batch, a, b),
                                             truncation, synthesizer=synthesizer, boundary_context=context)
            optimizer.step()
            losses += result.synthesizer_losses
        final_losses[context_dim] = sum(losses[-30:]) / 30
    assert final_losses[truncation * (input_dim + output_dim)] < 0.5 * final_losses[0], final_losses


@pytest.mark.parametrize("task", ["copy", "charlm"])
def test_a_cdni_run_gives_its_synthesizer_the_next_chunk(task, tmp_path):
    options = dict(method="cdni", truncation=3, hidden_dim=8, batch_size=4, progress=False)
    if task == "copy":
        config = rnn_config(task, **options, steps=20, log_every=10, threshold=100.0, curriculum_window=2)
        run_rnn_experiment(config, tmp_path)
    else:  # windows that wrap around the short streams: the chunk after the last window is cut short
        config = rnn_config(task, **options, steps=40, window=12, eval_every=10)
        run_rnn_experiment(config, tmp_path, corpus=split_text(TEXT))
    input_dim, output_dim = task_dims(task) if task == "copy" else (len(set(TEXT)), len(set(TEXT)))
    weight = torch.load(tmp_path / "final.pt", weights_only=True)["model"]["synthesizer.net.0.weight"]
    assert weight.shape == (2 * 8, 2 * 8 + 3 * (input_dim + output_dim))  # [h, c, next chunk] -> gradient
    records = _records(tmp_path)
    assert all(0 < record["sg/cos/state"] <= 1 for record in records)
    assert task == "charlm" or all(-1 <= record["sg/cos_true/state"] <= 1 for record in records)


def test_one_optimizer_steps_the_core_and_aux_head_at_lr_and_the_synthesizer_at_synth_lr():
    from synthgrad.experiments.rnn import build_rnn_task

    task = build_rnn_task(rnn_config("copy", method="dni-aux", hidden_dim=8))
    groups, model = task.parameter_groups(), task.model
    assert {id(p) for p in groups.blocks} == {id(p) for p in [*model.core.parameters(), *model.aux_head.parameters()]}
    assert {id(p) for p in groups.synthesizers} == {id(p) for p in model.synthesizer.parameters()}
    assert not groups.decoupled
