"""MovieLens ratings -> a prepared dataset of click-through-rate samples.

Protocol (the DIEN paper's Amazon protocol, with a split by time instead of by user):

1. Every rating is a behaviour, a "click". A rating of a movie missing from ``movies.csv`` is
   dropped and counted in ``counts["filtered"]["rating_movie_not_in_movies_csv"]``.
2. Each user's ratings are sorted by timestamp, ties broken by movieId, so the order is
   deterministic.
3. Each event with at least ``min_history`` earlier events of the same user gives two
   samples: a positive (target = the rated movie, label 1) and a negative (label 0) with the
   same user, history and timestamp, whose target is another movie drawn by rating frequency
   (see 5). The history is every earlier event of the user, oldest first, stored in full.
   Events with fewer earlier events give no sample (they still appear in later histories) and
   are counted in ``counts["filtered"]["event_below_min_history"]``.
4. Split by time, in one of two ways; in both, no test event's future reaches training:

   - ``split="user_time"`` (the default): within each user, the latest ``test_fraction`` of
     the user's sample events (rounded) form the test split, the ``valid_fraction`` before
     them the validation split, the rest training. Every training event of a user precedes
     that user's validation and test events, and every user of the test split has trained
     embeddings, as in sequential-recommendation protocols. Events of *other* users may be
     later in calendar time than a test event.
   - ``split="global_time"``: global cut-offs over the sample events' timestamps: the last
     ``test_fraction`` of events is the test split, the ``valid_fraction`` before it the
     validation split. Events sharing the cut-off timestamp all go to the later split, so
     every training event is strictly earlier than every validation and test event. On the
     bundled MovieLens data most test users then appear only after the cut-off (their id is
     unknown), so GAUC groups them all under the unknown user. The cut-offs are in
     ``counts["time_cutoffs"]`` (``null`` when a split is empty).
5. Negative targets are drawn by the rating frequency of the sample events up to the end of
   the sample's split (a uniformly drawn such event, redrawn while it is the positive's
   movie): training negatives come from training events only, so the training split
   mentions nothing from a later split; validation negatives from training and validation
   events; test negatives from all. The paper draws from the frequency of all reviews.
6. Category = the movie's first listed genre; ``(no genres listed)`` is a category itself.
7. Vocabularies (users, items, categories) come from the training split only: the users of
   training samples, and the movies and categories of the events training samples mention
   (targets and histories). Ids go by descending frequency, ties by raw id; id 0 is
   ``<unk>``. ``item_frequency`` counts each item's events mentioned by the training split.
   Validation and test samples legitimately hold earlier events in their histories; every
   user, movie or category unseen in training maps to id 0, counted per split in
   ``counts["unknown"]`` (users: samples, items: targets, hist_items: history entries,
   categories: targets). A movie's category is mapped on its own, so an unknown movie can keep
   a known category.

``counts`` also holds the raw data's ``users``, ``items`` (rated movies), ``categories`` (first
genres of rated movies) and ``events`` (ratings kept), and the samples per split.
"""

from __future__ import annotations

import csv
import logging
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from dien.data.format import (
    DatasetError,
    PreparedDataset,
    SplitArrays,
    file_sha256,
    write_prepared,
)
from dien.data.rawio import decode_problem, iter_lines, raw_id_problem
from dien.data.vocab import build_vocab, encode, vocab_strings

logger = logging.getLogger(__name__)

RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]
MOVIES_HEADER = ["movieId", "title", "genres"]
NO_GENRE = "(no genres listed)"


def bundled_movielens_dir() -> Path:
    """The MovieLens latest-small copy shipped inside the package (ratings.csv, movies.csv)."""
    return Path(str(resources.files("dien") / "bundled" / "movielens-latest-small"))


