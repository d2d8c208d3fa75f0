"""DIN (Deep Interest Network, Zhou et al. KDD 2018).

Dimension letters: B batch, T history steps, D embedding width, E = 2D item width.

The target item attends over the behaviour embeddings with DIN's activation unit
(:class:`~dien.layers.attention.DINAttention`: unnormalised weights, zero at padding); the
attention-weighted sum of the behaviours joins
``[user, target, pooled history, target * pooled history]`` in the MLP.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dien.config import ModelConfig
from dien.data.batch import VocabSizes
from dien.layers.attention import DINAttention
from dien.models.ctr import CTRModel, HistoryEncoding, target_features


class DIN(CTRModel):
    """Attention-weighted pooling of the behaviour sequence with the target as query."""

    def __init__(self, config: ModelConfig, vocab: VocabSizes, aux_loss_alpha: float = 0.0):
        super().__init__(config, vocab, aux_loss_alpha)
        D = config.embedding_dim
        self.attention = DINAttention(2 * D, config.attention_mlp_sizes)
        self.mlp = self.output_mlp(D + 8 * D)

    def score(
        self, history: HistoryEncoding, item: Tensor, category: Tensor, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        target = self.target_embedding(item, category, target)  # (B, E)
        interest, weights = self.attention(target, history.behaviours, history.mask)  # (B, E)
        features = torch.cat([target_features(history, target), interest], dim=-1)  # (B, D+4E)
        return self.mlp(features)[:, 0], weights  # (B,), (B, T)
