"""A user's own event log (csv, parquet or JSON lines) prepared into click-through-rate samples.

Every event row names a user, an item and a time, optionally the item's category, a click
label and a behaviour type. The rules:

- **Which rows.** With ``behavior_col`` only rows whose behaviour is one of ``click_values``
  are kept (the others are counted in ``counts["filtered"]["behavior_not_a_click"]``).
- **Samples and labels.** Without ``label_col`` every event is a click, a positive sample, and
  ``negatives_per_positive`` negative samples go with it: items drawn by training frequency,
  never the positive's own item, with the positive's history and time. With ``label_col``
  (values 1/0, true/false) every event is a sample with its own label and nothing is drawn.
- **Histories.** A sample's history is the same user's *clicked* events (label 1) strictly
  earlier in time, oldest first; events with equal times are never in each other's history.
  Only the most recent ``max_history`` are kept (``None`` keeps all: a user with n events then
  stores n^2/2 history steps, so set it for long logs). Samples whose history is shorter than
  ``min_history`` are dropped and counted (``history_shorter_than_min_history``); the default
  1 drops each user's first event, as the DIEN paper's data does.
- **Splits.** ``split="time"``: global cut-offs, the latest ``test_fraction`` of all events (by
  time; events at the cut-off time all go to the later split) are the test split, the
  ``valid_fraction`` before them validation, the rest training. ``split="user"``: a seeded
  random share of users (``test_fraction``, ``valid_fraction``) goes to each split with all
  their samples.
- **Vocabularies** come from the training split only: its users, and the items and categories
  of its targets and histories. An item occurring fewer than ``min_item_count`` times there
  (as a target or a history step) becomes the unknown id 0, like every id that the training
  split lacks. Ids 1.. go by descending count, ties by raw id (compared as text).
- **Categories.** Without ``category_col`` every category is 0. A sample's category is its
  event's; ``item_category`` holds, for each item, a category its training events give it.

Reading is columnar (polars, lazily for parquet and csv) and the samples are built with numpy
on integer codes, without a Python loop over rows. Memory grows with the number of events, not
with the number of history steps: counts over histories come from how many histories cover
each click, histories are gathered in chunks, and a split's histories beyond
``HISTORY_IN_MEMORY`` steps are written through memory-mapped scratch files beside the output
(20 million events with histories of up to 100 took 4.5 GiB).

A csv or JSON lines file that polars cannot parse is read a second time line by line to find
the line at fault (``on_bad_lines="error"``) or to drop bad lines and count them (``"skip"``).
Rows with a missing value or a value of the wrong type are reported with the line (csv, JSON
lines, assuming one record per line) or row (parquet) and the column.
"""

from __future__ import annotations

import csv
import gzip
import logging
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import Literal

import numpy as np

from dien.data.format import UNKNOWN, PreparedDataset, SplitArrays, write_prepared
from dien.data.rawio import (
    GZIP_MAGIC,
    BadLines,
    RawInputError,
    check_on_bad_lines,
    decode_problem,
    gather_ragged,
    iter_lines,
    json_loads,
    rank_by_count,
    raw_id_problem,
    where,
)
from dien.data.sampling import NegativeSampler

logger = logging.getLogger(__name__)

SAMPLES_PER_CHUNK = 1 << 19  # samples whose histories are gathered at once (int64 indices)
HISTORY_IN_MEMORY = 1 << 26  # history steps of a split kept in memory; more go to a file

FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
TRUE_VALUES = ("1", "true", "True", "TRUE", "1.0")
FALSE_VALUES = ("0", "false", "False", "FALSE", "0.0")


def _polars():
    try:
        import polars as pl
    except ImportError:  # pragma: no cover - polars is an optional dependency
        raise ImportError(
            "prepare_events needs polars (and pyarrow for parquet): pip install 'dien[events]'"
        ) from None
    return pl


