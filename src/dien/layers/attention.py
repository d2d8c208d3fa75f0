"""Attention between the target item and the behaviour sequence.

Dimension letters: B batch, T history steps, E width of the target query and of the keys,
M valid steps of a batch, W width of the scoring MLP's first layer.

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

Where no gradient is wanted (scoring, evaluation, serving) on the CPU, the scores come from one
call of the fused kernel (:func:`dien.layers.fused.fused_attention_scores`), which runs the
packed form below in cache-sized blocks. Otherwise two ways of computing the same scores,
chosen by :func:`packing_index`:

- packed (CPU): the valid steps are gathered into ``(M, E)`` rows (``M`` = number of valid
  steps), scored, and scattered back, so padding costs nothing; a batch scored in its split's
  order, padded to its longest history of 100 where the mean is 14, runs about seven times
  fewer rows;
- padded (CUDA, and while tracing for export): every ``(b, t)`` is scored and padding is
  masked afterwards. Finding the valid steps needs their count on the host, which would make
  every step wait for the device, and would bake one batch's count into a traced graph.

The scoring MLP's first layer reads ``[q, k, q - k, q * k]`` through one weight
``[W_q | W_k | W_d | W_p]``; as ``W_q q + W_k k + W_d (q - k) + W_p (q * k) = (W_q + W_d) q +
(W_k - W_d) k + W_p (q * k)``, the query's part is computed once per row and each step
multiplies only ``[k, q * k]``, half the inputs. The parameters are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dien.layers.fused import capturing_graph, fused_attention_scores, fused_inference_supported
from dien.layers.mlp import MLP


def packing_index(mask: Tensor) -> Tensor | None:
    """Flat indices ``(M,)`` of the True entries of ``mask (B, T)``, in row-major order.

    None where the packed form is not used: on devices other than the CPU (the count of
    valid steps would have to be read back, a host sync per call) and while tracing or
    exporting a graph (the count would be fixed into it).
    """
    if mask.device.type != "cpu" or capturing_graph():
        return None
    return mask.reshape(-1).nonzero()[:, 0]  # (M,)


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dimension restricted to ``mask``; all-masked rows give zeros."""
    lowest = torch.finfo(scores.dtype).min
    weights = torch.softmax(scores.masked_fill(~mask, lowest), dim=-1)  # (B, T)
    return weights * mask.to(scores.dtype)  # (B, T)


class AttentionScorer(nn.Module):
    """Scores each key against the query: MLP on ``[q, k, q - k, q * k]`` -> one number."""

    def __init__(self, width: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.width = width
        self.mlp = MLP(4 * width, hidden_sizes, "sigmoid")

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """``query (B, E)``, ``keys (B, T, E)``, ``mask (B, T)`` -> scores ``(B, T)``, 0 at
        padding. Query, keys and mask broadcast over the batch dimension."""
        B = max(query.shape[0], keys.shape[0], mask.shape[0])
        T, E = keys.shape[1], self.width
        keys = keys.expand(B, T, E)  # (B, T, E)
        mask = mask.expand(B, T)  # (B, T)
        first, rest = self.mlp.net[0], self.mlp.net[1:]
        w_q, w_k, w_d, w_p = first.weight.split(E, dim=1)  # (W, E) each
        per_row = F.linear(query, w_q + w_d, first.bias).expand(B, -1)  # (B, W)
        per_step_weight = torch.cat([w_k - w_d, w_p], dim=1)  # (W, 2E)
        query = query.expand(B, E)  # (B, E)

        later = [(m.weight, m.bias) for m in rest if isinstance(m, nn.Linear)]
        if fused_inference_supported(
            keys, per_row, per_step_weight, *(t for layer in later for t in layer)
        ):
            return fused_attention_scores(per_row, query, keys, mask, per_step_weight, later)

        index = packing_index(mask)
        if index is None:
            step_features = torch.cat([keys, query[:, None, :] * keys], dim=-1)  # (B, T, 2E)
            hidden = per_row[:, None, :] + F.linear(step_features, per_step_weight)  # (B, T, W)
            return rest(hidden)[..., 0] * mask.to(hidden.dtype)  # (B, T)

        rows = index.div(T, rounding_mode="floor")  # (M,)
        k = keys.reshape(B * T, E).index_select(0, index)  # (M, E)
        q = query.index_select(0, rows)  # (M, E)
        step_features = torch.cat([k, q * k], dim=-1)  # (M, 2E)
        hidden = per_row.index_select(0, rows) + F.linear(step_features, per_step_weight)  # (M, W)
        packed = rest(hidden)[:, 0]  # (M,)
        return packed.new_zeros(B * T).index_copy(0, index, packed).view(B, T)  # (B, T)


class DINAttention(nn.Module):
    """DIN's activation unit: unnormalised weights, attention-weighted sum of the keys."""

    def __init__(self, width: int, hidden_sizes: Sequence[int]) -> None:
        super().__init__()
        self.scorer = AttentionScorer(width, hidden_sizes)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Return the pooled keys ``(B, E)`` and the weights ``(B, T)`` (0 at padding)."""
        weights = self.scorer(query, keys, mask)  # (B, T)
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
        q = self.query_projection(query)  # (B, E), once per row
        scores = self.scorer(q, keys, mask)  # (B, T)
        return masked_softmax(scores, mask)  # (B, T)
