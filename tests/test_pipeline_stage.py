"""Stages against plain autograd, driven in one process (the messages of a pipeline passed by hand)."""
import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from oracle import ExactSynthesizer, backprop_reference, make_blocks
from synthgrad import DecoupledSequential, LinearSynthesizer, SynthgradError
from synthgrad.functional import synthesizer_loss
from synthgrad.pipeline.stage import (
    Stage,
    block_costs,
    cut_costs,
    partition,
    split_model,
    stage_groups,
)
from synthgrad.trainer import TrainConfig

GROUPS = [range(0, 2), range(2, 4)]
SGD = TrainConfig(optimizer="sgd", lr=0.1, synth_lr=0.1, lr_schedule="constant")


def batch(size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 12, generator=generator), torch.randint(0, 5, (size,), generator=generator)


def stages(model, config=SGD):
    return [Stage(modules, stage_index=index, num_stages=2, config=config, total_steps=10)
            for index, modules in enumerate(split_model(model, GROUPS))]


def test_lockstep_stages_give_backprop_gradients():
    x, y = batch()
    blocks = make_blocks()
    reference, _ = backprop_reference(blocks, x, y)
    bottom, top = stages(DecoupledSequential(copy.deepcopy(blocks), [None, None, None]))
    output, _ = bottom.forward_lockstep((0, 0), x, None, 1)
    logits, loss = top.forward_lockstep((0, 0), output, y, 1)
    assert_close(loss, nn.functional.cross_entropy(reference(x), y))
    output_grad = top.backward_lockstep((0, 0), None)
    assert bottom.backward_lockstep((0, 0), output_grad) is None  # nothing below the first stage
    ours = [*bottom.chain.parameters(), *top.chain.parameters()]
    for mine, theirs in zip(ours, reference.parameters(), strict=True):
        assert_close(mine.grad, theirs.grad)


def test_unlocked_stages_with_an_exact_synthesizer_make_backprop_updates():
    x, y = batch(seed=1)
    blocks = make_blocks(1)
    reference, grads = backprop_reference(blocks, x, y)
    torch.optim.SGD(reference.parameters(), lr=0.1).step()
    model = DecoupledSequential(copy.deepcopy(blocks), [None, ExactSynthesizer(grads[1]), None])
    bottom, top = stages(model)
    result = bottom.forward_unlocked(x, None, None)
    assert result.input_target is None
    top_result = top.forward_unlocked(result.output, None, y)
    # the target sent down is the true gradient at the cut, at per-example scale
    assert_close(top_result.input_target, grads[1] * len(y))
    ours = [*bottom.chain.parameters(), *top.chain.parameters()]
    for mine, theirs in zip(ours, reference.parameters(), strict=True):
        assert_close(mine, theirs)


def test_zero_initialised_synthesizer_leaves_the_first_stage_unchanged_at_step_zero():
    x, _ = batch()
    model = DecoupledSequential(make_blocks(), [None, LinearSynthesizer(16, context_dim=5), None])
    before = copy.deepcopy(model.blocks[:2].state_dict())
    bottom, _ = stages(model)
    bottom.forward_unlocked(x, nn.functional.one_hot(torch.arange(8) % 5, 5).float(), None)
    for key, value in model.blocks[:2].state_dict().items():
        if "running" not in key and "num_batches" not in key:  # BatchNorm statistics do move
            assert torch.equal(value, before[key]), key


def test_the_synthesizer_learns_the_target_that_arrives():
    x, _ = batch()
    model = DecoupledSequential(make_blocks(), [None, LinearSynthesizer(16), None])
    bottom, _ = stages(model, TrainConfig(lr=1e-3, synth_lr=1e-2, lr_schedule="constant"))
    output = bottom.forward_unlocked(x, None, None).output
    target = torch.randn(output.shape, generator=torch.Generator().manual_seed(3))
    losses = [bottom.train_synthesizer(output, None, target)[0].item() for _ in range(50)]
    assert losses[-1] < 0.5 * losses[0]


