"""Character-level language modelling (DNI paper, arXiv 1608.05343, section 3.1) as a task of the engine:
``batch_size`` contiguous streams of the training text, a window of ``window`` characters of each per step,
the LSTM's state carried from window to window (and each window's last boundary trained by the next), so
that a synthesizer predicts gradients from beyond the window as well as between its chunks.

Records at every evaluation: ``train/bpc``, ``val/bpc`` (validation bits per character), ``chars_seen``,
``state/norm`` (the carried state's drift), and with a synthesizer ``sg/loss/state``, ``sg/cos/state``,
``aux/loss`` for DNI+Aux.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
from torch import Tensor, nn

from synthgrad.data.text import CharCorpus, stream_batches
from synthgrad.engine import StepResult
from synthgrad.errors import InvalidConfig
from synthgrad.experiments.recurrent_task import LN2, RecurrentTask, next_chunk_context, window_metrics
from synthgrad.experiments.rnn_config import RNNConfig
from synthgrad.recurrent import LSTMCore


def validation_bpc(core: LSTMCore, corpus: CharCorpus, *, batch_size: int, max_chars: int = 0) -> float:
    """Bits per character of ``core`` on the validation tail (its first ``max_chars``; 0: all), read as
    ``batch_size`` contiguous streams from a zero state."""
    data = corpus.validation[:max_chars] if max_chars else corpus.validation
    device = next(core.parameters()).device
    streams = stream_batches(data, min(batch_size, max(1, (len(data) - 1) // 2))).to(device)
    inputs = nn.functional.one_hot(streams[:, :-1], corpus.vocab_size).float()
    training = core.training
    core.eval()  # no dropout
    try:
        with torch.no_grad():
            outputs, _ = core(inputs, core.initial_state(streams.shape[0], device=device))
            loss = nn.functional.cross_entropy(outputs.reshape(-1, corpus.vocab_size), streams[:, 1:].reshape(-1))
    finally:
        core.train(training)
    return loss.item() / LN2


class CharLMTask(RecurrentTask):
    """The language model of ``corpus`` for the engine. Its state (checkpointed): the state carried into the
    next window, the position in the streams, the characters seen and the validation results so far. At the
    end of the streams every stream starts again from the zero state."""

    progress_keys = ("val/bpc",)

    def __init__(self, config: RNNConfig, corpus: CharCorpus) -> None:
        super().__init__(config, corpus.vocab_size, corpus.vocab_size)
        self.corpus, self.vocab_size = corpus, corpus.vocab_size
        self.streams = stream_batches(corpus.train, config.batch_size).to(self.device)  # (B, C)
        if self.streams.shape[1] <= config.window:
            raise InvalidConfig(f"the training text gives {config.batch_size} streams of {self.streams.shape[1]} "
                                f"characters, not more than the {{0}} {config.window}; choose a smaller {{0}} or "
                                "{1}", "window", "batch_size")
        self.state: Optional[Tensor] = None  # (B, state_dim), detached
        self.position, self.chars_seen = 0, 0
        self.val_bpc = self.best_val_bpc = math.inf

    def train_step(self, step: int) -> StepResult:
        config, vocab = self.config, self.vocab_size
        if self.position + config.window + 1 > self.streams.shape[1]:
            self.state, self.position = None, 0  # a new epoch starts every stream from the zero state
        conditioned = config.method == "cdni"
        # (B, W + 1), and for cDNI the chunk after the window too (fewer at the end of the streams)
        window = self.streams[:, self.position:self.position + config.window + 1
                              + (config.truncation if conditioned else 0)]
        inputs = nn.functional.one_hot(window[:, :-1], vocab).float()
        context = (next_chunk_context(inputs, nn.functional.one_hot(window[:, 1:], vocab).float(),
                                      config.truncation) if conditioned else None)

        def chunk_loss(outputs: Tensor, start: int, stop: int) -> Tensor:
            return nn.functional.cross_entropy(outputs.reshape(-1, vocab), window[:, start + 1:stop + 1].reshape(-1),
                                               reduction="sum") / config.batch_size

        result = self.backward_window(inputs[:, :config.window], chunk_loss, state=self.state, sequence_ends=False,
                                      train_entering_state=self.state is not None, boundary_context=context)
        self.state, self.position = result.state, self.position + config.window
        self.chars_seen += config.batch_size * config.window
        return StepResult(torch.tensor(result.loss),
                          {"train/bpc": result.loss / config.window / LN2, **window_metrics(result)})

    def end_interval(self) -> dict[str, float]:
        record: dict[str, float] = {"chars_seen": self.chars_seen}
        if self.state is not None:
            record["state/norm"] = self.state.norm(dim=1).mean().item()
        return record

    def evaluate(self) -> dict[str, float]:
        self.val_bpc = validation_bpc(self.model.core, self.corpus, batch_size=self.config.batch_size,
                                      max_chars=self.config.eval_chars)
        self.best_val_bpc = min(self.best_val_bpc, self.val_bpc)
        return {"val/bpc": self.val_bpc}

    def summary(self, last_record: Mapping[str, Any]) -> dict[str, Any]:
        return {"val_bpc": self.val_bpc, "best_val_bpc": self.best_val_bpc, "chars_seen": self.chars_seen,
                **self.run_info()}

    def state_dict(self) -> dict[str, Any]:
        return {"state": None if self.state is None else self.state.cpu(), "position": self.position,
                "chars_seen": self.chars_seen, "val_bpc": self.val_bpc, "best_val_bpc": self.best_val_bpc}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.state = None if state["state"] is None else state["state"].to(self.device)
        self.position, self.chars_seen = state["position"], state["chars_seen"]
        self.val_bpc, self.best_val_bpc = state["val_bpc"], state["best_val_bpc"]
