"""Synthesizers: the contract, zero-initialised outputs, context handling, and that they learn."""
import pytest
import torch
from torch import nn

from synthgrad import ConvSynthesizer, LinearSynthesizer, MLPSynthesizer, synthesizer_loss

ALL = [
    lambda ctx: LinearSynthesizer(6, context_dim=ctx),
    lambda ctx: LinearSynthesizer(6, context_dim=ctx, rank=2),
    lambda ctx: MLPSynthesizer(6, hidden_dim=16, num_hidden_layers=2, context_dim=ctx, batch_norm=True),
]


@pytest.mark.parametrize("make", ALL)
@pytest.mark.parametrize("context_dim", [0, 3])
def test_mlp_synthesizers_start_at_zero_with_the_activation_shape(make, context_dim):
    synthesizer = make(context_dim)
    activation = torch.randn(5, 6)
    context = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1])] if context_dim else None
    out = synthesizer(activation, context)
    assert out.shape == activation.shape
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("context_dim", [0, 10])
def test_conv_synthesizer_preserves_shape_and_starts_at_zero(context_dim):
    synthesizer = ConvSynthesizer(4, hidden_channels=8, num_hidden_layers=2, context_dim=context_dim,
                                  spatial_size=(7, 7))
    activation = torch.randn(3, 4, 7, 7)
    context = torch.eye(10)[:3] if context_dim else None
    out = synthesizer(activation, context)
    assert out.shape == activation.shape
    assert torch.count_nonzero(out) == 0


def test_cdni_output_depends_on_the_label():
    torch.manual_seed(0)
    for synthesizer, activation in ((LinearSynthesizer(6, context_dim=3), torch.randn(1, 6)),
                                    (ConvSynthesizer(2, hidden_channels=4, context_dim=3, spatial_size=(5, 5)),
                                     torch.randn(1, 2, 5, 5))):
        for module in synthesizer.modules():  # leave the zero init so the output can depend on anything
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(module.weight)
        synthesizer.eval()
        outputs = [synthesizer(activation, torch.eye(3)[[label]]) for label in range(3)]
        assert not torch.allclose(outputs[0], outputs[1])
        assert not torch.allclose(outputs[1], outputs[2])


@pytest.mark.parametrize("make", [
    lambda: LinearSynthesizer(6, context_dim=3),
    lambda: LinearSynthesizer(6, context_dim=3, rank=6),
    lambda: MLPSynthesizer(6, hidden_dim=32, num_hidden_layers=1, context_dim=3),
])
def test_synthesizer_loss_falls_on_a_fixed_batch(make):
    torch.manual_seed(0)
    synthesizer = make()
    activation, context = torch.randn(32, 6), torch.eye(3)[torch.randint(0, 3, (32,))]
    target = activation @ torch.randn(6, 6) + context @ torch.randn(3, 6)  # a linear function of the inputs
    optimizer = torch.optim.Adam(synthesizer.parameters(), lr=0.05)
    losses = []
    for _ in range(200):
        loss = synthesizer_loss(synthesizer(activation, context), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0]


def test_context_mistakes_are_clear_errors():
    with pytest.raises(ValueError, match="called without a context; pass the one-hot labels"):
        LinearSynthesizer(4, context_dim=2)(torch.randn(3, 4))
    with pytest.raises(ValueError, match="built without a context but was given one"):
        LinearSynthesizer(4)(torch.randn(3, 4), torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"context has shape \(3, 5\), expected \(3, 2\)"):
        LinearSynthesizer(4, context_dim=2)(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"needs spatial_size=\(H, W\)"):
        ConvSynthesizer(4, context_dim=2)
    with pytest.raises(ValueError, match=r"built for feature maps \(4, 5, 5\)"):
        ConvSynthesizer(4, context_dim=2, spatial_size=(5, 5))(torch.randn(3, 4, 6, 6), torch.eye(2)[[0, 1, 0]])
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        ConvSynthesizer(4, kernel_size=4)
    with pytest.raises(ValueError, match="rank must be positive"):
        LinearSynthesizer(4, rank=0)
    with pytest.raises(ValueError, match="context_dim must be >= 0"):
        LinearSynthesizer(4, context_dim=-1)


def test_low_rank_linear_synthesizer_is_a_rank_limited_linear_map():
    torch.manual_seed(0)
    synthesizer = LinearSynthesizer(8, context_dim=2, rank=3)
    nn.init.normal_(synthesizer.net[-1].weight)
    inputs = torch.randn(20, 8)
    context = torch.eye(2)[torch.randint(0, 2, (20,))]
    out = synthesizer(inputs, context) - synthesizer(torch.zeros(20, 8), context)  # the activation's part
    assert torch.linalg.matrix_rank(out) == 3
    assert torch.allclose(synthesizer(2 * inputs, context) - synthesizer(inputs, context), out, atol=1e-5)


def test_conv_synthesizer_can_fit_a_label_dependent_pattern_that_differs_by_position():
    """The label's share of the true gradient under a linear classifier: a different map per class."""
    torch.manual_seed(0)
    patterns = torch.randn(3, 2, 4, 4)  # one (channels, H, W) target per class
    labels = torch.randint(0, 3, (64,))
    synthesizer = ConvSynthesizer(2, hidden_channels=8, num_hidden_layers=1, kernel_size=3, context_dim=3,
                                  spatial_size=(4, 4))
    optimizer = torch.optim.Adam(synthesizer.parameters(), lr=0.05)
    activation, context = torch.zeros(64, 2, 4, 4), torch.eye(3)[labels]
    for _ in range(200):
        loss = synthesizer_loss(synthesizer(activation, context), patterns[labels])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.01 * synthesizer_loss(torch.zeros_like(activation), patterns[labels]).item()
