"""The Amazon product data (2014, 5-core reviews plus metadata) prepared as in the DIEN paper.

The protocol of the authors' public code, followed by default:

1. Every review gives ``(user, item, time)``; the rating is ignored. An item's category is the
   last element of the first category path of its metadata line. An item without a metadata
   line, or whose metadata has no category path, gets the category ``default_cat`` (the name
   the authors' code and released files use); such items are counted in
   ``counts["items_without_meta"]`` and ``counts["items_without_category"]``.
2. Each user's reviews are sorted by time (reviews with the same time keep their file order).
   Every review gives a positive sample (the reviewed item; the history is the items the user
   reviewed before it) and a negative sample (an item drawn from all reviews, so by review
   frequency, redrawn while it equals the reviewed item; same history and time).
3. Only each user's last review pair is kept. A user with one review has an empty history and
   gives no sample (the authors' code needs at least one behaviour); these users are counted in
   ``counts["filtered"]["users_with_one_review"]``.
4. Users are split at random (seeded) into train and test, ``train_fraction`` of them
   (0.9) to train. The authors' code flips a 1-in-10 coin per user; here the test share is
   exactly ``round(n * (1 - train_fraction))`` users of a seeded permutation, so the split
   sizes do not depend on luck. ``valid_fraction`` (default 0, an empty validation split as
   in the paper) moves that share of all users from train to a validation split.
5. Vocabularies come from the training split only: users of training samples; items and
   categories of training targets (positives and negatives) and histories. Ids 1.. go by
   descending count, ties by raw id; id 0 is unknown, which is what every test user is, since
   the split is by user.

Only the negative drawn for the last review is sampled: the authors draw one for every review
and drop all but the last, which uses more random numbers but gives the same distribution.
``item_frequency`` counts training positives and history steps, the review frequency of the
training users that the auxiliary-loss negatives are drawn from.

Reading is fast at Books scale: reviews are parsed with orjson where installed and the
grouping is done with numpy on integer codes. Metadata lines of items no review mentions are
skipped without being parsed; of the others only ``asin`` and ``categories`` are read, from the
two fields directly when each occurs once in the line, from the whole parsed line otherwise.
"""

from __future__ import annotations

import ast
import logging
import re
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from dien.data.format import PreparedDataset, SplitArrays, write_prepared
from dien.data.rawio import (
    BadLines,
    RawInputError,
    decode_problem,
    gather_ragged,
    iter_lines,
    json_loads,
    rank_by_count,
    raw_id_problem,
    where,
)

logger = logging.getLogger(__name__)

DEFAULT_CATEGORY = "default_cat"
REVIEW_FIELDS = ("reviewerID", "asin", "unixReviewTime")

_ASIN_KEYS = (b"'asin'", b'"asin"')
_CATEGORY_KEYS = (b"'categories'", b'"categories"')
_ASIN_VALUE = re.compile(rb"""['"]asin['"]\s*:\s*u?(['"])([^'"\\]*)\1""")
_CATEGORY_VALUE = re.compile(rb"""['"]categories['"]\s*:\s*(\[\s*\[.*?\]\s*\])""")


class _Reviews:
    """All reviews as integer codes; ``user_ids[c]`` / ``item_ids[c]`` is the raw id of code c."""

    def __init__(self) -> None:
        self.user_codes: dict[str, int] = {}
        self.item_codes: dict[str, int] = {}
        self.user = array("i")
        self.item = array("i")
        self.time = array("q")

    def add(self, user: str, item: str, time: int) -> str | None:
        """Append one review, or say why it cannot be stored (and append nothing)."""
        u, i = self.user_codes.get(user), self.item_codes.get(item)
        if u is None or i is None:  # a raw id seen for the first time is checked once
            for key, value in (("reviewerID", user), ("asin", item)):
                problem = raw_id_problem(value)
                if problem is not None:
                    return f"field '{key}' {problem}"
        try:
            self.time.append(time)
        except OverflowError:
            return f"field 'unixReviewTime' {time} does not fit in 64 bits"
        if u is None:
            u = self.user_codes[user] = len(self.user_codes)
        if i is None:
            i = self.item_codes[item] = len(self.item_codes)
        self.user.append(u)
        self.item.append(i)
        return None


