"""What the engine measures over a logging interval: the means of a task's per-step metrics, and how well
every synthesizer of the model predicts its target. Both accumulate tensors where they are and synchronise
with the host once per interval, and both survive a checkpoint taken inside an interval."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from synthgrad.engine.task import Metric
from synthgrad.functional import gradient_cosine, synthesizer_loss
from synthgrad.interfaces import named_backward_interfaces, named_forward_interfaces


class IntervalMeans:
    """Means of per-step metrics over the steps that reported them. A key that no step of an interval
    reported is left out (a recurrent batch without a chunk boundary has no synthesizer loss), or is ``nan``
    when asked (every step of the interval was skipped: nothing was measured)."""

    def __init__(self) -> None:
        self._sums: dict[str, Metric] = {}
        self._counts: dict[str, int] = {}

    def add(self, metrics: Mapping[str, Metric]) -> None:
        for key, value in metrics.items():
            if not self._counts.get(key):
                self._sums[key] = value.detach().clone() if isinstance(value, Tensor) else value
            elif isinstance(value, Tensor):
                self._sums[key].add_(value.detach())  # in place: no tensor allocated per step
            else:
                self._sums[key] += value
            self._counts[key] = self._counts.get(key, 0) + 1

    def pop(self, *, missing_as_nan: bool = False) -> dict[str, float]:
        """The means since the last call (keys seen before but not since: ``nan`` if ``missing_as_nan``, else
        left out); then reset."""
        means = {key: float(self._sums[key]) / count if count else math.nan for key, count in self._counts.items()
                 if count or missing_as_nan}
        self._counts = dict.fromkeys(self._counts, 0)
        return means

    def state_dict(self) -> dict[str, Any]:
        return {"sums": {key: value.cpu() if isinstance(value, Tensor) else value for key, value in self._sums.items()},
                "counts": dict(self._counts)}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        self._sums = {key: value.to(device) if isinstance(value, Tensor) else value
                      for key, value in state["sums"].items()}
        self._counts = dict(state["counts"])


class CutStatistics:
    """Means of synthesizer loss and cosine (prediction against target) at each interface of ``model`` over
    the steps it was attached for: ``sg/loss/<k>``, ``sg/cos/<k>`` at cuts, ``si/loss/<k>``, ``si/cos/<k>``
    at forward unlocks (synthetic input against real activation).

    ``attach()`` hooks every interface for the next backward pass; measuring costs about as much as a
    small synthesizer, so the engine attaches on every ``TrainConfig.stats_every``-th step only.
    """

    def __init__(self, model: nn.Module) -> None:
        self._interfaces = ([(f"sg/{{}}/{name}", interface) for name, interface in named_backward_interfaces(model)]
                            + [(f"si/{{}}/{name}", interface) for name, interface in named_forward_interfaces(model)])
        self._sums = [torch.zeros(2) for _ in self._interfaces]  # (loss, cosine) per interface
        self._counts = [0 for _ in self._interfaces]
        self._handles: list[RemovableHandle] = []

    def attach(self) -> None:
        self._handles = [interface.register_gradient_hook(self._observer(index))
                         for index, (_, interface) in enumerate(self._interfaces)]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _observer(self, index: int) -> Callable[[Tensor, Tensor], None]:
        def observe(synthetic_grad: Tensor, target_grad: Tensor) -> None:
            pair = torch.stack([synthesizer_loss(synthetic_grad, target_grad),
                                gradient_cosine(synthetic_grad, target_grad)])
            self._sums[index] = self._sums[index].to(pair.device) + pair
            self._counts[index] += 1
        return observe

    def pop(self) -> dict[str, float]:
        """The means since the last call, keyed as in the class docstring; then reset."""
        record = {}
        for index, ((key, _), sums, count) in enumerate(zip(self._interfaces, self._sums, self._counts)):
            if count:
                loss, cosine = (value / count for value in sums.tolist())
                record[key.format("loss")], record[key.format("cos")] = loss, cosine
            self._sums[index] = torch.zeros(2)
            self._counts[index] = 0
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"sums": [sums.cpu().clone() for sums in self._sums], "counts": list(self._counts)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._sums = [sums.clone() for sums in state["sums"]]
        self._counts = list(state["counts"])
