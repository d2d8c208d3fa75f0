"""Mini-batches from a split's ragged arrays, assembled with a few numpy gathers per batch.

Dimension letters: B batch, T history steps (the batch's longest truncated history), K
auxiliary-loss negatives per step.

Each sample's behaviour sequence is cut to its most recent ``max_history`` steps and the batch
is padded with id 0 to its own longest history. The sample order of an epoch and the
auxiliary-loss negatives depend only on ``(seed, epoch)`` (negatives also on the batch's
position in the epoch), so an epoch replays exactly, and a run resumed at batch ``j`` with
:meth:`BatchLoader.iterate` sees the same remaining batches as one that never stopped. In
training across processes, each ``rank`` above 0 draws its negatives from its own stream
(the shuffling is the same on every rank); rank 0 draws what a single process draws.

With ``bucket_by_length`` the shuffled samples are cut into chunks of ``BUCKET_BATCHES``
batches, each chunk is sorted by history length (stably), cut into batches, and the batches of
the epoch are shuffled, so a batch holds similar lengths and pads little.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from dien.data.batch import Batch
from dien.data.format import SplitArrays
from dien.data.sampling import NegativeSampler

BUCKET_BATCHES = 64  # batches per length-sorted chunk
_AUX_STREAM = 0xA0C5  # keeps the negatives' random stream apart from the shuffling stream


class BatchLoader:
    """Iterable of :class:`Batch` (CPU tensors) over one split."""

    def __init__(
        self,
        split: SplitArrays,
        *,
        batch_size: int,
        max_history: int,
        shuffle: bool,
        seed: int,
        bucket_by_length: bool = False,
        aux_sampler: NegativeSampler | None = None,
        aux_negatives: int = 1,
        drop_last: bool = False,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_history < 0:
            raise ValueError(f"max_history must be >= 0, got {max_history}")
        if aux_negatives < 1:
            raise ValueError(f"aux_negatives must be at least 1, got {aux_negatives}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if rank < 0:
            raise ValueError(f"rank must be >= 0, got {rank}")
        self.split = split
        self.batch_size = batch_size
        self.max_history = max_history
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_by_length = bucket_by_length
        self.aux_sampler = aux_sampler
        self.aux_negatives = aux_negatives
        self.drop_last = drop_last
        self.rank = rank
        self.epoch = 0
        self._offsets = np.asarray(split.hist_offsets, np.int64)  # (N+1,)
        self._lengths = np.minimum(np.diff(self._offsets), max_history)  # (N,) truncated

    @property
    def history_lengths(self) -> np.ndarray:
        """Each sample's history length after truncation to ``max_history``: ``(N,)``."""
        return self._lengths

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and auxiliary negatives the next iteration uses."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.iterate(0)

    def iterate(self, start_batch: int = 0) -> Iterator[Batch]:
        """The epoch's batches from position ``start_batch`` on (to resume mid-epoch)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must lie in [0, {len(self)}], got {start_batch}")
        batches = self.batch_indices()
        return (self.assemble(batches[j], j) for j in range(start_batch, len(batches)))

    def batch_indices(self) -> list[np.ndarray]:
        """Sample indices of each batch of the current epoch, in order."""
        n, size = len(self.split), self.batch_size
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.bucket_by_length:
            order = self._sort_chunks(order)
        stop = n - n % size if self.drop_last else n
        batches = [order[i : i + size] for i in range(0, stop, size)]
        if self.bucket_by_length and self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _sort_chunks(self, order: np.ndarray) -> np.ndarray:
        chunk = self.batch_size * BUCKET_BATCHES
        length = self._lengths[order]  # (N,)
        chunk_id = np.arange(len(order)) // chunk  # (N,)
        return order[np.lexsort((length, chunk_id))]  # stable within equal keys

    def assemble(self, index: np.ndarray, position: int = 0) -> Batch:
        """The batch of samples ``index``; ``position`` (in the epoch) seeds its negatives."""
        s = self.split
        length = self._lengths[index]  # (B,)
        T = int(length.max()) if len(index) else 0
        start = self._offsets[index + 1] - length  # (B,) most recent steps only
        mask = np.arange(T)[None, :] < length[:, None]  # (B, T)
        flat = (start[:, None] + np.arange(T)[None, :])[mask]  # (M,) M real steps
        hist_items = np.zeros((len(index), T), np.int64)  # (B, T)
        hist_cats = np.zeros((len(index), T), np.int64)  # (B, T)
        hist_items[mask] = s.hist_items[flat]
        hist_cats[mask] = s.hist_cats[flat]

        neg_items = neg_cats = None
        if self.aux_sampler is not None:
            stream = (self.seed, self.epoch, position, _AUX_STREAM)
            if self.rank:
                stream += (self.rank,)  # a stream of its own for each rank above 0
            rng = np.random.default_rng(stream)
            K = self.aux_negatives
            neg_items = np.zeros((len(index), T, K), np.int64)  # (B, T, K)
            neg_cats = np.zeros((len(index), T, K), np.int64)  # (B, T, K)
            neg_items[mask], neg_cats[mask] = self.aux_sampler.sample(hist_items[mask], K, rng)

        return Batch(
            user=torch.from_numpy(s.user[index]).long(),
            item=torch.from_numpy(s.item[index]).long(),
            category=torch.from_numpy(s.category[index]).long(),
            hist_items=torch.from_numpy(hist_items),
            hist_cats=torch.from_numpy(hist_cats),
            hist_lengths=torch.from_numpy(length.astype(np.int64)),
            label=torch.from_numpy(s.label[index].astype(np.float32)),
            neg_items=None if neg_items is None else torch.from_numpy(neg_items),
            neg_cats=None if neg_cats is None else torch.from_numpy(neg_cats),
        )
