"""The auxiliary loss of DIEN's interest extractor.

Dimension letters: B batch, T history steps, K negatives per step, H hidden width, E item
embedding width (2D), P = T - 1 step pairs per row, M scored pairs, C = 1 + K candidates per
pair (the next behaviour and the negatives), W width of the MLP's first layer.

Each hidden state ``h_t`` of the interest extractor is asked to tell the next real behaviour
``e_{t+1}`` from sampled negatives ``n_{t+1,k}`` (items the user did not click at that step).
A small MLP with sigmoid hidden layers scores ``[h_t, e]``; with ``s`` the sigmoid of its
output, the loss of a pair of steps ``(t, t+1)`` is::

    -log s(h_t, e_{t+1}) - mean_k log(1 - s(h_t, n_{t+1,k}))

averaged over the pairs where both ``t`` and ``t+1`` are real behaviours. Rows with fewer than
two behaviours contribute nothing; a batch without any pair gives a zero that still has a
gradient path (no NaN).

On the CPU only the valid pairs are gathered and scored (see
:func:`~dien.layers.attention.packing_index`); elsewhere every pair is scored and padding is
masked out of the mean. The MLP's first layer reads ``[h, e]`` through one weight
``[W_h | W_e]``: ``W_h h`` is computed once per pair and shared by the positive and the ``K``
negatives, which each add only their ``W_e e``. On the CPU the MLP runs, forward and backward,
as one call of :func:`dien.layers.fused.fused_scorer_mlp`, blocks of rows kept in the cache
through all layers, instead of a dozen operations over whole tensors under autograd.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dien.layers.attention import packing_index
from dien.layers.fused import fused_scorer_mlp, fused_supported
from dien.layers.mlp import MLP


class AuxiliaryLoss(nn.Module):
    """Next-behaviour discrimination loss on the interest extractor's hidden states."""

    def __init__(self, hidden_size: int, item_dim: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.mlp = MLP(hidden_size + item_dim, hidden_sizes, "sigmoid")

    def forward(
        self, interests: Tensor, behaviours: Tensor, negatives: Tensor, mask: Tensor
    ) -> Tensor:
        """``interests (B, T, H)``, ``behaviours (B, T, E)``, ``negatives (B, T, K, E)``,
        ``mask (B, T)`` -> the mean loss over valid pairs, a scalar."""
        B, T, H = interests.shape
        K, E = negatives.shape[2:]
        P = max(T - 1, 0)  # pairs (t, t+1) per row
        h = interests[:, :-1].reshape(B * P, H)  # (B*P, H)
        candidates = next_candidates(behaviours, negatives).reshape(B * P, 1 + K, E)
        pairs = mask[:, 1:].reshape(B * P)  # (B*P,), step t+1 real implies t real

        index = packing_index(pairs)
        if index is not None:
            h = h.index_select(0, index)  # (M, H)
            candidates = candidates.index_select(0, index)  # (M, 1+K, E)
        logits = self.score(h, candidates)  # (M, 1+K), M = B*P when not packed

        # -log sigmoid(z) = softplus(-z) and -log(1 - sigmoid(z)) = softplus(z), stably
        per_pair = F.softplus(-logits[:, 0]) + F.softplus(logits[:, 1:]).mean(dim=-1)  # (M,)
        if index is not None:
            return per_pair.sum() / max(index.numel(), 1)  # ()
        weight = pairs.to(per_pair.dtype)  # (B*P,)
        return (per_pair * weight).sum() / weight.sum().clamp(min=1)  # ()

    def score(self, h: Tensor, candidates: Tensor) -> Tensor:
        """MLP logits of ``[h, e]`` for ``h (M, H)`` and each of ``candidates (M, C, E)``."""
        first, rest = self.mlp.net[0], self.mlp.net[1:]
        w_h, w_e = first.weight.split([self.hidden_size, first.in_features - self.hidden_size], 1)
        per_pair = F.linear(h, w_h, first.bias)  # (M, W)
        later = [(m.weight, m.bias) for m in rest if isinstance(m, nn.Linear)]
        if later and fused_supported(candidates):  # one C++ call, forward and backward
            M, C, E = candidates.shape
            pair_of = torch.arange(M, device=h.device).repeat_interleave(C)  # (M*C,)
            flat = candidates.reshape(M * C, E)  # (M*C, E)
            return fused_scorer_mlp(flat, pair_of, per_pair, w_e, later).view(M, C)  # (M, C)
        hidden = per_pair[:, None, :] + F.linear(candidates, w_e)  # (M, C, W)
        return rest(hidden)[..., 0]  # (M, C)


def next_candidates(behaviours: Tensor, negatives: Tensor) -> Tensor:
    """``[e_{t+1}, n_{t+1,1..K}]`` for every pair: ``(B, T-1, 1+K, E)``."""
    return torch.cat([behaviours[:, 1:, None, :], negatives[:, 1:]], dim=2)  # (B, T-1, 1+K, E)
