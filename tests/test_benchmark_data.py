"""The benchmark's generated data (shapes, statistics, signal) and its FLOP counter."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package

from benchmarks import flops  # noqa: E402
from benchmarks.others.common import Timer, auc, padded  # noqa: E402
from benchmarks.synthetic import (  # noqa: E402
    SyntheticData,
    SyntheticSpec,
    expected_length,
    generate,
    length_mu,
)

SMALL = SyntheticSpec(
    train_samples=6_000, test_samples=2_000, users=500, items=2_000, categories=40, seed=3
)


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate(SMALL)


def test_shapes_dtypes_and_ranges(data: SyntheticData) -> None:
    for split, n in (("train", 6_000), ("test", 2_000)):
        s = data.splits[split]
        for key in ("user", "item", "category", "label"):
            assert s[key].shape == (n,)
        offsets = s["hist_offsets"]
        assert offsets.shape == (n + 1,) and offsets[0] == 0
        assert np.all(np.diff(offsets) >= 1)
        total = offsets[-1]
        for key in ("hist_items", "hist_cats", "neg_items", "neg_cats"):
            assert s[key].shape == (total,) and s[key].dtype == np.int32
        assert s["label"].dtype == np.float32 and set(np.unique(s["label"])) == {0.0, 1.0}
        assert s["user"].min() >= 1 and s["user"].max() < SMALL.users
        assert s["hist_items"].min() >= 1 and s["hist_items"].max() < SMALL.items
        # categories are the item's category everywhere
        np.testing.assert_array_equal(s["category"], data.item_category[s["item"]])
        np.testing.assert_array_equal(s["hist_cats"], data.item_category[s["hist_items"]])
        np.testing.assert_array_equal(s["neg_cats"], data.item_category[s["neg_items"]])
        assert not np.any(s["neg_items"] == s["hist_items"])
        assert s["label"].mean() == 0.5
    assert data.item_category[0] == 0 and data.item_category[1:].min() >= 1
    assert set(np.unique(data.item_category[1:])) == set(range(1, SMALL.categories))


def test_pairs_share_history_and_negatives_differ(data: SyntheticData) -> None:
    """Each clicked sample has a twin with the same user and history and another target."""
    s = data.splits["train"]
    off = s["hist_offsets"]
    keys = {}
    for i in range(s["label"].size):
        hist = s["hist_items"][off[i] : off[i + 1]].tobytes()
        keys.setdefault((int(s["user"][i]), hist), []).append(i)
    pairs = [v for v in keys.values() if len(v) == 2]
    assert len(pairs) >= 0.99 * s["label"].size / 2
    for a, b in pairs[:200]:
        assert {s["label"][a], s["label"][b]} == {0.0, 1.0}
        assert s["item"][a] != s["item"][b]


def test_split_arrays_carry_the_samples_and_their_histories(data: SyntheticData) -> None:
    arrays = data.split_arrays("test")
    raw = data.splits["test"]
    assert len(arrays) == raw["label"].size
    assert np.array_equal(arrays.lengths(), data.lengths("test"))
    assert np.array_equal(arrays.item, raw["item"])
    assert np.array_equal(arrays.hist_offsets, raw["hist_offsets"])
    assert np.array_equal(arrays.hist_cats, raw["hist_cats"])
    assert not arrays.timestamp.any()


def test_history_lengths_have_the_wanted_mean_and_cap() -> None:
    spec = SyntheticSpec(train_samples=60_000, test_samples=0, users=100, items=100,
                         categories=10)  # fmt: skip
    lengths = generate(spec).lengths("train")
    assert lengths.max() == 100 and lengths.min() >= 1
    assert abs(lengths.mean() - 13.7) < 0.25  # standard error of the mean is about 0.07
    mu = length_mu(13.7, 1.0, 100)
    assert expected_length(mu, 1.0, 100) == pytest.approx(13.7, abs=1e-9)


def test_expected_length_matches_direct_sum() -> None:
    """E[min(max(ceil(e^X), 1), cap)] by summing k * P(L = k) with the normal CDF."""
    from math import erf, log, sqrt

    mu, sigma, cap = 1.7, 0.8, 20

    def cdf(k: int) -> float:  # P(L <= k) for k < cap
        return 0.5 * (1 + erf((log(k) - mu) / (sigma * sqrt(2))))

    probs = [cdf(1)] + [cdf(k) - cdf(k - 1) for k in range(2, cap)]
    probs.append(1 - cdf(cap - 1))
    direct = sum(k * p for k, p in zip(range(1, cap + 1), probs, strict=True))
    assert expected_length(mu, sigma, cap) == pytest.approx(direct, rel=1e-12)


def test_category_overlap_predicts_clicks(data: SyntheticData) -> None:
    """The learnable signal: share of history in the target's category ranks clicks first."""
    s = data.splits["test"]
    lengths = np.diff(s["hist_offsets"])
    row = np.repeat(np.arange(lengths.size), lengths)
    same = (s["hist_cats"] == s["category"][row]).astype(float)
    overlap = np.bincount(row, same, lengths.size) / lengths
    assert auc(s["label"], overlap) > 0.8


