"""BaseModel (the DIEN paper's Embedding & MLP baseline).

Dimension letters: B batch, D embedding width, E = 2D item width.

The behaviour sequence is sum-pooled into one vector; the MLP reads
``[user, target, pooled history]`` (the authors' code's DNN model) and gives a logit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dien.config import ModelConfig
from dien.data.batch import VocabSizes
from dien.models.ctr import CTRModel, HistoryEncoding


class BaseModel(CTRModel):
    """Embedding & MLP over the sum-pooled behaviour sequence."""

    def __init__(self, config: ModelConfig, vocab: VocabSizes, aux_loss_alpha: float = 0.0):
        super().__init__(config, vocab, aux_loss_alpha)
        D = config.embedding_dim
        self.mlp = self.output_mlp(D + 4 * D)

    def score(
        self, history: HistoryEncoding, item: Tensor, category: Tensor, target: Tensor | None = None
    ) -> tuple[Tensor, None]:
        target = self.target_embedding(item, category, target)  # (B, E)
        features = torch.cat([history.user, target, history.pooled], dim=-1)  # (B, D + 2E)
        return self.mlp(features)[:, 0], None  # (B,)