def cdni_stages(seed=0):
    torch.manual_seed(seed)
    return stages(DecoupledSequential(make_blocks(), [None, LinearSynthesizer(16, context_dim=5), None]))


def test_a_synthesizer_step_equals_autograd_of_its_loss_whether_or_not_it_is_measured():
    x, y = batch(seed=2)
    context = nn.functional.one_hot(y, 5).float()
    target = torch.randn(8, 16, generator=torch.Generator().manual_seed(4))
    (bottom, _), (unmeasured, _) = cdni_stages(), cdni_stages()
    for stage in (bottom, unmeasured):
        output = stage.forward_unlocked(x, context, None).output
        with torch.no_grad():  # so that the prediction below is not zero
            stage.synthesizer.net[-1].weight.copy_(torch.randn(16, 21, generator=torch.Generator().manual_seed(6)))
    reference = copy.deepcopy(bottom.synthesizer)
    synthesizer_loss(reference(output, context), target).backward()
    torch.optim.SGD(reference.parameters(), lr=SGD.synth_lr).step()

    measured = bottom.train_synthesizer(output, context, target)
    assert unmeasured.train_synthesizer(output, context, target, measure=False) is None
    assert measured.shape == (2,) and measured[0] > 0
    for stage in (bottom, unmeasured):
        for mine, theirs in zip(stage.synthesizer.parameters(), reference.parameters(), strict=True):
            assert_close(mine, theirs)


def test_without_an_input_target_a_stage_makes_the_same_update_and_sends_nothing_down():
    _, y = batch(seed=3)
    (_, top), (_, twin) = cdni_stages(), cdni_stages()
    h = torch.randn(8, 16, generator=torch.Generator().manual_seed(5))
    assert top.forward_unlocked(h, None, y).input_target is not None
    assert twin.forward_unlocked(h, None, y, needs_input_target=False).input_target is None
    for mine, theirs in zip(top.chain.parameters(), twin.chain.parameters(), strict=True):
        assert_close(mine, theirs)


def test_partition_balances_the_cost_of_contiguous_blocks():
    assert partition([4, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 5)]
    assert partition([3, 1, 1, 1, 1, 1, 0.1], 2) == [range(0, 2), range(2, 7)]
    assert partition([1, 1, 1], 3) == [range(0, 1), range(1, 2), range(2, 3)]
    with pytest.raises(SynthgradError, match="--stages 4: the model has 3 blocks"):
        partition([1, 1, 1], 4)


def test_partition_charges_a_group_for_the_synthesizer_at_its_output():
    assert partition([1, 1, 1, 1], 2) == [range(0, 2), range(2, 4)]
    # the synthesizer after block 1 makes the even split cost 3 below; ending after block 0 costs 2 at most
    assert partition([1, 1, 1, 1], 2, [0.5, 1, 0, 0]) == [range(0, 1), range(1, 4)]
    # the last group has no synthesizer at its output: block 3's entry is never charged
    assert partition([1, 1, 1, 1], 2, [0, 0, 0, 10]) == [range(0, 2), range(2, 4)]


def test_cut_costs_count_each_synthesizer_where_it_cuts_and_move_the_stage_boundary():
    synthesizers = [LinearSynthesizer(16, context_dim=5), LinearSynthesizer(16, context_dim=5),
                    LinearSynthesizer(8, context_dim=5)]
    model = DecoupledSequential(make_blocks(), synthesizers)
    params = [sum(param.numel() for param in synthesizer.parameters()) for synthesizer in synthesizers]
    assert cut_costs(model) == [3 * params[0], 3 * params[1], 3 * params[2], 0]
    uncut = DecoupledSequential(make_blocks(), [None, None, None])
    assert cut_costs(uncut) == [0, 0, 0, 0]
    # the blocks alone balance best after block 1; with its synthesizer the first stage would cost more
    # than the blocks above, so the boundary moves down to block 0
    assert stage_groups(uncut, 2) == partition(block_costs(uncut), 2) == [range(0, 2), range(2, 4)]
    assert stage_groups(model, 2) == [range(0, 1), range(1, 4)]
