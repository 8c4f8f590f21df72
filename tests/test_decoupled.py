"""DecoupledSequential against plain autograd backprop (the oracle)."""
import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from oracle import ExactSynthesizer, backprop_reference, make_blocks
from synthgrad import DecoupledSequential, LinearSynthesizer, MLPSynthesizer, block_parameters, synthesizer_parameters


def batch(size=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 12, generator=generator), torch.randint(0, 5, (size,), generator=generator)


def talking_synthesizers(seed: int, std: float) -> list[LinearSynthesizer]:
    """Synthesizers for the three cuts of ``make_blocks`` whose output layer is random, not zero."""
    torch.manual_seed(seed)
    synthesizers = [LinearSynthesizer(16), LinearSynthesizer(16), LinearSynthesizer(8)]
    for synthesizer in synthesizers:
        nn.init.normal_(synthesizer.net[-1].weight, std=std)
    return synthesizers


def test_exact_synthesizers_give_backprop_parameter_gradients():
    x, y = batch()
    blocks = make_blocks()
    reference, grads = backprop_reference(blocks, x, y)
    model = DecoupledSequential(copy.deepcopy(blocks), [ExactSynthesizer(g) for g in grads])
    nn.functional.cross_entropy(model(x), y).backward()
    for ours, theirs in zip(model.blocks.parameters(), reference.parameters()):
        assert_close(ours.grad, theirs.grad)


def test_exact_synthesizers_give_backprop_updates():
    x, y = batch(9, seed=1)
    blocks = make_blocks(1)
    reference, grads = backprop_reference(blocks, x, y)
    torch.optim.SGD(reference.parameters(), lr=0.1).step()
    model = DecoupledSequential(copy.deepcopy(blocks), [ExactSynthesizer(g) for g in grads])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    for ours, theirs in zip(model.blocks.parameters(), reference.parameters()):
        assert_close(ours, theirs)


def test_zero_initialised_synthesizers_leave_lower_blocks_unchanged_at_step_zero():
    x, y = batch()
    blocks = make_blocks()
    before = copy.deepcopy(blocks)
    model = DecoupledSequential(blocks, [MLPSynthesizer(16, hidden_dim=32), MLPSynthesizer(16, hidden_dim=32),
                                         MLPSynthesizer(8, hidden_dim=32)])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    for block, original in zip(model.blocks[:-1], before[:-1]):
        for ours, theirs in zip(block.parameters(), original.parameters()):
            assert_close(ours, theirs, rtol=0, atol=0)
    assert not torch.equal(model.blocks[-1].weight, before[-1].weight)  # the top block learns from the loss


def test_pass_target_grad_is_backprop_whatever_the_synthesizers_say():
    x, y = batch()
    blocks = make_blocks()
    reference, _ = backprop_reference(blocks, x, y)
    model = DecoupledSequential(copy.deepcopy(blocks), talking_synthesizers(seed=3, std=1.0), pass_target_grad=True)
    nn.functional.cross_entropy(model(x), y).backward()
    for ours, theirs in zip(model.blocks.parameters(), reference.parameters()):
        assert_close(ours.grad, theirs.grad)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in synthesizer_parameters(model))


def test_targets_are_true_at_the_top_and_bootstrapped_below():
    x, y = batch()
    blocks = make_blocks()
    _, true_grads = backprop_reference(blocks, x, y)
    model = DecoupledSequential(copy.deepcopy(blocks), talking_synthesizers(seed=4, std=0.3))
    seen = {}
    for cut, interface in model.interfaces.items():
        interface.register_gradient_hook(lambda s, t, cut=cut: seen.setdefault(int(cut), (s, t)))
    nn.functional.cross_entropy(model(x), y).backward()

    assert_close(seen[2][1], true_grads[2] * len(x))  # top cut: the true per-example gradient
    for cut in (0, 1):  # below: the next cut's synthetic gradient backpropagated through the next block
        h = blocks[cut](x) if cut == 0 else blocks[1](blocks[0](x))
        h = h.detach().requires_grad_()
        next_block = copy.deepcopy(model.blocks[cut + 1])
        (bootstrapped,) = torch.autograd.grad(next_block(h), h, grad_outputs=seen[cut + 1][0])
        assert_close(seen[cut][1], bootstrapped)


