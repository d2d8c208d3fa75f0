"""Click-through-rate metrics: AUC, GAUC and logloss, exact and vectorised.

AUC is the Mann-Whitney statistic: the probability that a random positive scores above a
random negative, ties counting one half. GAUC (the DIN paper's group AUC) is the per-user AUC
averaged with each user's number of impressions as weight; users whose samples are all of one
class have no AUC and are skipped (their count is reported).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Metrics:
    auc: float
    gauc: float
    logloss: float
    samples: int
    gauc_users: int  # users with both classes, the ones GAUC averages over

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _grouped_auc(
    groups: np.ndarray, scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group AUC with tied scores sharing their average rank.

    Returns (auc per group, impressions per group, mask of groups with both classes); groups
    are the sorted unique values of ``groups``.
    """
    order = np.lexsort((scores, groups))
    g, s, y = groups[order], scores[order], labels[order]
    n = len(g)

    group_start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    group_id = np.cumsum(np.r_[True, g[1:] != g[:-1]]) - 1
    rank = np.arange(n) - group_start[group_id] + 1.0  # 1-based rank within the group

    tie_start = np.flatnonzero(np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])])
    tie_id = np.cumsum(np.r_[True, (g[1:] != g[:-1]) | (s[1:] != s[:-1])]) - 1
    tie_sum = np.add.reduceat(rank, tie_start)
    tie_count = np.diff(np.r_[tie_start, n])
    avg_rank = (tie_sum / tie_count)[tie_id]

    n_groups = len(group_start)
    pos = y > 0.5
    n_pos = np.bincount(group_id, weights=pos, minlength=n_groups)
    size = np.bincount(group_id, minlength=n_groups).astype(np.float64)
    n_neg = size - n_pos
    rank_pos = np.bincount(group_id, weights=avg_rank * pos, minlength=n_groups)
    both = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where(both, auc, np.nan), size, both


def auc_score(scores: np.ndarray, labels: np.ndarray) -> float:
    """Exact AUC with ties; NaN when only one class is present."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    auc, _, _ = _grouped_auc(np.zeros(len(scores), np.int64), scores, labels)
    return float(auc[0]) if len(auc) else float("nan")


def gauc_score(users: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """Impression-weighted mean of per-user AUC over users with both classes; (gauc, users)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    auc, size, both = _grouped_auc(np.asarray(users), scores, labels)
    if not both.any():
        return float("nan"), 0
    return float(np.sum(auc[both] * size[both]) / np.sum(size[both])), int(both.sum())


def logloss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of ``sigmoid(logits)``, computed stably from the logits."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def compute_metrics(users: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> Metrics:
    """AUC and GAUC rank the logits (no ties added by a saturating sigmoid); logloss is exact."""
    logits = np.asarray(logits, np.float64)
    gauc, gauc_users = gauc_score(users, logits, labels)
    return Metrics(
        auc=auc_score(logits, labels),
        gauc=gauc,
        logloss=logloss(logits, labels),
        samples=len(labels),
        gauc_users=gauc_users,
    )
