"""Two-layer GRU attention, a baseline of the DIEN paper.

Dimension letters: B batch, T history steps, D embedding width, E = 2D item width, H hidden
width.

The paper describes it as "two layer GRU to model sequential behaviors, and an attention
layer to activate relative behaviors" (after Parsana et al. 2018). Read here as: a GRU over
the behaviour embeddings, a second GRU over the first one's hidden states, then the DIEN
attention (softmax over the valid steps) between the target and the second layer's hidden
states; the attention-weighted sum of those states joins
``[user, target, pooled history, target * pooled history]`` in the MLP. There is no
auxiliary loss and no attention inside a GRU (those are the DIEN family's).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from dien.config import ModelConfig
from dien.data.batch import Batch, VocabSizes
from dien.layers.attention import DIENAttention
from dien.layers.embedding import EmbeddedBatch
from dien.layers.recurrent import RecurrentLayer
from dien.models.ctr import CTRModel, HistoryEncoding, target_features


class GRUAttention(CTRModel):
    """Two stacked GRUs over the behaviours, then attention pooling of their hidden states."""

    def __init__(self, config: ModelConfig, vocab: VocabSizes, aux_loss_alpha: float = 0.0):
        super().__init__(config, vocab, aux_loss_alpha)
        D, H = config.embedding_dim, config.hidden_size
        self.gru1 = RecurrentLayer(2 * D, H, "gru")
        self.gru2 = RecurrentLayer(H, H, "gru")
        self.attention = DIENAttention(2 * D, H, config.attention_mlp_sizes)
        self.mlp = self.output_mlp(D + 6 * D + H)

    def encode_history(
        self, batch: Batch, embedded: EmbeddedBatch | None = None
    ) -> HistoryEncoding:
        history = super().encode_history(batch, embedded)
        first, _ = self.gru1(history.behaviours, history.mask)  # (B, T, H)
        second, _ = self.gru2(first, history.mask)  # (B, T, H)
        return replace(history, interests=second)

    def score(
        self, history: HistoryEncoding, item: Tensor, category: Tensor, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        target = self.target_embedding(item, category, target)  # (B, E)
        weights = self.attention(target, history.interests, history.mask)  # (B, T)
        interest = (weights[..., None] * history.interests).sum(dim=1)  # (B, H)
        features = torch.cat([target_features(history, target), interest], dim=-1)  # (B, D+3E+H)
        return self.mlp(features)[:, 0], weights  # (B,), (B, T)
