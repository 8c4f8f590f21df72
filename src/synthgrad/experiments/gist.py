"""The seed experiment, done right: the well-known NumPy gist's 2-layer MNIST network, with its
synthesizer predicting dL/dh of the hidden activation instead of the gradients of the weights.

Network and schedule follow the gist: 784-100-10 with ReLU on the hidden layer, batch 10, 1000
iterations of SGD at lr 2e-2, one linear synthesizer on the hidden activation; test accuracy every
500 iterations and the smoothed loss every 100; a checkpoint every 100, so that a run can be resumed.
``synth_every`` and ``synth_lr`` expose the gist's knobs (it updated the synthesizer every 10th step at
lr 1e-4), so that their effect can be seen.
"""
from __future__ import annotations

from torch import nn

from synthgrad.decoupled import DecoupledSequential
from synthgrad.errors import InvalidConfig
from synthgrad.experiments.classifier_config import NUM_CLASSES, ClassifierConfig, classifier_config
from synthgrad.experiments.image_models import METHODS
from synthgrad.synthesizers import LinearSynthesizer

HIDDEN_DIM = 100
GIST_MODEL = "gist"
"""``ClassifierConfig.model`` of a gist run."""


def gist_config(method: str = "dni", **overrides: object) -> ClassifierConfig:
    """The gist's network and optimisation settings (a constant learning rate, as it had), with
    ``overrides`` of any ``ClassifierConfig`` or ``TrainConfig`` field (see ``classifier_config``)."""
    settings = dict(steps=1000, batch_size=10, lr=2e-2, synth_lr=3e-3, optimizer="sgd",
                    lr_schedule="constant", synth_every=1, eval_every=500, log_every=1, stats_every=1,
                    checkpoint_every=100, threads=1)  # batches of 10 through a 784-100-10 net
    settings.update(overrides)
    return classifier_config(dataset="mnist", model=GIST_MODEL, method=method, layers=1, width=HIDDEN_DIM,
                             synth_layers=0, synth_width=HIDDEN_DIM, **settings)


def build_gist_model(config: ClassifierConfig, *, in_features: int = 784) -> DecoupledSequential:
    """784-100-10 with ReLU and one cut on the hidden activation: a linear synthesizer (``dni``), one
    conditioned on the one-hot label (``cdni``), or no cut at all (``backprop``, the reference)."""
    method, num_classes = config.method, NUM_CLASSES
    if method not in METHODS:
        raise InvalidConfig(f"{{0}} must be one of {', '.join(METHODS)}, got {method!r}", "method")
    blocks = [nn.Sequential(nn.Flatten(), nn.Linear(in_features, HIDDEN_DIM), nn.ReLU()),
              nn.Linear(HIDDEN_DIM, num_classes)]
    synthesizer = (None if method == "backprop"
                   else LinearSynthesizer(HIDDEN_DIM, context_dim=num_classes if method == "cdni" else 0))
    return DecoupledSequential(blocks, [synthesizer])
