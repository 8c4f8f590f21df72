"""Shared fixtures for gradient oracle tests: a small network and its true per-block output gradients."""
import copy

import torch
from torch import nn

from synthgrad import Synthesizer


class ExactSynthesizer(Synthesizer):
    """Returns a precomputed true gradient at per-example scale: the ideal synthesizer."""

    def __init__(self, grad: torch.Tensor) -> None:
        super().__init__()
        self.grad = grad

    def forward(self, activation, context=None):
        return self.grad * activation.shape[0]


def make_blocks(seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [
        nn.Sequential(nn.Linear(12, 16), nn.Tanh()),
        nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU()),
        nn.Sequential(nn.Linear(16, 8), nn.Tanh()),
        nn.Linear(8, 5),
    ]


def backprop_reference(blocks, x, y):
    """Plain autograd through a deep copy of ``blocks``: the copy (with .grad filled) and dL/dh at the
    output of every block but the last."""
    reference = nn.Sequential(*copy.deepcopy(blocks))
    outputs, h = [], x
    for block in reference:
        h = block(h)
        h.retain_grad()
        outputs.append(h)
    nn.functional.cross_entropy(h, y).backward()
    return reference, [output.grad.detach().clone() for output in outputs[:-1]]
