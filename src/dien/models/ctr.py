"""What every click-through-rate model shares: its output, its history encoding, its base class.

Dimension letters: B batch, T history steps, D embedding width, E = 2D item width (item and
category embeddings concatenated), H hidden width of the GRUs, K negatives per step.

A model's forward pass is split in two so that serving can score many candidate targets
against one user's history without repeating the target-independent work:

- :meth:`CTRModel.encode_history` depends only on the user and the behaviour sequence
  (embeddings, sum pooling, the interest extractor);
- :meth:`CTRModel.score` combines a :class:`HistoryEncoding` with target items.

For ``N`` candidates of one user, encode a batch of one row, ``expand(N)`` the encoding and
score the ``N`` targets.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from dien.config import ModelConfig
from dien.data.batch import Batch, VocabSizes
from dien.layers.auxiliary import AuxiliaryLoss
from dien.layers.embedding import EmbeddedBatch, EmbeddingLayer, lookup
from dien.layers.mlp import MLP


@dataclass
class ModelOutput:
    """What a model returns for a batch."""

    logit: Tensor  # (B,) click logit; a 2-way softmax equals a sigmoid of one logit
    aux_loss: Tensor | None = None  # () mean over valid step pairs, NOT multiplied by alpha
    attention: Tensor | None = None  # (B, T) attention weights where the model has them


@dataclass(frozen=True)
class HistoryEncoding:
    """The target-independent part of a forward pass."""

    user: Tensor  # (B, D) user embedding
    behaviours: Tensor  # (B, T, E) behaviour embeddings, zero at padding
    mask: Tensor  # (B, T) bool, True at real behaviours
    pooled: Tensor  # (B, E) sum of the behaviour embeddings
    interests: Tensor | None = None  # (B, T, H) GRU hidden states, zero at padding
    user_bias: Tensor | None = None  # (B,) a per-user logit term (Wide&Deep's wide part)

    def expand(self, n: int) -> HistoryEncoding:
        """Repeat a one-row encoding ``n`` times (views, no copy), to score ``n`` targets."""
        if self.user.shape[0] != 1:
            raise ValueError(f"expand needs a one-row encoding, got {self.user.shape[0]} rows")
        expanded = {
            f.name: None if (v := getattr(self, f.name)) is None else v.expand(n, *v.shape[1:])
            for f in fields(self)
        }
        return replace(self, **expanded)


class CTRModel(nn.Module):
    """Base class: embeddings, the output MLP, the auxiliary loss hook and parameter groups.

    Subclasses build ``self.mlp`` and implement :meth:`score`; models with an interest
    extractor override :meth:`encode_history` to fill ``interests``.
    """

    supports_aux_loss = False

    def __init__(self, config: ModelConfig, vocab: VocabSizes, aux_loss_alpha: float = 0.0):
        super().__init__()
        if aux_loss_alpha > 0 and not self.supports_aux_loss:
            raise ValueError(f"{type(self).__name__} has no interest extractor for an aux loss")
        self.config = config
        self.aux_loss_alpha = float(aux_loss_alpha)
        self.embedding = EmbeddingLayer(vocab, config.embedding_dim, config.sparse_embeddings)
        self.auxiliary: AuxiliaryLoss | None = None

    def output_mlp(self, in_features: int) -> MLP:
        """The output MLP (``config.mlp_sizes``, ``config.activation``) -> one logit."""
        return MLP(in_features, self.config.mlp_sizes, self.config.activation)

    def forward(self, batch: Batch) -> ModelOutput:
        with_negatives = self.wants_negatives(batch)
        embedded = self.embedding(batch, with_negatives)  # one lookup per table
        history = self.encode_history(batch, embedded)
        logit, attention = self.score(history, batch.item, batch.category, embedded.target)
        aux_loss = None
        if with_negatives:
            assert embedded.negatives is not None
            aux_loss = self.auxiliary_loss(history, embedded.negatives)  # ()
        return ModelOutput(logit, aux_loss, attention)

    def encode_history(
        self, batch: Batch, embedded: EmbeddedBatch | None = None
    ) -> HistoryEncoding:
        """User and behaviour embeddings and the sum-pooled history.

        ``embedded``: the batch's embeddings when already looked up (by :meth:`forward`).
        """
        mask = batch.history_mask()  # (B, T)
        if embedded is None:
            user = lookup(self.embedding.user, batch.user)  # (B, D)
            behaviours, pooled = self.embedding.history(batch.hist_items, batch.hist_cats, mask)
        else:
            user, behaviours, pooled = embedded.user, embedded.behaviours, embedded.pooled
        return HistoryEncoding(user=user, behaviours=behaviours, mask=mask, pooled=pooled)

    def score(
        self, history: HistoryEncoding, item: Tensor, category: Tensor, target: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """The click logit ``(B,)`` of target items and the attention weights ``(B, T)``.

        ``target``: the targets' embeddings ``(B, E)`` when already looked up.
        """
        raise NotImplementedError

    def target_embedding(self, item: Tensor, category: Tensor, target: Tensor | None) -> Tensor:
        """``target`` when given, else the embeddings of ``item`` and ``category``: ``(B, E)``."""
        return self.embedding.items(item, category) if target is None else target

    def wants_negatives(self, batch: Batch) -> bool:
        """Whether this model computes the auxiliary loss on this batch.

        True when the model has the loss on and the batch carries negatives. Raises ValueError
        in training mode when the loss is on but the batch has no negatives; in eval mode such
        a batch simply gets no auxiliary loss.
        """
        if self.auxiliary is None or self.aux_loss_alpha <= 0:
            return False
        if batch.neg_items is None or batch.neg_cats is None:
            if self.training:
                raise ValueError(
                    f"the auxiliary loss is on (alpha={self.aux_loss_alpha}) but the batch has "
                    "no negatives (neg_items); sample them in the loader (aux_sampler)"
                )
            return False
        return True

    def auxiliary_loss(self, history: HistoryEncoding, negatives: Tensor) -> Tensor:
        """The auxiliary loss ``()`` of the interest extractor, given the negatives' embeddings
        ``(B, T, K, E)``."""
        assert self.auxiliary is not None and history.interests is not None
        return self.auxiliary(history.interests, history.behaviours, negatives, history.mask)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The embedding tables (sparse gradients when ``config.sparse_embeddings``)."""
        return [m.weight for m in self.modules() if isinstance(m, nn.Embedding)]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other parameter (dense gradients)."""
        sparse = {id(p) for p in self.sparse_parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]


def target_features(history: HistoryEncoding, target: Tensor) -> Tensor:
    """``[user, target, pooled history, target * pooled history]`` -> ``(B, D + 3E)``."""
    return torch.cat([history.user, target, history.pooled, target * history.pooled], dim=-1)
