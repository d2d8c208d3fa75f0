"""Fuzz tests of the input readers: every input gives a prepared dataset or a clear error.

Each test starts from small valid files in the real format and mutates them (random bytes,
cut files and gzip streams, non-UTF-8 bytes, lines replaced by JSON of the wrong types,
Python-literal metadata, malformed tab-separated and csv lines, bad values). The reader must
return a dataset with a training split, or raise the project's error for bad input
(:class:`~dien.data.format.DatasetError`, of which ``RawInputError`` is one) whose message
names the input file, and the line when one line was broken; no other exception may escape.
The inputs tried and their outcomes are counted and printed after the tests (``conftest.py``).
The ``slow`` variants run ten times the examples.
"""

from __future__ import annotations

import gzip
import json
import pickle
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from fuzz_tally import record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dien.data.amazon import prepare_amazon
from dien.data.events import prepare_events
from dien.data.format import DatasetError, PreparedDataset
from dien.data.movielens import prepare_movielens
from dien.data.rawio import iter_lines
from dien.data.release import prepare_dien_release

FAST = settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=300)


def attempt(target: str, prepare: Callable[[], object], *files: Path) -> object:
    """Run one input: return the result or the clear error; any other exception fails the test."""
    try:
        result = prepare()
    except DatasetError as error:
        assert any(str(f) in str(error) for f in files), f"names no input file: {error}"
        record(target, "clear error")
        return error
    if isinstance(result, PreparedDataset):
        assert len(result.split("train")) > 0
    record(target, "result")
    return result


def names_line(error: object, line: int) -> None:
    """A clear error about a file where only line ``line`` was broken must name that line."""
    if isinstance(error, DatasetError):
        assert f"line {line}" in str(error), str(error)


# --- mutations of valid files ----------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
ODD_BYTES = st.sampled_from(
    [b"\xff", b"\xc3", b"\x00", b"\r", b"\t", b"\x02", b'"', b"'", b",", b"{", b"[", b"\\"]
)
JUNK = st.binary(max_size=12) | ODD_BYTES | st.text(max_size=8).map(str.encode)
# strings that no vocabulary can hold: the unknown id's name, line breaks, a lone surrogate
RAW_IDS = st.sampled_from(["<unk>", "a\nb", "a\rb", "", " ", "\u00e9", "\u2028", "\ud800"])


