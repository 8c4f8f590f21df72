"""``ClassificationTask``: any classifier with cuts (a ``DecoupledSequential``, or a model of your own with
``BackwardInterface``s in its ``forward``) trained with cross-entropy on tensors held in memory.

For cDNI the synthesizers' context is the one-hot label, handed to the model as ``model(inputs, context)``.
The batch of every step follows from the step number alone (``epoch_order``), so a resumed run and every
pipeline rank draw the same batches without exchanging them.
"""
from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping, NamedTuple, Optional

import torch
from torch import Tensor, nn

from synthgrad.engine.records import SAMPLES_FILE
from synthgrad.engine.task import StepResult, Task
from synthgrad.errors import InvalidConfig
from synthgrad.interfaces import named_backward_interfaces, synthesizer_parameters
from synthgrad.probe import gradient_snapshot, true_gradient_cosines


class Split(NamedTuple):
    """One split of a classification dataset held in memory: ``inputs (N, ...)``, ``labels (N,)``."""

    inputs: Tensor
    labels: Tensor


def epoch_order(seed: int, epoch: int, num_examples: int) -> Tensor:
    """The order of the training examples in ``epoch``: a permutation from a generator seeded by
    (seed, epoch), so the batch of any step follows from the step number alone."""
    return torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@torch.no_grad()
def evaluate_classifier(model: nn.Module, split: Split, *, batch_size: int = 1000) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split`` in eval mode (cuts are identities)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct = 0.0, 0
    try:
        for start in range(0, len(split.labels), batch_size):
            logits = model(split.inputs[start:start + batch_size].to(device))
            labels = split.labels[start:start + batch_size].to(device)
            total_loss += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == labels).sum().item())
    finally:
        model.train(was_training)
    count = len(split.labels)
    return {"test/loss": total_loss / count, "test/acc": correct / count}


