"""DIEN (Deep Interest Evolution Network, Zhou et al. AAAI 2019) and its ablations.

Dimension letters: B batch, T history steps, D embedding width, E = 2D item width, H hidden
width.

1. Interest extractor: a GRU over the behaviour embeddings -> hidden states ``h_t``. With
   ``aux_loss_alpha > 0`` the auxiliary loss supervises each ``h_t`` with the next behaviour.
2. Interest evolution: the DIEN attention (softmax over the valid steps) between the target
   and each ``h_t``, then a second recurrent layer over the ``h_t`` whose cell uses the
   attention: AUGRU (DIEN), AIGRU, AGRU, or a plain GRU (which ignores attention; the model
   then has no attention and returns none).
3. Output: the MLP on ``[user, target, pooled history, target * pooled history, final
   evolved interest]``.

The model names of the paper map to cells: ``dien`` = AUGRU with the auxiliary loss;
``gru_augru``, ``gru_agru``, ``gru_aigru`` = that cell without it (see ``build_model``).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from dien.config import ModelConfig
from dien.data.batch import Batch, VocabSizes
from dien.layers.attention import DIENAttention
from dien.layers.auxiliary import AuxiliaryLoss
from dien.layers.embedding import EmbeddedBatch
from dien.layers.recurrent import CellKind, RecurrentLayer
from dien.models.ctr import CTRModel, HistoryEncoding, target_features


class DIEN(CTRModel):
    """GRU interest extractor, optional auxiliary loss, attentional interest evolution."""

    supports_aux_loss = True

    def __init__(
        self,
        config: ModelConfig,
        vocab: VocabSizes,
        aux_loss_alpha: float = 1.0,
        cell: CellKind = "augru",
    ) -> None:
        super().__init__(config, vocab, aux_loss_alpha)
        D, H = config.embedding_dim, config.hidden_size
        self.cell = cell
        self.extractor = RecurrentLayer(2 * D, H, "gru")
        self.attention = (
            None if cell == "gru" else DIENAttention(2 * D, H, config.attention_mlp_sizes)
        )
        self.evolution = RecurrentLayer(H, H, cell, config.augru_form)
        if self.aux_loss_alpha > 0:
            self.auxiliary = AuxiliaryLoss(H, 2 * D, config.aux_mlp_sizes)
        self.mlp = self.output_mlp(D + 6 * D + H)

    def encode_history(
        self, batch: Batch, embedded: EmbeddedBatch | None = None
    ) -> HistoryEncoding:
        """Embeddings and the interest extractor: everything that does not see the target."""
        history = super().encode_history(batch, embedded)
        interests, _ = self.extractor(history.behaviours, history.mask)  # (B, T, H)
        return replace(history, interests=interests)

    def score(
        self, history: HistoryEncoding, item: Tensor, category: Tensor, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        target = self.target_embedding(item, category, target)  # (B, E)
        weights = None
        if self.attention is not None:
            weights = self.attention(target, history.interests, history.mask)  # (B, T)
        final = self.evolution.final_state(history.interests, history.mask, weights)  # (B, H)
        features = torch.cat([target_features(history, target), final], dim=-1)  # (B, D+3E+H)
        return self.mlp(features)[:, 0], weights  # (B,), (B, T)