@st.composite
def mutated(draw, base: bytes, lines: st.SearchStrategy[bytes] = JUNK) -> bytes:
    """``base`` after one to three random edits, byte-level or line-level."""
    data = base
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["cut", "byte", "insert", "drop", "repeat", "replace"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        rows = data.split(b"\n")
        row = draw(st.integers(0, len(rows) - 1))
        if edit == "cut":
            data = data[:at]
        elif edit == "byte":
            data = data[:at] + draw(ODD_BYTES | st.binary(min_size=1, max_size=1)) + data[at + 1 :]
        elif edit == "insert":
            data = data[:at] + draw(JUNK) + data[at:]
        elif edit == "drop":
            data = b"\n".join(rows[:row] + rows[row + 1 :])
        elif edit == "repeat":
            data = b"\n".join(rows[: row + 1] + rows[row:])
        else:
            data = b"\n".join([*rows[:row], draw(lines), *rows[row + 1 :]])
    return data


@st.composite
def one_line_replaced(draw, base: bytes, lines: st.SearchStrategy[bytes], first: int = 1):
    """``(data, k)``: ``base`` with its line ``k`` (from ``first``, counting from 1) replaced."""
    rows = base.rstrip(b"\n").split(b"\n")
    k = draw(st.integers(first, len(rows)))
    rows[k - 1] = draw(lines.filter(lambda b: b"\n" not in b and b"\r" not in b))
    return b"\n".join(rows) + b"\n", k


def maybe_gzip(draw, data: bytes) -> bytes:
    """``data``, or ``data`` gzipped, or its gzip stream cut short."""
    how = draw(st.sampled_from(["plain", "plain", "gzip", "cut gzip"]))
    if how == "plain":
        return data
    packed = gzip.compress(data, mtime=0)
    if how == "gzip":
        return packed
    return packed[: draw(st.integers(2, max(len(packed) - 1, 2)))]


# --- raw line reading ------------------------------------------------------------------------


def read_all(path: Path) -> list[tuple[int, bytes]]:
    return list(iter_lines(path))


@FAST
@given(data=st.binary(max_size=200), how=st.data())
def test_line_reader_reads_any_bytes_or_says_the_gzip_stream_is_bad(data, how):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.gz"
        path.write_bytes(maybe_gzip(how.draw, data))
        lines = attempt("rawio.iter_lines", lambda: read_all(path), path)
    if not isinstance(lines, DatasetError):  # all of it, line by line, without line ends
        expected = data.split(b"\n")[: -1 if data.endswith(b"\n") or not data else None]
        assert lines == [(n, line.removesuffix(b"\r")) for n, line in enumerate(expected, 1)]


# --- Amazon reviews and metadata ---------------------------------------------------------------

USERS = ["u1", "u2", "u3", "u4", "u5", "u6"]
ITEMS = ["A", "B", "C", "D"]
REVIEWS = b"".join(
    json.dumps({"reviewerID": u, "asin": ITEMS[(k + j) % 4], "unixReviewTime": 10 * j + k}).encode()
    + b"\n"
    for k, u in enumerate(USERS)
    for j in range(3)
)
META = (
    json.dumps({"asin": "A", "categories": [["Books", "Fiction"]]}) + "\n"
    "{'asin': 'B', 'related': {'also_bought': ['A']}, 'categories': [['Books', 'History']]}\n"
    "{'asin': 'C', 'title': u'c', 'categories': [['Books', \"Children's\"]]}\n"
    "{'asin': 'D', 'categories': []}\n"
).encode()

REVIEW_LINES = st.fixed_dictionaries(
    {},
    optional={
        "reviewerID": st.sampled_from(USERS) | RAW_IDS | JSON_VALUES,
        "asin": st.sampled_from(ITEMS) | RAW_IDS | JSON_VALUES,
        "unixReviewTime": st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 2**64, 1.5, 2.0])
        | st.integers(-(2**70), 2**70)
        | JSON_VALUES,
    },
).map(lambda d: json.dumps(d).encode()) | JSON_VALUES.map(lambda v: json.dumps(v).encode())
LITERALS = st.sampled_from(
    [
        "{[1]: 2}",  # unhashable key
        "{'asin': 'A', 'categories': {[1]: 2}}",
        "{'asin': 'A', 'categories': [[{1, 2}]]}",
        "{'asin': 'A', 'categories': [['x', 'y'],], 'z': {1, (2, [3])}}",
        "{'asin': 'A', 'categories': [[1.5]]}",
        "{'asin': 'B', 'categories': 'Books'}",
        "{'asin': 'C', 'categories': [[u'\\xe9']]}",
        "{'asin': 'D', 'categories': " + "[" * 300 + "]" * 300 + "}",
        "{'asin': 'A', 'categories': [['a']]} + 1",
        "{'asin': 'A', 'categories': [[b'bytes']]}",
        "__import__('os')",
        "{'asin': 'A'\x00}",
    ]
)
META_LINES = (
    st.fixed_dictionaries(
        {"asin": st.sampled_from(ITEMS) | JSON_VALUES},
        optional={"categories": st.lists(st.lists(RAW_IDS | st.text(max_size=3))) | JSON_VALUES},
    ).flatmap(lambda d: st.sampled_from([json.dumps(d), repr(d)]))
    | LITERALS
).map(str.encode)


def amazon(reviews: bytes, meta: bytes, on_bad_lines: str = "error") -> object:
    with tempfile.TemporaryDirectory() as tmp:
        r, m = Path(tmp) / "reviews.json", Path(tmp) / "meta.json"
        r.write_bytes(reviews)
        m.write_bytes(meta)
        run = partial(prepare_amazon, r, m, Path(tmp) / "out", on_bad_lines=on_bad_lines)
        return attempt("amazon.prepare_amazon", run, r, m)