def _read_rows(path: Path, header: list[str]) -> tuple[list[list[str]], list[int]]:
    """Rows after the header and the line each starts on; blank lines are skipped."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return _csv_rows(f, path, header)
    except UnicodeDecodeError:
        raise DatasetError(_first_non_utf8_line(path)) from None


def _csv_rows(f, path: Path, header: list[str]) -> tuple[list[list[str]], list[int]]:
    reader = csv.reader(f)
    rows, lines = [], []
    line = 1  # where the next row starts: a quoted field may span several lines
    try:
        for row in reader:
            if line == 1 and row != header:
                raise DatasetError(
                    f"{path}, line 1: expected the header {','.join(header)}, got {row}"
                )
            if line > 1 and row:
                if len(row) != len(header):
                    raise DatasetError(
                        f"{path}, line {line}: expected {len(header)} fields "
                        f"({','.join(header)}), got {len(row)}"
                    )
                rows.append(row)
                lines.append(line)
            line = reader.line_num + 1
    except csv.Error as e:
        raise DatasetError(f"{path}, line {line}: not valid csv ({e})") from None
    if line == 1:
        raise DatasetError(f"{path}, line 1: expected the header {','.join(header)}, got None")
    return rows, lines


def _first_non_utf8_line(path: Path) -> str:
    """The message for a file that is not UTF-8 text, naming its first such line."""
    for lineno, line in iter_lines(path):
        problem = decode_problem(line)
        if problem is not None:
            return f"{path}, line {lineno}: {problem}"
    return f"{path}: not UTF-8 text"


def _parse(column: np.ndarray, dtype: type, name: str, path: Path, lines: list[int]) -> np.ndarray:
    """Convert a text column at once; on failure find and name the first bad line."""
    try:
        return column.astype(dtype)
    except (ValueError, OverflowError):
        for value, line in zip(column.tolist(), lines, strict=True):
            try:
                dtype(value)
            except (ValueError, OverflowError):
                kind = "an integer" if dtype is np.int64 else "a number"
                raise DatasetError(
                    f"{path}, line {line}: {name} must be {kind}, got {value!r}"
                ) from None
        raise


def read_ratings(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(user, movie, rating, timestamp)`` arrays of a MovieLens ``ratings.csv``."""
    path = Path(path)
    rows, lines = _read_rows(path, RATINGS_HEADER)
    table = np.array(rows, dtype=str).reshape(len(rows), 4)
    user = _parse(table[:, 0], np.int64, "userId", path, lines)
    movie = _parse(table[:, 1], np.int64, "movieId", path, lines)
    rating = _parse(table[:, 2], np.float64, "rating", path, lines)
    timestamp = _parse(table[:, 3], np.int64, "timestamp", path, lines)
    return user, movie, rating, timestamp


