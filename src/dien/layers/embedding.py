"""Embedding layer: user, item and category id tables.

Dimension letters: B batch, T history steps, K auxiliary-loss negatives per step, D embedding
width. An item is represented by its item embedding concatenated with its category's
embedding, so items (the target, the behaviours, the negatives) are 2D wide.

Id 0 is the padding / unknown id of every table (``padding_idx=0``): its row stays zero and
never receives a gradient, so padded history steps embed to zero vectors. Other rows start
from a normal distribution with standard deviation ``INIT_STD`` (``torch.nn.Embedding``'s
default of 1 makes sums over a long history very large at the start of training).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dien.data.batch import Batch, VocabSizes
from dien.layers.fused import fused_history_embeddings, fused_inference_supported

INIT_STD = 0.05


@dataclass(frozen=True)
class EmbeddedBatch:
    """The embeddings of one batch's ids."""

    user: Tensor  # (B, D)
    target: Tensor  # (B, 2D)
    behaviours: Tensor  # (B, T, 2D), zero at padded steps
    pooled: Tensor  # (B, 2D) sum of the behaviours at the valid steps
    negatives: Tensor | None  # (B, T, K, 2D) auxiliary-loss negatives, or None


class EmbeddingLayer(nn.Module):
    """The user, item and category tables of a click-through-rate model.

    ``sparse=True`` makes the tables produce sparse gradients (only the rows of the batch),
    to be paired with a row-wise optimizer such as ``torch.optim.SparseAdam``.
    """

    def __init__(self, vocab: VocabSizes, dim: int, sparse: bool) -> None:
        super().__init__()
        self.dim = dim
        self.item_dim = 2 * dim
        self.user = nn.Embedding(vocab.users, dim, padding_idx=0, sparse=sparse)
        self.item = nn.Embedding(vocab.items, dim, padding_idx=0, sparse=sparse)
        self.category = nn.Embedding(vocab.categories, dim, padding_idx=0, sparse=sparse)
        for table in (self.user, self.item, self.category):
            init_table(table)

    def items(self, items: Tensor, categories: Tensor) -> Tensor:
        """Embed items of any shape ``(...)`` as ``(..., 2D)``: concat(item, category)."""
        return torch.cat([lookup(self.item, items), lookup(self.category, categories)], dim=-1)

    def history(self, items: Tensor, categories: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The behaviour sequence ``(B, T)`` embedded ``(B, T, 2D)``, and its sum over the
        steps where ``mask (B, T)`` is True ``(B, 2D)``.

        Where no gradient is wanted on the CPU, one call of the fused kernel
        (:func:`dien.layers.fused.fused_history_embeddings`) copies the table rows into place
        and sums them; otherwise the lookups, their concatenation and a masked sum.
        """
        if fused_inference_supported(self.item.weight, self.category.weight):
            return fused_history_embeddings(
                self.item.weight, self.category.weight, items, categories, mask
            )
        behaviours = self.items(items, categories)  # (B, T, 2D)
        return behaviours, sum_pool(behaviours, mask)  # (B, T, 2D), (B, 2D)

    def items_together(self, items: Sequence[Tensor], categories: Sequence[Tensor]) -> list[Tensor]:
        """Embed several item id tensors with one lookup per table, each as ``(..., 2D)``.

        The same values as one :meth:`items` call per tensor, but a sparse table then gets one
        gradient per step (one row per distinct id) instead of one per call for the optimizer
        to merge.
        """
        sizes = [ids.numel() for ids in items]
        flat_items = torch.cat([ids.reshape(-1) for ids in items])  # (n,)
        flat_categories = torch.cat([ids.reshape(-1) for ids in categories])  # (n,)
        embedded = self.items(flat_items, flat_categories)  # (n, 2D)
        return [
            part.view(*ids.shape, self.item_dim)  # (..., 2D)
            for part, ids in zip(embedded.split(sizes), items, strict=True)
        ]

    def forward(self, batch: Batch, with_negatives: bool = False) -> EmbeddedBatch:
        """Embed the user, the target item, the behaviour sequence (and its sum over the valid
        steps) and optionally negatives. With negatives, one lookup per table."""
        mask = batch.history_mask()  # (B, T)
        user = lookup(self.user, batch.user)  # (B, D)
        if not with_negatives:
            target = self.items(batch.item, batch.category)  # (B, 2D)
            behaviours, pooled = self.history(batch.hist_items, batch.hist_cats, mask)
            return EmbeddedBatch(user, target, behaviours, pooled, negatives=None)
        if batch.neg_items is None or batch.neg_cats is None:
            raise ValueError("auxiliary-loss negatives requested but the batch has none")
        target, behaviours, negatives = self.items_together(
            [batch.item, batch.hist_items, batch.neg_items],
            [batch.category, batch.hist_cats, batch.neg_cats],
        )  # (B, 2D), (B, T, 2D), (B, T, K, 2D)
        return EmbeddedBatch(user, target, behaviours, sum_pool(behaviours, mask), negatives)


def sum_pool(behaviours: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``behaviours (B, T, E)`` over the steps where ``mask (B, T)`` is True: ``(B, E)``."""
    return (behaviours * mask[..., None].to(behaviours.dtype)).sum(dim=1)  # (B, E)


def lookup(table: nn.Embedding, ids: Tensor) -> Tensor:
    """``table(ids)``, with each distinct id looked up once for sparse tables on the CPU.

    A sparse gradient holds one row per looked-up id, duplicates included: a history batch of
    128 x 100 ids gives 12,800 rows that the optimizer must first sort and merge, although a
    batch names a few thousand distinct items and a few dozen categories. Looking up the
    distinct ids and gathering them back makes the sparse gradient one row per distinct id;
    the values are identical. On CUDA the plain lookup is kept, because ``torch.unique`` has a
    data-dependent size and would make every step wait for the device; so it is where no
    gradient is taken (scoring), where the sort would be pure cost.
    """
    wants_gradient = torch.is_grad_enabled() and table.weight.requires_grad
    if not (table.sparse and wants_gradient and ids.device.type == "cpu"):
        return table(ids)  # (..., D)
    distinct, position = torch.unique(ids, return_inverse=True)  # (U,), same shape as ids
    return table(distinct)[position]  # (..., D)


@torch.no_grad()
def init_table(table: nn.Embedding, std: float = INIT_STD) -> None:
    """Normal(0, std) rows, the padding row 0 kept at zero."""
    table.weight.normal_(0.0, std)
    table.weight[0].zero_()