def _check_review(obj: Any) -> tuple[str, str] | tuple[str, str, int]:
    """``(user, item, time)`` of a parsed review, or ``(reason, problem)`` when it is bad."""
    if not isinstance(obj, dict):
        return "reviews_malformed", f"expected a JSON object, got {type(obj).__name__}"
    missing = [key for key in REVIEW_FIELDS if key not in obj]
    if missing:
        return "reviews_missing_field", f"missing field {', '.join(map(repr, missing))}"
    user, item, time = (obj[key] for key in REVIEW_FIELDS)
    for key, value in (("reviewerID", user), ("asin", item)):
        if not isinstance(value, str) or not value:
            return "reviews_wrong_type", f"field '{key}' must be a non-empty string, got {value!r}"
    if isinstance(time, float) and time.is_integer():
        time = int(time)
    if not isinstance(time, int) or isinstance(time, bool):
        return "reviews_wrong_type", f"field 'unixReviewTime' must be an integer, got {time!r}"
    return user, item, time


def _review_slow(line: bytes, path: str | Path, lineno: int, bad: BadLines) -> tuple | None:
    """``(user, item, time)`` of a line the fast path refused, or None after reporting it."""
    problem = decode_problem(line)
    if problem is not None:
        bad.report("reviews_not_utf8", where(path, lineno), problem)
        return None
    try:
        obj = json_loads(line)
    except ValueError as e:
        bad.report("reviews_malformed", where(path, lineno), f"not valid JSON ({e})")
        return None
    checked = _check_review(obj)
    if len(checked) == 2:
        bad.report(checked[0], where(path, lineno), checked[1])
        return None
    return checked


def read_reviews(path: str | Path, bad: BadLines) -> _Reviews:
    """Parse a reviews file (JSON lines, plain or gzip) into integer codes."""
    reviews = _Reviews()
    add = reviews.add
    for lineno, line in iter_lines(path):
        try:
            obj = json_loads(line)
            user, item, time = obj["reviewerID"], obj["asin"], obj["unixReviewTime"]
            ok = type(user) is str and type(item) is str and type(time) is int and user and item
        except (ValueError, KeyError, TypeError, IndexError):
            ok = False
        if not ok and line.strip():
            checked = _review_slow(line, path, lineno, bad)
            if checked is not None:
                ok, (user, item, time) = True, checked
        if ok and (problem := add(user, item, time)) is not None:
            bad.report("reviews_wrong_type", where(path, lineno), problem)
    if not reviews.user:
        raise RawInputError(f"{path}: holds no reviews")
    return reviews


def _parse_literal(line: bytes) -> Any:
    """A metadata line as strict JSON or, failing that, as a Python literal (never ``eval``)."""
    try:
        return json_loads(line)
    except ValueError:
        pass
    return ast.literal_eval(line.decode("utf-8"))


def _category_of(categories: Any) -> str | None:
    """Last element of the first category path; None when there is none; raises on bad types."""
    if not isinstance(categories, list) or not all(isinstance(p, list) for p in categories):
        raise TypeError(f"'categories' must be a list of lists, got {categories!r:.80}")
    if not categories or not categories[0]:
        return None
    last = categories[0][-1]
    if not isinstance(last, str):
        raise TypeError(f"a category must be a string, got {last!r:.80}")
    problem = raw_id_problem(last)
    if problem is not None:
        raise TypeError(f"the category {last!r:.80} {problem}")
    return last


def _meta_fast(line: bytes, cache: dict[bytes, str | None]) -> tuple[str, str | None] | None:
    """``(asin, category)`` read from the two fields alone, or None to parse the whole line."""
    if sum(line.count(k) for k in _ASIN_KEYS) != 1:
        return None
    if sum(line.count(k) for k in _CATEGORY_KEYS) != 1:
        return None
    asin = _ASIN_VALUE.search(line)
    cats = _CATEGORY_VALUE.search(line)
    if asin is None or cats is None:
        return None
    fragment = cats.group(1)
    if fragment not in cache:
        try:
            cache[fragment] = _category_of(_parse_literal(fragment))
        except (ValueError, SyntaxError, TypeError, UnicodeDecodeError, RecursionError):
            return None
    try:
        return asin.group(2).decode("utf-8"), cache[fragment]
    except UnicodeDecodeError:
        return None


def _meta_slow(line: bytes, path: str | Path, lineno: int, bad: BadLines) -> tuple | None:
    """``(asin, category)`` from the fully parsed line, or None after reporting a bad line."""
    problem = decode_problem(line)
    if problem is not None:
        bad.report("meta_not_utf8", where(path, lineno), problem)
        return None
    try:  # TypeError: a literal that cannot be built, such as a dict keyed by a list
        obj = _parse_literal(line)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        bad.report(
            "meta_malformed", where(path, lineno), f"neither JSON nor a Python literal ({e})"
        )
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("asin"), str):
        bad.report("meta_missing_field", where(path, lineno), "expected an object with 'asin'")
        return None
    try:
        return obj["asin"], _category_of(obj.get("categories", []))
    except TypeError as e:
        bad.report("meta_wrong_type", where(path, lineno), str(e))
        return None