def read_movies(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(movie, first_genre)`` arrays of a MovieLens ``movies.csv``, sorted by movie id."""
    path = Path(path)
    rows, lines = _read_rows(path, MOVIES_HEADER)
    ids = np.array([r[0] for r in rows], dtype=str)
    movie = _parse(ids, np.int64, "movieId", path, lines)
    genre = np.array([r[2].split("|")[0] for r in rows], dtype=str)
    empty = np.flatnonzero(genre == "")
    if len(empty):
        raise DatasetError(
            f"{path}, line {lines[empty[0]]}: empty genres field (MovieLens writes {NO_GENRE!r})"
        )
    for first, line in zip(genre.tolist(), lines, strict=True):
        if (problem := raw_id_problem(first)) is not None:
            raise DatasetError(f"{path}, line {line}: the first genre {first!r:.80} {problem}")
    order = np.argsort(movie, kind="stable")
    movie, genre = movie[order], genre[order]
    twice = np.flatnonzero(movie[1:] == movie[:-1])
    if len(twice):
        line = lines[order[twice[0] + 1]]
        raise DatasetError(f"{path}, line {line}: movieId {movie[twice[0]]} listed twice")
    return movie, genre


def _time_cutoffs(ts: np.ndarray, valid_fraction: float, test_fraction: float) -> tuple[int, int]:
    """First timestamp of the validation and of the test split (int64 max when empty)."""
    never = np.iinfo(np.int64).max
    ts = np.sort(ts)
    n = len(ts)
    n_test = int(round(n * test_fraction))
    n_valid = int(round(n * valid_fraction))
    test_from = int(ts[n - n_test]) if n_test > 0 else never
    valid_from = int(ts[n - n_test - n_valid]) if n_valid > 0 else test_from
    return valid_from, test_from


def _per_user_split(
    group: np.ndarray,
    position: np.ndarray,
    sample_event: np.ndarray,
    min_history: int,
    valid_fraction: float,
    test_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Masks of each user's latest sample events for test and the ones before for validation.

    Events are sorted by user then time, so a user's sample events are the contiguous ones at
    ``position >= min_history``; ``rank`` counts them from the user's latest backwards.
    """
    n_samples = np.bincount(group, weights=sample_event).astype(np.int64)  # per user
    n_test = np.rint(n_samples * test_fraction).astype(np.int64)
    n_valid = np.rint(n_samples * valid_fraction).astype(np.int64)
    rank = n_samples[group] - 1 - (position - min_history)  # 0 = the user's latest event
    in_test = sample_event & (rank < n_test[group])
    in_valid = sample_event & ~in_test & (rank < (n_test + n_valid)[group])
    return in_valid, in_test


def _draw_negatives(
    targets: np.ndarray, pool: np.ndarray, rng: np.random.Generator, split: str
) -> np.ndarray:
    """For each target, a different movie drawn by its frequency in ``pool``."""
    if len(targets) == 0:
        return targets.copy()
    if np.all(pool == pool[0]):
        raise DatasetError(
            f"split '{split}': its sample events up to now hold a single movie; "
            "no different movie can be drawn as a negative"
        )
    negatives = pool[rng.integers(0, len(pool), len(targets))]
    clash = np.flatnonzero(negatives == targets)
    while len(clash):
        negatives[clash] = pool[rng.integers(0, len(pool), len(clash))]
        clash = clash[negatives[clash] == targets[clash]]
    return negatives


def _ragged_histories(
    start: np.ndarray, length: np.ndarray, values: list[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Offsets and flat gathered ``values[start_i : start_i + length_i]`` for each sample i."""
    offsets = np.zeros(len(length) + 1, np.int64)
    np.cumsum(length, out=offsets[1:])
    index = np.int32 if max(offsets[-1], len(values[0])) < 2**31 else np.int64  # halves memory
    flat = np.repeat((start - offsets[:-1]).astype(index), length)
    flat += np.arange(offsets[-1], dtype=index)
    return offsets, [v[flat] for v in values]


def prepare_movielens(
    ratings_csv: str | Path,
    movies_csv: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    min_history: int = 1,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split: Literal["user_time", "global_time"] = "user_time",
    command: str = "",
) -> PreparedDataset:
    """Prepare MovieLens ratings by the protocol in this module's docstring; open the result."""
    if split not in ("user_time", "global_time"):
        raise ValueError(f"split must be 'user_time' or 'global_time', got {split!r}")
    if min_history < 0:
        raise ValueError(f"min_history must be >= 0, got {min_history}")
    if not (
        0 <= valid_fraction < 1 and 0 <= test_fraction < 1 and valid_fraction + test_fraction < 1
    ):
        raise ValueError(
            f"valid_fraction and test_fraction must lie in [0, 1) and sum below 1, "
            f"got {valid_fraction} and {test_fraction}"
        )
    user, movie, _, ts = read_ratings(ratings_csv)
    movie_ids, first_genre = read_movies(movies_csv)

    known = np.isin(movie, movie_ids)
    filtered = {"rating_movie_not_in_movies_csv": int((~known).sum())}
    user, movie, ts = user[known], movie[known], ts[known]
    genre = first_genre[np.searchsorted(movie_ids, movie)]

    order = np.lexsort((movie, ts, user))
    user, movie, ts, genre = user[order], movie[order], ts[order], genre[order]
    n = len(user)
    new_user = np.ones(n, bool)
    new_user[1:] = user[1:] != user[:-1]
    group = np.cumsum(new_user) - 1  # user group of each event
    start = np.flatnonzero(new_user)[group]  # index of the user's first event
    position = np.arange(n) - start  # earlier events of the same user

    sample_event = position >= min_history
    filtered["event_below_min_history"] = int(n - sample_event.sum())
    never = np.iinfo(np.int64).max
    if split == "global_time":
        valid_from, test_from = _time_cutoffs(ts[sample_event], valid_fraction, test_fraction)
        in_valid = sample_event & (ts >= valid_from) & (ts < test_from)
        in_test = sample_event & (ts >= test_from)
    else:
        valid_from = test_from = never
        in_valid, in_test = _per_user_split(
            group, position, sample_event, min_history, valid_fraction, test_fraction
        )
    split_events = {
        "train": np.flatnonzero(sample_event & ~in_valid & ~in_test),
        "valid": np.flatnonzero(in_valid),
        "test": np.flatnonzero(in_test),
    }
    if len(split_events["train"]) == 0:
        raise DatasetError(
            f"{ratings_csv}: no training samples; "
            "lower min_history, valid_fraction or test_fraction"
        )

    # Events the training split mentions: each user's events before the user's first
    # validation or test event, when that user has a training sample (the last one's history
    # covers all earlier ones).
    before = ~in_valid & ~in_test
    events_before = np.bincount(group, weights=before, minlength=group[-1] + 1 if n else 0)
    mentioned = before & (events_before[group] > min_history)
    item_raw, item_count = build_vocab(movie[mentioned])
    cat_raw, _ = build_vocab(genre[mentioned])
    user_raw, _ = build_vocab(user[split_events["train"]])
    event_item = encode(movie, item_raw).astype(np.int32)
    event_cat = encode(genre, cat_raw).astype(np.int32)
    event_user = encode(user, user_raw).astype(np.int32)
    item_genre = first_genre[np.searchsorted(movie_ids, item_raw)]
    item_category = np.concatenate([[0], encode(item_genre, cat_raw)]).astype(np.int32)
    item_frequency = np.concatenate([[0], item_count]).astype(np.int64)

    rng = np.random.default_rng(seed)
    splits, unknown = {}, {}
    pool = np.zeros(0, np.int64)  # targets of the sample events up to the current split's end
    for name, events in split_events.items():
        pool = np.concatenate([pool, movie[events]])
        negative = _draw_negatives(movie[events], pool, rng, name)
        neg_cat = encode(first_genre[np.searchsorted(movie_ids, negative)], cat_raw)
        length = np.repeat(position[events], 2)
        offsets, (hist_items, hist_cats) = _ragged_histories(
            np.repeat(start[events], 2), length, [event_item, event_cat]
        )
        splits[name] = SplitArrays(
            user=np.repeat(event_user[events], 2),
            item=np.stack([event_item[events], encode(negative, item_raw)], 1).ravel(),
            category=np.stack([event_cat[events], neg_cat], 1).ravel(),
            label=np.tile(np.array([1, 0], np.float32), len(events)),
            timestamp=np.repeat(ts[events], 2),
            hist_offsets=offsets,
            hist_items=hist_items,
            hist_cats=hist_cats,
        )
        if name != "train":
            unknown[name] = _unknown_counts(splits[name])

    counts = {
        "users": int(len(np.unique(user))),
        "items": int(len(np.unique(movie))),
        "categories": int(len(np.unique(genre))),
        "events": int(n),
        "filtered": filtered,
        "unknown": unknown,
        "time_cutoffs": {
            "valid": None if valid_from == never else valid_from,
            "test": None if test_from == never else test_from,
        },
    }
    params = {
        "seed": seed,
        "min_history": min_history,
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "split": split,
        "category": "first listed genre",
        "negatives": "rating frequency of the sample events up to the split's end",
        "ratings_sha256": file_sha256(ratings_csv),
        "movies_sha256": file_sha256(movies_csv),
    }
    vocabs = {
        "users": vocab_strings(user_raw),
        "items": vocab_strings(item_raw),
        "categories": vocab_strings(cat_raw),
    }
    path = write_prepared(
        out_dir,
        splits=splits,
        vocabs=vocabs,
        item_category=item_category,
        item_frequency=item_frequency,
        source="movielens",
        params=params,
        counts=counts,
        command=command,
    )
    logger.info("MovieLens: %d events, samples %s", n, {k: len(v) for k, v in splits.items()})
    return PreparedDataset.open(path)


def _unknown_counts(split: SplitArrays) -> dict[str, int]:
    return {
        "users": int((split.user == 0).sum()),
        "items": int((split.item == 0).sum()),
        "categories": int((split.category == 0).sum()),
        "hist_items": int((split.hist_items == 0).sum()),
    }
