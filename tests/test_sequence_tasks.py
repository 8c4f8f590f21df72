"""The Copy and Repeat Copy generators follow the protocol in ``synthgrad.data.sequence_tasks``."""
import pytest
import torch

from synthgrad.data.sequence_tasks import copy_batch, repeat_copy_batch, sequence_batch, task_dims


def test_copy_batch_format():
    batch = copy_batch(4, 5, torch.Generator().manual_seed(0))
    assert batch.inputs.shape == (4, 11, 9) and batch.targets.shape == (4, 11, 8) and batch.mask.shape == (11,)
    patterns = batch.inputs[:, :5, :8]
    assert set(patterns.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(batch.inputs[:, :5, 8], torch.zeros(4, 5))
    assert torch.equal(batch.inputs[:, 5], torch.tensor([0.0] * 8 + [1.0]).expand(4, 9))  # delimiter only
    assert torch.equal(batch.inputs[:, 6:], torch.zeros(4, 5, 9))  # blank while answering
    assert torch.equal(batch.targets[:, 6:], patterns)
    assert batch.mask.tolist() == [False] * 6 + [True] * 5
    assert task_dims("copy") == (9, 8)


def test_repeat_copy_batch_format():
    batch = repeat_copy_batch(3, 4, torch.Generator().manual_seed(0), max_repeats=4, repeats=2)
    steps = 4 + 1 + 4 * 2 + 1
    assert batch.inputs.shape == (3, steps, 10) and batch.targets.shape == (3, steps, 9)
    patterns = batch.inputs[:, :4, :8]
    assert torch.equal(batch.inputs[:, 4, 8:], torch.tensor([1.0, 0.5]).expand(3, 2))  # delimiter, R / max
    assert torch.equal(batch.inputs[:, 5:], torch.zeros(3, steps - 5, 10))
    assert torch.equal(batch.targets[:, 5:13, :8], torch.cat([patterns, patterns], dim=1))
    assert torch.equal(batch.targets[:, :, 8], torch.eye(steps)[-1].expand(3, steps))  # end marker, last step
    assert batch.mask.tolist() == [False] * 5 + [True] * 9
    assert task_dims("repeat-copy") == (10, 9)


def test_repeat_counts_are_drawn_from_one_to_max_and_batches_are_reproducible():
    generator = torch.Generator().manual_seed(0)
    counts = {int(round(repeat_copy_batch(1, 2, generator, max_repeats=3).inputs[0, 2, 9].item() * 3))
              for _ in range(50)}
    assert counts == {1, 2, 3}
    first = sequence_batch("copy", 2, 3, torch.Generator().manual_seed(7))
    second = sequence_batch("copy", 2, 3, torch.Generator().manual_seed(7))
    assert torch.equal(first.inputs, second.inputs)


def test_bad_arguments_are_refused():
    generator = torch.Generator()
    with pytest.raises(ValueError, match="task must be one of"):
        sequence_batch("reverse", 2, 3, generator)
    with pytest.raises(ValueError, match="length"):
        copy_batch(2, 0, generator)
    with pytest.raises(ValueError, match="repeats must be in"):
        repeat_copy_batch(2, 3, generator, max_repeats=2, repeats=3)
