"""Messages between the ranks of a pipeline: point-to-point ``torch.distributed`` sends and receives.

Every message has a known sender, so every failure can name the rank at fault: a receive that waits
longer than the process group's timeout means the sender hangs, a closed connection means it died.
Either raises ``PipelineFailure`` with that rank in its message; nothing waits forever. Sends are
non-blocking (``isend``): a rank hands its output on and goes on computing while the message travels.

A ``Channel`` is also the training engine's ``World`` (``synthgrad.engine.World``): rank 0 gathers every
rank's interval metrics and broadcasts its decision through it.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor

from synthgrad.errors import PipelineFailure

ACTIVATION, TARGET, EVALUATION, CONTROL = 0, 1, 2, 3
"""Message tags: activations go up, gradients go down, evaluation and control messages apart."""


def describe_failure(peer: int, timeout_s: float, error: BaseException) -> str:
    """One line naming ``peer`` and what happened to it, from a ``torch.distributed`` error."""
    text = str(error)
    if "imed out" in text or "timeout" in text.lower():
        what = f"sent nothing for {timeout_s:g} s: it hangs or is stuck"
    else:
        what = "closed its connection: it died or stopped"
    return f"rank {peer} {what} ({text.splitlines()[0][:160] if text else type(error).__name__}); stopping this rank"


class Channel:
    """Point-to-point messages of one rank, on the default process group.

    ``send`` is non-blocking (the tensor is kept alive until its message has left); ``recv`` blocks
    until the message arrives or the process group's timeout (``timeout_s``) passes. ``matches_tags``:
    whether a receive takes only a message of its own tag (gloo); NCCL ignores tags and matches a pair's
    messages in the order they were posted, so there a receive may be posted early only when no message of
    another kind can come first from that sender.
    """

    def __init__(self, rank: int, world_size: int, timeout_s: float, device: torch.device) -> None:
        self.rank, self.world_size, self.timeout_s, self.device = rank, world_size, timeout_s, device
        self.matches_tags = device.type != "cuda"
        self._pending: list[tuple[int, Any, Tensor]] = []

    def send(self, tensor: Tensor, dst: int, tag: int) -> None:
        tensor = tensor.contiguous()
        try:
            work = dist.isend(tensor, dst, tag=tag)
        except RuntimeError as error:
            raise PipelineFailure(describe_failure(dst, self.timeout_s, error)) from None
        self._pending.append((dst, work, tensor))
        self._pending = [entry for entry in self._pending if not entry[1].is_completed()]

    def recv(self, shape: tuple[int, ...], src: int, tag: int, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.post_recv(shape, src, tag, dtype)()

    def post_recv(self, shape: tuple[int, ...], src: int, tag: int,
                  dtype: torch.dtype = torch.float32) -> Callable[[], Tensor]:
        """Post a receive now and return the function that waits for it and returns the tensor (at once when
        called again).

        Posted early, a message is copied in while the rank computes (gloo moves a message once its
        receive is posted); receives from one sender with one tag match in the order they are posted.
        """
        tensor = torch.empty(shape, dtype=dtype, device=self.device)
        try:
            work = dist.irecv(tensor, src, tag=tag)
        except RuntimeError as error:
            raise PipelineFailure(describe_failure(src, self.timeout_s, error)) from None

        arrived = False

        def wait() -> Tensor:
            nonlocal arrived
            if not arrived:  # a gloo receive's second wait() would wait for another message
                try:
                    work.wait()
                except RuntimeError as error:
                    raise PipelineFailure(describe_failure(src, self.timeout_s, error)) from None
                arrived = True
            return tensor
        return wait

    def flush(self) -> None:
        """Wait until every message sent so far has left."""
        for dst, work, _ in self._pending:
            try:
                work.wait()
            except RuntimeError as error:
                raise PipelineFailure(describe_failure(dst, self.timeout_s, error)) from None
        self._pending = []

    def send_object(self, obj: Any, dst: int) -> None:
        """Send a picklable object (a small one: metrics, a config, a step number)."""
        data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(self.device)
        self.send(torch.tensor([data.numel()], dtype=torch.int64, device=self.device), dst, CONTROL)
        self.send(data, dst, CONTROL)

    def recv_object(self, src: int) -> Any:
        size = int(self.recv((1,), src, CONTROL, torch.int64).item())
        return pickle.loads(self.recv((size,), src, CONTROL, torch.uint8).cpu().numpy().tobytes())

    def gather_objects(self, obj: Any) -> list[Any]:
        """Rank 0 gets every rank's ``obj`` (in rank order); the others get ``[]`` once theirs has left."""
        if self.rank != 0:
            self.send_object(obj, 0)
            self.flush()
            return []
        return [obj, *(self.recv_object(src) for src in range(1, self.world_size))]

    def broadcast_object(self, obj: Any) -> Any:
        """Every rank gets rank 0's ``obj``; rank 0 returns once it has reached every rank (so a decision
        to stop reaches the others before rank 0 acts on it, e.g. by exiting)."""
        if self.rank == 0:
            for dst in range(1, self.world_size):
                self.send_object(obj, dst)
            self.flush()
            return obj
        return self.recv_object(0)
