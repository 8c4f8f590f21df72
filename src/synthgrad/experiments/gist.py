"""The seed experiment, done right: the well-known NumPy gist's 2-layer MNIST network, with its
synthesizer predicting dL/dh of the hidden activation instead of the gradients of the weights.

Network and schedule follow the gist: 784-100-10 with ReLU on the hidden layer, batch 10, 1000
iterations of SGD at lr 2e-2, one linear synthesizer on the hidden activation; test accuracy every
500 iterations and the smoothed loss every 100. ``synth_every`` and ``synth_lr`` expose the gist's
knobs (it updated the synthesizer every 10th step at lr 1e-4), so their effect can be seen.
"""
from __future__ import annotations

from torch import nn

from synthgrad.decoupled import DecoupledSequential
from synthgrad.synthesizers import LinearSynthesizer
from synthgrad.trainer import TrainConfig

HIDDEN_DIM = 100


def gist_train_config(**overrides: object) -> TrainConfig:
    """The gist's optimisation settings (with a constant learning rate, as it had), then ``overrides``."""
    settings = dict(steps=1000, batch_size=10, lr=2e-2, synth_lr=3e-3, optimizer="sgd",
                    lr_schedule="constant", synth_every=1, eval_every=500, log_every=1)
    settings.update(overrides)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def build_gist_model(*, use_context: bool, in_features: int = 784, num_classes: int = 10) -> DecoupledSequential:
    """784-100-10 with ReLU, one cut on the hidden activation with a linear synthesizer (conditioned
    on the one-hot label when ``use_context``: cDNI)."""
    blocks = [nn.Sequential(nn.Flatten(), nn.Linear(in_features, HIDDEN_DIM), nn.ReLU()),
              nn.Linear(HIDDEN_DIM, num_classes)]
    synthesizer = LinearSynthesizer(HIDDEN_DIM, context_dim=num_classes if use_context else 0)
    return DecoupledSequential(blocks, [synthesizer])
