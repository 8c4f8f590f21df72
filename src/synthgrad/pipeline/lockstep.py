"""Exact pipelined backprop: the ``lockstep`` schedule's executor (``lockstep_step``: every micro-batch forward,
then every one backward), and ``torch.distributed.pipelining``'s GPipe and 1F1B schedules on the same
stages, the baselines a user would pick. Either way a rank's ``train_step`` leaves the step's gradients and
the engine applies them, which is torch's own calling convention (``schedule.step(x)``, then
``optimizer.step()``)."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from synthgrad.engine.task import StepResult
from synthgrad.errors import PipelineFailure
from synthgrad.pipeline.comm import ACTIVATION, TARGET, describe_failure
from synthgrad.pipeline.schedule import BACKWARD, FORWARD, lockstep_step
from synthgrad.pipeline.task import RankTask


class LockstepTask(RankTask):
    """A rank of exact pipelined backprop, each step's mini-batch split into ``micro_batches``."""

    def __init__(self, *args: Any, micro_batches: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.micro_batches = micro_batches
        self.micro_size = self.data.batch_size // micro_batches

    def run_step(self, step: int) -> StepResult:
        inputs = self.data.inputs(step).to(self.device) if self.stage.is_first else None
        targets = self.data.targets(step).to(self.device) if self.stage.is_last else None
        losses, outputs = [], []
        for action in lockstep_step(step, self.micro_batches):
            part = slice(action.micro_batch * self.micro_size, (action.micro_batch + 1) * self.micro_size)
            if action.op == FORWARD:
                activation = (inputs[part] if inputs is not None else
                              self.channel.recv((self.micro_size, *self.in_shape), self.rank - 1, ACTIVATION))
                output, loss = self.stage.forward_lockstep((step, action.micro_batch), activation,
                                                           None if targets is None else targets[part],
                                                           self.micro_batches)
                if loss is None:
                    self.channel.send(output, self.rank + 1, ACTIVATION)
                else:
                    losses.append(loss)
                    outputs.append(output)
            elif action.op == BACKWARD:
                output_grad = (None if self.stage.is_last else
                               self.channel.recv((self.micro_size, *self.out_shape), self.rank + 1, TARGET))
                input_grad = self.stage.backward_lockstep((step, action.micro_batch), output_grad)
                if input_grad is not None:
                    self.channel.send(input_grad, self.rank - 1, TARGET)
        if not losses:  # UPDATE: the engine's optimizer step
            return self.step_result(None)
        return self.step_result(torch.stack(losses).mean(), torch.cat(outputs), targets)


class TorchScheduleTask(RankTask):
    """A rank of ``torch.distributed.pipelining``'s ``gpipe`` or ``1f1b`` schedule on this stage's blocks."""

    def __init__(self, *args: Any, micro_batches: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        stage = PipelineStage(self.stage.chain, self.rank, self.num_stages, self.device)
        schedule_class = ScheduleGPipe if self.schedule == "gpipe" else Schedule1F1B
        self.torch_schedule = schedule_class(stage, micro_batches, loss_fn=self.stage.loss_fn)
        self._has_stepped = False

    def run_step(self, step: int) -> StepResult:
        # A schedule's first step infers shapes by running the blocks of every stage but the first on
        # uninitialised tensors, which leaves NaN in BatchNorm's running statistics (measured: 10% test
        # accuracy). Their values from before that step are put back: the step's own batches are lost
        # to the running averages, nothing else.
        chain = self.stage.chain
        buffers = None if self._has_stepped else {name: buffer.clone() for name, buffer in chain.named_buffers()}
        self._has_stepped = True
        try:
            result = self._step(step)
        except RuntimeError as error:
            if not any(word in str(error) for word in ("gloo", "NCCL", "onnection", "imed out")):
                raise  # a bug, not a peer's failure
            peers = " or ".join(str(peer) for peer in (self.rank - 1, self.rank + 1) if 0 <= peer < self.num_stages)
            raise PipelineFailure(describe_failure(peers, self.channel.timeout_s, error)) from None
        if buffers is not None:
            with torch.no_grad():
                for name, buffer in chain.named_buffers():
                    buffer.copy_(buffers[name])
        return result

    def _step(self, step: int) -> StepResult:
        if self.stage.is_first and not self.stage.is_last:
            self.torch_schedule.step(self.data.inputs(step).to(self.device))
            return self.step_result(None)
        if not self.stage.is_last:
            self.torch_schedule.step()
            return self.step_result(None)
        targets = self.data.targets(step).to(self.device)
        losses: list[Tensor] = []
        output: Optional[Tensor] = self.torch_schedule.step(target=targets, losses=losses)
        return self.step_result(torch.stack(losses).detach().mean(), output, targets)
