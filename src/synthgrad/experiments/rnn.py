"""Recurrent experiments of the DNI paper (arXiv 1608.05343, section 3.1): Copy and Repeat Copy with a
length curriculum, and character-level language modelling, each trained by truncated BPTT over chunks
of T steps with plain BPTT (``bptt``), a synthesizer at every chunk boundary (``dni``), one that also
reads the next chunk's inputs and targets (``cdni``, see ``next_chunk_context``) or DNI plus the
auxiliary task (``dni-aux``). The recurrent machinery is ``synthgrad.recurrent``.

A run directory holds ``config.json``, ``metrics.jsonl``, ``final.pt`` and ``summary.json``:
``max_length_solved`` for Copy / Repeat Copy, ``val_bpc`` and ``chars_seen`` for the language model.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from synthgrad.checkpoints import (checkpoint_path, load_latest_checkpoint, load_states, prune_checkpoints,
                                   save_atomically)
from synthgrad.data.sequence_tasks import SEQUENCE_TASKS, SequenceBatch, sequence_batch, task_dims
from synthgrad.data.text import CharCorpus, load_text, stream_batches
from synthgrad.experiments.curriculum import SOLVED_BITS, Curriculum
from synthgrad.errors import SynthgradError
from synthgrad.functional import gradient_cosine
from synthgrad.engine.records import CONFIG_FILE, FINAL_CHECKPOINT, SUMMARY_FILE, MetricsLog, truncate_metrics, write_json
from synthgrad.probe import boundary_gradient_snapshot
from synthgrad.recurrent import LSTMCore, SquashedCellInput, WindowResult, backward_through_chunks
from synthgrad.synthesizers import LinearSynthesizer, MLPSynthesizer

RNN_METHODS = ("bptt", "dni", "cdni", "dni-aux")
RNN_TASKS = SEQUENCE_TASKS + ("charlm",)
DRY_RUN_STEPS = 3
LN2 = math.log(2.0)


@dataclass
class RNNConfig:
    """Everything that defines a recurrent run; written to ``config.json`` as resolved."""

    task: str = "copy"
    method: str = "dni"
    truncation: int = 3
    hidden_dim: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    """Dropout on the LSTM's outputs on their way up (``LSTMCore``); the state is never dropped."""
    synth_layers: int = 0
    """Hidden layers of the synthesizer (0: a zero-initialised linear map of the state)."""
    synth_width: int = 256
    squash_cell: bool = False
    """The synthesizer reads ``(h, tanh(c))`` (``synthgrad.recurrent.SquashedCellInput``): needed on an
    endless text stream, where the cell state drifts to norms of 30-600; off for Copy / Repeat Copy, whose
    sequences start from the zero state (and whose table was measured without it)."""
    target_decay: float = 1.0
    """lambda, the weight of the next boundary's synthetic gradient in the bootstrapped target
    (``synthgrad.recurrent.backward_through_chunks``); 1 is the paper."""
    aux_weight: float = 0.1
    """Weight of the DNI+Aux loss (predicting the next boundary's synthetic gradient) on the core. At 1.0
    it swamped the task on Copy (length 4, T=3: 7.9 bits per character after 2000 batches, DNI 5.3)."""
    batch_size: int = 32
    lr: float = 3e-3
    synth_lr: float = 1e-2
    """Measured on Copy at length 4, T=3, after 2000 batches: 5.3 bits per character with 1e-2, 5.7 with
    1e-3, 7.9 with 1e-4 (BPTT: 7.5)."""
    clip_norm: float = 0.0
    """Gradient-norm clip of the core's parameters per update (0: none). A clip at 1.0 slowed Copy down."""
    steps: int = 4000
    """Updates in the run: batches (Copy, Repeat Copy) or windows of text (charlm)."""
    seed: int = 0
    # Copy / Repeat Copy
    threshold: float = SOLVED_BITS
    curriculum_window: int = 10
    max_repeats: int = 3
    max_length: int = 200
    """Stop once this length is solved."""
    # charlm
    text: str = ""
    window: int = 128
    """Characters of each stream per update, the same for every T (a multiple of ``truncation``)."""
    eval_every: int = 250
    eval_chars: int = 0
    """Validation characters scored per evaluation, from the start of the tail (0: all of it)."""
    log_every: int = 50
    checkpoint_every: int = 1000
    """Write a resumable checkpoint at the first log (Copy) or evaluation (charlm) at least this many
    updates after the last one; the newest two are kept (0: none)."""
    device: str = "cpu"
    """Where the LSTM, its synthesizers and the batches live (``cpu``, ``cuda``, ``cuda:1``)."""
    dry_run: bool = False
    progress: bool = True


