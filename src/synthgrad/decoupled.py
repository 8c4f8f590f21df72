"""DecoupledSequential: a network as a chain of blocks with a BackwardInterface at each cut.

Paper section 3.1: with every layer decoupled, each block learns only from the synthetic gradient at
its output, and each synthesizer regresses onto the gradient arriving at its cut: the true gradient at
the top cut, and below it the bootstrapped target, i.e. the next cut's synthetic gradient
backpropagated through the next block. Chaining interfaces produces exactly that inside one
``loss.backward()``, because what arrives at a cut is whatever the cut above sent down.

Section 3.3 (complete unlock): optional input synthesizers let each block above the first run on a
prediction of its input from the network input; the real activation only serves as that prediction's
regression target, and the gradient arriving at the prediction becomes the target of the cut below.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

from torch import Tensor, nn

from synthgrad.interfaces import BackwardInterface, ForwardInterface
from synthgrad.synthesizers import InputSynthesizer, Synthesizer


class DecoupledSequential(nn.Module):
    """Blocks ``b_0 .. b_{n-1}`` with an optional synthesizer on the output of each of ``b_0 .. b_{n-2}``.

    Args:
        blocks: the modules, applied in order; the last produces the model's output.
        synthesizers: ``len(blocks) - 1`` entries; entry ``i`` cuts the output of block ``i``.
            ``None`` leaves that boundary uncut (ordinary backprop through it), so all ``None`` is
            plain backprop and a single entry reproduces a one-cut network such as the seed gist.
        pass_target_grad: every cut passes the arriving gradient down (backprop) while its synthesizer
            still learns, to measure synthesizers against true gradients.
        input_synthesizers: ``None`` (no forward unlock) or ``len(blocks) - 1`` entries; entry ``i``
            predicts the output of block ``i`` from the network input, and in training block ``i + 1``
            runs on that prediction (``None`` entries: on the real output).

    ``forward(x, context=None)``: ``context`` (e.g. one-hot labels, ``(B, num_classes)``) is handed to
    every synthesizer; it is ignored in eval mode, where every block also runs on real inputs.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        synthesizers: Sequence[Optional[Synthesizer]],
        *,
        pass_target_grad: bool = False,
        input_synthesizers: Optional[Sequence[Optional[InputSynthesizer]]] = None,
    ) -> None:
        super().__init__()
        if len(blocks) == 0:
            raise ValueError("DecoupledSequential needs at least one block")
        if len(synthesizers) != len(blocks) - 1:
            raise ValueError(
                f"{len(blocks)} blocks have {len(blocks) - 1} cuts between them, "
                f"but {len(synthesizers)} synthesizers were given"
            )
        if input_synthesizers is not None and len(input_synthesizers) != len(blocks) - 1:
            raise ValueError(
                f"{len(blocks)} blocks have {len(blocks) - 1} inputs that can be predicted, "
                f"but {len(input_synthesizers)} input synthesizers were given"
            )
        self.blocks = nn.ModuleList(blocks)
        # Keyed by the index of the block whose output is cut; that index names the cut in metrics.
        self.interfaces = nn.ModuleDict({
            str(index): BackwardInterface(synthesizer, pass_target_grad=pass_target_grad)
            for index, synthesizer in enumerate(synthesizers)
            if synthesizer is not None
        })
        self.forward_unlocks = nn.ModuleDict({
            str(index): ForwardInterface(synthesizer)
            for index, synthesizer in enumerate(input_synthesizers or ())
            if synthesizer is not None
        })

    def decoupled_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the blocks below the top cut: the ones that learn from synthetic gradients."""
        top_cut = max((int(index) for index in self.interfaces), default=-1)
        for block in self.blocks[:top_cut + 1]:
            yield from block.parameters()

    def named_cuts(self) -> Iterator[tuple[str, BackwardInterface]]:
        """Each cut named by the index of the block whose output it cuts, bottom first."""
        return iter(self.interfaces.items())  # type: ignore[arg-type]

    def named_forward_unlocks(self) -> Iterator[tuple[str, ForwardInterface]]:
        """Each forward unlock named by the index of the block whose output it predicts, bottom first."""
        return iter(self.forward_unlocks.items())  # type: ignore[arg-type]

    def forward(self, x: Tensor, context: Optional[Tensor] = None) -> Tensor:
        network_input = x
        for index, block in enumerate(self.blocks):
            x = block(x)
            key = str(index)
            if key in self.interfaces:
                x = self.interfaces[key](x, context)
            if key in self.forward_unlocks:
                x = self.forward_unlocks[key](x, network_input)
        return x