def test_the_valid_amazon_files_prepare():
    assert isinstance(amazon(REVIEWS, META), PreparedDataset)


@st.composite
def amazon_inputs(draw):
    reviews, meta = REVIEWS, META
    which = draw(st.sampled_from(["reviews", "meta", "both"]))
    if which != "meta":
        reviews = maybe_gzip(draw, draw(mutated(REVIEWS, REVIEW_LINES | JUNK)))
    if which != "reviews":
        meta = maybe_gzip(draw, draw(mutated(META, META_LINES | JUNK)))
    return reviews, meta, draw(st.sampled_from(["error", "skip"]))


@FAST
@given(inputs=amazon_inputs())
def test_amazon_mutated_files_give_a_dataset_or_a_clear_error(inputs):
    amazon(*inputs)


@pytest.mark.slow
@SLOW
@given(inputs=amazon_inputs())
def test_amazon_mutated_files_many(inputs):
    amazon(*inputs)


@FAST
@given(case=one_line_replaced(REVIEWS, REVIEW_LINES | JUNK))
def test_amazon_one_bad_review_line_is_named(case):
    data, k = case
    names_line(amazon(data, META), k)


@FAST
@given(case=one_line_replaced(META, META_LINES | JUNK))
def test_amazon_one_bad_meta_line_is_named(case):
    data, k = case
    names_line(amazon(REVIEWS, data), k)


# --- the authors' release folder -------------------------------------------------------------

SEP = "\x02"
RELEASE_TRAIN = "".join(
    f"{label}\tu{k % 3}\ti{(k + label) % 4 + 1}\tc{k % 2 + 1}\ti{k % 4 + 1}{SEP}i2\tc1{SEP}c2\n"
    for k in range(6)
    for label in (0, 1)
).encode()
RELEASE_TEST = b"1\tu9\ti1\tc1\ti2\tc2\n0\tu1\ti3\tc2\t\t\n"
RELEASE_VOCABS = {
    "uid_voc.pkl": pickle.dumps({"u0": 0, "u1": 1, "u2": 2}, protocol=0),
    "mid_voc.pkl": pickle.dumps({b"default_mid": 0, b"i1": 1, b"i2": 2, b"i3": 3, b"i4": 4}, 3),
    "cat_voc.pkl": pickle.dumps({"default_cat": 0, "c1": 1, "c2": 2}, protocol=4),
}
RELEASE_INFO = {
    "item-info": b"i1\tc1\ni2\tc2\ni3\tc2\ni4\tc1\n",
    "reviews-info": b"u0\ti1\t5.0\t1\nu1\ti2\t4.0\t2\nu2\ti3\t3.0\t3\nu2\ti4\t3.0\t4\n",
}
RELEASE_FIELDS = st.lists(
    st.sampled_from(["0", "1", "2", "", "u1", "i1", "c1", f"i1{SEP}i2", f"c1{SEP}", "\u00e9"])
    | st.text(max_size=5),
    max_size=8,
).map(lambda fields: "\t".join(fields).encode())
PICKLED = st.sampled_from(
    [
        pickle.dumps([1, 2]),
        pickle.dumps({"i1": -1}),
        pickle.dumps({"i1": 1.5}),
        pickle.dumps({"i1": True}),
        pickle.dumps({"i1": 1, "i2": 1}),
        pickle.dumps({1: 1}),
        pickle.dumps({b"\xff": 1}),
        pickle.dumps({"i1": 2**80}),
        pickle.dumps({"i1": None}),
        pickle.dumps({"<unk>": 1, "i1": 2}),
        pickle.dumps({"": 1}),
        pickle.dumps({"i\n1": 1}),
        pickle.dumps({"\ud800": 1}),
        pickle.dumps({}),
        pickle.dumps(Path("x")),
        b"",
        b"cos\nsystem\n(S'true'\ntR.",
    ]
) | st.dictionaries(st.text(max_size=3), st.integers(0, 6), max_size=6).map(pickle.dumps)