def test_write_prepared_opens_with_the_samples_and_an_empty_validation_split(
    tmp_path: Path, data: SyntheticData
) -> None:
    from dien.data.format import PreparedDataset

    ds = PreparedDataset.open(data.write_prepared(tmp_path / "ds", command="test"))
    assert len(ds.split("valid")) == 0
    for split in ("train", "test"):
        opened, raw = ds.split(split), data.splits[split]
        assert np.array_equal(opened.item, raw["item"])
        assert np.array_equal(opened.hist_items, raw["hist_items"])
        assert np.array_equal(opened.label, raw["label"])
    assert ds.manifest["params"] == {"seed": 3, "train_samples": 6_000}
    np.testing.assert_array_equal(ds.item_frequency, data.item_frequency)


def test_same_seed_same_data_and_save_load(tmp_path: Path, data: SyntheticData) -> None:
    again = generate(SMALL)
    loaded = SyntheticData.load(data.save(tmp_path / "d.npz"))
    assert loaded.spec == SMALL
    for split in ("train", "test"):
        for key, value in data.splits[split].items():
            np.testing.assert_array_equal(again.splits[split][key], value)
            np.testing.assert_array_equal(loaded.splits[split][key], value)
    np.testing.assert_array_equal(loaded.item_frequency, data.item_frequency)


def test_item_frequency_counts_train_histories_and_clicked_targets(data: SyntheticData) -> None:
    s = data.splits["train"]
    expected = np.bincount(s["hist_items"], minlength=SMALL.items)
    expected += np.bincount(s["item"][s["label"] == 1], minlength=SMALL.items)
    np.testing.assert_array_equal(data.item_frequency, expected)


def test_padded_keeps_most_recent_and_aligns() -> None:
    offsets = np.array([0, 3, 3, 4])
    values = np.array([5, 6, 7, 9])
    np.testing.assert_array_equal(padded(offsets, values, 2), [[6, 7], [0, 0], [9, 0]])
    np.testing.assert_array_equal(padded(offsets, values, 2, left=True), [[6, 7], [0, 0], [0, 9]])


def test_auc_with_ties_against_pair_count() -> None:
    labels = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([0.9, 0.9, 0.3, 0.1, 0.5, 0.5])
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    assert auc(labels, scores) == pytest.approx(pairs.mean())


def test_flops_tiny_hand_counted_case() -> None:
    assert flops.mlp_flops((3, 2, 1)) == 2 * (3 * 2 + 2 * 1)
    assert flops.gru_step_flops(2, 1) == 2 * 3 * (2 + 1)
    s = flops.Sizes(
        embedding_dim=1, hidden_size=1, mlp_sizes=(2,), attention_mlp_sizes=(1,),
        aux_mlp_sizes=(1,), aux_negatives=1,
    )  # fmt: skip
    # item width 2. DIN per step: attention 8->1->1 is 2*(8+1) = 18, weighted sum 2*2 = 4.
    # Output MLP input: user 1 + target, sum, target*sum 3*2 + interest 2 = 9; 9->2->1 is 2*20.
    din = flops.din_flops(3.0, s)
    assert din.score == 3 * (18 + 4) + 40
    assert din.train == 3 * din.score
    # DIEN per step: GRU 2->1 is 18, GRU 1->1 is 12, attention 4->1->1 is 2*(4+1) = 10.
    # Output MLP input 1 + 6 + 1 = 8; 8->2->1 is 2*18 = 36.
    # Auxiliary MLP on [h, e] 3->1->1 is 2*4 = 8, for the next item and one negative,
    # over length - 1 = 2 transitions.
    dien = flops.dien_flops(3.0, s)
    assert dien.score == 3 * (18 + 12 + 10) + 36
    assert dien.train == 3 * (dien.score + 2 * 2 * 8)
    assert flops.dien_flops(3.0, s, aux_loss=False).train == 3 * dien.score


def test_flops_at_paper_sizes() -> None:
    """The figures quoted in the design notes: 4.65 and 0.93 MFLOP at mean length 13.7."""
    dien = flops.dien_flops(13.7)
    assert dien.train / 1e6 == pytest.approx(4.65, abs=0.005)
    assert dien.score / 1e6 == pytest.approx(0.93, abs=0.005)


def test_timer_repeats_a_phase_and_takes_its_median_lap(monkeypatch) -> None:
    clock = iter([0.0, 5.0, 10.0, 11.0, 20.0, 23.0, 30.0, 37.0])  # laps of 5, 1, 3; then 7
    monkeypatch.setattr("benchmarks.others.common.time.perf_counter", lambda: next(clock))
    timer = Timer()
    calls = []
    result = timer.repeat("score", 3, lambda: calls.append(1) or len(calls))
    with timer("train"):
        pass
    assert result == 3 and len(calls) == 3
    assert timer.laps == {"score": [5.0, 1.0, 3.0], "train": [7.0]}
    assert timer.seconds == {"score": 3.0, "train": 7.0}
