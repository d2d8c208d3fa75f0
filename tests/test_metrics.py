"""AUC, GAUC and logloss against brute-force definitions on random scores with ties."""

import itertools

import numpy as np
import pytest

from dien.train.metrics import auc_score, compute_metrics, gauc_score, logloss


def brute_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_gauc(users, scores, labels):
    total, weight, counted = 0.0, 0, 0
    for u in np.unique(users):
        rows = users == u
        if len(set(labels[rows])) < 2:
            continue
        total += brute_auc(scores[rows], labels[rows]) * rows.sum()
        weight += rows.sum()
        counted += 1
    return total / weight, counted


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    scores = rng.integers(0, 12, n).astype(np.float64)  # few distinct values: many ties
    labels = rng.integers(0, 2, n)
    assert auc_score(scores, labels) == pytest.approx(brute_auc(scores, labels), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_gauc_equals_per_user_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    n = 400
    users = rng.integers(0, 25, n)
    scores = rng.integers(0, 6, n).astype(np.float64)
    labels = rng.integers(0, 2, n)
    labels[users == 3] = 1  # a single-class user that GAUC must skip
    expected, counted = brute_gauc(users, scores, labels)
    got, got_counted = gauc_score(users, scores, labels)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got_counted == counted


def test_auc_extremes_and_single_class():
    assert auc_score(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert auc_score(np.array([0.9, 0.1]), np.array([0, 1])) == 0.0
    assert auc_score(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert np.isnan(auc_score(np.array([0.1, 0.2]), np.array([1, 1])))
    gauc, users = gauc_score(np.array([1, 1]), np.array([0.1, 0.2]), np.array([1, 1]))
    assert np.isnan(gauc) and users == 0


def test_logloss_matches_definition_and_is_stable():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, 200)
    y = rng.integers(0, 2, 200)
    p = 1 / (1 + np.exp(-z))
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert logloss(z, y) == pytest.approx(expected, rel=1e-12)
    assert logloss(np.array([1000.0, -1000.0]), np.array([1, 0])) == pytest.approx(0.0, abs=1e-12)


def test_compute_metrics_ranks_logits_not_saturated_probabilities():
    logits = np.array([40.0, 41.0, 42.0, 43.0])  # sigmoid in float32 would tie all of them
    labels = np.array([0, 0, 1, 1])
    m = compute_metrics(np.array([1, 1, 1, 1]), logits, labels)
    assert m.auc == 1.0 and m.gauc == 1.0 and m.gauc_users == 1 and m.samples == 4
