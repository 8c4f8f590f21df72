"""The stateless core: synthesizer loss, its closed-form gradient, cosine, and the cut's backward."""
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from synthgrad import synthesizer_loss, synthetic_gradient, synthetic_input
from synthgrad.functional import gradient_cosine, synthesizer_loss_grad


def test_synthesizer_loss_is_squared_error_summed_over_features_and_averaged_over_batch():
    synthetic, target = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    expected = np.mean([np.sum((s - t) ** 2) for s, t in zip(synthetic.numpy(), target.numpy())])
    assert synthesizer_loss(synthetic, target).item() == pytest.approx(expected, rel=1e-5)


def test_closed_form_loss_gradient_equals_autograd():
    synthetic, target = torch.randn(6, 7, requires_grad=True), torch.randn(6, 7)
    (expected,) = torch.autograd.grad(synthesizer_loss(synthetic, target), synthetic)
    assert_close(synthesizer_loss_grad(synthetic.detach(), target), expected)


def test_cosine_is_over_the_whole_batch():
    synthetic, target = torch.randn(5, 4), torch.randn(5, 4)
    s, t = synthetic.numpy().ravel(), target.numpy().ravel()
    expected = s @ t / np.linalg.norm(s) / np.linalg.norm(t)
    assert gradient_cosine(synthetic, target).item() == pytest.approx(expected, rel=1e-5)
    assert gradient_cosine(synthetic, 3 * synthetic).item() == pytest.approx(1.0)
    assert gradient_cosine(synthetic, -synthetic).item() == pytest.approx(-1.0)


def test_cut_is_identity_forward_and_delivers_synthetic_gradient_at_batch_mean_scale():
    weight = torch.randn(3, 4, requires_grad=True)
    x = torch.randn(8, 3)
    activation = x @ weight  # (8, 4)
    synthetic = torch.randn(8, 4, requires_grad=True)
    out = synthetic_gradient(activation, synthetic)
    assert torch.equal(out, activation)
    upstream = torch.randn(8, 4)
    (out * upstream).sum().backward()
    # the block below sees synthetic / B, exactly as if the batch-mean loss had that gradient
    assert_close(weight.grad, x.T @ (synthetic.detach() / 8))
    # the synthesizer output is pulled towards B * (arriving gradient)
    assert_close(synthetic.grad, synthesizer_loss_grad(synthetic.detach(), upstream * 8))


def test_observers_see_synthetic_and_per_example_target():
    activation = torch.randn(4, 2, requires_grad=True)
    synthetic = torch.randn(4, 2)
    seen = []
    out = synthetic_gradient(activation, synthetic, observers=[lambda s, t: seen.append((s, t))])
    upstream = torch.randn(4, 2)
    out.backward(upstream)
    (s, t), = seen
    assert_close(s, synthetic)
    assert_close(t, upstream * 4)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"synthetic gradient has shape \(4, 3\) but the activation has \(4, 2\)"):
        synthetic_gradient(torch.randn(4, 2, requires_grad=True), torch.randn(4, 3))


# ------------------------------------------------------------------------------ synthetic input


def test_synthetic_input_returns_the_prediction_and_regresses_it_onto_the_activation():
    activation = torch.randn(5, 3, requires_grad=True)
    predicted = torch.randn(5, 3, requires_grad=True)
    seen = []
    output = synthetic_input(activation, predicted, observers=[lambda p, a: seen.append((p, a))])
    assert torch.equal(output, predicted)
    upstream = torch.randn(5, 3)
    output.backward(upstream)
    assert_close(activation.grad, upstream)  # the block above's gradient becomes the target below
    reference = predicted.detach().clone().requires_grad_()
    synthesizer_loss(reference, activation.detach()).backward()  # the oracle: autograd of the loss
    assert_close(predicted.grad, reference.grad)
    assert torch.equal(seen[0][0], predicted.detach()) and torch.equal(seen[0][1], activation.detach())


def test_synthetic_input_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"synthetic input has shape \(4, 3\) but the activation it stands for"):
        synthetic_input(torch.randn(4, 2), torch.randn(4, 3))


def test_observers_see_tensors_without_a_graph():
    """What a hook keeps (a probe's snapshot, a figure's data) must not hold the synthesizer's graph."""
    seen = []
    activation, synthetic = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    out = synthetic_gradient(activation * 1, synthetic * 1,
                             observers=[lambda prediction, target: seen.append((prediction, target))])
    out.sum().backward()
    (prediction, target), = seen
    assert not prediction.requires_grad and not target.requires_grad
    torch.testing.assert_close(target, torch.full((4, 3), 4.0))  # B * dL/dh with dL/dh = 1