def check_config(config: RNNConfig) -> None:
    """Raise ``ValueError`` for an impossible configuration (the CLI checks its flags before)."""
    if config.task not in RNN_TASKS:
        raise ValueError(f"task must be one of {RNN_TASKS}, got {config.task!r}")
    if config.method not in RNN_METHODS:
        raise ValueError(f"method must be one of {RNN_METHODS}, got {config.method!r}")
    if config.task == "charlm" and config.window % config.truncation:
        raise ValueError(f"window {config.window} must be a multiple of the truncation {config.truncation}")


def next_chunk_context(inputs: Tensor, targets: Tensor, truncation: int) -> Callable[[int], Tensor]:
    """cDNI's context for a recurrent net: ``context(step)`` is ``(B, T * (I + O))``, the inputs ``(B, L, I)``
    and targets ``(B, L, O)`` of the T steps from ``step`` on, flattened, zero past ``L``.

    Why: the gradient that the next chunk sends into a boundary state is mostly the error of its outputs
    against its targets, which the state alone cannot know; like the label in a feed-forward cDNI, the data
    after the boundary is known at training time, and the chunk before still does not wait for the
    computation after it."""
    steps = torch.cat([inputs, targets], dim=2)
    padded = nn.functional.pad(steps, (0, 0, 0, truncation))  # zeros after the last step

    def context(step: int) -> Tensor:
        return padded[:, step:step + truncation].flatten(1)

    return context


def build_synthesizers(config: RNNConfig, state_dim: int, context_dim: int = 0
                       ) -> tuple[Optional[nn.Module], Optional[nn.Module]]:
    """``(synthesizer, aux_head)`` for ``config.method``: none for ``bptt``; a zero-initialised synthesizer
    of the state for ``dni``, of the state and a context of ``context_dim`` for ``cdni``; plus a linear
    auxiliary head for ``dni-aux``."""
    if config.method == "bptt":
        return None, None
    context_dim = context_dim if config.method == "cdni" else 0
    synthesizer = (LinearSynthesizer(state_dim, context_dim=context_dim) if config.synth_layers == 0 else
                   MLPSynthesizer(state_dim, hidden_dim=config.synth_width, num_hidden_layers=config.synth_layers,
                                  context_dim=context_dim))
    if config.squash_cell:
        synthesizer = SquashedCellInput(synthesizer)
    aux_head = nn.Linear(state_dim, state_dim) if config.method == "dni-aux" else None
    return synthesizer, aux_head


def scored_loss(outputs: Tensor, batch: SequenceBatch, start: int, stop: int) -> Tensor:
    """The loss of steps ``start:stop`` of a Copy / Repeat Copy ``batch`` given the core's ``outputs (B,
    stop - start, output_dim)`` (logits): binary cross-entropy of every channel of the scored steps only
    (``batch.mask``), summed over steps and channels and averaged over the batch. Divided by the number
    of scored steps and by ln 2 it is the error in bits per character that the curriculum reads."""
    mask = batch.mask[start:stop]  # (t,)
    if not mask.any():
        return outputs.sum() * 0.0  # keeps the graph: a chunk without scored steps still carries gradients
    return nn.functional.binary_cross_entropy_with_logits(
        outputs[:, mask], batch.targets[:, start:stop][:, mask], reduction="sum") / outputs.shape[0]


