"""Attention between the target item and the behaviour sequence.

Dimension letters: B batch, T history steps, E width of the target query and of the keys.

Two forms, both scoring each step with a small MLP (sigmoid hidden layers, as in the public
code of both papers) on ``[q, k, q - k, q * k]``:

- :class:`DINAttention` (DIN paper): the weights are the raw scores, *not* normalised by a
  softmax (the DIN paper drops the softmax so the sum of weights keeps the intensity of the
  user's interest), set to 0 at padded steps. The keys are the behaviour embeddings.
- :class:`DIENAttention` (the DIEN authors' code): the target is first projected to the key
  width by a linear layer with PReLU, and the weights are a softmax over the valid steps
  only. A row with no behaviour gets all-zero weights (not a uniform distribution over
  padding, and no NaN). The keys are the interest extractor's hidden states.

Query and keys broadcast over the batch dimension, so one history ``(1, T, E)`` can be scored
against many targets ``(N, E)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dien.layers.mlp import MLP


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dimension restricted to ``mask``; all-masked rows give zeros."""
    lowest = torch.finfo(scores.dtype).min
    weights = torch.softmax(scores.masked_fill(~mask, lowest), dim=-1)  # (B, T)
    return weights * mask.to(scores.dtype)  # (B, T)


class AttentionScorer(nn.Module):
    """Scores each key against the query: MLP on ``[q, k, q - k, q * k]`` -> one number."""

    def __init__(self, width: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.mlp = MLP(4 * width, hidden_sizes, "sigmoid")

    def forward(self, query: Tensor, keys: Tensor) -> Tensor:
        q, k = torch.broadcast_tensors(query[:, None, :], keys)  # (B, T, E)
        features = torch.cat([q, k, q - k, q * k], dim=-1)  # (B, T, 4E)
        return self.mlp(features)[..., 0]  # (B, T)


class DINAttention(nn.Module):
    """DIN's activation unit: unnormalised weights, attention-weighted sum of the keys."""

    def __init__(self, width: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.scorer = AttentionScorer(width, hidden_sizes)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Return the pooled keys ``(B, E)`` and the weights ``(B, T)`` (0 at padding)."""
        scores = self.scorer(query, keys)  # (B, T)
        weights = scores * mask.to(scores.dtype)  # (B, T)
        pooled = (weights[..., None] * keys).sum(dim=-2)  # (B, E)
        return pooled, weights


class DIENAttention(nn.Module):
    """The DIEN authors' attention: projected query, softmax over the valid steps."""

    def __init__(self, query_width: int, key_width: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.query_projection = nn.Sequential(
            nn.Linear(query_width, key_width), nn.PReLU(key_width, init=0.1)
        )
        self.scorer = AttentionScorer(key_width, hidden_sizes)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """Return the weights ``(B, T)``: each valid row sums to 1, empty rows are all 0."""
        q = self.query_projection(query)  # (B, E)
        scores = self.scorer(q, keys)  # (B, T)
        return masked_softmax(scores, mask)  # (B, T)
