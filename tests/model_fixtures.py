"""Tiny configs and random batches shared by the layer and model tests."""

from __future__ import annotations

from dataclasses import replace

import torch

from dien.config import ModelConfig
from dien.data.batch import Batch, VocabSizes

VOCAB = VocabSizes(users=7, items=20, categories=5)
TINY = ModelConfig(
    embedding_dim=3,
    hidden_size=4,
    mlp_sizes=(8, 4),
    attention_mlp_sizes=(5,),
    aux_mlp_sizes=(5,),
)


def make_batch(
    lengths: list[int],
    T: int | None = None,
    K: int = 1,
    seed: int = 0,
    negatives: bool = True,
    vocab: VocabSizes = VOCAB,
) -> Batch:
    """A valid random batch with the given history lengths (ids never 0 at real steps)."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    T = max(lengths, default=0) if T is None else T
    hist_lengths = torch.tensor(lengths, dtype=torch.int64)
    mask = torch.arange(T)[None, :] < hist_lengths[:, None]  # (B, T)

    def ids(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(1, high, shape, generator=g)

    batch = Batch(
        user=ids(vocab.users, B),
        item=ids(vocab.items, B),
        category=ids(vocab.categories, B),
        hist_items=ids(vocab.items, B, T) * mask,
        hist_cats=ids(vocab.categories, B, T) * mask,
        hist_lengths=hist_lengths,
        label=torch.randint(0, 2, (B,), generator=g).float(),
    )
    if negatives:
        batch = replace(
            batch,
            neg_items=ids(vocab.items, B, T, K) * mask[..., None],
            neg_cats=ids(vocab.categories, B, T, K) * mask[..., None],
        )
    batch.validate()
    return batch


def pad_batch(batch: Batch, extra: int) -> Batch:
    """The same batch with ``extra`` more padding steps at the end of every history."""

    def pad(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        zeros = t.new_zeros(t.shape[0], extra, *t.shape[2:])
        return torch.cat([t, zeros], dim=1)

    return replace(
        batch,
        hist_items=pad(batch.hist_items),
        hist_cats=pad(batch.hist_cats),
        neg_items=pad(batch.neg_items),
        neg_cats=pad(batch.neg_cats),
    )


def take_rows(batch: Batch, index: torch.Tensor, trim: bool = False) -> Batch:
    """Rows ``index`` of a batch; with ``trim``, padding beyond their longest history is cut."""
    rows = {
        name: None if (v := getattr(batch, name)) is None else v[index]
        for name in batch.__dataclass_fields__
    }
    taken = Batch(**rows)
    if not trim:
        return taken
    T = int(taken.hist_lengths.max()) if taken.size else 0
    cut = {
        name: None if (v := getattr(taken, name)) is None else v[:, :T]
        for name in ("hist_items", "hist_cats", "neg_items", "neg_cats")
    }
    return replace(taken, **cut)
