"""Vocabularies: raw ids to dense ids, built from the training split only.

Id 0 is ``<unk>``: padding in batches and every raw id the training split never saw. Ids 1..n
go to the raw ids by descending frequency, ties broken by ascending raw id (numeric order for
numeric ids), so the same data always gives the same ids.
"""

from __future__ import annotations

import numpy as np

from dien.data.format import UNKNOWN


def build_vocab(
    values: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct raw values ordered by descending count (or summed weight), then raw value.

    Returns ``(raw, count)``: ``raw[j]`` gets id ``j + 1`` and occurs ``count[j]`` times.
    """
    values = np.asarray(values)
    raw, inverse = np.unique(values, return_inverse=True)
    if weights is None:
        count = np.bincount(inverse.ravel(), minlength=len(raw)).astype(np.int64)
    else:
        count = np.bincount(
            inverse.ravel(), weights=np.asarray(weights).ravel(), minlength=len(raw)
        )
        count = count.astype(np.int64)
    order = np.argsort(-count, kind="stable")  # np.unique sorted raw ascending: ties keep it
    return raw[order], count[order]


def encode(values: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Dense ids of ``values`` under the vocabulary ``raw`` (id j+1 for raw[j]); 0 if absent."""
    values = np.asarray(values)
    if len(raw) == 0:
        return np.zeros(values.shape, np.int64)
    order = np.argsort(raw, kind="stable")
    sorted_raw = raw[order]
    pos = np.searchsorted(sorted_raw, values).clip(max=len(raw) - 1)
    found = sorted_raw[pos] == values
    return np.where(found, order[pos] + 1, 0).astype(np.int64)


def vocab_strings(raw: np.ndarray) -> list[str]:
    """The vocabulary as written to disk: ``<unk>`` then each raw id as text."""
    return [UNKNOWN, *(str(v) for v in raw.tolist())]
