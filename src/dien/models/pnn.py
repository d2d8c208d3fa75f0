"""PNN (Qu et al. 2016), inner-product form, as a baseline of the DIEN paper.

Dimension letters: B batch, D embedding width, E = 2D item width, F = 5 fields.

The product layer takes five fields of width D: the user, the target item, the target
category, the sum-pooled history items and the sum-pooled history categories. The inner
products of every pair of fields (10 numbers) are concatenated with
``[user, target, pooled history]`` before the MLP.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dien.config import ModelConfig
from dien.data.batch import VocabSizes
from dien.models.ctr import CTRModel, HistoryEncoding

FIELDS = 5


class PNN(CTRModel):
    """Product-based neural network: pairwise inner products of field embeddings + MLP."""

    def __init__(self, config: ModelConfig, vocab: VocabSizes, aux_loss_alpha: float = 0.0):
        super().__init__(config, vocab, aux_loss_alpha)
        D = config.embedding_dim
        rows, cols = torch.triu_indices(FIELDS, FIELDS, offset=1)
        self.register_buffer("pair_rows", rows, persistent=False)
        self.register_buffer("pair_cols", cols, persistent=False)
        self.mlp = self.output_mlp(D + 4 * D + rows.numel())

    def score(
        self, history: HistoryEncoding, item: Tensor, category: Tensor, target: Tensor | None = None
    ) -> tuple[Tensor, None]:
        D = self.config.embedding_dim
        target = self.target_embedding(item, category, target)  # (B, E)
        fields = torch.stack(
            [
                history.user,
                target[:, :D],
                target[:, D:],
                history.pooled[:, :D],
                history.pooled[:, D:],
            ],
            dim=1,
        )  # (B, F, D)
        inner = fields @ fields.transpose(1, 2)  # (B, F, F)
        products = inner[:, self.pair_rows, self.pair_cols]  # (B, F(F-1)/2)
        features = torch.cat(
            [history.user, target, history.pooled, products], dim=-1
        )  # (B, D + 2E + 10)
        return self.mlp(features)[:, 0], None  # (B,)
