"""The batch every model reads: target item, behaviour sequence and label.

Dimension letters: B batch, T history steps (the batch's longest history), K auxiliary-loss
negatives per step.

Invariants, checked by :meth:`Batch.validate` and relied on everywhere else:
- ids are int64; id 0 is padding (in histories) or the unknown id (everywhere);
- histories are left-aligned and in time order, oldest first: steps ``0 .. length-1`` of
  row ``b`` are real behaviours, steps ``length .. T-1`` are padding with id 0;
- ``T`` may be 0 when every history in the batch is empty.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """One mini-batch of click-through-rate samples.

    Example with B=2, T=3 (row 0 has two behaviours, row 1 none)::

        user         = [7, 3]
        item         = [12, 40]        category     = [2, 5]
        hist_items   = [[4, 9, 0],     hist_cats    = [[1, 2, 0],
                        [0, 0, 0]]                     [0, 0, 0]]
        hist_lengths = [2, 0]
        label        = [1., 0.]
    """

    user: Tensor  # (B,) int64
    item: Tensor  # (B,) int64, target item
    category: Tensor  # (B,) int64, target item's category
    hist_items: Tensor  # (B, T) int64, behaviour sequence, 0 = padding
    hist_cats: Tensor  # (B, T) int64
    hist_lengths: Tensor  # (B,) int64, number of real steps per row
    label: Tensor | None = None  # (B,) float32, 1 = click
    neg_items: Tensor | None = None  # (B, T, K) int64, auxiliary-loss negatives per step
    neg_cats: Tensor | None = None  # (B, T, K) int64

    @property
    def size(self) -> int:
        return self.item.shape[0]

    def history_mask(self) -> Tensor:
        """True at real behaviour steps, computed on the batch's device without a host sync."""
        T = self.hist_items.shape[1]
        steps = torch.arange(T, device=self.hist_items.device)  # (T,)
        return steps[None, :] < self.hist_lengths[:, None]  # (B, T)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {
            f.name: None
            if (v := getattr(self, f.name)) is None
            else v.to(device, non_blocking=non_blocking)
            for f in fields(self)
        }
        return Batch(**moved)

    def without_label(self) -> Batch:
        return replace(self, label=None, neg_items=None, neg_cats=None)

    def validate(self) -> None:
        """Raise ValueError naming the field when a contract above is broken."""
        B = self.item.shape[0]
        for name in ("user", "item", "category", "hist_lengths"):
            t = getattr(self, name)
            if t.shape != (B,):
                raise ValueError(f"Batch.{name} must have shape ({B},), got {tuple(t.shape)}")
        if self.hist_items.dim() != 2 or self.hist_items.shape[0] != B:
            raise ValueError(f"Batch.hist_items must be (B, T), got {tuple(self.hist_items.shape)}")
        if self.hist_cats.shape != self.hist_items.shape:
            raise ValueError("Batch.hist_cats must have the shape of Batch.hist_items")
        T = self.hist_items.shape[1]
        if B and (int(self.hist_lengths.min()) < 0 or int(self.hist_lengths.max()) > T):
            raise ValueError(f"Batch.hist_lengths must lie in [0, {T}]")
        if bool((self.hist_items.masked_fill(self.history_mask(), 0) != 0).any()):
            raise ValueError("Batch.hist_items must be 0 at padded steps (step >= length)")
        if self.neg_items is not None and self.neg_items.shape[:2] != (B, T):
            raise ValueError(
                f"Batch.neg_items must be (B, T, K), got {tuple(self.neg_items.shape)}"
            )


@dataclass(frozen=True)
class VocabSizes:
    """Rows of each embedding table, the unknown/padding id 0 included."""

    users: int
    items: int
    categories: int
