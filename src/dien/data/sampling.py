"""Negative item sampling for the auxiliary loss (and anywhere else a non-clicked item is needed).

Two distributions over the item ids 1..n_items-1 (id 0, the unknown/padding id, is never drawn):

- ``frequency``: proportional to ``item_frequency`` (occurrences in the training split), as the
  authors' code draws its auxiliary-loss negatives; items never seen in training are not drawn;
- ``uniform``: every item id equally likely.

Each draw is conditioned on differing from its positive: the positive's own share is cut out
of the distribution and the rest renormalised, exactly what redrawing until different gives,
but in one vectorised pass with no loop whatever the positive's share.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

TABLE_LIMIT = 2**24  # total mass up to which draws use a lookup table (at most 64 MiB)


class NegativeSampler:
    """Draws item ids different from given positives; returns them with their categories."""

    def __init__(
        self,
        item_frequency: np.ndarray,
        item_category: np.ndarray,
        mode: Literal["frequency", "uniform"],
    ) -> None:
        item_frequency = np.asarray(item_frequency)
        item_category = np.asarray(item_category)
        if item_frequency.ndim != 1 or item_category.shape != item_frequency.shape:
            raise ValueError(
                "item_frequency and item_category must be 1-D arrays of the same length, got "
                f"shapes {item_frequency.shape} and {item_category.shape}"
            )
        if item_frequency.dtype.kind not in "iu" or (
            len(item_frequency) and item_frequency.min() < 0
        ):
            raise ValueError("item_frequency must hold non-negative integer counts")
        if mode not in ("frequency", "uniform"):
            raise ValueError(f"mode must be 'frequency' or 'uniform', got {mode!r}")
        self.mode = mode
        self.n_items = len(item_frequency)
        self.item_category = item_category.astype(np.int64)

        weight = item_frequency.astype(np.int64).copy() if mode == "frequency" else None
        if weight is None:
            weight = np.ones(self.n_items, np.int64)
        if self.n_items:
            weight[0] = 0  # id 0 is never a negative
        drawable = int((weight > 0).sum())
        if drawable < 2:
            raise ValueError(
                f"negative sampling ({mode}) needs at least two drawable items (ids >= 1"
                f"{' with a training frequency > 0' if mode == 'frequency' else ''}), "
                f"found {drawable}: a negative different from the positive cannot be drawn"
            )
        self._weight = weight  # (n_items,) int64
        self._cumulative = np.cumsum(weight)  # (n_items,) int64, mass of ids <= i
        self._total = int(self._cumulative[-1])
        # Inverse CDF: a lookup table (one entry per unit of mass) when small, else a search.
        dtype = np.int32 if self.n_items < 2**31 else np.int64
        small = self._total <= TABLE_LIMIT
        self._table = np.repeat(np.arange(self.n_items, dtype=dtype), weight) if small else None

    def sample(
        self, positives: np.ndarray, k: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """``k`` negatives per positive: items (..., k) int64 != positive and != 0, categories."""
        positives = np.asarray(positives)
        if positives.dtype.kind not in "iu":
            raise ValueError(f"positives must be integer item ids, got dtype {positives.dtype}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if positives.size and (positives.min() < 0 or positives.max() >= self.n_items):
            raise ValueError(f"positive item ids must lie in [0, {self.n_items})")

        pos = np.broadcast_to(positives[..., None], (*positives.shape, k))  # (..., k)
        own = self._weight[pos]  # (..., k) the positive's share, cut out of the draw
        own_start = self._cumulative[pos] - own  # (..., k) where that share begins
        r = rng.integers(0, self._total - own)  # (..., k) a point in the remaining mass
        r = r + own * (r >= own_start)  # (..., k) skip over the positive's share
        if self._table is not None:
            items = self._table[r].astype(np.int64)  # (..., k)
        else:
            items = np.searchsorted(self._cumulative, r, side="right")  # (..., k)
        return items, self.item_category[items]
