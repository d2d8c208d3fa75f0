"""Batch loader: truncation, padding, coverage, reproducibility, bucketing, resume, negatives."""

import numpy as np
import pytest
import torch

from dien.data.format import PreparedDataset, SplitArrays, write_prepared
from dien.data.loader import BatchLoader
from dien.data.sampling import NegativeSampler

N_ITEMS = 50
ITEM_CATEGORY = np.arange(N_ITEMS) % 7 + (np.arange(N_ITEMS) > 0)  # 0 only for id 0
ITEM_CATEGORY[0] = 0


def make_split(n: int, seed: int, max_len: int = 12) -> SplitArrays:
    """Sample i targets item 1 + i % 49 and remembers its row in ``user`` (= i)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_len + 1, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    hist_items = rng.integers(1, N_ITEMS, offsets[-1])
    return SplitArrays(
        user=np.arange(n),
        item=1 + np.arange(n) % (N_ITEMS - 1),
        category=ITEM_CATEGORY[1 + np.arange(n) % (N_ITEMS - 1)],
        label=(np.arange(n) % 3 == 0).astype(np.float32),
        timestamp=np.arange(n),
        hist_offsets=offsets,
        hist_items=hist_items,
        hist_cats=ITEM_CATEGORY[hist_items],
    )


def sampler() -> NegativeSampler:
    frequency = np.random.default_rng(0).integers(1, 20, N_ITEMS)
    return NegativeSampler(frequency, ITEM_CATEGORY, "frequency")


def expected_rows(split: SplitArrays, rows: np.ndarray, max_history: int):
    """Reference: each row's most recent ``max_history`` steps, padded to the batch maximum."""
    hists = [split.history(i)[0][-max_history:] if max_history else [] for i in rows]
    cats = [split.history(i)[1][-max_history:] if max_history else [] for i in rows]
    T = max((len(h) for h in hists), default=0)
    pad = [list(h) + [0] * (T - len(h)) for h in hists]
    pad_cats = [list(c) + [0] * (T - len(c)) for c in cats]
    return pad, pad_cats, [len(h) for h in hists]


def test_batches_truncate_to_the_most_recent_and_pad_with_zeros():
    split = make_split(37, 0)
    loader = BatchLoader(split, batch_size=8, max_history=5, shuffle=True, seed=1)
    assert len(loader) == 5
    sizes = []
    for batch in loader:
        batch.validate()
        rows = batch.user.numpy()
        items, cats, lengths = expected_rows(split, rows, 5)
        assert batch.hist_items.tolist() == items and batch.hist_cats.tolist() == cats
        assert batch.hist_lengths.tolist() == lengths
        assert batch.hist_items.shape[1] == max(lengths)  # T = the batch's longest history
        assert batch.item.tolist() == split.item[rows].tolist()
        assert batch.category.tolist() == split.category[rows].tolist()
        assert batch.label.tolist() == split.label[rows].tolist()
        assert batch.user.dtype == batch.hist_items.dtype == batch.hist_lengths.dtype == torch.int64
        assert batch.label.dtype == torch.float32
        assert batch.neg_items is None and batch.neg_cats is None
        sizes.append(batch.size)
    assert sizes == [8, 8, 8, 8, 5]


def test_truncation_keeps_the_last_steps_of_a_known_history():
    split = SplitArrays(
        user=np.array([0, 1]),
        item=np.array([3, 4]),
        category=np.array([1, 1]),
        label=np.array([1.0, 0.0]),
        timestamp=np.array([0, 0]),
        hist_offsets=np.array([0, 6, 8]),
        hist_items=np.array([11, 12, 13, 14, 15, 16, 21, 22]),
        hist_cats=np.array([1, 2, 3, 4, 5, 6, 1, 2]),
    )
    batch = next(iter(BatchLoader(split, batch_size=2, max_history=4, shuffle=False, seed=0)))
    assert batch.hist_items.tolist() == [[13, 14, 15, 16], [21, 22, 0, 0]]
    assert batch.hist_cats.tolist() == [[3, 4, 5, 6], [1, 2, 0, 0]]
    assert batch.hist_lengths.tolist() == [4, 2]