class ClassificationTask(Task):
    """Cross-entropy training of ``model`` on ``train``, evaluated on ``test`` (``test/loss``, ``test/acc``,
    and ``sg/cos_true/<cut>``: each cut's synthetic gradient against the true one on the first batch).

    Args:
        batch_size: examples per step; the last partial batch of an epoch is dropped.
        use_context: cDNI: ``model(inputs, one_hot(labels))`` instead of ``model(inputs)``.
        synth_every: the synthesizers update on every n-th step only (their gradients are dropped on the others).
        update_prob: stochastic updates (paper section 3.1): at each step each block of a
            ``DecoupledSequential`` updates with this probability, independently; synthesizers always learn.
        seed: of the data order and of the stochastic updates.
        run_info: what names the run in its summary (e.g. the method and the dataset).
    """

    progress_keys = ("train/loss", "train/acc", "test/acc")

    def __init__(self, model: nn.Module, train: Split, test: Split, *, batch_size: int = 128,
                 use_context: bool = False, num_classes: Optional[int] = None, synth_every: int = 1,
                 update_prob: float = 1.0, seed: int = 0, run_info: Mapping[str, Any] = MappingProxyType({})) -> None:
        _check(model, train, batch_size, synth_every, update_prob)
        self.model = model.train()
        self.device = next(model.parameters()).device
        self.train, self.test = Split(*(t.to(self.device) for t in train)), test
        self.batch_size, self.synth_every, self.update_prob, self.seed = batch_size, synth_every, update_prob, seed
        self.steps_per_epoch = len(train.labels) // batch_size
        num_classes = num_classes or int(train.labels.max()) + 1
        self.contexts = (nn.functional.one_hot(self.train.labels, num_classes).float()  # (N, classes), once
                         if use_context else None)
        self.synth_params = list(synthesizer_parameters(model))
        self.update_rng = torch.Generator().manual_seed(seed)
        self.best_acc, self.run_info = 0.0, dict(run_info)
        self._order: tuple[int, Optional[Tensor]] = (-1, None)

    def batch(self, step: int) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """``(inputs, labels, context)`` of training step ``step``."""
        epoch, batch = divmod(step, self.steps_per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.seed, epoch, len(self.train.labels)).to(self.device))
        index = self._order[1][batch * self.batch_size:(batch + 1) * self.batch_size]
        context = None if self.contexts is None else self.contexts[index]
        return self.train.inputs[index], self.train.labels[index], context

    def train_step(self, step: int) -> StepResult:
        inputs, labels, context = self.batch(step)
        logits = self.model(inputs) if context is None else self.model(inputs, context)
        loss = nn.functional.cross_entropy(logits, labels)
        loss.backward()
        if step % self.synth_every:
            for param in self.synth_params:
                param.grad = None  # optimizers skip parameters without a gradient
        if self.update_prob < 1.0:
            self._drop_block_updates()
        return StepResult(loss, {"train/loss": loss.detach(),
                                 "train/acc": (logits.argmax(dim=1) == labels).float().mean()})

    def _drop_block_updates(self) -> None:
        """Stochastic updates: each block keeps its gradients with probability ``update_prob``; the others
        drop them, so the optimizer leaves their weights (and moments) untouched this step."""
        draws = torch.rand(len(self.model.blocks), generator=self.update_rng)  # (num_blocks,)
        for block, draw in zip(self.model.blocks, draws.tolist()):
            if draw >= self.update_prob:
                for param in block.parameters():
                    param.grad = None

    def evaluate(self) -> dict[str, float]:
        result = evaluate_classifier(self.model, self.test)
        self.best_acc = max(self.best_acc, result["test/acc"])
        inputs, labels, context = self.probe_batch()
        return {**result, **true_gradient_cosines(self.model, inputs, labels, context=context)}

    def probe_batch(self) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """The first ``batch_size`` training examples, on which cuts are compared with true gradients."""
        contexts = None if self.contexts is None else self.contexts[:self.batch_size]
        return self.train.inputs[:self.batch_size], self.train.labels[:self.batch_size], contexts

    def summary(self, last_record: Mapping[str, Any]) -> dict[str, Any]:
        return {"test_acc": last_record["test/acc"], "best_test_acc": self.best_acc,
                "test_loss": last_record["test/loss"], "epochs": last_record["epoch"],
                **{key: value for key, value in last_record.items() if key.startswith(("sg/", "si/"))}, **self.run_info}

    def finish(self, run_dir: Path) -> None:
        torch.save(self.samples(), Path(run_dir) / SAMPLES_FILE)

    def samples(self, count: int = 12, gradient_batch: int = 32) -> dict[str, Any]:
        """What the figures show besides curves: ``count`` test examples with the model's predictions, and one
        batch of ``gradient_batch`` examples' synthetic and true gradients at each cut (BatchNorm needs more
        than one)."""
        size = max(count, gradient_batch)
        inputs, labels = self.test.inputs[:size].to(self.device), self.test.labels[:size].to(self.device)
        context = None if self.contexts is None else nn.functional.one_hot(labels, self.contexts.shape[1]).float()
        self.model.eval()
        with torch.no_grad():
            predictions = self.model(inputs[:count]).argmax(dim=1)
        self.model.train()
        has_cuts = bool(named_backward_interfaces(self.model))
        pairs = gradient_snapshot(self.model, inputs, labels, context=context) if has_cuts else {}
        return {"images": inputs[:count].cpu(), "labels": labels[:count].cpu(), "predictions": predictions.cpu(),
                "cuts": list(pairs), "synthetic_grads": [synthetic for synthetic, _ in pairs.values()],
                "true_grads": [true for _, true in pairs.values()]}

    def state_dict(self) -> dict[str, Any]:
        return {"update_rng": self.update_rng.get_state(), "best_acc": self.best_acc}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.update_rng.set_state(state["update_rng"])
        self.best_acc = state["best_acc"]


def validate_sampling(batch_size: int, synth_every: int, update_prob: float) -> None:
    """Raise ``InvalidConfig`` naming the field if the task's sampling options cannot work (the checks an
    experiment makes before any work, and the task again for library users)."""
    for field, value in (("batch_size", batch_size), ("synth_every", synth_every)):
        if value <= 0:
            raise InvalidConfig(f"{{0}} must be positive, got {value}", field)
    if not 0.0 <= update_prob <= 1.0:
        raise InvalidConfig(f"{{0}} must be a probability in [0, 1], got {update_prob}", "update_prob")


def _check(model: nn.Module, train: Split, batch_size: int, synth_every: int, update_prob: float) -> None:
    validate_sampling(batch_size, synth_every, update_prob)
    if batch_size > len(train.labels):
        raise InvalidConfig(f"{{0}} {batch_size} is larger than the {len(train.labels)} training examples; "
                            "choose a smaller {0}", "batch_size")
    if update_prob < 1.0 and not hasattr(model, "blocks"):
        raise InvalidConfig("{0} < 1 needs a model with blocks (a DecoupledSequential)", "update_prob")