class _Learner:
    """The core, its synthesizers and their optimizers; ``update`` runs one window and steps."""

    def __init__(self, config: RNNConfig, input_dim: int, output_dim: int) -> None:
        torch.manual_seed(config.seed)
        self.config = config
        self.core = LSTMCore(input_dim, config.hidden_dim, output_dim, num_layers=config.num_layers,
                             dropout=config.dropout)
        self.synthesizer, self.aux_head = build_synthesizers(config, self.core.state_dim,
                                                             config.truncation * (input_dim + output_dim))
        for module in (self.core, self.synthesizer, self.aux_head):
            if module is not None:
                module.to(config.device)
        core_parameters = list(self.core.parameters()) + (list(self.aux_head.parameters()) if self.aux_head else [])
        self.optimizers = [torch.optim.Adam(core_parameters, lr=config.lr)]
        if self.synthesizer is not None:
            self.optimizers.append(torch.optim.Adam(self.synthesizer.parameters(), lr=config.synth_lr))

    def update(self, inputs: Tensor, chunk_loss: Callable, **window_options: Any) -> WindowResult:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        result = backward_through_chunks(self.core, inputs, chunk_loss, self.config.truncation,
                                         synthesizer=self.synthesizer, aux_head=self.aux_head,
                                         aux_weight=self.config.aux_weight,
                                         target_decay=self.config.target_decay, **window_options)
        if self.config.clip_norm:
            nn.utils.clip_grad_norm_(self.core.parameters(), self.config.clip_norm)
        for optimizer in self.optimizers:
            optimizer.step()
        return result

    def _modules(self) -> dict[str, nn.Module]:
        modules = {"model": self.core, "synthesizer": self.synthesizer, "aux_head": self.aux_head}
        return {name: module for name, module in modules.items() if module is not None}

    def save(self, path: Path, step: int, loop: Optional[dict[str, Any]] = None) -> None:
        """The weights (``model``, ``synthesizer``, ``aux_head``), ``step`` and ``config``; with ``loop``
        (the runner's own state) also the optimizers: a checkpoint that ``load`` continues from."""
        state = {name: module.state_dict() for name, module in self._modules().items()}
        state.update(step=step, config=asdict(self.config))
        if loop is not None:
            state.update(loop=loop, optimizers=[optimizer.state_dict() for optimizer in self.optimizers])
        save_atomically(path, state)

    def load(self, checkpoint: dict[str, Any], path: Path) -> None:
        load_states(checkpoint, path, **self._modules())
        for optimizer, state in zip(self.optimizers, checkpoint["optimizers"]):
            optimizer.load_state_dict(state)


def _checkpointer(config: RNNConfig, run_dir: Path, learner: _Learner, start_step: int) -> Callable[..., None]:
    """``maybe_save(step, loop)``: a checkpoint when ``checkpoint_every`` updates have passed since the last."""
    last = start_step

    def maybe_save(step: int, loop: dict[str, Any]) -> None:
        nonlocal last
        if config.checkpoint_every and step - last >= config.checkpoint_every:
            learner.save(checkpoint_path(run_dir, step), step, loop)
            prune_checkpoints(run_dir, keep=2)
            last = step

    return maybe_save


def _resume(run_dir: Path, learner: _Learner) -> tuple[int, dict[str, Any]]:
    """``(step, loop state)`` of the newest readable checkpoint, loaded into ``learner``; the metrics
    written after it are dropped, to be written again."""
    checkpoint = load_latest_checkpoint(run_dir)
    if checkpoint is None or "loop" not in checkpoint:
        raise SynthgradError(f"{run_dir} holds no checkpoint to resume from; start the run again without --resume")
    learner.load(checkpoint, checkpoint_path(run_dir, checkpoint["step"]))
    truncate_metrics(run_dir, checkpoint["step"])
    return checkpoint["step"], checkpoint["loop"]


def _synthesizer_metrics(results: list[WindowResult]) -> dict[str, float]:
    losses = [value for result in results for value in result.synthesizer_losses]
    cosines = [value for result in results for value in result.cosines]
    metrics = ({"sg/loss/state": sum(losses) / len(losses), "sg/cos/state": sum(cosines) / len(cosines)}
               if losses else {})
    aux = [value for result in results for value in result.aux_losses]
    if aux:
        metrics["aux/loss"] = sum(aux) / len(aux)
    return metrics


def _true_gradient_metrics(learner: _Learner, batch: SequenceBatch, chunk_loss: Callable,
                           boundary_context: Optional[Callable[[int], Tensor]]) -> dict[str, float]:
    """``sg/cos_true/state``: the cosine between the synthetic gradient and the true future gradient,
    averaged over the boundaries of ``batch`` (``synthgrad.probe.boundary_gradient_snapshot``), where
    ``sg/cos/state`` compares with the bootstrapped target the synthesizer learns from."""
    if learner.synthesizer is None:
        return {}
    snapshot = boundary_gradient_snapshot(learner.core, batch.inputs, chunk_loss, learner.config.truncation,
                                          learner.synthesizer, boundary_context=boundary_context)
    if not snapshot:
        return {}
    cosines = [gradient_cosine(synthetic, true).item() for _, synthetic, true in snapshot]
    return {"sg/cos_true/state": sum(cosines) / len(cosines)}


