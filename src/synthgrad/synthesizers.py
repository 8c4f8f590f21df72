"""Synthesizers: small networks M(h, c) that predict the gradient of the loss w.r.t. an activation h.

Paper section 2 and appendix A: a synthesizer sees the activation (and, for cDNI, a context such as the
one-hot label) and outputs a tensor shaped like the activation, at per-example scale (see
``synthgrad.functional``). Its output layer starts at zero, so at step 0 the network below a cut
receives no update at all instead of noise.

``InputSynthesizer`` is the forward counterpart (paper section 3.3, complete unlock): it predicts a
block's input activation from the network's input.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class Synthesizer(nn.Module):
    """Contract: ``forward(activation, context=None) -> tensor shaped like activation``.

    ``activation`` is ``(B, *features)``; ``context`` is ``(B, context_dim)`` or ``None``. A
    synthesizer built with ``context_dim > 0`` requires a context (cDNI); one built without refuses it.
    """

    def __init__(self, context_dim: int = 0) -> None:
        super().__init__()
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.context_dim = context_dim

    @property
    def use_context(self) -> bool:
        return self.context_dim > 0

    def _check_context(self, activation: Tensor, context: Optional[Tensor]) -> None:
        if self.use_context and context is None:
            raise ValueError(
                f"{type(self).__name__} was built with context_dim={self.context_dim} (cDNI) "
                "but was called without a context; pass the one-hot labels"
            )
        if not self.use_context and context is not None:
            raise ValueError(
                f"{type(self).__name__} was built without a context but was given one; "
                "build it with context_dim=<size of the context> for cDNI"
            )
        if context is not None and context.shape != (activation.shape[0], self.context_dim):
            raise ValueError(
                f"context has shape {tuple(context.shape)}, expected "
                f"({activation.shape[0]}, {self.context_dim})"
            )


def _zero_(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class _DenseSynthesizer(Synthesizer):
    """A synthesizer whose ``net`` maps ``[flattened activation, context]`` to the flattened gradient."""

    net: nn.Sequential

    def forward(self, activation: Tensor, context: Optional[Tensor] = None) -> Tensor:
        self._check_context(activation, context)
        x = activation.flatten(1)  # (B, dim)
        if context is not None:
            x = torch.cat([x, context.to(x.dtype)], dim=1)  # (B, dim + context_dim)
        return self.net(x).view_as(activation)


class MLPSynthesizer(_DenseSynthesizer):
    """Fully connected synthesizer for activations ``(B, dim)``: ``num_hidden_layers`` hidden layers of
    ``hidden_dim`` units with ReLU (and BatchNorm when ``batch_norm``), then a zero-initialised linear
    output. With ``num_hidden_layers=0`` it is a single linear map, the paper's cDNI synthesizer.
    The context is concatenated to the activation at the input.
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden_dim: int = 1024,
        num_hidden_layers: int = 2,
        context_dim: int = 0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__(context_dim)
        if dim <= 0 or hidden_dim <= 0 or num_hidden_layers < 0:
            raise ValueError(
                f"need dim > 0, hidden_dim > 0 and num_hidden_layers >= 0; got dim={dim}, "
                f"hidden_dim={hidden_dim}, num_hidden_layers={num_hidden_layers}"
            )
        layers: list[nn.Module] = []
        width = dim + context_dim
        for _ in range(num_hidden_layers):
            layers.append(nn.Linear(width, hidden_dim))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU())
            width = hidden_dim
        layers.append(_zero_(nn.Linear(width, dim)))
        self.net = nn.Sequential(*layers)


class LinearSynthesizer(_DenseSynthesizer):
    """A zero-initialised linear map ``[activation, context] -> gradient``: the paper's cDNI synthesizer,
    and the seed gist's.

    ``rank`` factors the map through ``rank`` dimensions (two linear layers, no nonlinearity), which
    costs ``rank * (2 * dim + context_dim)`` multiply-adds per example instead of ``dim * (dim +
    context_dim)``. The gradient of a C-class loss at the top cut lies in a C-dimensional subspace
    (the rows of the output layer), and the gradients below inherit most of that structure, so a small
    rank loses little.
    """

    def __init__(self, dim: int, *, context_dim: int = 0, rank: Optional[int] = None) -> None:
        super().__init__(context_dim)
        if rank is not None and rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        if rank is None:
            self.net = nn.Sequential(_zero_(nn.Linear(dim + context_dim, dim)))
        else:
            # no bias in the first factor: the second one's bias already makes the map affine
            self.net = nn.Sequential(nn.Linear(dim + context_dim, rank, bias=False), _zero_(nn.Linear(rank, dim)))


