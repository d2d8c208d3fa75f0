"""The auxiliary loss of DIEN's interest extractor.

Dimension letters: B batch, T history steps, K negatives per step, H hidden width, E item
embedding width (2D).

Each hidden state ``h_t`` of the interest extractor is asked to tell the next real behaviour
``e_{t+1}`` from sampled negatives ``n_{t+1,k}`` (items the user did not click at that step).
A small MLP with sigmoid hidden layers scores ``[h_t, e]``; with ``s`` the sigmoid of its
output, the loss of a pair of steps ``(t, t+1)`` is::

    -log s(h_t, e_{t+1}) - mean_k log(1 - s(h_t, n_{t+1,k}))

averaged over the pairs where both ``t`` and ``t+1`` are real behaviours. Rows with fewer than
two behaviours contribute nothing; a batch without any pair gives a zero that still has a
gradient path (no NaN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dien.layers.mlp import MLP


class AuxiliaryLoss(nn.Module):
    """Next-behaviour discrimination loss on the interest extractor's hidden states."""

    def __init__(self, hidden_size: int, item_dim: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.mlp = MLP(hidden_size + item_dim, hidden_sizes, "sigmoid")

    def forward(
        self, interests: Tensor, behaviours: Tensor, negatives: Tensor, mask: Tensor
    ) -> Tensor:
        """``interests (B, T, H)``, ``behaviours (B, T, E)``, ``negatives (B, T, K, E)``,
        ``mask (B, T)`` -> the mean loss over valid pairs, a scalar."""
        B, T, H = interests.shape
        K = negatives.shape[2]
        h = interests[:, :-1]  # (B, T-1, H)
        pairs = mask[:, 1:].to(interests.dtype)  # (B, T-1), step t+1 real implies t real

        positive = self.mlp(torch.cat([h, behaviours[:, 1:]], dim=-1))[..., 0]  # (B, T-1)
        h_per_negative = h[:, :, None, :].expand(-1, -1, K, -1)  # (B, T-1, K, H)
        negative_features = torch.cat([h_per_negative, negatives[:, 1:]], dim=-1)  # (B,T-1,K,H+E)
        negative = self.mlp(negative_features)[..., 0]  # (B, T-1, K)

        # -log sigmoid(z) = softplus(-z) and -log(1 - sigmoid(z)) = softplus(z), stably
        per_pair = F.softplus(-positive) + F.softplus(negative).mean(dim=-1)  # (B, T-1)
        return (per_pair * pairs).sum() / pairs.sum().clamp(min=1)  # ()
