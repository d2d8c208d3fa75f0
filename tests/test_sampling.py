"""Negative sampling: never the positive, never id 0, and the intended distribution."""

import numpy as np
import pytest

from dien.data import sampling
from dien.data.sampling import NegativeSampler

FREQUENCY = np.array([0, 600, 5, 0, 200, 100, 95])  # id 3 never seen in training
CATEGORY = np.array([0, 1, 1, 2, 2, 3, 3])


def chi_square(counts: np.ndarray, p: np.ndarray) -> float:
    expected = counts.sum() * p
    keep = expected > 0
    assert counts[~keep].sum() == 0  # nothing drawn where the probability is 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


def test_frequency_draws_follow_the_frequency_without_the_positive():
    sampler = NegativeSampler(FREQUENCY, CATEGORY, "frequency")
    positives = np.full(100_000, 1)  # the most frequent item: 60% of the mass is cut out
    items, cats = sampler.sample(positives, 2, np.random.default_rng(0))

    assert items.shape == cats.shape == (100_000, 2) and items.dtype == np.int64
    np.testing.assert_array_equal(cats, CATEGORY[items])
    p = FREQUENCY.astype(float)
    p[[0, 1]] = 0
    p /= p.sum()
    counts = np.bincount(items.ravel(), minlength=len(p))
    # 3 degrees of freedom (4 drawable ids); the bound is far above the 99.9% quantile (16.3)
    assert chi_square(counts, p) < 18.5


def test_unknown_positive_excludes_nothing():
    sampler = NegativeSampler(FREQUENCY, CATEGORY, "frequency")
    items, _ = sampler.sample(np.zeros(50_000, np.int64), 1, np.random.default_rng(1))
    p = FREQUENCY / FREQUENCY.sum()
    assert chi_square(np.bincount(items.ravel(), minlength=len(p)), p) < 18.5  # df 4


def test_uniform_draws_every_other_id_equally():
    sampler = NegativeSampler(FREQUENCY, CATEGORY, "uniform")
    items, _ = sampler.sample(np.full(60_000, 4), 1, np.random.default_rng(2))
    p = np.array([0, 1, 1, 1, 0, 1, 1]) / 5  # ids 1..6 without the positive 4, id 3 included
    assert chi_square(np.bincount(items.ravel(), minlength=7), p) < 18.5  # df 4


@pytest.mark.parametrize("mode", ["frequency", "uniform"])
def test_never_the_positive_never_zero_any_shape(mode):
    sampler = NegativeSampler(FREQUENCY, CATEGORY, mode)
    rng = np.random.default_rng(3)
    positives = rng.integers(0, 7, (40, 30, 5))
    items, cats = sampler.sample(positives, 4, rng)
    assert items.shape == (40, 30, 5, 4)
    assert not np.any(items == positives[..., None])
    assert items.min() >= 1 and items.max() <= 6
    np.testing.assert_array_equal(cats, CATEGORY[items])
    if mode == "frequency":
        assert not np.any(items == 3)  # zero training frequency


def test_two_items_give_the_other_one():
    sampler = NegativeSampler(np.array([0, 7, 1]), np.array([0, 1, 1]), "frequency")
    items, _ = sampler.sample(np.array([1, 2, 1, 2]), 3, np.random.default_rng(0))
    np.testing.assert_array_equal(items, [[2] * 3, [1] * 3, [2] * 3, [1] * 3])


def test_same_generator_state_same_draws_and_table_equals_search(monkeypatch):
    positives = np.random.default_rng(4).integers(0, 7, 1000)
    table = NegativeSampler(FREQUENCY, CATEGORY, "frequency")
    monkeypatch.setattr(sampling, "TABLE_LIMIT", 0)
    search = NegativeSampler(FREQUENCY, CATEGORY, "frequency")
    assert table._table is not None and search._table is None
    a, _ = table.sample(positives, 3, np.random.default_rng(9))
    b, _ = search.sample(positives, 3, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)
    c, _ = table.sample(positives, 3, np.random.default_rng(10))
    assert not np.array_equal(a, c)


def test_empty_positives():
    sampler = NegativeSampler(FREQUENCY, CATEGORY, "uniform")
    items, cats = sampler.sample(np.zeros((0, 3), np.int64), 2, np.random.default_rng(0))
    assert items.shape == cats.shape == (0, 3, 2)


def test_errors():
    with pytest.raises(ValueError, match="at least two drawable items"):
        NegativeSampler(np.array([0, 5]), np.array([0, 1]), "uniform")
    with pytest.raises(ValueError, match="at least two drawable items.*training frequency > 0"):
        NegativeSampler(np.array([0, 5, 0, 0]), np.array([0, 1, 1, 1]), "frequency")
    with pytest.raises(ValueError, match="same length"):
        NegativeSampler(FREQUENCY, CATEGORY[:3], "uniform")
    with pytest.raises(ValueError, match="mode must be"):
        NegativeSampler(FREQUENCY, CATEGORY, "popular")
    with pytest.raises(ValueError, match="non-negative integer"):
        NegativeSampler(FREQUENCY * 0.5, CATEGORY, "frequency")
    sampler = NegativeSampler(FREQUENCY, CATEGORY, "frequency")
    with pytest.raises(ValueError, match=r"must lie in \[0, 7\)"):
        sampler.sample(np.array([7]), 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="k must be at least 1"):
        sampler.sample(np.array([1]), 0, np.random.default_rng(0))
