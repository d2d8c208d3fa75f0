"""prepare_amazon on small handcrafted review and metadata files, checked sample by sample."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dien.data.amazon import DEFAULT_CATEGORY, prepare_amazon
from dien.data.format import DatasetError

# (user, item, time) in file order. u3 has one review; u2 reviews A and B at the same time.
REVIEWS = [
    ("u1", "A", 100),
    ("u1", "B", 300),
    ("u1", "C", 200),
    ("u2", "A", 50),
    ("u2", "B", 50),
    ("u3", "C", 10),
    ("u4", "B", 5),
    ("u4", "D", 7),
    ("u4", "A", 9),
    ("u5", "D", 1),
    ("u5", "C", 2),
]
# user -> (last item, history oldest first, time of the last review)
EXPECTED = {
    "u1": ("B", ["A", "C"], 300),
    "u2": ("B", ["A"], 50),
    "u4": ("A", ["B", "D"], 9),
    "u5": ("C", ["D"], 2),
}
CATEGORY = {"A": "Fiction", "B": "History", "C": "Children's", "D": DEFAULT_CATEGORY}


def review_line(user: str, item: str, time: int) -> str:
    return json.dumps(
        {
            "reviewerID": user,
            "asin": item,
            "helpful": [0, 0],
            "overall": 4.0,
            "reviewText": "fine",
            "unixReviewTime": time,
        }
    )


def write_gz(path, lines: list[str] | list[bytes]) -> str:
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    with gzip.open(path, "wb") as f:
        f.write(data)
    return str(path)


META = [
    json.dumps({"asin": "A", "title": "a", "categories": [["Books", "Fiction"]]}),
    # Python literals as in the 2014 files: single quotes, a double-quoted name with a quote
    "{'asin': 'B', 'related': {'also_bought': ['A']}, 'categories': [['Books', 'History'], "
    "['Other']]}",
    "{'asin': 'C', 'title': 'c', 'categories': [['Books', \"Children's\"]]}",
    json.dumps({"asin": "A", "categories": [["Books", "Second line wins not"]]}),
    "{'asin': 'E', 'categories': [['Unused']]}",
]


@pytest.fixture
def files(tmp_path):
    reviews = write_gz(tmp_path / "reviews.json.gz", [review_line(*r) for r in REVIEWS])
    meta = write_gz(tmp_path / "meta.json.gz", META)
    return reviews, meta


def decoded_samples(ds, split: str) -> list[tuple]:
    """(user, item, category, label, time, history items, history categories) as raw ids."""
    users, items, cats = ds.vocab("users"), ds.vocab("items"), ds.vocab("categories")
    s = ds.split(split)
    out = []
    for i in range(len(s)):
        hist, hist_cats = s.history(i)
        out.append(
            (
                users[s.user[i]],
                items[s.item[i]],
                cats[s.category[i]],
                float(s.label[i]),
                int(s.timestamp[i]),
                [items[h] for h in hist],
                [cats[c] for c in hist_cats],
            )
        )
    return out


def test_every_sample_follows_the_authors_protocol(files, tmp_path):
    ds = prepare_amazon(*files, tmp_path / "out", seed=3, train_fraction=1.0)
    samples = decoded_samples(ds, "train")
    assert len(samples) == 8 and len(ds.split("test")) == 0 and len(ds.split("valid")) == 0

    for k, user in enumerate(["u1", "u2", "u4", "u5"]):  # users in first-appearance order
        item, history, time = EXPECTED[user]
        negative, positive = samples[2 * k], samples[2 * k + 1]
        assert positive == (
            user,
            item,
            CATEGORY[item],
            1.0,
            time,
            history,
            [CATEGORY[h] for h in history],
        )
        neg_item = negative[1]
        assert negative == (
            user,
            neg_item,
            CATEGORY[neg_item],
            0.0,
            time,
            history,
            [CATEGORY[h] for h in history],
        )
        assert neg_item != item and neg_item in "ABCD"

    counts = ds.manifest["counts"]
    assert (counts["users"], counts["items"], counts["categories"], counts["events"]) == (
        5,
        4,
        4,
        11,
    )
    assert counts["samples"] == {"train": 8, "valid": 0, "test": 0}
    assert counts["filtered"] == {"users_with_one_review": 1}
    assert counts["items_without_meta"] == 1  # D
    assert counts["meta_duplicate_lines"] == 1 and counts["meta_lines_unused"] == 1
    assert ds.manifest["params"]["seed"] == 3


def test_vocabularies_rank_training_counts_and_tables_agree(files, tmp_path):
    ds = prepare_amazon(*files, tmp_path / "out", seed=0, train_fraction=1.0)
    train = ds.split("train")
    assert ds.vocab("users") == ["<unk>", "u1", "u2", "u4", "u5"]  # equal counts: by raw id

    occurrences = np.concatenate([train.item, train.hist_items])
    count = np.bincount(occurrences, minlength=ds.vocab_sizes.items)
    names = ds.vocab("items")
    ranked = sorted(range(1, len(names)), key=lambda i: (-count[i], names[i]))
    assert ranked == list(range(1, len(names)))  # ids by descending count, ties by raw id
    assert count[1:].min() > 0

    item_cat = [ds.vocab("categories")[c] for c in ds.item_category]
    assert item_cat == ["<unk>"] + [CATEGORY[name] for name in names[1:]]
    positives = train.item[train.label == 1]
    expected_freq = np.bincount(np.concatenate([positives, train.hist_items]), minlength=len(names))
    np.testing.assert_array_equal(ds.item_frequency, expected_freq)


def test_users_split_by_chance_and_test_ids_are_unknown(files, tmp_path):
    ds = prepare_amazon(*files, tmp_path / "out", seed=1, train_fraction=0.5)
    train, test = decoded_samples(ds, "train"), decoded_samples(ds, "test")
    assert len(train) == 4 and len(test) == 4
    assert {s[0] for s in test} == {"<unk>"}
    by_time = {t: u for u, (_, _, t) in EXPECTED.items()}
    test_users = {by_time[s[4]] for s in test}
    train_users = {s[0] for s in train}
    assert len(test_users) == 2 and not test_users & train_users
    assert set(ds.vocab("users")[1:]) == train_users
    known = set(ds.vocab("items"))
    for _, item, _, label, time, history, _ in test:
        true_user = by_time[time]
        expected_item, expected_hist, _ = EXPECTED[true_user]
        assert history == [h if h in known else "<unk>" for h in expected_hist]
        if label == 1:
            assert item == (expected_item if expected_item in known else "<unk>")
    again = prepare_amazon(*files, tmp_path / "again", seed=1, train_fraction=0.5)
    assert decoded_samples(again, "test") == test


def test_valid_fraction_carves_users_out_of_train(files, tmp_path):
    ds = prepare_amazon(*files, tmp_path / "out", train_fraction=0.75, valid_fraction=0.25)
    assert ds.manifest["counts"]["samples"] == {"train": 4, "valid": 2, "test": 2}


def test_plain_json_files_and_python_literal_meta_parse_alike(tmp_path):
    reviews = tmp_path / "reviews.json"
    reviews.write_text("".join(review_line(*r) + "\n" for r in REVIEWS))
    meta = tmp_path / "meta.json"
    meta.write_text("\n".join(META[:3]) + "\n")
    ds = prepare_amazon(reviews, meta, tmp_path / "out", train_fraction=1.0)
    got = {s[1]: s[2] for s in decoded_samples(ds, "train")}
    assert got == {item: CATEGORY[item] for item in got}


def test_meta_line_mentioning_categories_twice_is_parsed_whole(tmp_path):
    reviews = write_gz(tmp_path / "r.gz", [review_line("u", "A", 1), review_line("u", "B", 2)])
    meta = write_gz(
        tmp_path / "m.gz",
        [
            "{'asin': 'B', 'title': \"'categories': [['Fake']]\", 'categories': [['Real', 'Cat']]}",
            "{'asin': 'A', 'categories': []}",
        ],
    )
    ds = prepare_amazon(reviews, meta, tmp_path / "out", train_fraction=1.0)
    pos = decoded_samples(ds, "train")[1]
    assert pos[1:3] == ("B", "Cat") and pos[6] == [DEFAULT_CATEGORY]
    assert ds.manifest["counts"]["items_without_category"] == 1


BAD_REVIEWS = [
    (b'{"reviewerID": "u1", "asin": "A"', "not valid JSON", "reviews_malformed"),
    (b'{"reviewerID": "u1", "unixReviewTime": 3}', "missing field 'asin'", "reviews_missing_field"),
    (
        b'{"reviewerID": "u1", "asin": "A", "unixReviewTime": "x"}',
        "must be an integer",
        "reviews_wrong_type",
    ),
    (
        b'{"reviewerID": 7, "asin": "A", "unixReviewTime": 3}',
        "must be a non-empty string",
        "reviews_wrong_type",
    ),
    (b'{"reviewerID": "u\xff", "asin": "A", "unixReviewTime": 3}', "not UTF-8", "reviews_not_utf8"),
    (b"[1, 2]", "expected a JSON object", "reviews_malformed"),
]


@pytest.mark.parametrize("line, message, reason", BAD_REVIEWS)
def test_bad_review_line_names_file_line_and_problem(files, tmp_path, line, message, reason):
    good = [review_line(*r).encode() for r in REVIEWS]
    path = write_gz(tmp_path / "bad.json.gz", good[:3] + [line] + good[3:])
    with pytest.raises(DatasetError) as err:
        prepare_amazon(path, files[1], tmp_path / "out")
    assert "bad.json.gz, line 4: " in str(err.value) and message in str(err.value)

    ds = prepare_amazon(path, files[1], tmp_path / "out", on_bad_lines="skip", train_fraction=1.0)
    assert ds.manifest["counts"]["filtered"] == {reason: 1, "users_with_one_review": 1}
    assert ds.manifest["counts"]["events"] == len(REVIEWS)


def test_bad_meta_line_of_a_reviewed_item_is_an_error_or_counted(files, tmp_path):
    meta = write_gz(
        tmp_path / "meta.gz", ["{'asin': 'A', 'categories': [['Books', 'Fi"] + META[1:3]
    )
    with pytest.raises(DatasetError, match=r"meta.gz, line 1: neither JSON nor a Python literal"):
        prepare_amazon(files[0], meta, tmp_path / "out")
    ds = prepare_amazon(files[0], meta, tmp_path / "out", on_bad_lines="skip")
    assert ds.manifest["counts"]["filtered"]["meta_malformed"] == 1
    assert ds.manifest["counts"]["items_without_meta"] == 2  # A (bad line) and D


def test_meta_with_wrong_types_is_reported(files, tmp_path):
    meta = write_gz(
        tmp_path / "meta.gz", ["{'asin': 'A', 'categories': 'Books', 'x': 'categories'}"]
    )
    with pytest.raises(DatasetError, match=r"line 1: 'categories' must be a list of lists"):
        prepare_amazon(files[0], meta, tmp_path / "out")


def test_meta_literal_that_cannot_be_built_is_a_bad_line(files, tmp_path):
    # a dict keyed by a list parses as a literal but cannot be built: found by the fuzz tests
    line = "{'asin': 'A', 'categories': [['Books']], 'x': {[1]: 2}, 'y': 'categories'}"
    meta = write_gz(tmp_path / "meta.gz", [line, *META[1:3]])
    with pytest.raises(DatasetError, match=r"meta.gz, line 1: neither JSON nor a Python literal"):
        prepare_amazon(files[0], meta, tmp_path / "out")
    ds = prepare_amazon(files[0], meta, tmp_path / "out", on_bad_lines="skip")
    assert ds.manifest["counts"]["filtered"]["meta_malformed"] == 1


@pytest.mark.parametrize(
    "review, message",
    [
        (("<unk>", "A", 1), "field 'reviewerID' is '<unk>', the name of the unknown id"),
        (("u1", "A\nB", 1), "field 'asin' holds a line break"),
        (("u1", "A", 2**63), "field 'unixReviewTime' 9223372036854775808 does not fit in 64 bits"),
    ],
)
def test_reviews_a_vocabulary_cannot_hold_are_bad_lines(files, tmp_path, review, message):
    # found by the fuzz tests: these failed later, naming no file, or raised OverflowError
    reviews = write_gz(tmp_path / "r.gz", [review_line(*r) for r in [*REVIEWS[:2], review]])
    with pytest.raises(DatasetError, match=rf"r.gz, line 3: {message}"):
        prepare_amazon(reviews, files[1], tmp_path / "out")
    meta = write_gz(tmp_path / "m.gz", ["{'asin': 'A', 'categories': [['Books', 'a\\rb']]}"])
    with pytest.raises(DatasetError, match=r"m.gz, line 1: the category 'a\\rb' holds a line"):
        prepare_amazon(files[0], meta, tmp_path / "out")


def test_empty_and_corrupt_files_are_clear_errors(files, tmp_path):
    empty = write_gz(tmp_path / "empty.gz", [])
    with pytest.raises(DatasetError, match=r"empty.gz: holds no reviews"):
        prepare_amazon(empty, files[1], tmp_path / "out")
    with pytest.raises(DatasetError, match=r"empty.gz: holds no metadata lines"):
        prepare_amazon(files[0], empty, tmp_path / "out")
    data = Path(files[0]).read_bytes()
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"truncated.gz, line \d+: the gzip stream is corrupt"):
        prepare_amazon(truncated, files[1], tmp_path / "out")
    with pytest.raises(DatasetError, match=r"missing.gz: no such file"):
        prepare_amazon(tmp_path / "missing.gz", files[1], tmp_path / "out")


reviews_strategy = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 9), st.integers(0, 20)), min_size=2, max_size=60
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=reviews_strategy, seed=st.integers(0, 3))
def test_histories_hold_only_earlier_reviews_and_vocab_is_train_only(tmp_path_factory, rows, seed):
    if len({item for _, item, _ in rows}) < 2 or max(np.bincount([u for u, _, _ in rows])) < 2:
        return
    tmp = tmp_path_factory.mktemp("prop")
    reviews = write_gz(tmp / "r.gz", [review_line(f"u{u}", f"i{i}", t) for u, i, t in rows])
    meta = write_gz(
        tmp / "m.gz",
        [json.dumps({"asin": f"i{i}", "categories": [[f"c{i % 3}"]]}) for i in range(10)],
    )
    ds = prepare_amazon(reviews, meta, tmp / "out", seed=seed, train_fraction=0.6)

    by_user: dict[str, list[tuple[int, int, str]]] = {}
    for pos, (u, i, t) in enumerate(rows):
        by_user.setdefault(f"u{u}", []).append((t, pos, f"i{i}"))
    expected = {}  # time of last review -> candidate (history, item) for that user
    for reviews_of_user in by_user.values():
        ordered = sorted(reviews_of_user)
        if len(ordered) >= 2:
            history = [item for _, _, item in ordered[:-1]]
            expected.setdefault(ordered[-1][0], []).append((history, ordered[-1][2]))

    items = ds.vocab("items")
    train = ds.split("train")
    train_items = set(np.concatenate([train.item, train.hist_items]).tolist())
    assert train_items | {0} == set(range(len(items)))  # every vocab item occurs in train
    assert set(train.user.tolist()) == set(range(1, ds.vocab_sizes.users))
    assert not ds.split("test").user.any()
    for split in ("train", "test"):
        for user, item, _, label, time, history, _ in decoded_samples(ds, split):
            candidates = [
                (h, i)
                for h, i in expected[time]
                if [x if x in items else "<unk>" for x in h] == history
            ]
            assert candidates, (user, history)
            if label == 1:
                assert any(item in (i, "<unk>") for _, i in candidates)