def _start_run(config: RNNConfig, run_dir: Path) -> None:
    check_config(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / CONFIG_FILE, asdict(config))


def run_sequence_task(config: RNNConfig, run_dir: Path, on_record: Optional[Callable[[dict], None]] = None,
                      resume: bool = False) -> dict[str, Any]:
    """Copy or Repeat Copy with the length curriculum for ``config.steps`` batches; returns the summary
    (``max_length_solved``, ``final_length``, ``steps``, ``train_seconds``, ``method``, ``truncation``).
    ``resume``: continue from the newest checkpoint in ``run_dir`` exactly as the run would have gone on."""
    run_dir = Path(run_dir)
    _start_run(config, run_dir)
    input_dim, output_dim = task_dims(config.task)
    learner = _Learner(config, input_dim, output_dim)
    curriculum = Curriculum(threshold=config.threshold, window=config.curriculum_window)
    generator = torch.Generator().manual_seed(config.seed)
    steps = DRY_RUN_STEPS if config.dry_run else config.steps
    recent: list[WindowResult] = []
    errors: list[float] = []
    train_seconds, step, start_step = 0.0, 0, 0
    if resume:
        start_step, loop = _resume(run_dir, learner)
        step = start_step  # a run killed after its last checkpoint has no batch left to run
        curriculum.load_state_dict(loop["curriculum"])
        generator.set_state(loop["generator"])
        train_seconds = loop["train_seconds"]
    maybe_save = _checkpointer(config, run_dir, learner, start_step)
    with MetricsLog(run_dir) as log, tqdm(total=steps, initial=start_step, disable=not config.progress,
                                          desc=f"{config.task} {config.method} T={config.truncation}",
                                          unit="batch") as bar:
        for step in range(start_step + 1, steps + 1):
            batch = sequence_batch(config.task, config.batch_size, curriculum.length, generator,
                                   max_repeats=config.max_repeats)  # drawn on the CPU: the same data on any device
            batch = SequenceBatch(*(tensor.to(config.device) for tensor in (batch.inputs, batch.targets, batch.mask)))
            scored = int(batch.mask.sum())

            def chunk_loss(outputs: Tensor, start: int, stop: int) -> Tensor:
                return scored_loss(outputs, batch, start, stop)

            boundary_context = (next_chunk_context(batch.inputs, batch.targets * batch.mask[:, None],
                                                   config.truncation) if config.method == "cdni" else None)
            began = time.perf_counter()
            result = learner.update(batch.inputs, chunk_loss, boundary_context=boundary_context)
            train_seconds += time.perf_counter() - began
            error = result.loss / scored / LN2  # bits per character
            errors.append(error)
            recent.append(result)
            length = curriculum.length
            curriculum.update(error)
            bar.update()
            bar.set_postfix(length=curriculum.length, bits=f"{error:.3f}")
            if step % config.log_every == 0 or step == steps:
                record = {"step": step, "length": length, "train/bpc": sum(errors) / len(errors),
                          "max_length_solved": curriculum.max_length_solved, "train_seconds": train_seconds,
                          **_synthesizer_metrics(recent),
                          **_true_gradient_metrics(learner, batch, chunk_loss, boundary_context)}
                log.write(record)
                if on_record:
                    on_record(record)
                recent, errors = [], []
                maybe_save(step, {"curriculum": curriculum.state_dict(), "generator": generator.get_state(),
                                  "train_seconds": train_seconds})
            if curriculum.max_length_solved >= config.max_length:
                break
    learner.save(run_dir / FINAL_CHECKPOINT, step)
    summary = {"max_length_solved": curriculum.max_length_solved, "final_length": curriculum.length,
               "steps": step, "train_seconds": train_seconds, "method": config.method, "task": config.task,
               "truncation": config.truncation}
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


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