@pytest.mark.parametrize("bucket", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_once_per_epoch(bucket, drop_last):
    split = make_split(1000, 1)
    loader = BatchLoader(
        split,
        batch_size=7,
        max_history=6,
        shuffle=True,
        seed=3,
        bucket_by_length=bucket,
        drop_last=drop_last,
    )
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        rows = np.concatenate([b.user.numpy() for b in loader])
        assert len(loader) == (142 if drop_last else 143)
        if drop_last:
            assert len(rows) == 994 and len(np.unique(rows)) == 994
        else:
            np.testing.assert_array_equal(np.sort(rows), np.arange(1000))


def test_no_shuffle_keeps_the_split_order():
    split = make_split(20, 2)
    loader = BatchLoader(split, batch_size=6, max_history=3, shuffle=False, seed=0)
    assert [b.user.tolist() for b in loader] == [
        list(range(0, 6)),
        list(range(6, 12)),
        list(range(12, 18)),
        [18, 19],
    ]


def batches_as_lists(loader):
    return [
        [b.user.tolist(), b.hist_items.tolist(), b.neg_items.tolist(), b.neg_cats.tolist()]
        for b in loader
    ]


@pytest.mark.parametrize("bucket", [False, True])
def test_reproducible_per_seed_and_epoch_and_fresh_across_epochs(bucket):
    split = make_split(300, 3)

    def make(seed):
        return BatchLoader(
            split,
            batch_size=16,
            max_history=8,
            shuffle=True,
            seed=seed,
            bucket_by_length=bucket,
            aux_sampler=sampler(),
            aux_negatives=2,
        )

    a, b, c = make(5), make(5), make(6)
    a.set_epoch(2)
    b.set_epoch(2)
    first = batches_as_lists(a)
    assert first == batches_as_lists(b) == batches_as_lists(a)
    b.set_epoch(3)
    later = batches_as_lists(b)
    assert [x[0] for x in later] != [x[0] for x in first]  # another order
    c.set_epoch(2)
    assert [x[0] for x in batches_as_lists(c)] != [x[0] for x in first]  # another seed

    # Same sample order, fresh negatives: compare one sample's negatives across epochs.
    def negatives_of_sample_0(loader):
        for batch in loader:
            row = (batch.user == 0).nonzero()
            if len(row):
                return batch.neg_items[row[0, 0]].tolist()

    assert negatives_of_sample_0(a) != negatives_of_sample_0(b)


def test_aux_negatives_fill_real_steps_only_and_differ_from_the_step():
    split = make_split(200, 4)
    loader = BatchLoader(
        split,
        batch_size=32,
        max_history=10,
        shuffle=True,
        seed=0,
        aux_sampler=sampler(),
        aux_negatives=3,
    )
    for batch in loader:
        B, T = batch.hist_items.shape
        assert batch.neg_items.shape == batch.neg_cats.shape == (B, T, 3)
        assert batch.neg_items.dtype == torch.int64
        mask = batch.history_mask()  # (B, T)
        assert bool((batch.neg_items[~mask] == 0).all()) and bool(
            (batch.neg_cats[~mask] == 0).all()
        )
        real = batch.neg_items[mask]  # (M, 3)
        assert bool((real > 0).all())
        assert not bool((real == batch.hist_items[mask][:, None]).any())
        expected_cats = torch.from_numpy(ITEM_CATEGORY)[batch.neg_items]
        assert torch.equal(batch.neg_cats, expected_cats.masked_fill(~mask[..., None], 0))


def padded_cells(loader):
    return sum(b.hist_items.numel() for b in loader)


def test_bucketing_reduces_padding_and_shuffles_batch_order():
    split = make_split(4000, 5, max_len=60)
    kw = dict(batch_size=16, max_history=50, shuffle=True, seed=0)
    plain = BatchLoader(split, **kw)
    bucketed = BatchLoader(split, bucket_by_length=True, **kw)
    real = int(np.minimum(split.lengths(), 50).sum())
    assert padded_cells(bucketed) < 0.8 * padded_cells(plain)
    assert real <= padded_cells(bucketed)

    widths = [b.hist_items.shape[1] for b in bucketed]
    assert (
        sorted(widths) != widths and sorted(widths, reverse=True) != widths
    )  # batches are not in length order
    for batch in bucketed:  # inside a chunk of 64 batches, a batch holds neighbouring lengths
        assert int(batch.hist_lengths.max() - batch.hist_lengths.min()) <= 10


def test_bucketing_without_shuffle_sorts_each_chunk():
    split = make_split(100, 6)
    loader = BatchLoader(
        split, batch_size=10, max_history=20, shuffle=False, seed=0, bucket_by_length=True
    )
    lengths = np.concatenate([b.hist_lengths.numpy() for b in loader])
    assert lengths.tolist() == sorted(lengths.tolist())  # one chunk: sorted all the way


@pytest.mark.parametrize("start", [0, 1, 7, 19])
def test_resume_from_batch_j_gives_the_remaining_batches(start):
    split = make_split(300, 7)
    loader = BatchLoader(
        split,
        batch_size=16,
        max_history=8,
        shuffle=True,
        seed=2,
        bucket_by_length=True,
        aux_sampler=sampler(),
    )
    loader.set_epoch(1)
    full = batches_as_lists(loader)
    assert len(full) == 19
    fresh = BatchLoader(
        split,
        batch_size=16,
        max_history=8,
        shuffle=True,
        seed=2,
        bucket_by_length=True,
        aux_sampler=sampler(),
    )
    fresh.set_epoch(1)
    assert batches_as_lists(fresh.iterate(start)) == full[start:]
    with pytest.raises(ValueError, match=r"start_batch must lie in \[0, 19\]"):
        fresh.iterate(20)


def test_empty_histories_give_zero_width_batches():
    split = make_split(10, 8, max_len=0)
    loader = BatchLoader(
        split, batch_size=4, max_history=5, shuffle=False, seed=0, aux_sampler=sampler()
    )
    batch = next(iter(loader))
    batch.validate()
    assert batch.hist_items.shape == (4, 0) and batch.neg_items.shape == (4, 0, 1)
    assert batch.hist_lengths.tolist() == [0, 0, 0, 0]


def test_reads_a_memory_mapped_split(tmp_path):
    split = make_split(50, 9)
    vocabs = {
        "users": ["<unk>", *(f"u{i}" for i in range(1, 50))],
        "items": ["<unk>", *(f"i{i}" for i in range(1, N_ITEMS))],
        "categories": ["<unk>", *(f"c{i}" for i in range(1, 8))],
    }
    path = write_prepared(
        tmp_path / "ds",
        splits={"train": split, "valid": SplitArrays.empty(), "test": SplitArrays.empty()},
        vocabs=vocabs,
        item_category=ITEM_CATEGORY,
        item_frequency=np.ones(N_ITEMS, np.int64),
        source="events",
        params={},
        counts={},
    )
    ds = PreparedDataset.open(path)
    aux = NegativeSampler(ds.item_frequency, ds.item_category, "uniform")
    from_disk = BatchLoader(
        ds.split("train"), batch_size=8, max_history=4, shuffle=True, seed=0, aux_sampler=aux
    )
    in_memory = BatchLoader(
        split, batch_size=8, max_history=4, shuffle=True, seed=0, aux_sampler=aux
    )
    assert batches_as_lists(from_disk) == batches_as_lists(in_memory)


def test_bad_arguments():
    split = make_split(5, 0)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        BatchLoader(split, batch_size=0, max_history=3, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="max_history must be >= 0"):
        BatchLoader(split, batch_size=2, max_history=-1, shuffle=False, seed=0)
    loader = BatchLoader(split, batch_size=2, max_history=3, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        loader.set_epoch(-1)
