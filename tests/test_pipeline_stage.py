"""Stages against plain autograd, driven in one process (the messages of a pipeline passed by hand)."""
import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from oracle import ExactSynthesizer, backprop_reference, make_blocks
from synthgrad import DecoupledSequential, InvalidConfig, LinearSynthesizer
from synthgrad.functional import synthesizer_loss
from synthgrad.pipeline.split import block_costs, cut_costs, partition, split_model, stage_groups
from synthgrad.pipeline.stage import Stage

GROUPS = [range(0, 2), range(2, 4)]


def batch(size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 12, generator=generator), torch.randint(0, 5, (size,), generator=generator)


def stages(model):
    return [Stage(modules, stage_index=index, num_stages=2) for index, modules in enumerate(split_model(model, GROUPS))]


def unlocked_step(bottom, top, x, y, context=None):
    """F on both stages, as the ranks run it: the bottom's output goes up, the top's input target comes back."""
    forward = bottom.forward(x, needs_input_grad=True)
    assert bottom.backward_unlocked(forward, context=context).input_target is None  # nothing below the first stage
    top_forward = top.forward(forward.output.detach(), needs_input_grad=True)
    return forward.output.detach(), top.backward_unlocked(top_forward, target=y)


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


def test_micro_batches_add_up_to_the_mini_batchs_gradient():
    x, y = batch(size=8, seed=4)
    torch.manual_seed(4)
    blocks = [nn.Sequential(nn.Linear(12, 16), nn.Tanh()), nn.Linear(16, 5)]  # no BatchNorm: it normalises
    whole, halves = ([Stage(modules, stage_index=index, num_stages=2)           # each micro-batch on its own
                      for index, modules in enumerate(split_model(DecoupledSequential(copy.deepcopy(blocks), [None]),
                                                                  [range(0, 1), range(1, 2)]))]
                     for _ in range(2))
    for (bottom, top), micro_batches in ((whole, 1), (halves, 2)):
        for micro in range(micro_batches):
            part = slice(micro * 8 // micro_batches, (micro + 1) * 8 // micro_batches)
            output, _ = bottom.forward_lockstep((0, micro), x[part], None, micro_batches)
            top.forward_lockstep((0, micro), output, y[part], micro_batches)
        for micro in range(micro_batches):
            bottom.backward_lockstep((0, micro), top.backward_lockstep((0, micro), None))
    for mine, theirs in zip((p for stage in halves for p in stage.chain.parameters()),
                            (p for stage in whole for p in stage.chain.parameters()), strict=True):
        assert_close(mine.grad, theirs.grad)


def test_unlocked_stages_with_an_exact_synthesizer_give_backprop_gradients():
    x, y = batch(seed=1)
    blocks = make_blocks(1)
    reference, grads = backprop_reference(blocks, x, y)
    bottom, top = stages(DecoupledSequential(copy.deepcopy(blocks), [None, ExactSynthesizer(grads[1]), None]))
    _, top_result = unlocked_step(bottom, top, x, y)
    # the target sent down is the true gradient at the cut, at per-example scale
    assert_close(top_result.input_target, grads[1] * len(y))
    assert_close(top_result.loss, nn.functional.cross_entropy(reference(x), y))
    ours = [*bottom.chain.parameters(), *top.chain.parameters()]
    for mine, theirs in zip(ours, reference.parameters(), strict=True):
        assert_close(mine.grad, theirs.grad)


def test_zero_initialised_synthesizer_gives_the_first_stage_no_gradient_at_step_zero():
    x, _ = batch()
    model = DecoupledSequential(make_blocks(), [None, LinearSynthesizer(16, context_dim=5), None])
    bottom, _ = stages(model)
    forward = bottom.forward(x, needs_input_grad=False)
    bottom.backward_unlocked(forward, context=nn.functional.one_hot(torch.arange(8) % 5, 5).float())
    for name, param in bottom.chain.named_parameters():
        assert torch.equal(param.grad, torch.zeros_like(param)), name


def test_the_synthesizer_learns_the_target_that_arrives():
    x, _ = batch()
    model = DecoupledSequential(make_blocks(), [None, LinearSynthesizer(16), None])
    bottom, _ = stages(model)
    output = bottom.forward(x, needs_input_grad=False).output.detach()
    target = torch.randn(output.shape, generator=torch.Generator().manual_seed(3))
    optimizer = torch.optim.Adam(bottom.synthesizer.parameters(), lr=1e-2)
    losses = []
    for _ in range(50):
        optimizer.zero_grad()
        losses.append(bottom.synthesizer_backward(output, None, target)[0].item())
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]


def cdni_stages(seed=0):
    torch.manual_seed(seed)
    return stages(DecoupledSequential(make_blocks(), [None, LinearSynthesizer(16, context_dim=5), None]))


def test_a_synthesizer_gradient_equals_autograd_of_its_loss_whether_or_not_it_is_measured():
    x, y = batch(seed=2)
    context = nn.functional.one_hot(y, 5).float()
    target = torch.randn(8, 16, generator=torch.Generator().manual_seed(4))
    (bottom, _), (unmeasured, _) = cdni_stages(), cdni_stages()
    for stage in (bottom, unmeasured):
        output = stage.forward(x, needs_input_grad=False).output.detach()
        with torch.no_grad():  # so that the prediction below is not zero
            stage.synthesizer.net[-1].weight.copy_(torch.randn(16, 21, generator=torch.Generator().manual_seed(6)))
    reference = copy.deepcopy(bottom.synthesizer)
    synthesizer_loss(reference(output, context), target).backward()

    measured = bottom.synthesizer_backward(output, context, target)
    assert unmeasured.synthesizer_backward(output, context, target, measure=False) is None
    assert measured.shape == (2,) and measured[0] > 0
    for stage in (bottom, unmeasured):
        for mine, theirs in zip(stage.synthesizer.parameters(), reference.parameters(), strict=True):
            assert_close(mine.grad, theirs.grad)


def test_without_an_input_target_a_stage_gets_the_same_gradients_and_sends_nothing_down():
    _, y = batch(seed=3)
    (_, top), (_, twin) = cdni_stages(), cdni_stages()
    h = torch.randn(8, 16, generator=torch.Generator().manual_seed(5))
    assert top.backward_unlocked(top.forward(h, needs_input_grad=True), target=y).input_target is not None
    assert twin.backward_unlocked(twin.forward(h, needs_input_grad=False), target=y).input_target is None
    for mine, theirs in zip(top.chain.parameters(), twin.chain.parameters(), strict=True):
        assert_close(mine.grad, theirs.grad)


def test_partition_balances_the_cost_of_contiguous_blocks():
    assert partition([4, 1, 1, 1, 1], 2) == [range(0, 1), range(1, 5)]
    assert partition([3, 1, 1, 1, 1, 1, 0.1], 2) == [range(0, 2), range(2, 7)]
    assert partition([1, 1, 1], 3) == [range(0, 1), range(1, 2), range(2, 3)]
    with pytest.raises(InvalidConfig, match="num_stages 4: the model has 3 blocks") as refused:
        partition([1, 1, 1], 4)
    assert refused.value.spelled({"num_stages": "--stages"}).startswith("--stages 4: the model has 3 blocks")


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
