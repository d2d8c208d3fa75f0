"""Scoring requests: raw ids -> vocabulary ids -> click probabilities of N candidates.

Dimension letters: R requests in a model batch, L a request's history length, T the longest
history of the batch, N candidates of one request, C candidates of all requests of the batch.

One request is one user's behaviour sequence and ``N`` candidate target items. The
target-independent work (embeddings, sum pooling, the interest extractor) runs once per
request: :meth:`~dien.models.CTRModel.encode_history` on one row per request, whose encoding
is then repeated for that request's candidates (``HistoryEncoding.expand`` for a batch of one
request, row selection for several) and :meth:`~dien.models.CTRModel.score`-d against all
``C`` candidates at once. The per-candidate mode (``shared_history=False``) instead runs the
full forward pass on ``C`` rows that each repeat their request's history: the naive way, kept
as the baseline of the load test.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dien.data.batch import Batch
from dien.data.format import PreparedDataset
from dien.models import CTRModel, HistoryEncoding
from dien.serve.config import ServeConfig
from dien.train.inference import LoadedRun, load_run

logger = logging.getLogger(__name__)

RawId = str | int


class RequestError(ValueError):
    """A request breaks a limit of the service; the message says which and by how much."""


@dataclass(frozen=True)
class EncodedRequest:
    """One request in vocabulary ids."""

    user: int
    hist_items: np.ndarray  # (L,) int64, oldest first
    hist_cats: np.ndarray  # (L,) int64
    items: np.ndarray  # (N,) int64 candidates
    categories: np.ndarray  # (N,) int64
    return_attention: bool = False


@dataclass(frozen=True)
class ScoredRequest:
    probabilities: np.ndarray  # (N,) float64
    attention: np.ndarray | None  # (N, L) float64, None when not asked or the model has none


class Vocabulary:
    """Raw id -> vocabulary id of one table; unknown raw ids (and ``None``) map to 0."""

    def __init__(self, raw_ids: Sequence[str]) -> None:
        self.size = len(raw_ids)
        self.ids = {raw: i for i, raw in enumerate(raw_ids) if i > 0}

    def __call__(self, raw: RawId | None) -> int:
        return 0 if raw is None else self.ids.get(str(raw), 0)


class Scorer:
    """A run's model and its dataset's vocabularies, scoring batches of requests."""

    def __init__(
        self, loaded: LoadedRun, dataset: PreparedDataset, config: ServeConfig | None = None
    ) -> None:
        if dataset.vocab_sizes != loaded.vocab:
            raise ValueError(
                f"{dataset.path}: vocabulary sizes {dataset.vocab_sizes} differ from the run's "
                f"{loaded.vocab}; serve with the dataset the run was trained on (--data)"
            )
        self.config = config or ServeConfig()
        self.model: CTRModel = loaded.model.eval()
        self.model_name = loaded.config.model.name
        self.device = loaded.device
        limit = self.config.max_history
        self.max_history = loaded.config.data.max_history if limit is None else limit
        self.users = Vocabulary(dataset.vocab("users"))
        self.items = Vocabulary(dataset.vocab("items"))
        self.categories = Vocabulary(dataset.vocab("categories"))
        self.item_category = np.asarray(dataset.item_category, dtype=np.int64)

    @classmethod
    def from_run(
        cls,
        run_dir: str | Path,
        data: str | Path | None = None,
        config: ServeConfig | None = None,
        device: str = "cpu",
        checkpoint: str = "best",
    ) -> Scorer:
        """Load a run and the prepared dataset it names (or ``data``)."""
        loaded = load_run(run_dir, device=device, checkpoint=checkpoint)
        path = data or loaded.config.data.path
        if not path:
            raise ValueError(f"{run_dir}: the run names no dataset; pass --data DIR")
        return cls(loaded, PreparedDataset.open(path), config)

    def encode(
        self,
        user: RawId | None,
        history: Sequence[tuple[RawId, RawId | None]],
        candidates: Sequence[tuple[RawId, RawId | None]],
        return_attention: bool = False,
    ) -> EncodedRequest:
        """Map raw ids; a missing category is the item's own; checks the service's limits."""
        n, limit = len(candidates), self.config.max_candidates
        if n == 0:
            raise RequestError("candidates is empty: send at least one candidate item")
        if n > limit:
            raise RequestError(f"{n} candidates, more than this service's limit of {limit}")
        if len(history) > self.max_history:
            if not self.config.truncate_history:
                raise RequestError(
                    f"history has {len(history)} behaviours, more than this service's limit of "
                    f"{self.max_history} (send the most recent {self.max_history})"
                )
            history = history[len(history) - self.max_history :]
        hist_items, hist_cats = self._map_items(history)
        items, categories = self._map_items(candidates)
        return EncodedRequest(
            self.users(user), hist_items, hist_cats, items, categories, return_attention
        )

    def _map_items(self, pairs: Sequence[tuple[RawId, RawId | None]]) -> tuple[np.ndarray, ...]:
        items = np.fromiter((self.items(i) for i, _ in pairs), np.int64, len(pairs))  # (L,)
        categories = self.item_category[items]  # (L,)
        for k, (_, raw_category) in enumerate(pairs):
            if raw_category is not None:
                categories[k] = self.categories(raw_category)
        return items, categories

    def score(self, requests: Sequence[EncodedRequest]) -> list[ScoredRequest]:
        """Score a batch of requests, in passes of the model over groups of similar length.

        Requests are padded to their group's longest history, and the interest evolution
        runs over every padded step of every candidate, so one long history in a group of
        short ones would multiply its cost: :func:`length_groups` keeps apart requests whose
        lengths differ enough for padding to cost more than a separate pass.
        """
        lengths = [len(r.hist_items) for r in requests]
        results: dict[int, ScoredRequest] = {}
        for group in length_groups(lengths, [len(r.items) for r in requests]):
            scored = self._score_group([requests[i] for i in group])
            results.update(zip(group, scored, strict=True))
        return [results[i] for i in range(len(requests))]

    def _score_group(self, requests: Sequence[EncodedRequest]) -> list[ScoredRequest]:
        """Score requests in one pass of the model (no gradients)."""
        with torch.inference_mode():
            batch, counts = self._history_batch(requests)
            items = torch.from_numpy(np.concatenate([r.items for r in requests]))  # (C,)
            categories = torch.from_numpy(np.concatenate([r.categories for r in requests]))
            items, categories = items.to(self.device), categories.to(self.device)
            if self.config.shared_history:
                logit, attention = self._score_shared(batch, counts, items, categories)
            else:
                logit, attention = self._score_per_candidate(batch, counts, items, categories)
            probabilities = torch.sigmoid(logit.double()).cpu().numpy()  # (C,)
            attention = None if attention is None else attention.double().cpu().numpy()
        return self._split(requests, probabilities, attention)

    def _history_batch(self, requests: Sequence[EncodedRequest]) -> tuple[Batch, Tensor]:
        """One row per request: user and left-aligned, zero-padded behaviour sequence."""
        R = len(requests)
        lengths = np.array([len(r.hist_items) for r in requests], dtype=np.int64)  # (R,)
        T = int(lengths.max(initial=0))
        hist_items = np.zeros((R, T), np.int64)  # (R, T)
        hist_cats = np.zeros((R, T), np.int64)  # (R, T)
        for row, r in enumerate(requests):
            hist_items[row, : len(r.hist_items)] = r.hist_items
            hist_cats[row, : len(r.hist_cats)] = r.hist_cats
        user = torch.tensor([r.user for r in requests], dtype=torch.int64)  # (R,)
        placeholder = torch.zeros(R, dtype=torch.int64)  # (R,) targets come per candidate
        batch = Batch(
            user=user,
            item=placeholder,
            category=placeholder,
            hist_items=torch.from_numpy(hist_items),
            hist_cats=torch.from_numpy(hist_cats),
            hist_lengths=torch.from_numpy(lengths),
        ).to(self.device)
        counts = torch.tensor([len(r.items) for r in requests], device=self.device)  # (R,)
        return batch, counts

    def _score_shared(
        self, batch: Batch, counts: Tensor, items: Tensor, categories: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        history = self.model.encode_history(batch)  # R rows
        if batch.size == 1:
            history = history.expand(items.shape[0])  # C rows, views of the one row
        else:
            rows = torch.repeat_interleave(torch.arange(batch.size, device=self.device), counts)
            history = select_rows(history, rows)  # C rows
        return self.model.score(history, items, categories)  # (C,), (C, T)

    def _score_per_candidate(
        self, batch: Batch, counts: Tensor, items: Tensor, categories: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        rows = torch.repeat_interleave(torch.arange(batch.size, device=self.device), counts)
        full = Batch(
            user=batch.user[rows],
            item=items,
            category=categories,
            hist_items=batch.hist_items[rows],
            hist_cats=batch.hist_cats[rows],
            hist_lengths=batch.hist_lengths[rows],
        )
        output = self.model(full)
        return output.logit, output.attention  # (C,), (C, T)

    @staticmethod
    def _split(
        requests: Sequence[EncodedRequest], probabilities: np.ndarray, attention: np.ndarray | None
    ) -> list[ScoredRequest]:
        results, start = [], 0
        for r in requests:
            stop = start + len(r.items)
            weights = None
            if r.return_attention and attention is not None:
                weights = attention[start:stop, : len(r.hist_items)]  # (N, L)
            results.append(ScoredRequest(probabilities[start:stop], weights))
            start = stop
        return results


def select_rows(history: HistoryEncoding, rows: Tensor) -> HistoryEncoding:
    """The encoding of rows ``rows`` (C,) of a multi-row encoding: C rows."""
    picked = {
        f.name: None if (v := getattr(history, f.name)) is None else v.index_select(0, rows)
        for f in fields(history)
    }
    return replace(history, **picked)


# One more pass of the model costs about as much as this many extra candidate rows per step.
PASS_OVERHEAD_ROWS = 64


def length_groups(lengths: Sequence[int], candidates: Sequence[int]) -> list[list[int]]:
    """Indices of requests grouped so that padding to a group's longest history pays off.

    Sorted by history length, a request joins the previous group when the padded cost
    ``(rows + PASS_OVERHEAD_ROWS) * (longest + 1)`` of the joined group is no more than the
    two costs apart; ``rows`` counts candidates, the ``+ 1`` stands for the work outside the
    loop over steps (embeddings, attention, the output MLP).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    rows = 0
    for i in order:
        if groups:
            steps_before, steps = lengths[groups[-1][-1]] + 1, lengths[i] + 1
            apart = (rows + PASS_OVERHEAD_ROWS) * steps_before
            apart += (candidates[i] + PASS_OVERHEAD_ROWS) * steps
            joined = (rows + candidates[i] + PASS_OVERHEAD_ROWS) * steps
            if joined <= apart:
                groups[-1].append(i)
                rows += candidates[i]
                continue
        groups.append([i])
        rows = candidates[i]
    return groups