def test_uncut_boundaries_backpropagate_and_all_none_is_plain_backprop():
    x, y = batch()
    blocks = make_blocks()
    reference, _ = backprop_reference(blocks, x, y)
    model = DecoupledSequential(copy.deepcopy(blocks), [None, None, None])
    assert len(model.interfaces) == 0
    nn.functional.cross_entropy(model(x), y).backward()
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert_close(ours.grad, theirs.grad)


def test_parameters_split_into_blocks_and_synthesizers():
    model = DecoupledSequential(make_blocks(), [LinearSynthesizer(16), None, LinearSynthesizer(8)])
    synth = {id(p) for p in synthesizer_parameters(model)}
    blocks = {id(p) for p in block_parameters(model)}
    assert synth and blocks and not synth & blocks
    assert synth | blocks == {id(p) for p in model.parameters()}
    assert synth == {id(p) for i in ("0", "2") for p in model.interfaces[i].synthesizer.parameters()}


def test_wrong_number_of_synthesizers_is_a_clear_error():
    with pytest.raises(ValueError, match="4 blocks have 3 cuts between them, but 2 synthesizers"):
        DecoupledSequential(make_blocks(), [None, None])
    with pytest.raises(ValueError, match="at least one block"):
        DecoupledSequential([], [])


def test_decoupled_parameters_are_the_blocks_below_the_top_cut():
    model = DecoupledSequential(make_blocks(), [LinearSynthesizer(16), None, None])
    assert [id(p) for p in model.decoupled_parameters()] == [id(p) for p in model.blocks[0].parameters()]
    model = DecoupledSequential(make_blocks(), [None, LinearSynthesizer(16), None])  # block 0 learns through block 1
    assert [id(p) for p in model.decoupled_parameters()] == [id(p) for b in model.blocks[:2] for p in b.parameters()]
    assert list(DecoupledSequential(make_blocks(), [None, None, None]).decoupled_parameters()) == []


# ---------------------------------------------------------------- forward unlock (complete unlock)


class _ExactInput(nn.Module):
    """An input synthesizer that computes the real activation: a copy of the blocks below."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.Sequential(*copy.deepcopy(blocks))

    def forward(self, network_input):
        return self.blocks(network_input)


def test_exact_input_synthesizers_change_nothing_but_train_on_zero_error():
    x, y = batch(8, seed=2)
    blocks = [block.eval() for block in make_blocks(2)]
    # blocks in eval mode: BatchNorm uses running statistics, so the copies inside _ExactInput compute the
    # same function as the blocks they copy; the interfaces stay in training mode to do their work
    plain = DecoupledSequential(copy.deepcopy(blocks), talking_synthesizers(3, std=0.1))
    unlocked = DecoupledSequential(copy.deepcopy(blocks), talking_synthesizers(3, std=0.1),
                                   input_synthesizers=[_ExactInput(blocks[:1]), None, _ExactInput(blocks[:3])])
    for model in (plain, unlocked):
        for block in model.blocks:
            block.eval()
        for interface in model.interfaces.values():
            interface.train()
        nn.functional.cross_entropy(model(x), y).backward()
    for ours, theirs in zip(unlocked.blocks.parameters(), plain.blocks.parameters()):
        assert_close(ours.grad, theirs.grad)
    for ours, theirs in zip(unlocked.interfaces.parameters(), plain.interfaces.parameters()):
        assert_close(ours.grad, theirs.grad)  # the cuts' targets arrive through the synthetic inputs
    for parameter in unlocked.forward_unlocks.parameters():
        assert_close(parameter.grad, torch.zeros_like(parameter))  # exact predictions: nothing to learn


def test_blocks_run_on_the_synthetic_input_in_training_and_on_the_real_one_in_eval():
    x, y = batch()
    blocks = make_blocks()
    predictor = nn.Linear(12, 16)
    model = DecoupledSequential(blocks, [None, None, None], input_synthesizers=[predictor, None, None])
    logits = model(x)
    assert_close(logits, nn.Sequential(*blocks[1:])(predictor(x)))
    nn.functional.cross_entropy(logits, y).backward()
    assert blocks[0][0].weight.grad is not None  # the block below learns from the gradient at the prediction
    model.eval()
    with torch.no_grad():
        assert_close(model(x), nn.Sequential(*blocks)(x))


def test_wrong_number_of_input_synthesizers_is_a_clear_error():
    with pytest.raises(ValueError, match="4 blocks have 3 inputs that can be predicted, but 1 input synthesizers"):
        DecoupledSequential(make_blocks(), [None, None, None], input_synthesizers=[None])
