"""prepare_events on handcrafted csv, JSON lines and parquet event tables."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dien.data import events
from dien.data.events import prepare_events
from dien.data.format import DatasetError

pl = pytest.importorskip("polars")  # the events preparation needs the optional polars

CSV = """user,item,time,cat
u1,a,1,x
u1,b,2,y
u1,c,2,x
u1,d,5,y
u2,b,3,y
u2,a,4,x
u3,c,9,x
"""
COLS = {"user_col": "user", "item_col": "item", "time_col": "time"}


def decoded(ds, split: str) -> list[tuple]:
    """(user, item, category, label, time, history items) with raw ids."""
    users, items, cats = ds.vocab("users"), ds.vocab("items"), ds.vocab("categories")
    s = ds.split(split)
    return [
        (
            users[s.user[i]],
            items[s.item[i]],
            cats[s.category[i]],
            float(s.label[i]),
            int(s.timestamp[i]),
            [items[h] for h in s.history(i)[0]],
        )
        for i in range(len(s))
    ]


def test_csv_without_labels_every_sample_and_table(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(CSV)
    ds = prepare_events(
        path, tmp_path / "out", **COLS, category_col="cat", valid_fraction=0, test_fraction=0
    )
    got = decoded(ds, "train")
    positives = [
        ("u1", "b", "y", 1.0, 2, ["a"]),
        ("u1", "c", "x", 1.0, 2, ["a"]),  # b has the same time: not in c's history
        ("u1", "d", "y", 1.0, 5, ["a", "b", "c"]),
        ("u2", "a", "x", 1.0, 4, ["b"]),
    ]
    assert got[0::2] == positives
    category = {"a": "x", "b": "y", "c": "x", "d": "y"}
    for pos, neg in zip(got[0::2], got[1::2], strict=True):
        assert neg[1] != pos[1] and neg[1] in category
        assert neg == (pos[0], neg[1], category[neg[1]], 0.0, pos[4], pos[5])

    assert ds.vocab("items") == ["<unk>", "a", "b", "c", "d"]  # counts 4, 3, 2, 1
    assert ds.vocab("users") == ["<unk>", "u1", "u2"]
    assert ds.vocab("categories") == ["<unk>", "x", "y"]
    np.testing.assert_array_equal(ds.item_category, [0, 1, 2, 1, 2])
    np.testing.assert_array_equal(ds.item_frequency, [0, 4, 3, 2, 1])
    counts = ds.manifest["counts"]
    assert counts["filtered"] == {"history_shorter_than_min_history": 3}
    assert (counts["users"], counts["items"], counts["categories"], counts["events"]) == (
        3,
        4,
        2,
        7,
    )


def test_max_history_negatives_and_min_history(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(CSV)
    ds = prepare_events(
        path,
        tmp_path / "out",
        **COLS,
        max_history=2,
        min_history=2,
        negatives_per_positive=3,
        valid_fraction=0,
        test_fraction=0,
    )
    got = decoded(ds, "train")
    assert [g[1:] for g in got[0::4]] == [("d", "<unk>", 1.0, 5, ["b", "c"])]
    assert [g[3] for g in got] == [1.0, 0.0, 0.0, 0.0]
    assert all(g[1] != "d" and g[5] == ["b", "c"] for g in got[1:])
    assert ds.manifest["counts"]["filtered"] == {"history_shorter_than_min_history": 6}


def test_jsonl_labels_give_non_clicks_and_histories_hold_clicks_only(tmp_path):
    rows = [("u1", "a", 1, 1), ("u1", "b", 2, 0), ("u1", "c", 3, True), ("u1", "d", 4, "0")]
    path = tmp_path / "events.jsonl"
    path.write_text(
        "".join(
            json.dumps({"user": u, "item": i, "time": t, "clicked": c}) + "\n"
            for u, i, t, c in rows
        )
    )
    ds = prepare_events(
        path, tmp_path / "out", **COLS, label_col="clicked", valid_fraction=0, test_fraction=0
    )
    assert decoded(ds, "train") == [
        ("u1", "b", "<unk>", 0.0, 2, ["a"]),
        ("u1", "c", "<unk>", 1.0, 3, ["a"]),
        ("u1", "d", "<unk>", 0.0, 4, ["a", "c"]),
    ]
    assert ds.vocab("items") == ["<unk>", "a", "c", "b", "d"]
    np.testing.assert_array_equal(ds.item_frequency, [0, 3, 2, 0, 0])


def test_parquet_behaviour_filter_and_datetime_times(tmp_path):
    df = pl.DataFrame(
        {
            "uid": [7, 7, 7, 8, 8],
            "iid": [1, 2, 3, 1, 2],
            "ts": pl.Series(
                ["2020-01-01", "2020-01-02", "2020-01-03", "2020-01-01", "2020-01-05"]
            ).str.to_datetime(),
            "kind": ["buy", "view", "buy", "buy", "buy"],
        }
    )
    path = tmp_path / "events.parquet"
    df.write_parquet(path)
    ds = prepare_events(
        path,
        tmp_path / "out",
        user_col="uid",
        item_col="iid",
        time_col="ts",
        behavior_col="kind",
        click_values=["buy"],
        valid_fraction=0,
        test_fraction=0,
    )
    day = 86400
    positives = decoded(ds, "train")[0::2]
    assert [(p[0], p[1], p[4], p[5]) for p in positives] == [
        ("7", "3", 1577836800 + 2 * day, ["1"]),
        ("8", "2", 1577836800 + 4 * day, ["1"]),
    ]
    assert ds.manifest["counts"]["filtered"]["behavior_not_a_click"] == 1


def test_time_split_uses_global_cutoffs(tmp_path):
    lines = ["user,item,time"] + [f"u{t % 2},i{t % 4},{t}" for t in range(10)]
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    ds = prepare_events(path, tmp_path / "out", **COLS, valid_fraction=0.2, test_fraction=0.2)
    times = {name: sorted({t for *_, t, _ in decoded(ds, name)}) for name in ds.splits}
    assert times == {"train": [2, 3, 4, 5], "valid": [6, 7], "test": [8, 9]}
    test = decoded(ds, "test")
    assert test[0][5] == ["i0", "i2", "i0", "i2"]  # histories reach back into training time


def test_user_split_is_seeded_and_disjoint(tmp_path):
    lines = ["user,item,time"] + [f"u{n % 10},i{n % 7},{n}" for n in range(200)]
    path = tmp_path / "events.csv"
    path.write_text("\n".join(lines) + "\n")
    kw = dict(split="user", valid_fraction=0.2, test_fraction=0.3, seed=5)
    a = prepare_events(path, tmp_path / "a", **COLS, **kw)
    b = prepare_events(path, tmp_path / "b", **COLS, **kw)
    assert a.manifest["counts"]["samples"] == {"train": 190, "valid": 76, "test": 114}
    for name in a.splits:
        assert decoded(a, name) == decoded(b, name)
    assert not a.split("test").user.any() and not a.split("valid").user.any()
    assert len(a.vocab("users")) == 6


def test_gzip_csv_and_min_item_count(tmp_path):
    path = tmp_path / "events.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write(CSV)
    ds = prepare_events(
        path,
        tmp_path / "out",
        **COLS,
        min_item_count=3,
        label_col=None,
        valid_fraction=0,
        test_fraction=0,
    )
    assert ds.vocab("items") == ["<unk>", "a", "b"]
    assert ds.manifest["counts"]["items_below_min_item_count"] == 2
    assert [g[1] for g in decoded(ds, "train")[0::2]] == ["b", "<unk>", "<unk>", "a"]


def test_gzip_errors_and_too_few_items_to_draw_name_the_input(tmp_path):
    # found by the fuzz tests: these were an EOFError, a copy's name, and a sampler ValueError
    path = tmp_path / "events.csv.gz"
    path.write_bytes(gzip.compress(CSV.encode())[:40])
    with pytest.raises(DatasetError, match=r"events.csv.gz: the gzip stream is corrupt"):
        prepare_events(path, tmp_path / "out", **COLS)
    path.write_bytes(gzip.compress(CSV.replace("time", "when").encode()))
    with pytest.raises(DatasetError, match=r"events.csv.gz: no column 'time'"):
        prepare_events(path, tmp_path / "out", **COLS)
    one_item = tmp_path / "one.csv"
    one_item.write_text("user,item,time\nu1,a,1\nu1,a,2\nu2,a,3\n")
    with pytest.raises(DatasetError, match=r"one.csv: the training split holds 1 item"):
        prepare_events(one_item, tmp_path / "out", **COLS, valid_fraction=0, test_fraction=0)
    plain = tmp_path / "events.csv"
    plain.write_text(CSV)
    with pytest.raises(DatasetError, match=r"holds 0 item\(s\) with at least min_item_count=9"):
        prepare_events(plain, tmp_path / "out", **COLS, min_item_count=9)


BAD = [
    (
        "user,item,time\nu1,a,1\nu1,b,later\n",
        "line 3, column 'time': cannot read 'later' as a time",
        "wrong_type",
    ),
    ("user,item,time\nu1,a,1\nu1,,2\n", "line 3, column 'item': missing value", "missing_value"),
    ("user,item,time\nu1,a,1\nu1,b,2,9\n", "line 3: 4 fields, the header has 3", "malformed"),
    (b"user,item,time\nu1,a,1\nu1,b\xff,2\n", "line 3: not UTF-8", "not_utf8"),
    # found by the fuzz tests: a csv.Error of the line-by-line reading
    (b"user,item,time\nu1,a,1\nu1,b\r,2\nu\xff,c,3\n", "line 3: not valid csv", "malformed"),
]


@pytest.mark.parametrize("text, message, reason", BAD)
def test_bad_csv_rows_name_line_column_and_problem(tmp_path, text, message, reason):
    path = tmp_path / "events.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(DatasetError) as err:
        prepare_events(path, tmp_path / "out", **COLS, valid_fraction=0, test_fraction=0)
    assert "events.csv, " + message in str(err.value)

    path.write_bytes(path.read_bytes() + b"u1,c,3\nu1,d,4\n")
    ds = prepare_events(
        path, tmp_path / "out", **COLS, valid_fraction=0, test_fraction=0, on_bad_lines="skip"
    )
    assert ds.manifest["counts"]["filtered"][reason] == 1
    assert ds.manifest["counts"]["events"] == 3


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'user,item,time\nu1,a,1\n"u\n1",b,2\n',
            "line 3, column 'user': 'u\\n1' cannot be a raw id",
        ),
        ("user,item,time\nu1,a,1\nu1,<unk>,2\n", "line 3, column 'item': '<unk>' cannot be a raw"),
    ],
)
def test_ids_a_vocabulary_cannot_hold_name_line_and_column(tmp_path, text, message):
    # found by the fuzz tests: these failed when the dataset was written, naming no file
    path = tmp_path / "events.csv"
    path.write_text(text)
    with pytest.raises(DatasetError) as err:
        prepare_events(path, tmp_path / "out", **COLS, valid_fraction=0, test_fraction=0)
    assert "events.csv, " + message in str(err.value)


def test_bad_jsonl_line_and_structural_errors(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"user": "u", "item": "a", "time": 1}\n{"user": "u", "item"\n')
    with pytest.raises(DatasetError, match=r"events.jsonl, line 2: not valid JSON"):
        prepare_events(path, tmp_path / "out", **COLS)
    csv_path = tmp_path / "events.csv"
    csv_path.write_text(CSV)
    with pytest.raises(DatasetError, match=r"events.csv: no column 'when'; its columns: user"):
        prepare_events(
            csv_path, tmp_path / "out", user_col="user", item_col="item", time_col="when"
        )
    empty = tmp_path / "empty.csv"
    empty.write_text("user,item,time\n")
    with pytest.raises(DatasetError, match=r"empty.csv: holds no events"):
        prepare_events(empty, tmp_path / "out", **COLS)
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(DatasetError, match=r"cannot tell the format"):
        prepare_events(tmp_path / "x.txt", tmp_path / "out", **COLS)
    with pytest.raises(ValueError, match=r"label_col is set"):
        prepare_events(
            csv_path, tmp_path / "out", **COLS, label_col="cat", negatives_per_positive=2
        )


events_strategy = st.lists(
    st.tuples(st.integers(0, 4), st.integers(0, 7), st.integers(0, 6), st.booleans()),
    min_size=4,
    max_size=50,
)


def reference(rows, valid: float, test: float, max_history: int):
    """Expected (user, item, label, time, history) per split, straight from the definition."""
    times = sorted(t for _, _, t, _ in rows)
    n = len(times)
    cut_test, cut_valid = times[int(n * (1 - test))], times[int(n * (1 - test - valid))]
    out = {"train": [], "valid": [], "test": []}
    order = sorted(range(n), key=lambda r: (rows[r][0], rows[r][2], r))
    for r in order:
        u, i, t, c = rows[r]
        history = [rows[q] for q in order if rows[q][0] == u and rows[q][2] < t and rows[q][3]]
        history = [f"i{q[1]}" for q in history][-max_history:]
        if not history:
            continue
        name = "test" if t >= cut_test else "valid" if t >= cut_valid else "train"
        out[name].append((f"u{u}", f"i{i}", float(c), t, history))
    return out


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=events_strategy)
def test_histories_are_strictly_earlier_clicks_and_vocab_is_train_only(tmp_path_factory, rows):
    tmp = tmp_path_factory.mktemp("prop")
    path = tmp / "events.csv"
    path.write_text(
        "user,item,time,clicked\n" + "".join(f"u{u},i{i},{t},{int(c)}\n" for u, i, t, c in rows)
    )
    expected = reference(rows, 0.25, 0.25, 3)
    if not expected["train"]:
        return
    ds = prepare_events(
        path,
        tmp / "out",
        **COLS,
        label_col="clicked",
        max_history=3,
        valid_fraction=0.25,
        test_fraction=0.25,
    )

    items = set(ds.vocab("items"))
    users = set(ds.vocab("users"))
    for name in ("train", "valid", "test"):
        want = [
            (
                u if u in users else "<unk>",
                i if i in items else "<unk>",
                c,
                t,
                [h if h in items else "<unk>" for h in hist],
            )
            for u, i, c, t, hist in expected[name]
        ]
        assert [(u, i, c, t, h) for u, i, _, c, t, h in decoded(ds, name)] == want

    train = ds.split("train")
    occurring = set(np.concatenate([train.item, train.hist_items]).tolist()) | {0}
    assert occurring == set(range(ds.vocab_sizes.items))
    assert set(train.user.tolist()) == set(range(1, ds.vocab_sizes.users))


def test_parquet_wrong_type_names_row_and_column(tmp_path):
    path = tmp_path / "events.parquet"
    pl.DataFrame(
        {"user": ["u", "u", "u"], "item": ["a", "b", "c"], "time": ["1", "abc", "3"]}
    ).write_parquet(path)
    with pytest.raises(
        DatasetError, match=r"events.parquet, row 1, column 'time': cannot read 'abc'"
    ):
        prepare_events(path, tmp_path / "out", **COLS)
    ds = prepare_events(
        path, tmp_path / "out", **COLS, on_bad_lines="skip", valid_fraction=0, test_fraction=0
    )
    assert ds.manifest["counts"]["filtered"]["wrong_type"] == 1
    assert [g[1] for g in decoded(ds, "train")[0::2]] == ["c"]


def test_histories_in_chunks_and_memory_mapped_files_write_the_same_dataset(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    n = 600
    table = pl.DataFrame(
        {
            "user": rng.integers(0, 25, n),
            "item": rng.integers(0, 40, n),
            "time": rng.integers(0, 200, n),
            "cat": rng.integers(0, 4, n),
        }
    )
    path = tmp_path / "events.parquet"
    table.write_parquet(path)
    options = dict(COLS, category_col="cat", max_history=7, negatives_per_positive=2)
    whole = prepare_events(path, tmp_path / "whole", **options)

    monkeypatch.setattr(events, "SAMPLES_PER_CHUNK", 7)
    monkeypatch.setattr(events, "HISTORY_IN_MEMORY", 1)
    chunked = prepare_events(path, tmp_path / "chunked", **options)

    assert whole.manifest["counts"]["samples"]["train"] > 7 * 20
    assert chunked.manifest["checksums"] == whole.manifest["checksums"]
    assert list(tmp_path.glob(".events-*")) == []  # the scratch files are gone
