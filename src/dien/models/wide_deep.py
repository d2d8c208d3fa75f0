"""Wide&Deep (Cheng et al. 2016) as a baseline of the DIEN paper.

Dimension letters: B batch, D embedding width, E = 2D item width.

- Deep part: BaseModel's MLP on ``[user, target, pooled history]``.
- Wide part, a linear model over the sparse ids: one learned weight per user id, target item
  id and target category id (one-wide embedding tables, starting at 0), plus a linear layer
  on ``[target, target * pooled history]``, the cross between the target and the history
  that the authors' code uses as its wide input.

The logit is the sum of both parts.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from dien.config import ModelConfig
from dien.data.batch import Batch, VocabSizes
from dien.layers.embedding import EmbeddedBatch
from dien.models.ctr import CTRModel, HistoryEncoding


class WideDeep(CTRModel):
    """A deep MLP plus a wide linear model over ids and the target x history cross."""

    def __init__(self, config: ModelConfig, vocab: VocabSizes, aux_loss_alpha: float = 0.0):
        super().__init__(config, vocab, aux_loss_alpha)
        D, sparse = config.embedding_dim, config.sparse_embeddings
        self.mlp = self.output_mlp(D + 4 * D)
        self.wide_user = nn.Embedding(vocab.users, 1, padding_idx=0, sparse=sparse)
        self.wide_item = nn.Embedding(vocab.items, 1, padding_idx=0, sparse=sparse)
        self.wide_category = nn.Embedding(vocab.categories, 1, padding_idx=0, sparse=sparse)
        for table in (self.wide_user, self.wide_item, self.wide_category):
            nn.init.zeros_(table.weight)
        self.wide_cross = nn.Linear(4 * D, 1)

    def encode_history(
        self, batch: Batch, embedded: EmbeddedBatch | None = None
    ) -> HistoryEncoding:
        history = super().encode_history(batch, embedded)
        return replace(history, user_bias=self.wide_user(batch.user)[:, 0])  # (B,)

    def score(
        self, history: HistoryEncoding, item: Tensor, category: Tensor, target: Tensor | None = None
    ) -> tuple[Tensor, None]:
        target = self.target_embedding(item, category, target)  # (B, E)
        deep_features = torch.cat([history.user, target, history.pooled], dim=-1)  # (B, D + 2E)
        deep = self.mlp(deep_features)[:, 0]  # (B,)

        cross = torch.cat([target, target * history.pooled], dim=-1)  # (B, 2E)
        ids = self.wide_item(item)[:, 0] + self.wide_category(category)[:, 0]  # (B,)
        wide = history.user_bias + ids + self.wide_cross(cross)[:, 0]  # (B,)
        return deep + wide, None  # (B,)