def run_charlm(config: RNNConfig, run_dir: Path, corpus: Optional[CharCorpus] = None,
               on_record: Optional[Callable[[dict], None]] = None, resume: bool = False) -> dict[str, Any]:
    """Character-level language modelling on ``config.text`` (or ``corpus``): ``config.steps`` windows of
    ``config.window`` characters on each of ``batch_size`` streams, the state carried from window to
    window; validation BPC every ``eval_every`` windows. Returns the summary (``val_bpc``, ``best_val_bpc``,
    ``chars_seen``, ``steps``, ``train_seconds``). ``resume``: continue from the newest checkpoint."""
    run_dir = Path(run_dir)
    _start_run(config, run_dir)
    corpus = corpus if corpus is not None else load_text(Path(config.text))
    if config.dry_run:
        corpus = CharCorpus(corpus.vocabulary, corpus.train[:20_000], corpus.validation[:2_000])
    streams = stream_batches(corpus.train, config.batch_size).to(config.device)  # (B, C)
    if streams.shape[1] <= config.window:
        raise ValueError(f"the training text gives streams of {streams.shape[1]} characters, not more than "
                         f"the window {config.window}")
    learner = _Learner(config, corpus.vocab_size, corpus.vocab_size)
    steps = DRY_RUN_STEPS if config.dry_run else config.steps
    eval_every = 1 if config.dry_run else config.eval_every
    vocab = corpus.vocab_size
    conditioned = config.method == "cdni"
    state, position, chars_seen, train_seconds, start_step = None, 0, 0, 0.0, 0
    recent: list[WindowResult] = []
    val_bpc = best_val_bpc = float("inf")
    if resume:
        start_step, loop = _resume(run_dir, learner)
        state = None if loop["state"] is None else loop["state"].to(config.device)
        position, chars_seen, train_seconds = loop["position"], loop["chars_seen"], loop["train_seconds"]
        val_bpc, best_val_bpc = loop["val_bpc"], loop["best_val_bpc"]
    maybe_save = _checkpointer(config, run_dir, learner, start_step)
    with MetricsLog(run_dir) as log, tqdm(total=steps, initial=start_step, disable=not config.progress,
                                          desc=f"charlm {config.method} T={config.truncation}", unit="window") as bar:
        for step in range(start_step + 1, steps + 1):
            if position + config.window + 1 > streams.shape[1]:
                state, position = None, 0  # a new epoch starts every stream from the zero state
            # (B, W + 1), and for cDNI the chunk after the window too (fewer at the end of the streams)
            window = streams[:, position:position + config.window + 1 + (config.truncation if conditioned else 0)]
            inputs = nn.functional.one_hot(window[:, :-1], vocab).float()
            boundary_context = (next_chunk_context(inputs, nn.functional.one_hot(window[:, 1:], vocab).float(),
                                                   config.truncation) if conditioned else None)
            inputs = inputs[:, :config.window]

            def chunk_loss(outputs: Tensor, start: int, stop: int) -> Tensor:
                return nn.functional.cross_entropy(outputs.reshape(-1, vocab),
                                                   window[:, start + 1:stop + 1].reshape(-1),
                                                   reduction="sum") / config.batch_size

            began = time.perf_counter()
            result = learner.update(inputs, chunk_loss, state=state, sequence_ends=False,
                                    train_entering_state=state is not None, boundary_context=boundary_context)
            train_seconds += time.perf_counter() - began
            state, position = result.state, position + config.window
            chars_seen += config.batch_size * config.window
            recent.append(result)
            bar.update()
            if step % eval_every == 0 or step == steps:
                val_bpc = validation_bpc(learner.core, corpus, batch_size=config.batch_size,
                                         max_chars=config.eval_chars)
                best_val_bpc = min(best_val_bpc, val_bpc)
                train_bpc = sum(r.loss for r in recent) / (len(recent) * config.window) / LN2
                record = {"step": step, "chars_seen": chars_seen, "train/bpc": train_bpc, "val/bpc": val_bpc,
                          "state/norm": state.norm(dim=1).mean().item(),  # the carried state's drift
                          "train_seconds": train_seconds, **_synthesizer_metrics(recent)}
                log.write(record)
                bar.set_postfix(val_bpc=f"{val_bpc:.3f}")
                if on_record:
                    on_record(record)
                recent = []
                maybe_save(step, {"state": None if state is None else state.cpu(), "position": position,
                                  "chars_seen": chars_seen, "train_seconds": train_seconds, "val_bpc": val_bpc,
                                  "best_val_bpc": best_val_bpc})
    learner.save(run_dir / FINAL_CHECKPOINT, steps)
    summary = {"val_bpc": val_bpc, "best_val_bpc": best_val_bpc, "chars_seen": chars_seen, "steps": steps,
               "train_seconds": train_seconds, "method": config.method, "truncation": config.truncation}
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def run_rnn_experiment(config: RNNConfig, run_dir: Path, **options: Any) -> dict[str, Any]:
    """``run_charlm`` or ``run_sequence_task`` according to ``config.task``."""
    runner = run_charlm if config.task == "charlm" else run_sequence_task
    return runner(config, run_dir, **options)