class ConvSynthesizer(Synthesizer):
    """Convolutional synthesizer for feature maps ``(B, channels, H, W)`` (paper appendix A): resolution
    preserving ``kernel_size`` convolutions, ``num_hidden_layers`` of ``hidden_channels`` filters with
    BatchNorm (when ``batch_norm``) and ReLU, then a zero-initialised convolution back to ``channels``.

    A context enters twice: broadcast over the positions as extra input channels, and through a
    zero-initialised linear map to a full ``(channels, H, W)`` map added to the output. Convolutions
    treat every position alike, but the label's share of the true gradient (W^T y for a linear
    classifier above) is a different pattern at each position; without the second path a cDNI conv
    synthesizer could not express it (measured: cosine 0.01 with the true gradient after an epoch).
    ``spatial_size`` ``(H, W)`` is therefore required with a context.
    """

    def __init__(
        self,
        channels: int,
        *,
        hidden_channels: int = 128,
        num_hidden_layers: int = 2,
        kernel_size: int = 5,
        context_dim: int = 0,
        spatial_size: Optional[tuple[int, int]] = None,
        batch_norm: bool = True,
    ) -> None:
        super().__init__(context_dim)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to preserve resolution, got {kernel_size}")
        if context_dim and spatial_size is None:
            raise ValueError("a ConvSynthesizer with a context needs spatial_size=(H, W) of its feature maps")
        padding = kernel_size // 2
        layers: list[nn.Module] = []
        width = channels + context_dim
        for _ in range(num_hidden_layers):
            layers.append(nn.Conv2d(width, hidden_channels, kernel_size, padding=padding))
            if batch_norm:
                layers.append(nn.BatchNorm2d(hidden_channels))
            layers.append(nn.ReLU())
            width = hidden_channels
        layers.append(_zero_(nn.Conv2d(width, channels, kernel_size, padding=padding)))
        self.net = nn.Sequential(*layers)
        self.map_shape = (channels, *spatial_size) if spatial_size else None
        self.context_map = (_zero_(nn.Linear(context_dim, channels * spatial_size[0] * spatial_size[1]))
                            if context_dim else None)

    def forward(self, activation: Tensor, context: Optional[Tensor] = None) -> Tensor:
        self._check_context(activation, context)
        if context is None:
            return self.net(activation)
        if activation.shape[1:] != self.map_shape:
            raise ValueError(f"activation has shape {tuple(activation.shape)}, but this synthesizer was built "
                             f"for feature maps {self.map_shape}")
        batch, _, height, width = activation.shape
        context = context.to(activation.dtype)
        planes = context[:, :, None, None].expand(batch, self.context_dim, height, width)
        output = self.net(torch.cat([activation, planes], dim=1))  # input (B, channels + context_dim, H, W)
        return output + self.context_map(context).view(batch, *self.map_shape)


class InputSynthesizer(nn.Module):
    """Predicts an activation ``(B, dim)`` from the network input ``(B, *input_shape)`` (flattened to
    ``in_features``): ``num_hidden_layers`` of ``hidden_dim`` units with BatchNorm and ReLU, then a
    linear output.

    Unlike a gradient synthesizer its output layer keeps PyTorch's default initialisation: a zero
    prediction would hand the block above the same input for every example, from which it cannot learn.
    """

    def __init__(self, in_features: int, dim: int, *, hidden_dim: int = 1024, num_hidden_layers: int = 1) -> None:
        super().__init__()
        if in_features <= 0 or dim <= 0 or hidden_dim <= 0 or num_hidden_layers < 0:
            raise ValueError(
                f"need in_features > 0, dim > 0, hidden_dim > 0 and num_hidden_layers >= 0; got "
                f"in_features={in_features}, dim={dim}, hidden_dim={hidden_dim}, num_hidden_layers={num_hidden_layers}"
            )
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for _ in range(num_hidden_layers):
            layers += [nn.Linear(width, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU()]
            width = hidden_dim
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, network_input: Tensor) -> Tensor:
        return self.net(network_input)