def release(files: dict[str, bytes], on_bad_lines: str = "error") -> object:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "release"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        run = partial(prepare_dien_release, folder, Path(tmp) / "out", on_bad_lines=on_bad_lines)
        return attempt("release.prepare_dien_release", run, folder)


def release_files(**changed: bytes) -> dict[str, bytes]:
    return {
        "local_train_splitByUser": RELEASE_TRAIN,
        "local_test_splitByUser": RELEASE_TEST,
        **RELEASE_VOCABS,
        **RELEASE_INFO,
        **changed,
    }


def test_the_valid_release_folder_prepares():
    assert isinstance(release(release_files()), PreparedDataset)


@st.composite
def release_inputs(draw):
    files = release_files()
    for name in draw(st.sets(st.sampled_from(sorted(files)), min_size=1, max_size=2)):
        if name.endswith(".pkl"):
            files[name] = draw(PICKLED | mutated(files[name]))
        else:
            files[name] = maybe_gzip(draw, draw(mutated(files[name], RELEASE_FIELDS | JUNK)))
    if draw(st.integers(0, 9)) == 0:
        del files[draw(st.sampled_from(sorted(files)))]
    return files, draw(st.sampled_from(["error", "skip"]))


@FAST
@given(inputs=release_inputs())
def test_release_mutated_folders_give_a_dataset_or_a_clear_error(inputs):
    release(*inputs)


@pytest.mark.slow
@SLOW
@given(inputs=release_inputs())
def test_release_mutated_folders_many(inputs):
    release(*inputs)


@FAST
@given(case=one_line_replaced(RELEASE_TRAIN, RELEASE_FIELDS | JUNK))
def test_release_one_bad_sample_line_is_named(case):
    data, k = case
    names_line(release(release_files(local_train_splitByUser=data)), k)


# --- MovieLens csv files ---------------------------------------------------------------------

MOVIES = (
    b'movieId,title,genres\n1,"A, the film (1990)",Drama|Comedy\n2,B (1991),Comedy\n'
    b"3,C (1992),(no genres listed)\n4,D (1993),Action|Drama\n"
)
RATINGS = b"userId,movieId,rating,timestamp\n" + b"".join(
    f"{u},{(u + j) % 4 + 1},{(j % 5) + 0.5},{100 * j + u}\n".encode()
    for u in range(1, 5)
    for j in range(4)
)
CSV_VALUES = st.sampled_from(
    ["", "1", "-1", "1.5", "1e3", "nan", "inf", "99999999999999999999", " 2", "x", '"', '""']
    + ['"G\nH"', '"G\rH"', "<unk>", '"<unk>|X"']
) | st.text(max_size=5)
CSV_LINES = st.lists(CSV_VALUES, min_size=1, max_size=6).map(lambda v: ",".join(v).encode())


def movielens(ratings: bytes, movies: bytes) -> object:
    with tempfile.TemporaryDirectory() as tmp:
        r, m = Path(tmp) / "ratings.csv", Path(tmp) / "movies.csv"
        r.write_bytes(ratings)
        m.write_bytes(movies)
        run = partial(prepare_movielens, r, m, Path(tmp) / "out")
        return attempt("movielens.prepare_movielens", run, r, m)


def test_the_valid_movielens_files_prepare():
    assert isinstance(movielens(RATINGS, MOVIES), PreparedDataset)


@st.composite
def movielens_inputs(draw):
    ratings, movies = RATINGS, MOVIES
    which = draw(st.sampled_from(["ratings", "movies", "both"]))
    if which != "movies":
        ratings = draw(mutated(RATINGS, CSV_LINES | JUNK))
    if which != "ratings":
        movies = draw(mutated(MOVIES, CSV_LINES | JUNK))
    return ratings, movies


@FAST
@given(inputs=movielens_inputs())
def test_movielens_mutated_files_give_a_dataset_or_a_clear_error(inputs):
    movielens(*inputs)


