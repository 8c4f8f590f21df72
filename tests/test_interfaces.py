"""BackwardInterface inside a user's own model: identity in eval, decoupling in training."""
import copy

import torch
from torch import nn
from torch.testing import assert_close

from synthgrad import BackwardInterface, LinearSynthesizer, synthesizer_parameters
from synthgrad.interfaces import backward_interfaces


class UserModel(nn.Module):
    """A model written by a user, with one cut placed by hand inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(10, 12), nn.ReLU())
        self.cut = BackwardInterface(LinearSynthesizer(12, context_dim=4))
        self.head = nn.Linear(12, 4)

    def forward(self, x, labels=None):
        h = self.encoder(x)
        context = nn.functional.one_hot(labels, 4).float() if labels is not None else None
        return self.head(self.cut(h, context))


def test_interface_is_exact_identity_in_eval_mode_and_under_no_grad():
    model = UserModel()
    for module in model.cut.synthesizer.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight)
    x = torch.randn(5, 10)
    reference = model.head(model.encoder(x))
    model.eval()
    assert torch.equal(model(x), reference)  # no context needed in eval
    model.train()
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_ordinary_training_loop_with_a_hand_placed_cut():
    torch.manual_seed(0)
    model = UserModel()
    x, y = torch.randn(64, 10), torch.randint(0, 4, (64,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    encoder_before = copy.deepcopy(model.encoder)
    synth_before = copy.deepcopy(model.cut.synthesizer)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x, y), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.equal(model.cut.synthesizer.net[0].weight, synth_before.net[0].weight)
    assert not torch.equal(model.encoder[0].weight, encoder_before[0].weight)  # learnt from synthetic gradients
    assert backward_interfaces(model) == [model.cut]
    assert len(list(synthesizer_parameters(model))) == 2


def test_encoder_receives_only_the_synthetic_gradient():
    torch.manual_seed(1)
    model = UserModel()
    nn.init.normal_(model.cut.synthesizer.net[0].weight)
    x, y = torch.randn(8, 10), torch.randint(0, 4, (8,))
    nn.functional.cross_entropy(model(x, y), y).backward()
    h = model.encoder(x).detach()
    synthetic = model.cut.synthesizer(h, nn.functional.one_hot(y, 4).float()).detach()
    expected = copy.deepcopy(model.encoder)
    expected.zero_grad()
    expected(x).backward(synthetic / 8)
    assert_close(model.encoder[0].weight.grad, expected[0].weight.grad)


def test_gradient_hooks_are_called_and_removable():
    model = UserModel()
    calls = []
    handle = model.cut.register_gradient_hook(lambda s, t: calls.append(t.shape))
    x, y = torch.randn(3, 10), torch.randint(0, 4, (3,))
    nn.functional.cross_entropy(model(x, y), y).backward()
    assert calls == [torch.Size([3, 12])]
    handle.remove()
    nn.functional.cross_entropy(model(x, y), y).backward()
    assert len(calls) == 1
