"""synthgrad: Decoupled Neural Interfaces using Synthetic Gradients (Jaderberg et al., arXiv 1608.05343)."""
from importlib.metadata import PackageNotFoundError, version

from synthgrad.decoupled import DecoupledSequential
from synthgrad.errors import SynthgradError
from synthgrad.functional import gradient_cosine, synthesizer_loss, synthetic_gradient, synthetic_input
from synthgrad.interfaces import (
    BackwardInterface,
    ForwardInterface,
    backward_interfaces,
    block_parameters,
    named_backward_interfaces,
    named_forward_interfaces,
    synthesizer_parameters,
)
from synthgrad.recurrent import LSTMCore, SquashedCellInput, backward_through_chunks
from synthgrad.synthesizers import (
    ConvSynthesizer,
    InputSynthesizer,
    LinearSynthesizer,
    MLPSynthesizer,
    Synthesizer,
)

try:
    __version__ = version("synthgrad")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BackwardInterface",
    "ConvSynthesizer",
    "DecoupledSequential",
    "ForwardInterface",
    "InputSynthesizer",
    "LSTMCore",
    "LinearSynthesizer",
    "MLPSynthesizer",
    "SquashedCellInput",
    "Synthesizer",
    "SynthgradError",
    "backward_interfaces",
    "backward_through_chunks",
    "block_parameters",
    "gradient_cosine",
    "named_backward_interfaces",
    "named_forward_interfaces",
    "synthesizer_loss",
    "synthesizer_parameters",
    "synthetic_gradient",
    "synthetic_input",
]