@pytest.mark.slow
@SLOW
@given(inputs=movielens_inputs())
def test_movielens_mutated_files_many(inputs):
    movielens(*inputs)


@FAST
@given(case=one_line_replaced(RATINGS, CSV_LINES | JUNK, first=2))
def test_movielens_one_bad_rating_line_is_named(case):
    data, k = case
    names_line(movielens(data, MOVIES), k)


# --- event tables: csv, tsv and JSON lines -----------------------------------------------------

EVENT_ROWS = [
    {
        "user": f"u{k % 3}",
        "item": f"i{k % 5}",
        "time": str(k) if k != 7 else "1970-01-01T00:00:07",
        "cat": f"c{k % 2}",
        "label": str(k % 2),
        "kind": "click" if k % 4 else "view",
    }
    for k in range(12)
]
EVENT_COLUMNS = list(EVENT_ROWS[0])
EVENT_TABLES = {
    "csv": b"".join(
        ",".join(row).encode() + b"\n" for row in [EVENT_COLUMNS, *(r.values() for r in EVENT_ROWS)]
    ),
    "tsv": b"".join(
        "\t".join(row).encode() + b"\n"
        for row in [EVENT_COLUMNS, *(r.values() for r in EVENT_ROWS)]
    ),
    "jsonl": b"".join(json.dumps(r).encode() + b"\n" for r in EVENT_ROWS),
}
EVENT_OPTIONS = [
    {},
    {"category_col": "cat", "label_col": "label"},
    {"behavior_col": "kind", "click_values": ["click"], "max_history": 2},
    {"split": "user", "negatives_per_positive": 2, "min_item_count": 2},
]
EVENT_VALUES = (
    st.sampled_from(["", "1", "-3", "1.5", "1e400", "nan", "true", "2020-02-30", "u1", "i1"])
    | RAW_IDS
    | st.text(max_size=5)
    | JSON_VALUES
)
EVENT_LINES = (
    st.fixed_dictionaries({}, optional={c: EVENT_VALUES for c in EVENT_COLUMNS}).map(
        lambda d: json.dumps(d).encode()
    )
    | CSV_LINES
    | st.lists(CSV_VALUES, min_size=6, max_size=6).map(lambda v: "\t".join(v).encode())
)


def events(kind: str, data: bytes, options: dict, on_bad_lines: str = "error") -> object:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"events.{kind}"
        path.write_bytes(data)

        def run():
            return prepare_events(
                path,
                Path(tmp) / "out",
                user_col="user",
                item_col="item",
                time_col="time",
                on_bad_lines=on_bad_lines,
                **options,
            )

        return attempt(f"events.prepare_events ({kind})", run, path)


@pytest.mark.parametrize("kind", sorted(EVENT_TABLES))
@pytest.mark.parametrize("options", EVENT_OPTIONS)
def test_the_valid_event_tables_prepare(kind, options):
    assert isinstance(events(kind, EVENT_TABLES[kind], options), PreparedDataset)


@st.composite
def event_inputs(draw, kind: str):
    data = maybe_gzip(draw, draw(mutated(EVENT_TABLES[kind], EVENT_LINES | JUNK)))
    return (
        kind,
        data,
        draw(st.sampled_from(EVENT_OPTIONS)),
        draw(st.sampled_from(["error", "skip"])),
    )


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@FAST
@given(how=st.data())
def test_event_tables_mutated_give_a_dataset_or_a_clear_error(kind, how):
    events(*how.draw(event_inputs(kind)))


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(EVENT_TABLES))
@SLOW
@given(how=st.data())
def test_event_tables_mutated_many(kind, how):
    events(*how.draw(event_inputs(kind)))


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@FAST
@given(how=st.data())
def test_event_tables_one_bad_line_is_named(kind, how):
    first = 2 if kind == "csv" else 1
    data, k = how.draw(one_line_replaced(EVENT_TABLES[kind], EVENT_LINES | JUNK, first))
    names_line(events(kind, data, how.draw(st.sampled_from(EVENT_OPTIONS))), k)
