"""The training loop: an ordinary ``loss.backward(); optimizer.step()`` loop over in-memory tensors.

It knows nothing of MNIST or of how the model was cut: the cuts do their work inside backward, and the
trainer only (a) gives synthesizers their own learning rate, (b) hands one-hot labels to the model as
context for cDNI, (c) records, through gradient hooks, how well each synthesizer predicts, and (d) makes
runs survive: checkpoints to resume from exactly, Ctrl-C, and a guard against non-finite steps.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle
from tqdm.auto import tqdm

from synthgrad.checkpoints import checkpoint_path, load_states, prune_checkpoints, save_atomically
from synthgrad.decoupled import DecoupledSequential
from synthgrad.divergence import ON_DIVERGENCE, DivergenceGuard
from synthgrad.errors import InvalidConfig
from synthgrad.functional import gradient_cosine, synthesizer_loss
from synthgrad.interfaces import (
    block_parameters,
    named_backward_interfaces,
    named_forward_interfaces,
    synthesizer_parameters,
)
from synthgrad.metrics import FINAL_CHECKPOINT, MetricsLog, truncate_metrics
from synthgrad.probe import true_gradient_cosines


class Split(NamedTuple):
    """One split of a classification dataset held in memory: ``inputs (N, ...)``, ``labels (N,)``."""

    inputs: Tensor
    labels: Tensor


@dataclass
class TrainConfig:
    """Knobs of the training loop. ``steps``, when set, overrides ``epochs``.

    ``decoupled_lr`` (a ``DecoupledSequential`` only) is the learning rate of the blocks below the top
    cut, which learn from synthetic gradients; ``None`` means ``lr``. Steps along a synthetic gradient
    are only as good as its direction: unconditioned DNI learns best when those blocks move more slowly
    than the top block, which follows the true gradient.

    ``stats_every``: synthesizer loss and gradient cosine (``sg/*`` metrics) are measured on every n-th
    step and the last; measuring every step would cost as much as a small synthesizer.

    ``checkpoint_every``: write ``checkpoint-<step>.pt`` every n steps (a multiple of ``log_every``, so a
    checkpoint never falls inside a metrics interval; 0 for none), keeping the newest
    ``keep_checkpoints``; ``final.pt`` is always written at the end.

    ``lr_schedule="cosine"`` anneals every learning rate to zero over the run: late in training the
    synthesizers' targets keep moving, and a decaying step size is what keeps the final accuracy at
    the best epoch's instead of drifting away from it. ``warmup_steps`` scales every learning rate up
    linearly over the first n steps before that schedule: Adam moves every weight by about its learning
    rate on its first steps, whatever the gradient's size, so a synthesizer's zero-initialised output layer
    with a large fan-in (a 5x5 convolution over 128 channels) jumps to outputs far larger than its targets,
    and the blocks below its cut follow that noise (see ``experiments.mnist.CONV_TRAINING``).

    ``update_prob`` (a ``DecoupledSequential`` only): at each step each block updates its weights
    only with this probability, independently of the others (paper section 3.1, stochastic updates:
    decoupled layers need not update in lockstep); synthesizers update at every step regardless.

    ``on_divergence``: what a step with a non-finite loss or gradient does (see ``synthgrad.divergence``):
    ``"stop"`` the run, or ``"skip"`` the step and halve the synthesizers' learning rate.
    """

    epochs: int = 10
    steps: Optional[int] = None
    batch_size: int = 128
    lr: float = 1e-3
    synth_lr: float = 1e-3
    decoupled_lr: Optional[float] = None
    optimizer: str = "adam"
    momentum: float = 0.0
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    synth_every: int = 1
    update_prob: float = 1.0
    use_context: bool = False
    num_classes: int = 10
    eval_every: Optional[int] = None
    log_every: int = 50
    stats_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    on_divergence: str = "stop"


OPTIMIZERS = ("adam", "sgd")


@contextlib.contextmanager
def torch_threads(count: Optional[int]) -> Iterator[None]:
    """``count`` torch threads while active (``None``: as they are), the previous number after. Small runs
    (the gist's batches of 10, a small LSTM stepped one chunk at a time, a pipeline's one-process reference)
    lose more to a second thread than they gain, or must match a rank's single thread."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


PROGRESS_KEYS = ("train/loss", "train/acc", "test/acc")
LR_SCHEDULES = ("cosine", "constant")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """One optimizer with a param group per learning rate: blocks at ``lr`` (those below the top cut
    at ``decoupled_lr`` when set), synthesizers at ``synth_lr``."""
    decoupled: list[nn.Parameter] = []
    if config.decoupled_lr is not None:
        if not isinstance(model, DecoupledSequential):
            raise ValueError("decoupled_lr needs a DecoupledSequential, which knows which blocks are below a cut")
        decoupled = [param for param in model.decoupled_parameters() if param.requires_grad]
    decoupled_ids = {id(param) for param in decoupled}
    # frozen parameters (requires_grad=False, e.g. the lower layers of the no-backprop baseline) stay out
    groups = [{"params": [param for param in block_parameters(model)
                          if id(param) not in decoupled_ids and param.requires_grad],
               "lr": config.lr}]
    if decoupled:
        groups.append({"params": decoupled, "lr": config.decoupled_lr})
    synth_params = list(synthesizer_parameters(model))
    if synth_params:
        groups.append({"params": synth_params, "lr": config.synth_lr})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum)
    # fused: one kernel for all parameters instead of a dozen small ops per tensor; synthesizers add
    # many small tensors, so the unfused loop would charge DNI for optimizer overhead, not for its method
    return torch.optim.Adam(groups, fused=True)


def validate_train_config(config: TrainConfig, num_examples: Optional[int] = None) -> None:
    """Raise ``InvalidConfig`` naming the field (and the allowed values) if ``config`` cannot work;
    ``num_examples``, the size of the training split when known, bounds the batch size."""
    for field, value, allowed in (("optimizer", config.optimizer, OPTIMIZERS),
                                  ("lr_schedule", config.lr_schedule, LR_SCHEDULES),
                                  ("on_divergence", config.on_divergence, ON_DIVERGENCE)):
        if value not in allowed:
            raise InvalidConfig(f"{{0}} must be one of {', '.join(allowed)}, got {value!r}", field)
    if config.steps is not None and config.steps <= 0:
        raise InvalidConfig(f"{{0}} must be positive (or None to train for epochs), got {config.steps}", "steps")
    if not 0.0 <= config.update_prob <= 1.0:
        raise InvalidConfig(f"{{0}} must be a probability in [0, 1], got {config.update_prob}", "update_prob")
    for field in ("batch_size", "log_every", "stats_every", "synth_every", "keep_checkpoints"):
        if getattr(config, field) <= 0:
            raise InvalidConfig(f"{{0}} must be positive, got {getattr(config, field)}", field)
    if config.checkpoint_every < 0:
        raise InvalidConfig(f"{{0}} must be >= 0 (0: no checkpoints), got {config.checkpoint_every}",
                            "checkpoint_every")
    if config.warmup_steps < 0:
        raise InvalidConfig(f"{{0}} must be >= 0 (0: no warm-up), got {config.warmup_steps}", "warmup_steps")
    if config.checkpoint_every % config.log_every:
        raise InvalidConfig(f"{{0}} {config.checkpoint_every} must be a multiple of {{1}} {config.log_every}, "
                            "so that a checkpoint never falls inside a metrics interval",
                            "checkpoint_every", "log_every")
    if num_examples is not None and config.batch_size > num_examples:
        raise InvalidConfig(f"{{0}} {config.batch_size} is larger than the {num_examples} training examples; "
                            "choose a smaller {0}", "batch_size")


def lr_factor(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step under ``config.lr_schedule`` after ``config.warmup_steps``
    of linear warm-up: shared by the one-process trainer and the pipeline's stages, so both anneal alike."""
    def schedule(step: int) -> float:
        if config.lr_schedule == "constant":
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / max(config.warmup_steps, 1)) * schedule(step)

    return factor


class _CutStatistics:
    """Means of synthesizer loss and cosine (prediction vs target) at each interface over the steps it
    was attached for: ``sg/loss/<k>``, ``sg/cos/<k>`` at cuts, ``si/loss/<k>``, ``si/cos/<k>`` at
    forward unlocks (synthetic input vs real activation).

    ``attach()`` hooks every interface for the next backward pass; measuring costs about as much as a
    small synthesizer, so the trainer attaches on every ``stats_every``-th step only.
    """

    def __init__(self, model: nn.Module) -> None:
        self._cuts = ([(f"sg/{{}}/{name}", interface) for name, interface in named_backward_interfaces(model)]
                      + [(f"si/{{}}/{name}", interface) for name, interface in named_forward_interfaces(model)])
        self._sums = [torch.zeros(2) for _ in self._cuts]  # (loss, cosine) per interface
        self._counts = [0 for _ in self._cuts]
        self._handles: list[RemovableHandle] = []

    def attach(self) -> None:
        self._handles = [interface.register_gradient_hook(self._observer(index))
                         for index, (_, interface) in enumerate(self._cuts)]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _observer(self, index: int) -> Callable[[Tensor, Tensor], None]:
        def observe(synthetic_grad: Tensor, target_grad: Tensor) -> None:
            pair = torch.stack([synthesizer_loss(synthetic_grad, target_grad),
                                gradient_cosine(synthetic_grad, target_grad)])
            self._sums[index] += pair.cpu()
            self._counts[index] += 1
        return observe

    def pop(self) -> dict[str, float]:
        """The means since the last call, keyed as in the class docstring; then reset."""
        record = {}
        for index, ((key, _), sums, count) in enumerate(zip(self._cuts, self._sums, self._counts)):
            if count:
                record[key.format("loss")] = sums[0].item() / count
                record[key.format("cos")] = sums[1].item() / count
            sums.zero_()
            self._counts[index] = 0
        return record

    def state_dict(self) -> dict[str, Any]:
        return {"sums": [sums.clone() for sums in self._sums], "counts": list(self._counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = [sums.clone() for sums in state["sums"]]
        self._counts = list(state["counts"])


class TrainingInterrupted(Exception):
    """Training stopped on request (Ctrl-C) after writing a checkpoint at ``step`` to ``checkpoint``;
    ``run_dir`` (default: the checkpoint's directory) is what ``synthgrad resume`` continues."""

    def __init__(self, step: int, checkpoint: Path, run_dir: Optional[Path] = None) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint written to {checkpoint}")
        self.step, self.checkpoint = step, checkpoint
        self.run_dir = Path(checkpoint).parent if run_dir is None else Path(run_dir)


def _drop_block_updates(model: DecoupledSequential, generator: torch.Generator, update_prob: float) -> None:
    """Stochastic updates: each block keeps its gradients with probability ``update_prob``; the others
    drop them, so the optimizer leaves their weights (and moments) untouched this step."""
    draws = torch.rand(len(model.blocks), generator=generator)  # (num_blocks,)
    for block, draw in zip(model.blocks, draws.tolist()):
        if draw >= update_prob:
            for param in block.parameters():
                param.grad = None


def epoch_order(seed: int, epoch: int, num_examples: int) -> Tensor:
    """The order of the training examples in ``epoch``: a permutation from a generator seeded by
    (seed, epoch), so the batch of any step follows from the step number alone (on every pipeline rank,
    and after a resume)."""
    return torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, *, batch_size: int = 1000) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split`` in eval mode (cuts are identities)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_loss, correct = 0.0, 0
    try:
        for start in range(0, len(split.labels), batch_size):
            inputs = split.inputs[start:start + batch_size].to(device)
            labels = split.labels[start:start + batch_size].to(device)
            logits = model(inputs)
            total_loss += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct += (logits.argmax(dim=1) == labels).sum().item()
    finally:
        model.train(was_training)
    count = len(split.labels)
    return {"loss": total_loss / count, "acc": correct / count}


def train(
    model: nn.Module,
    train_split: Split,
    test_split: Split,
    config: TrainConfig,
    run_dir: Path,
    *,
    on_record: Optional[Callable[[dict[str, Any]], None]] = None,
    resume: Optional[dict[str, Any]] = None,
    stop_requested: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Train ``model`` with cross-entropy, writing ``metrics.jsonl``, checkpoints and ``final.pt`` into
    ``run_dir``.

    Returns the summary: final and best test accuracy, ``train_seconds`` (optimisation only, not
    evaluation), ``steps``, ``epochs`` and the last logged ``sg/*`` and ``si/*`` value of each interface.
    ``on_record`` is called with every metrics record as it is written (e.g. to print it).
    ``resume``, a checkpoint of this run, continues it from that step; on the CPU the result is
    bit-identical to a run that was never interrupted (the data order follows from the step alone).
    ``stop_requested`` is asked after every step; when it says yes, the run writes a checkpoint and
    raises ``TrainingInterrupted`` (the command line asks it on Ctrl-C).
    """
    num_examples = len(train_split.labels)
    validate_train_config(config, num_examples)
    if config.update_prob < 1.0 and not isinstance(model, DecoupledSequential):
        raise ValueError("update_prob < 1 needs a DecoupledSequential, which knows its blocks")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    model.to(device).train()
    train_inputs, train_labels = train_split.inputs.to(device), train_split.labels.to(device)
    train_contexts = (nn.functional.one_hot(train_labels, config.num_classes).float()  # (N, classes), once
                      if config.use_context else None)

    steps_per_epoch = num_examples // config.batch_size  # the last partial batch is dropped
    total_steps = config.steps or config.epochs * steps_per_epoch
    eval_every = config.eval_every or steps_per_epoch
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, total_steps))
    synth_params = list(synthesizer_parameters(model))
    cut_statistics = _CutStatistics(model)
    guard = DivergenceGuard(model, optimizer, scheduler, run_dir, config.on_divergence)
    update_rng = torch.Generator().manual_seed(config.seed)  # which blocks update, for update_prob < 1
    probe_batch = {"inputs": train_inputs[:config.batch_size], "labels": train_labels[:config.batch_size],
                   "context": None if train_contexts is None else train_contexts[:config.batch_size]}  # sg/cos_true

    best_acc, last_record, train_seconds, start_step = 0.0, {}, 0.0, 0
    loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
    if resume is not None:
        load_states(resume, checkpoint_path(run_dir, resume["step"]), model=model, optimizer=optimizer,
                    scheduler=scheduler)
        guard.load_state_dict(resume.get("divergence"))
        torch.set_rng_state(resume["rng"])
        if "update_rng" in resume:  # absent from checkpoints written before stochastic updates existed
            update_rng.set_state(resume["update_rng"])
        start_step = resume["step"]
        best_acc, train_seconds = resume["best_acc"], resume["train_seconds"]
        last_record = dict(resume["last_record"])
        interval = resume["interval"]  # the metrics of a logging interval the checkpoint fell inside
        loss_sum, correct, seen = interval["loss_sum"].to(device), interval["correct"].to(device), interval["seen"]
        cut_statistics.load_state_dict(interval["cut_statistics"])
        truncate_metrics(run_dir, start_step)  # records written after the checkpoint are written again

    def state(step: int) -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "rng": torch.get_rng_state(),
                "update_rng": update_rng.get_state(),
                "best_acc": best_acc, "train_seconds": train_seconds, "last_record": last_record,
                "interval": {"loss_sum": loss_sum.cpu(), "correct": correct.cpu(), "seen": seen,
                             "cut_statistics": cut_statistics.state_dict()},
                "divergence": guard.state_dict(),
                "config": asdict(config)}

    progress = tqdm(total=total_steps, initial=start_step, disable=not config.progress, unit="step",
                    dynamic_ncols=True)
    with MetricsLog(run_dir) as log:
        for step in range(start_step, total_steps):
            epoch, batch = divmod(step, steps_per_epoch)
            if batch == 0 or step == start_step:
                order = epoch_order(config.seed, epoch, num_examples).to(device)
            started = time.perf_counter()
            index = order[batch * config.batch_size:(batch + 1) * config.batch_size]
            inputs, labels = train_inputs[index], train_labels[index]
            context = train_contexts[index] if train_contexts is not None else None
            is_measured = (step + 1) % config.stats_every == 0 or step + 1 == total_steps
            if is_measured:
                unmeasured = cut_statistics.state_dict() if guard.is_skipping else None
                cut_statistics.attach()  # before forward: a cut takes its observers when it is placed
            guard.before_forward()
            logits = model(inputs, context) if context is not None else model(inputs)
            loss = nn.functional.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if is_measured:
                cut_statistics.detach()
            is_finite = guard.allows_step(loss, step + 1)  # raises TrainingDiverged unless told to skip
            if step % config.synth_every != 0:
                for param in synth_params:
                    param.grad = None  # optimizers skip parameters without a gradient
            if config.update_prob < 1.0:
                _drop_block_updates(model, update_rng, config.update_prob)
            if is_finite:
                optimizer.step()
                loss_sum += loss.detach() * len(labels)
                correct += (logits.argmax(dim=1) == labels).sum()
                seen += len(labels)
            elif is_measured:
                cut_statistics.load_state_dict(unmeasured)  # a skipped step is not measured either
            scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_seconds += time.perf_counter() - started
            progress.update()

            done = step + 1
            is_eval = done % eval_every == 0 or done == total_steps
            if done % config.log_every == 0 or is_eval:
                record = {"step": done, "epoch": done / steps_per_epoch,
                          "train/loss": loss_sum.item() / seen if seen else math.nan,  # nan: every step skipped
                          "train/acc": correct.item() / seen if seen else math.nan,
                          **cut_statistics.pop(), **guard.pop()}
                loss_sum.zero_(), correct.zero_()
                seen = 0
                if is_eval:
                    test = evaluate(model, test_split)
                    record.update({"test/loss": test["loss"], "test/acc": test["acc"]},
                                  **true_gradient_cosines(model, **probe_batch))
                    best_acc = max(best_acc, test["acc"])
                log.write(record)
                last_record.update(record)
                if on_record is not None:
                    on_record(record)
                progress.set_postfix({key: f"{record[key]:.3f}" for key in PROGRESS_KEYS if key in record})
                if config.checkpoint_every and done % config.checkpoint_every == 0 and done < total_steps:
                    save_atomically(checkpoint_path(run_dir, done), state(done))
                    prune_checkpoints(run_dir, config.keep_checkpoints)
            if done < total_steps and stop_requested():
                progress.close()
                save_atomically(checkpoint_path(run_dir, done), state(done))
                prune_checkpoints(run_dir, config.keep_checkpoints)
                raise TrainingInterrupted(done, checkpoint_path(run_dir, done))
    progress.close()
    save_atomically(run_dir / FINAL_CHECKPOINT, state(total_steps))
    return {
        "test_acc": last_record["test/acc"],
        "best_test_acc": best_acc,
        "test_loss": last_record["test/loss"],
        "train_seconds": train_seconds,
        "steps": total_steps,
        "epochs": total_steps / steps_per_epoch,
        **{key: value for key, value in last_record.items() if key.startswith(("sg/", "si/"))},
    }
