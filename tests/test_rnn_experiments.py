"""The recurrent runners (``synthgrad.experiments.rnn``) write their run directories; the curriculum moves."""
import json
import math

import pytest
import torch
from torch.testing import assert_close

from synthgrad.data.sequence_tasks import copy_batch, repeat_copy_batch, task_dims
from synthgrad.data.text import split_text
from synthgrad.experiments.rnn import (RNNConfig, check_config, next_chunk_context, run_charlm, run_sequence_task,
                                       scored_loss, validation_bpc)
from synthgrad.recurrent import LSTMCore, backward_through_chunks
from synthgrad.synthesizers import LinearSynthesizer

TEXT = "the quick brown fox jumps over the lazy dog. " * 200



def test_copy_run_follows_the_curriculum_and_writes_its_directory(tmp_path):
    # a threshold every batch meets: the length grows every `curriculum_window` batches
    config = RNNConfig(task="copy", method="dni", truncation=3, hidden_dim=16, batch_size=4, steps=20,
                       threshold=100.0, curriculum_window=2, progress=False, log_every=10)
    summary = run_sequence_task(config, tmp_path)
    assert summary["max_length_solved"] == 10 and summary["final_length"] == 11 and summary["steps"] == 20
    assert {path.name for path in tmp_path.iterdir()} >= {"config.json", "metrics.jsonl", "summary.json", "final.pt"}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["length"] for record in records] == [5, 10]  # the length of each record's last batch
    assert {"step", "length", "train/bpc", "max_length_solved", "sg/loss/state", "sg/cos/state"} <= set(records[0])
    assert all(-1 <= record["sg/cos_true/state"] <= 1 for record in records)  # against the true future gradient
    assert json.loads((tmp_path / "config.json").read_text())["method"] == "dni"


def test_charlm_run_reports_validation_bpc_and_characters_seen(tmp_path):
    config = RNNConfig(task="charlm", method="dni-aux", truncation=4, hidden_dim=32, batch_size=4, window=16,
                       steps=6, eval_every=3, progress=False)
    summary = run_charlm(config, tmp_path, corpus=split_text(TEXT))
    assert summary["chars_seen"] == 6 * 4 * 16
    assert 0 < summary["val_bpc"] < 6 and summary["best_val_bpc"] <= summary["val_bpc"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [record["chars_seen"] for record in records] == [192, 384]
    assert "aux/loss" in records[-1] and "sg/cos/state" in records[-1] and records[-1]["state/norm"] > 0


def test_validation_is_scored_without_dropout_and_leaves_the_core_training():
    corpus = split_text(TEXT)
    torch.manual_seed(0)
    plain = LSTMCore(corpus.vocab_size, 16, corpus.vocab_size)
    dropped = LSTMCore(corpus.vocab_size, 16, corpus.vocab_size, dropout=0.5)
    dropped.load_state_dict(plain.state_dict())
    assert validation_bpc(dropped, corpus, batch_size=4) == pytest.approx(validation_bpc(plain, corpus, batch_size=4))
    assert dropped.training


def test_impossible_configurations_are_refused():
    with pytest.raises(ValueError, match="method"):
        check_config(RNNConfig(method="rtrl"))
    with pytest.raises(ValueError, match="multiple of the truncation"):
        check_config(RNNConfig(task="charlm", truncation=3, window=128))


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
    config = RNNConfig(task="copy", method="bptt", truncation=100, lr=1e-2, steps=2500, max_length=4,
                       progress=False)
    summary = run_sequence_task(config, tmp_path)
    assert summary["max_length_solved"] == 4 and summary["steps"] < 2500


def test_truncated_bptt_at_T2_gives_the_copy_pattern_inputs_no_gradient():
    """Why BPTT at T=2 cannot learn Copy beyond what its random input weights store (the paper's table
    has it solving length 7): a pattern and its recall are N+1 >= 2 steps apart, never in one chunk of
    2, and the recall steps' inputs are blank, so the input weights of the 8 pattern channels get exactly
    zero gradient. A synthesizer at the boundaries does reach them."""
    from synthgrad.recurrent import LSTMCore, backward_through_chunks
    from synthgrad.synthesizers import LinearSynthesizer

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


def _without_seconds(run_dir):
    return [{key: value for key, value in json.loads(line).items() if key != "train_seconds"}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task", ["copy", "charlm"])
def test_a_resumed_run_continues_exactly_as_the_uninterrupted_one(task, tmp_path):
    from synthgrad.experiments.rnn import run_rnn_experiment

    options = dict(corpus=split_text(TEXT)) if task == "charlm" else {}
    config = RNNConfig(task=task, method="dni-aux", truncation=4, hidden_dim=16, batch_size=4, steps=12,
                       log_every=2, eval_every=2, window=16, checkpoint_every=4, threshold=6.0,
                       curriculum_window=3, progress=False)
    reference = run_rnn_experiment(config, tmp_path / "reference", **options)
    with pytest.raises(_Crash):  # killed after the record of step 7: checkpoints at 4 (and none at 8 yet)
        run_rnn_experiment(config, tmp_path / "resumed", on_record=_crash_after(7), **options)
    assert sorted(path.name for path in (tmp_path / "resumed").glob("checkpoint-*.pt")) == ["checkpoint-00000004.pt"]
    resumed = run_rnn_experiment(config, tmp_path / "resumed", resume=True, **options)
    drop = {"train_seconds"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in reference.items() if k not in drop}
    assert _without_seconds(tmp_path / "resumed") == _without_seconds(tmp_path / "reference")
    final = [torch.load(tmp_path / run / "final.pt", weights_only=True) for run in ("reference", "resumed")]
    for name in ("model", "synthesizer", "aux_head"):
        for key, value in final[0][name].items():
            assert torch.equal(value, final[1][name][key]), (name, key)


def test_resume_without_a_checkpoint_names_the_fix(tmp_path):
    from synthgrad.errors import SynthgradError

    config = RNNConfig(task="copy", hidden_dim=8, batch_size=2, steps=2, checkpoint_every=0, progress=False)
    run_sequence_task(config, tmp_path)
    with pytest.raises(SynthgradError, match="without --resume"):
        run_sequence_task(config, tmp_path, resume=True)


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
    options = dict(task=task, method="cdni", truncation=3, hidden_dim=8, batch_size=4, progress=False)
    if task == "copy":
        config = RNNConfig(**options, steps=20, log_every=10, threshold=100.0, curriculum_window=2)
        run_sequence_task(config, tmp_path)
    else:  # windows that wrap around the short streams: the chunk after the last window is cut short
        config = RNNConfig(**options, steps=40, window=12, eval_every=10)
        run_charlm(config, tmp_path, corpus=split_text(TEXT))
    input_dim, output_dim = task_dims(task) if task == "copy" else (len(set(TEXT)), len(set(TEXT)))
    weight = torch.load(tmp_path / "final.pt", weights_only=True)["synthesizer"]["net.0.weight"]
    assert weight.shape == (2 * 8, 2 * 8 + 3 * (input_dim + output_dim))  # [h, c, next chunk] -> gradient
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < record["sg/cos/state"] <= 1 for record in records)
    assert task == "charlm" or all(-1 <= record["sg/cos_true/state"] <= 1 for record in records)
