"""gradient_snapshot, true_gradient_cosines and boundary_gradient_snapshot: true gradients at every cut or
chunk boundary, without touching the model."""
import copy

import pytest
import torch
from torch.testing import assert_close

from oracle import backprop_reference, make_blocks
from synthgrad import DecoupledSequential, LinearSynthesizer
from synthgrad.functional import gradient_cosine
from synthgrad.probe import boundary_gradient_snapshot, gradient_snapshot, true_gradient_cosines
from synthgrad.recurrent import LSTMCore


def test_snapshot_gives_true_gradients_and_leaves_the_model_alone():
    x, y = torch.randn(6, 12), torch.randint(0, 5, (6,))
    blocks = make_blocks()
    _, true_grads = backprop_reference(blocks, x, y)
    model = DecoupledSequential(copy.deepcopy(blocks), [LinearSynthesizer(16), LinearSynthesizer(16), LinearSynthesizer(8)])
    state = copy.deepcopy(model.state_dict())
    pairs = gradient_snapshot(model, x, y)
    assert list(pairs) == ["0", "1", "2"]
    for (synthetic, true), expected in zip(pairs.values(), true_grads):
        assert_close(true, expected * len(x))
        assert torch.count_nonzero(synthetic) == 0  # zero-initialised synthesizers
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_boundary_snapshot_gives_the_true_future_gradient_at_every_boundary():
    torch.manual_seed(0)
    core = LSTMCore(3, 5, 2)
    synthesizer = LinearSynthesizer(core.state_dim, context_dim=4)
    torch.nn.init.normal_(synthesizer.net[-1].weight)  # not the zero start: the prediction must be checked
    inputs, targets = torch.randn(4, 7, 3), torch.randn(4, 7, 2)
    contexts = {step: torch.randn(4, 4) for step in (3, 6)}

    def chunk_loss(outputs, start, stop):
        return ((outputs - targets[:, start:stop]) ** 2).sum() / len(outputs)

    snapshot = boundary_gradient_snapshot(core, inputs, chunk_loss, 3, synthesizer, boundary_context=contexts.get)
    assert [step for step, _, _ in snapshot] == [3, 6]
    for step, synthetic, true in snapshot:
        _, state = core(inputs[:, :step], core.initial_state(4))
        entering = state.detach().requires_grad_()
        outputs, _ = core(inputs[:, step:], entering)
        chunk_loss(outputs, step, 7).backward()  # the loss of every step after the boundary, from a leaf there
        assert_close(true, entering.grad * 4)
        assert_close(synthetic, synthesizer(state, contexts[step]))
    core.zero_grad(set_to_none=True)
    boundary_gradient_snapshot(core, inputs, chunk_loss, 3, synthesizer, boundary_context=contexts.get)
    assert all(p.grad is None for p in [*core.parameters(), *synthesizer.parameters()])  # autograd.grad only


def test_true_gradient_cosines_compare_every_cut_with_backprop():
    x, y = torch.randn(6, 12), torch.randint(0, 5, (6,))
    blocks = make_blocks()
    _, true_grads = backprop_reference(blocks, x, y)
    synthesizers = [LinearSynthesizer(16), LinearSynthesizer(16), LinearSynthesizer(8)]
    for synthesizer in synthesizers:
        torch.nn.init.normal_(synthesizer.net[-1].weight)  # a nonzero prediction, so the cosine means something
    model = DecoupledSequential(copy.deepcopy(blocks), synthesizers)
    expected, h = {}, x
    with torch.no_grad():
        for cut, (block, synthesizer, true) in enumerate(zip(copy.deepcopy(blocks), synthesizers, true_grads)):
            h = block.train()(h)
            expected[f"sg/cos_true/{cut}"] = gradient_cosine(synthesizer(h), true).item()
    assert true_gradient_cosines(model, x, y) == pytest.approx(expected)
    assert true_gradient_cosines(torch.nn.Sequential(*blocks), x, y) == {}  # no cuts, nothing to compare
