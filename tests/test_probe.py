"""gradient_snapshot: true gradients at every cut, without touching the model."""
import copy

import torch
from torch.testing import assert_close

from oracle import backprop_reference, make_blocks
from synthgrad import DecoupledSequential, LinearSynthesizer
from synthgrad.probe import gradient_snapshot


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