def read_meta(path: str | Path, wanted: dict[str, int], bad: BadLines) -> tuple[dict, dict]:
    """Category of each wanted item (code -> category or None), and counts about the file."""
    found: dict[int, str | None] = {}
    cache: dict[bytes, str | None] = {}
    info = {"meta_lines": 0, "meta_lines_unused": 0, "meta_duplicate_lines": 0}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        info["meta_lines"] += 1
        asin = _ASIN_VALUE.search(line)
        if asin is not None and sum(line.count(k) for k in _ASIN_KEYS) == 1:
            code = wanted.get(asin.group(2).decode("utf-8", "replace"))
            if code is None:
                info["meta_lines_unused"] += 1
                continue
        parsed = _meta_fast(line, cache) or _meta_slow(line, path, lineno, bad)
        if parsed is None:
            continue
        code = wanted.get(parsed[0])
        if code is None:
            info["meta_lines_unused"] += 1
        elif code in found:
            info["meta_duplicate_lines"] += 1  # the first line of an item wins, as in the authors'
        else:
            found[code] = parsed[1]
    if info["meta_lines"] == 0:
        raise RawInputError(f"{path}: holds no metadata lines")
    return found, info


def _item_categories(n_items: int, found: dict[int, str | None]) -> tuple:
    """``(raw category code of each item code, category names, counts)``."""
    names: dict[str, int] = {}
    codes = np.empty(n_items, np.int32)
    no_meta = no_category = 0
    for item in range(n_items):
        if item in found:
            name = found[item]
            if name is None:
                no_category += 1
                name = DEFAULT_CATEGORY
        else:
            no_meta += 1
            name = DEFAULT_CATEGORY
        code = names.get(name)
        if code is None:
            code = names[name] = len(names)
        codes[item] = code
    counts = {"items_without_meta": no_meta, "items_without_category": no_category}
    return codes, list(names), counts


def _split_users(users: np.ndarray, rng: np.random.Generator, train: float, valid: float) -> dict:
    """Seeded split of user codes into train / valid / test, each sorted."""
    perm = users[rng.permutation(len(users))]
    n_test = int(round(len(users) * (1.0 - train)))
    n_valid = int(round(len(users) * valid))
    if n_test + n_valid >= len(users):
        raise RawInputError(
            f"only {len(users)} users with two or more reviews: too few for train_fraction="
            f"{train} and valid_fraction={valid} to leave a training user"
        )
    return {
        "test": np.sort(perm[:n_test]),
        "valid": np.sort(perm[n_test : n_test + n_valid]),
        "train": np.sort(perm[n_test + n_valid :]),
    }


def _draw_negatives(pool: np.ndarray, positives: np.ndarray, rng: np.random.Generator):
    """One item per positive drawn from ``pool`` (all reviews), redrawn while equal to it."""
    negatives = pool[rng.integers(0, len(pool), len(positives))]
    same = np.flatnonzero(negatives == positives)
    while len(same):
        negatives[same] = pool[rng.integers(0, len(pool), len(same))]
        same = same[negatives[same] == positives[same]]
    return negatives


class _RawSplit:
    """One split's samples in raw codes: each user's negative then positive last review."""

    def __init__(self, users: np.ndarray, sorted_reviews: dict, negatives: np.ndarray) -> None:
        starts, ends = sorted_reviews["starts"][users], sorted_reviews["ends"][users]
        last = ends - 1
        self.user = np.repeat(users, 2)
        self.item = np.stack([negatives[users], sorted_reviews["item"][last]], 1).ravel()
        self.label = np.tile(np.array([0.0, 1.0], np.float32), len(users))
        self.timestamp = np.repeat(sorted_reviews["time"][last], 2)
        self.hist_items, self.hist_offsets = gather_ragged(
            sorted_reviews["item"], np.repeat(starts, 2), np.repeat(last - starts, 2)
        )


def _lookup(ranked: np.ndarray, size: int) -> np.ndarray:
    """Raw code -> dense id (j + 1 for ranked[j], 0 for the rest)."""
    table = np.zeros(size, np.int32)
    table[ranked] = np.arange(1, len(ranked) + 1, dtype=np.int32)
    return table


