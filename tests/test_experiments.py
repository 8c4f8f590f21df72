"""The image-classifier experiments: the paper's Table 1 presets, its methods, and complete unlock."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from training import train_classifier

from synthgrad import (
    ConvSynthesizer,
    InvalidConfig,
    LinearSynthesizer,
    MLPSynthesizer,
    Split,
    block_parameters,
    synthesizer_loss,
)
from synthgrad.experiments.classifier_config import ClassifierConfig, build_model
from synthgrad.experiments.image_models import CNN_PRESETS, FCN_PRESETS, METHODS

SHAPES = {"mnist": (1, 28, 28), "cifar-10": (3, 32, 32)}


def _cut_shapes(model: nn.Module, inputs: torch.Tensor) -> list[tuple[int, ...]]:
    shapes = []
    handles = [model.blocks[int(name)].register_forward_hook(lambda m, i, output: shapes.append(tuple(output.shape[1:])))
               for name in model.interfaces]
    model(inputs, torch.eye(10)[: len(inputs)]) if model.interfaces["0"].synthesizer.use_context else model(inputs)
    for handle in handles:
        handle.remove()
    return shapes


@pytest.mark.parametrize("dataset", SHAPES)
@pytest.mark.parametrize("model_name", FCN_PRESETS)
def test_fcn_presets_count_the_output_layer_and_use_the_papers_synthesizers(dataset, model_name):
    inputs = torch.randn(4, *SHAPES[dataset])
    depth = int(model_name[3:])
    dni = build_model(ClassifierConfig(dataset=dataset, model=model_name, method="dni"))
    assert len(dni.blocks) == depth and len(dni.interfaces) == depth - 1
    assert dni.blocks[0][1].in_features == inputs[0].numel()
    assert _cut_shapes(dni, inputs) == [(256,)] * (depth - 1)
    synthesizer = dni.interfaces["0"].synthesizer
    assert isinstance(synthesizer, MLPSynthesizer)
    assert [layer.out_features for layer in synthesizer.net if isinstance(layer, nn.Linear)] == [1024, 1024, 256]
    cdni = build_model(ClassifierConfig(dataset=dataset, model=model_name, method="cdni", synth_rank=None))
    assert isinstance(cdni.interfaces["0"].synthesizer, LinearSynthesizer)
    assert cdni.interfaces["0"].synthesizer.net[0].in_features == 256 + 10  # [activation, one-hot label]
    assert cdni(inputs, torch.eye(10)[:4]).shape == (4, 10)


@pytest.mark.parametrize("dataset, sizes", [("mnist", (14, 7, 4)), ("cifar-10", (16, 8, 4))])
@pytest.mark.parametrize("model_name", CNN_PRESETS)
def test_cnn_presets_pool_as_the_paper_does_and_have_conv_synthesizers(dataset, sizes, model_name):
    inputs = torch.randn(2, *SHAPES[dataset])
    conv_layers = CNN_PRESETS[model_name]
    model = build_model(ClassifierConfig(dataset=dataset, model=model_name, method="cdni"))
    assert _cut_shapes(model, inputs) == [(128, size, size) for size in sizes[:conv_layers]]
    pools = [type(block[3]) for block in model.blocks[:-1]]
    assert pools == [nn.MaxPool2d] + [nn.AvgPool2d] * (conv_layers - 1)
    synthesizer = model.interfaces["0"].synthesizer
    assert isinstance(synthesizer, ConvSynthesizer)
    convs = [layer for layer in synthesizer.net if isinstance(layer, nn.Conv2d)]
    assert [(conv.out_channels, conv.kernel_size) for conv in convs] == [(128, (5, 5))] * 3
    assert all(torch.count_nonzero(conv.weight) == 0 for conv in convs[-1:])  # output layer starts at zero
    assert model(inputs, torch.eye(10)[:2]).shape == (2, 10)


def _tiny_mnist_like(count: int = 256) -> tuple[Split, Split]:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(count, 1, 28, 28, generator=generator)
    labels = (inputs.flatten(1)[:, :10].argmax(dim=1))  # learnable from the first pixels
    return Split(inputs[: count * 3 // 4], labels[: count * 3 // 4]), Split(inputs[count * 3 // 4:], labels[count * 3 // 4:])


@pytest.mark.parametrize("method", METHODS)
def test_no_backprop_trains_only_the_output_layer(method, tmp_path):
    torch.manual_seed(0)
    model = build_model(ClassifierConfig(model="fcn4", method=method))
    before = [block.state_dict() for block in model.blocks]
    before = [{key: value.clone() for key, value in state.items()} for state in before]
    train_split, test_split = _tiny_mnist_like()
    train_classifier(model, train_split, test_split,
                     dict(steps=5, batch_size=32, use_context=method == "cdni", progress=False), tmp_path)
    changed = [any(not torch.equal(param, before[index][name]) for name, param in block.named_parameters())
               for index, block in enumerate(model.blocks)]
    if method == "no-backprop":
        assert changed == [False, False, False, True]
    elif method == "backprop":
        assert all(changed)
    else:  # decoupled: the zero-initialised synthesizers must first learn before lower blocks move
        assert changed[-1]


def test_forward_synthesizers_reduce_their_regression_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_model(ClassifierConfig(model="fcn3", method="cdni", forward_unlock=True))
    inputs, labels = _tiny_mnist_like(64)[0]
    context = nn.functional.one_hot(labels, 10).float()
    optimizer = torch.optim.Adam(model.forward_unlocks.parameters(), lr=1e-3)
    losses = []
    observed = []
    for interface in model.forward_unlocks.values():
        interface.register_gradient_hook(lambda predicted, real: observed.append(synthesizer_loss(predicted, real)))
    for _ in range(30):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs, context), labels).backward()
        losses.append(torch.stack(observed[-2:]).tolist())  # one per forward unlock
        optimizer.step()
    for first, last in zip(losses[0], losses[-1]):
        assert last < 0.5 * first


def test_forward_unlock_is_only_for_fully_connected_models():
    with pytest.raises(InvalidConfig, match="forward_unlock is available for the fully connected models"):
        build_model(ClassifierConfig(model="cnn3", forward_unlock=True))


def test_no_backprop_has_no_synthesizers_and_frozen_lower_blocks():
    model = build_model(ClassifierConfig(model="fcn3", method="no-backprop"))
    assert len(model.interfaces) == 0
    assert [param.requires_grad for param in block_parameters(model)] == [False] * 8 + [True] * 2  # 2 x (Linear, BatchNorm) frozen
