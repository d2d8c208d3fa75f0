"""Fully connected networks and the Dice activation of the DIN paper.

Dimension letters: B batch, F features (input width), W a layer's width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

Activation = Literal["dice", "prelu", "sigmoid"]


class Dice(nn.Module):
    """Data-adaptive activation (DIN paper): ``y = p * x + (1 - p) * alpha * x``.

    ``p = sigmoid((x - mean) / sqrt(var + eps))`` per feature. In training, ``mean`` and ``var``
    are the current batch's statistics (biased variance, as batch normalisation uses) and a
    running estimate is updated with ``momentum``; in eval mode the running estimate is used,
    so a sample's output never depends on the rest of its batch. A training batch of one row
    has no variance: it normalises to 0 (``p = 1/2``) and leaves the running estimate alone.
    ``alpha`` is learned per feature and starts at 0, as in the authors' code.
    """

    def __init__(self, width: int, eps: float = 1e-8, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.alpha = nn.Parameter(torch.zeros(width))
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("running_var", torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2:
            raise ValueError(f"Dice expects (B, W) inputs, got shape {tuple(x.shape)}")
        if self.training:
            var, mean = torch.var_mean(x, dim=0, unbiased=False)  # (W,), (W,)
            self._update_running(var, mean, x.shape[0])
        else:
            mean, var = self.running_mean, self.running_var  # (W,)
        p = torch.sigmoid((x - mean) * torch.rsqrt(var + self.eps))  # (B, W)
        # p x + (1 - p) alpha x, as x (alpha + p (1 - alpha)): two passes over (B, W), not five
        return x * torch.addcmul(self.alpha, p, 1 - self.alpha)  # (B, W)

    @torch.no_grad()
    def _update_running(self, var: Tensor, mean: Tensor, n: int) -> None:
        """Move the running estimate toward a batch of ``n`` rows' mean and biased variance."""
        if n < 2:
            return
        self.running_mean.lerp_(mean, self.momentum)
        self.running_var.lerp_(var * (n / (n - 1)), self.momentum)  # unbiased


def make_activation(kind: Activation, width: int) -> nn.Module:
    """An activation module of ``width`` features. PReLU's slope starts at 0.1 (authors' code)."""
    if kind == "dice":
        return Dice(width)
    if kind == "prelu":
        return nn.PReLU(width, init=0.1)
    if kind == "sigmoid":
        return nn.Sigmoid()
    raise ValueError(f"unknown activation {kind!r}; expected dice, prelu or sigmoid")


class MLP(nn.Module):
    """Linear layers of ``hidden_sizes``, each followed by ``activation``, then a linear output.

    Input ``(..., F)``, output ``(..., out_features)``. Dice and PReLU learn one parameter per
    feature and need 2-D input ``(B, F)``; sigmoid takes any rank.
    """

    def __init__(
        self,
        in_features: int,
        hidden_sizes: Sequence[int],
        activation: Activation,
        out_features: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), make_activation(activation, size)]
            width = size
        layers.append(nn.Linear(width, out_features))
        self.net = nn.Sequential(*layers)
        self.needs_2d = activation != "sigmoid" and len(hidden_sizes) > 0

    def forward(self, x: Tensor) -> Tensor:
        if self.needs_2d and x.dim() != 2:
            raise ValueError(f"this MLP expects (B, F) inputs, got shape {tuple(x.shape)}")
        return self.net(x)  # (..., out_features)