def _file_format(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    fmt = FORMATS.get(suffixes[-1].lower()) if suffixes else None
    if fmt is None:
        raise RawInputError(
            f"{path}: cannot tell the format from the name; expected one of "
            f"{', '.join(sorted(FORMATS))} (optionally .gz for csv and JSON lines)"
        )
    return fmt


def _scan(path: Path, fmt: str, columns: list[str], shown: Path | None = None):
    """A lazy frame of ``columns`` (text for csv and JSON lines), or a RawInputError.

    Errors name ``shown``, the input file, when ``path`` is a copy of it (gunzipped).
    """
    pl = _polars()
    if fmt == "parquet":
        lf = pl.scan_parquet(path)
    elif fmt == "csv":
        separator = "\t" if ".tsv" in path.suffixes else ","
        lf = pl.scan_csv(path, infer_schema=False, separator=separator)
    else:
        lf = pl.scan_ndjson(path, schema={c: pl.String for c in columns})
    shown = shown or path
    try:
        available = lf.collect_schema().names()
    except Exception as e:  # noqa: BLE001 - polars raises several kinds on unreadable files
        raise RawInputError(f"{shown}: cannot be read as {fmt} ({e})") from None
    missing = [c for c in columns if c not in available]
    if missing:
        raise RawInputError(
            f"{shown}: no column {', '.join(map(repr, missing))}; its columns: "
            f"{', '.join(available)}"
        )
    return lf.select(columns)


def _clean_lines(path: Path, fmt: str, bad: BadLines, tmp: Path) -> Path:
    """Read a csv / JSON lines file line by line: report each bad line, write the good ones."""
    cleaned = tmp / f"cleaned{''.join(path.suffixes[-1:])}"
    header: list[str] | None = None
    separator = "\t" if ".tsv" in path.suffixes else ","
    with open(cleaned, "wb") as out:
        for lineno, line in iter_lines(path):
            problem = decode_problem(line)
            if problem is not None:
                bad.report("not_utf8", where(path, lineno), problem)
                continue
            if not line.strip():
                continue
            if fmt == "csv":
                try:  # a lone carriage return inside a line is an error of the csv module
                    fields = next(csv.reader([line.decode("utf-8")], delimiter=separator), [])
                except csv.Error as e:
                    bad.report("malformed", where(path, lineno), f"not valid csv ({e})")
                    continue
                if header is None:
                    header = fields
                elif len(fields) != len(header):
                    bad.report(
                        "malformed",
                        where(path, lineno),
                        f"{len(fields)} fields, the header has {len(header)}",
                    )
                    continue
            else:
                try:
                    ok = isinstance(json_loads(line), dict)
                except ValueError as e:
                    bad.report("malformed", where(path, lineno), f"not valid JSON ({e})")
                    continue
                if not ok:
                    bad.report("malformed", where(path, lineno), "expected a JSON object")
                    continue
            out.write(line + b"\n")
    return cleaned


def _time_expr(name: str, dtype):
    """Seconds since the epoch as Int64 (null where the value cannot be read as a time)."""
    pl = _polars()
    col = pl.col(name)
    if dtype.is_temporal():
        return col.dt.epoch("s")
    if dtype.is_numeric():
        return col.cast(pl.Int64, strict=False)
    text = col.cast(pl.String)
    return pl.coalesce(
        text.cast(pl.Int64, strict=False),
        text.cast(pl.Float64, strict=False).cast(pl.Int64, strict=False),
        text.str.to_datetime(strict=False).dt.epoch("s"),
    )


def _label_expr(name: str, dtype):
    pl = _polars()
    col = pl.col(name)
    if dtype == pl.Boolean:
        return col.cast(pl.Int8)
    text = col.cast(pl.String)
    return (
        pl.when(text.is_in(TRUE_VALUES))
        .then(pl.lit(1, pl.Int8))
        .when(text.is_in(FALSE_VALUES))
        .then(pl.lit(0, pl.Int8))
        .otherwise(None)
    )


def _gunzipped(path: Path, tmp: Path) -> Path:
    """``path`` itself, or when it is gzipped a plain copy of it in ``tmp``."""
    with open(path, "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            return path
    source = tmp / f"input{path.suffixes[0] if path.suffixes else ''}"
    try:
        with gzip.open(path, "rb") as fin, open(source, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise RawInputError(f"{path}: the gzip stream is corrupt or truncated ({e})") from None
    return source


def _load(path: Path, fmt: str, cols: dict, click_values, bad: BadLines, tmp: Path):
    """Read, check and encode the event columns; returns numpy arrays and raw-id tables."""
    pl = _polars()
    needed = [c for c in cols.values() if c is not None]
    source = path if fmt == "parquet" else _gunzipped(path, tmp)
    try:
        df = _scan(source, fmt, needed, shown=path).collect()
    except RawInputError:
        raise
    except Exception as e:  # noqa: BLE001 - any polars parse failure: find the line ourselves
        if fmt == "parquet":
            raise RawInputError(f"{path}: cannot be read as parquet ({e})") from None
        logger.info("%s: polars could not parse it (%s); reading line by line", path, e)
        source = _clean_lines(path, fmt, bad, tmp)
        try:
            df = _scan(source, fmt, needed).collect()
        except Exception as e2:  # noqa: BLE001
            raise RawInputError(f"{path}: cannot be read as {fmt} ({e2})") from None
    if df.height == 0:
        raise RawInputError(f"{path}: holds no events")

    first_line = {"csv": 2, "jsonl": 1, "parquet": 0}[fmt]
    df = df.with_row_index("_row")
    if cols["behavior"] is not None:
        keep = pl.col(cols["behavior"]).cast(pl.String).is_in([str(v) for v in click_values])
        bad.add("behavior_not_a_click", df.height - int(df.select(keep.sum()).item()))
        df = df.filter(keep)

    parsed = {"time": _time_expr(cols["time"], df.schema[cols["time"]])}
    if cols["label"] is not None:
        parsed["label"] = _label_expr(cols["label"], df.schema[cols["label"]])
    df = df.with_columns(**{f"_{k}": e for k, e in parsed.items()})
    problems = []
    for key, name in cols.items():
        if name is None or key == "behavior":
            continue
        text = pl.col(name).cast(pl.String)
        problems.append(("missing_value", name, text.is_null() | (text.str.strip_chars() == "")))
        if key in parsed:
            problems.append(("wrong_type", name, pl.col(f"_{key}").is_null() & text.is_not_null()))
        elif key in ("user", "item", "category"):
            bad_id = text.str.contains("[\n\r]") | (text == UNKNOWN)
            problems.append(("bad_id", name, bad_id.fill_null(False)))
    drop = pl.lit(False)
    for reason, name, expr in problems:
        rows = df.filter(expr & ~drop).select("_row", pl.col(name).cast(pl.String))
        drop = drop | expr
        if rows.height == 0:
            continue
        row, value = rows.row(0)
        line = f"line {row + first_line}" if fmt != "parquet" else f"row {row}"
        what = "a time" if name == cols["time"] else "a 0/1 label"
        problem = {
            "missing_value": "missing value",
            "wrong_type": f"cannot read {value!r} as {what}",
            "bad_id": f"{value!r:.80} cannot be a raw id: it {raw_id_problem(value)}",
        }[reason]
        bad.report(reason, f"{path}, {line}, column '{name}'", problem, n=rows.height)
    df = df.filter(~drop)
    if df.height == 0:
        raise RawInputError(f"{path}: no event is left after skipping bad rows")
    return _encode(df, cols)


def _codes(series) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes in sorted order of the text values, and the values themselves."""
    text = series.cast(_polars().String)
    codes = (text.rank("dense").to_numpy() - 1).astype(np.int32)
    names = text.unique().sort().to_numpy().astype(str)
    return codes, names


def _encode(df, cols: dict) -> dict:
    out = {"row": df["_row"].to_numpy().astype(np.int64), "time": df["_time"].to_numpy()}
    out["user"], out["user_names"] = _codes(df[cols["user"]])
    out["item"], out["item_names"] = _codes(df[cols["item"]])
    if cols["category"] is not None:
        out["cat"], out["cat_names"] = _codes(df[cols["category"]])
    else:
        out["cat"], out["cat_names"] = np.zeros(df.height, np.int32), np.array([], str)
    if cols["label"] is not None:
        out["label"] = df["_label"].to_numpy().astype(np.int8)
    else:
        out["label"] = np.ones(df.height, np.int8)
    return out


def _histories(ev: dict, max_history: int | None) -> dict:
    """Sort events by (user, time, row); each event's history as a range of the clicks array."""
    order = np.lexsort((ev["row"], ev["time"], ev["user"]))
    s = {k: ev[k][order] for k in ("user", "item", "cat", "time", "label")}
    n = len(order)
    index = np.arange(n)
    new_user = np.ones(n, bool)
    new_user[1:] = s["user"][1:] != s["user"][:-1]
    new_block = new_user.copy()
    new_block[1:] |= s["time"][1:] != s["time"][:-1]
    user_start = np.maximum.accumulate(np.where(new_user, index, 0))
    block_start = np.maximum.accumulate(np.where(new_block, index, 0))
    clicks_before = np.zeros(n + 1, np.int64)
    np.cumsum(s["label"] == 1, out=clicks_before[1:])
    end = clicks_before[block_start]  # clicks strictly earlier in time than the event
    begin = clicks_before[user_start]
    if max_history is not None:
        begin = np.maximum(begin, end - max_history)
    clicked = s["label"] == 1
    s["hist_begin"], s["hist_len"] = begin, end - begin
    s["click_item"], s["click_cat"] = s["item"][clicked], s["cat"][clicked]
    return s


def _assign_splits(
    s: dict, split: str, valid: float, test: float, rng: np.random.Generator
) -> np.ndarray:
    """0 train, 1 valid, 2 test for each sorted event."""
    n = len(s["time"])
    if split == "time":
        times = np.sort(s["time"])
        cut_test = times[min(int(n * (1 - test)), n - 1)] if test > 0 else None
        cut_valid = times[min(int(n * (1 - test - valid)), n - 1)] if valid > 0 else None
        group = np.zeros(n, np.int8)
        if cut_valid is not None:
            group[s["time"] >= cut_valid] = 1
        if cut_test is not None:
            group[s["time"] >= cut_test] = 2
        return group
    n_users = int(s["user"].max()) + 1
    perm = rng.permutation(n_users)
    n_test, n_valid = int(round(n_users * test)), int(round(n_users * valid))
    user_group = np.zeros(n_users, np.int8)
    user_group[perm[:n_test]] = 2
    user_group[perm[n_test : n_test + n_valid]] = 1
    return user_group[s["user"]]


def _vocab_table(count: np.ndarray, min_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(raw codes ranked, raw code -> id)``; codes are in raw-id text order already."""
    count = np.where(count >= min_count, count, 0)
    ranked = rank_by_count(count, np.arange(len(count)))
    table = np.zeros(len(count), np.int32)
    table[ranked] = np.arange(1, len(ranked) + 1, dtype=np.int32)
    return ranked, table


def _history_coverage(n_clicks: int, begin: np.ndarray, length: np.ndarray) -> np.ndarray:
    """How many of the ranges ``[begin, begin + length)`` hold each click: (n_clicks,) int64.

    The counts of items and categories over a split's histories, without gathering the
    histories themselves (which at tens of millions of events do not fit in memory).
    """
    starts = np.bincount(begin, minlength=n_clicks + 1)
    ends = np.bincount(begin + length, minlength=n_clicks + 1)
    return np.cumsum(starts - ends)[:n_clicks]


def _weighted_count(values: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
    """``np.bincount(values, weights, n)`` for integer weights, as int64 (exact below 2**53)."""
    return np.bincount(values, weights=weights, minlength=n).astype(np.int64)


def _train_vocabularies(s: dict, train: np.ndarray, ev: dict, min_item_count: int, has_cat: bool):
    """Vocabularies from the training samples ``train``, item tables, items cut by count.

    Returns ``(ids, (item_category, item_frequency), items below min_item_count)`` where
    ``ids[name]`` maps raw codes to ids and ``ids[name + "_ranked"]`` lists the raw codes of
    ids 1.. in order.
    """
    in_train_histories = _history_coverage(
        len(s["click_item"]), s["hist_begin"][train], s["hist_len"][train]
    )  # (n_clicks,) how many training histories hold each click
    n_items = len(ev["item_names"])
    item_count = np.bincount(s["item"][train], minlength=n_items)
    item_count += _weighted_count(s["click_item"], in_train_histories, n_items)
    ids = {}
    ids["items_ranked"], ids["items"] = _vocab_table(item_count, min_item_count)
    user_count = np.bincount(s["user"][train], minlength=len(ev["user_names"]))
    ids["users_ranked"], ids["users"] = _vocab_table(user_count)
    n_cats = max(len(ev["cat_names"]), 1)
    cat_count = np.bincount(s["cat"][train], minlength=n_cats)
    cat_count += _weighted_count(s["click_cat"], in_train_histories, n_cats)
    ids["categories_ranked"], ids["categories"] = _vocab_table(cat_count)
    if not has_cat:
        ids["categories_ranked"], ids["categories"] = np.zeros(0, np.int64), np.zeros(1, np.int32)

    n_ids = len(ids["items_ranked"]) + 1
    item_category = np.zeros(n_ids, np.int32)
    item_category[ids["items"][s["item"][train]]] = ids["categories"][s["cat"][train]]
    item_category[0] = 0
    positives = train[s["label"][train] == 1]
    item_frequency = np.bincount(ids["items"][s["item"][positives]], minlength=n_ids)
    item_frequency += _weighted_count(ids["items"][s["click_item"]], in_train_histories, n_ids)
    item_frequency[0] = 0
    below = int(((item_count > 0) & (ids["items"] == 0)).sum())
    return ids, (item_category, item_frequency.astype(np.int64)), below


def _check_options(p: dict) -> int:
    """Raise ValueError for inconsistent options in ``p``; return the negatives per positive."""
    if p["split"] not in ("time", "user"):
        raise ValueError(f"split must be 'time' or 'user', got {p['split']!r}")
    valid, test = p["valid_fraction"], p["test_fraction"]
    if not (valid >= 0 and test >= 0 and valid + test < 1):
        raise ValueError("valid_fraction and test_fraction must be >= 0 and sum to less than 1")
    if p["behavior_col"] is not None and not p["click_values"]:
        raise ValueError("behavior_col needs click_values: the behaviour values that are clicks")
    k = p["negatives_per_positive"]
    if p["label_col"] is not None:
        if k:
            raise ValueError("negatives_per_positive is for logs without labels; label_col is set")
        k = 0
    elif k is None:
        k = 1
    if k < 0 or p["min_history"] < 0:
        raise ValueError("negatives_per_positive and min_history must be >= 0")
    if p["min_item_count"] < 1 or (p["max_history"] is not None and p["max_history"] < 1):
        raise ValueError("min_item_count and max_history must be >= 1")
    return k


def prepare_events(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    user_col: str,
    item_col: str,
    time_col: str,
    category_col: str | None = None,
    label_col: str | None = None,
    behavior_col: str | None = None,
    click_values: list | tuple | None = None,
    max_history: int | None = None,
    min_history: int = 1,
    negatives_per_positive: int | None = None,
    split: Literal["time", "user"] = "time",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    min_item_count: int = 1,
    seed: int = 0,
    on_bad_lines: str = "error",
    command: str = "",
) -> PreparedDataset:
    """Prepare an event table into train / valid / test samples; see the module docstring.

    ``negatives_per_positive`` defaults to 1 without ``label_col`` and must be left unset (or
    0) with one, where the labels already hold the non-clicks.
    """
    path = Path(input_path)
    check_on_bad_lines(on_bad_lines)
    params = {
        "input": str(path),
        "user_col": user_col,
        "item_col": item_col,
        "time_col": time_col,
        "category_col": category_col,
        "label_col": label_col,
        "behavior_col": behavior_col,
        "click_values": None if click_values is None else [str(v) for v in click_values],
        "max_history": max_history,
        "min_history": min_history,
        "negatives_per_positive": negatives_per_positive,
        "split": split,
        "valid_fraction": valid_fraction,
        "test_fraction": test_fraction,
        "min_item_count": min_item_count,
        "seed": seed,
        "on_bad_lines": on_bad_lines,
    }
    k = params["negatives_per_positive"] = _check_options(params)
    if not path.is_file():
        raise RawInputError(f"{path}: no such file")

    cols = {
        "user": user_col,
        "item": item_col,
        "time": time_col,
        "category": category_col,
        "label": label_col,
        "behavior": behavior_col,
    }
    bad = BadLines(on_bad_lines)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".events-", dir=out_dir.parent) as tmp:
        ev = _load(path, _file_format(path), cols, click_values, bad, Path(tmp))
    n_events = len(ev["row"])
    s = _histories(ev, max_history)
    rng = np.random.default_rng(seed)
    group = _assign_splits(s, split, valid_fraction, test_fraction, rng)
    keep = s["hist_len"] >= min_history
    bad.add("history_shorter_than_min_history", int((~keep).sum()))

    samples = {}
    for g, name in enumerate(("train", "valid", "test")):
        idx = np.flatnonzero(keep & (group == g))
        samples[name] = idx
    train = samples["train"]
    if len(train) == 0:
        raise RawInputError(f"{path}: no training sample is left; check the split fractions")
    ids, tables, below = _train_vocabularies(s, train, ev, min_item_count, category_col is not None)
    item_id, user_id, cat_id = ids["items"], ids["users"], ids["categories"]
    item_category, item_frequency = tables
    drawable = int((item_frequency > 0).sum())
    if k and drawable < 2:
        raise RawInputError(
            f"{path}: the training split holds {drawable} item(s) with at least min_item_count="
            f"{min_item_count} occurrences; drawing negatives needs two (or pass label_col)"
        )
    sampler = NegativeSampler(item_frequency, item_category, "frequency") if k else None

    counts = {
        "users": len(ev["user_names"]),
        "items": len(ev["item_names"]),
        "categories": len(ev["cat_names"]),
        "events": n_events,
        "filtered": dict(bad.counts),
        "items_below_min_item_count": below,
    }
    vocabs = {
        "users": [UNKNOWN, *ev["user_names"][ids["users_ranked"]].tolist()],
        "items": [UNKNOWN, *ev["item_names"][ids["items_ranked"]].tolist()],
        "categories": [UNKNOWN, *ev["cat_names"][ids["categories_ranked"]].tolist()],
    }
    with tempfile.TemporaryDirectory(prefix=".events-", dir=out_dir.parent) as scratch:
        splits = {
            name: _split_arrays(s, idx, item_id, user_id, cat_id, k, sampler, rng, Path(scratch))
            for name, idx in samples.items()
        }
        out = write_prepared(
            out_dir,
            splits=splits,
            vocabs=vocabs,
            item_category=item_category,
            item_frequency=item_frequency,
            source="events",
            params=params,
            counts=counts,
            command=command,
        )
        del splits  # the memory-mapped histories, before their files go
    return PreparedDataset.open(out)


def _split_arrays(s, idx, item_id, user_id, cat_id, k, sampler, rng, scratch) -> SplitArrays:
    """Samples of the sorted events ``idx``; each positive followed by ``k`` negatives.

    Histories are gathered ``SAMPLES_PER_CHUNK`` samples at a time; beyond
    ``HISTORY_IN_MEMORY`` steps they go to memory-mapped files in the folder ``scratch``,
    so that memory stays bounded whatever the size of the log.
    """
    item = item_id[s["item"][idx]]
    cat = cat_id[s["cat"][idx]]
    label = s["label"][idx].astype(np.float32)
    rows = np.arange(len(idx))
    if k:
        neg_items, neg_cats = sampler.sample(item, k, rng)  # (N, k)
        item = np.concatenate([item[:, None], neg_items], 1).ravel()
        cat = np.concatenate([cat[:, None], neg_cats], 1).ravel()
        label = np.tile(np.r_[np.float32(1), np.zeros(k, np.float32)], len(idx))
        rows = np.repeat(rows, k + 1)
    begin, length = s["hist_begin"][idx][rows], s["hist_len"][idx][rows]
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(length, out=offsets[1:])
    hist_items = _history_array(scratch, "hist_items", int(offsets[-1]))
    hist_cats = _history_array(scratch, "hist_cats", int(offsets[-1]))
    for lo in range(0, len(rows), SAMPLES_PER_CHUNK):
        hi = min(lo + SAMPLES_PER_CHUNK, len(rows))
        part = slice(offsets[lo], offsets[hi])
        clicks, _ = gather_ragged(s["click_item"], begin[lo:hi], length[lo:hi])
        hist_items[part] = item_id[clicks]
        clicks, _ = gather_ragged(s["click_cat"], begin[lo:hi], length[lo:hi])
        hist_cats[part] = cat_id[clicks]
    return SplitArrays(
        user=user_id[s["user"][idx][rows]],
        item=item.astype(np.int32),
        category=cat.astype(np.int32),
        label=label,
        timestamp=s["time"][idx][rows].astype(np.int64),
        hist_offsets=offsets,
        hist_items=hist_items,
        hist_cats=hist_cats,
    )


def _history_array(scratch: Path, name: str, n: int) -> np.ndarray:
    """An int32 array of ``n`` history steps: in memory, or a memory-mapped file when large."""
    if n <= HISTORY_IN_MEMORY:
        return np.empty(n, np.int32)
    path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".npy", dir=scratch)[1])
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=(n,))