def prepare_amazon(
    reviews_path: str | Path,
    meta_path: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    train_fraction: float = 0.9,
    valid_fraction: float = 0.0,
    on_bad_lines: str = "error",
    command: str = "",
) -> PreparedDataset:
    """Prepare an Amazon 2014 category (5-core reviews and metadata) as in the DIEN paper.

    See the module docstring for the protocol. ``counts`` in the manifest hold the paper's
    Table 1 figures: ``users``, ``items`` and ``categories`` of the review file, ``events``
    (reviews) and the samples per split (two per user: negative then positive).
    """
    if not 0.0 < train_fraction <= 1.0:
        raise ValueError(f"train_fraction must lie in (0, 1], got {train_fraction}")
    if not 0.0 <= valid_fraction < train_fraction:
        raise ValueError(f"valid_fraction must lie in [0, train_fraction), got {valid_fraction}")
    bad = BadLines(on_bad_lines)
    reviews = read_reviews(reviews_path, bad)
    n_items = len(reviews.item_codes)
    if n_items < 2:
        raise RawInputError(f"{reviews_path}: needs two or more distinct items to draw negatives")
    logger.info("read %d reviews of %d users", len(reviews.user), len(reviews.user_codes))
    found, meta_info = read_meta(meta_path, reviews.item_codes, bad)
    item_cat, cat_names, cat_info = _item_categories(n_items, found)

    user = np.frombuffer(reviews.user, np.int32)
    item = np.frombuffer(reviews.item, np.int32)
    time = np.frombuffer(reviews.time, np.int64)
    order = np.lexsort((time, user))  # stable: same-time reviews keep their file order
    per_user = np.bincount(user, minlength=len(reviews.user_codes))
    ends = np.cumsum(per_user)
    sorted_reviews = {"item": item[order], "time": time[order], "starts": ends - per_user}
    sorted_reviews["ends"] = ends
    eligible = np.flatnonzero(per_user >= 2).astype(np.int32)
    bad.add("users_with_one_review", len(per_user) - len(eligible))
    if len(eligible) == 0:
        raise RawInputError(f"{reviews_path}: no user has two or more reviews")

    rng = np.random.default_rng(seed)
    groups = _split_users(eligible, rng, train_fraction, valid_fraction)
    negatives = np.zeros(len(per_user), np.int32)
    negatives[eligible] = _draw_negatives(item, sorted_reviews["item"][ends[eligible] - 1], rng)
    raw = {name: _RawSplit(users, sorted_reviews, negatives) for name, users in groups.items()}

    train = raw["train"]
    train_items = np.concatenate([train.item, train.hist_items])
    user_names = np.array(list(reviews.user_codes))
    user_rank = rank_by_count(np.bincount(train.user, minlength=len(per_user)), user_names)
    item_names = np.array(list(reviews.item_codes))
    item_rank = rank_by_count(np.bincount(train_items, minlength=n_items), item_names)
    cat_rank = rank_by_count(
        np.bincount(item_cat[train_items], minlength=len(cat_names)), np.array(cat_names)
    )
    user_id = _lookup(user_rank, len(per_user))
    item_id = _lookup(item_rank, n_items)
    cat_id = _lookup(cat_rank, len(cat_names))

    splits = {}
    for name, r in raw.items():
        splits[name] = SplitArrays(
            user=user_id[r.user],
            item=item_id[r.item],
            category=cat_id[item_cat[r.item]],
            label=r.label,
            timestamp=r.timestamp,
            hist_offsets=r.hist_offsets,
            hist_items=item_id[r.hist_items],
            hist_cats=cat_id[item_cat[r.hist_items]],
        )
    n_vocab_items = len(item_rank) + 1
    item_category = np.zeros(n_vocab_items, np.int32)
    item_category[1:] = cat_id[item_cat[item_rank]]
    positives = splits["train"].item[splits["train"].label == 1]
    item_frequency = np.bincount(
        np.concatenate([positives, splits["train"].hist_items]), minlength=n_vocab_items
    ).astype(np.int64)

    counts = {
        "users": len(per_user),
        "items": n_items,
        "categories": len(np.unique(item_cat)),
        "events": len(item),
        "filtered": dict(bad.counts),
        **cat_info,
        **meta_info,
    }
    params = {
        "reviews": str(reviews_path),
        "meta": str(meta_path),
        "seed": seed,
        "train_fraction": train_fraction,
        "valid_fraction": valid_fraction,
        "on_bad_lines": on_bad_lines,
        "negatives_per_review": 1,
        "protocol": "DIEN public code: last review pair per user, users split by chance",
    }
    path = write_prepared(
        out_dir,
        splits=splits,
        vocabs={
            "users": ["<unk>", *user_names[user_rank].tolist()],
            "items": ["<unk>", *item_names[item_rank].tolist()],
            "categories": ["<unk>", *np.array(cat_names)[cat_rank].tolist()],
        },
        item_category=item_category,
        item_frequency=item_frequency,
        source="amazon",
        params=params,
        counts=counts,
        command=command,
    )
    return PreparedDataset.open(path)
