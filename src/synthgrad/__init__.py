"""synthgrad: Decoupled Neural Interfaces using Synthetic Gradients (Jaderberg et al., arXiv 1608.05343)."""
from importlib.metadata import PackageNotFoundError, version

from synthgrad.decoupled import DecoupledSequential
from synthgrad.engine import ClassificationTask, Split, StepResult, Task, TrainConfig, train
from synthgrad.errors import (
    DatasetError,
    InvalidConfig,
    PipelineFailure,
    SynthgradError,
    TrainingDiverged,
    TrainingInterrupted,
)
from synthgrad.functional import synthesizer_loss, synthetic_gradient, synthetic_input
from synthgrad.interfaces import BackwardInterface, ForwardInterface, block_parameters, synthesizer_parameters
from synthgrad.recurrent import LSTMCore, SquashedCellInput, backward_through_chunks
from synthgrad.synthesizers import ConvSynthesizer, InputSynthesizer, LinearSynthesizer, MLPSynthesizer, Synthesizer

try:
    __version__ = version("synthgrad")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "BackwardInterface",
    "ClassificationTask",
    "ConvSynthesizer",
    "DatasetError",
    "DecoupledSequential",
    "ForwardInterface",
    "InputSynthesizer",
    "InvalidConfig",
    "LSTMCore",
    "LinearSynthesizer",
    "MLPSynthesizer",
    "PipelineFailure",
    "Split",
    "SquashedCellInput",
    "StepResult",
    "Synthesizer",
    "SynthgradError",
    "Task",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "backward_through_chunks",
    "block_parameters",
    "synthesizer_loss",
    "synthesizer_parameters",
    "synthetic_gradient",
    "synthetic_input",
    "train",
]
