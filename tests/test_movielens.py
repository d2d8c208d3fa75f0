"""MovieLens preparation: a handcrafted case checked sample by sample, a reference implementation
on random logs, and the bundled real data against counts computed here from the CSV files."""

import csv
import itertools
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dien.data.format import DatasetError, PreparedDataset
from dien.data.movielens import bundled_movielens_dir, prepare_movielens
from dien.data.vocab import build_vocab, encode, vocab_strings

MOVIES = """movieId,title,genres
10,"A, the film (1990)",Drama|Comedy
20,B (1991),Comedy
30,C (1992),(no genres listed)
40,D (1993),Action|Drama
50,E (1994),Action
60,F (1995),Drama
"""
# user 2 rates 20 and 10 at the same second: movieId breaks the tie (10 first).
# user 3's rating of movie 70 has no row in movies.csv.
RATINGS = """userId,movieId,rating,timestamp
1,10,4.0,100
1,20,3.5,200
1,30,1.0,300
1,40,5.0,700
1,50,2.0,900
2,20,3.0,150
2,10,3.0,150
2,30,4.0,650
3,30,2.5,800
3,70,2.5,500
3,10,4.5,960
"""


def write_csvs(folder: Path, ratings: str = RATINGS, movies: str = MOVIES) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text(ratings)
    (folder / "movies.csv").write_text(movies)
    return folder / "ratings.csv", folder / "movies.csv"


def samples(ds: PreparedDataset, name: str) -> list[tuple]:
    s = ds.split(name)
    return [
        (
            int(s.user[i]),
            int(s.item[i]),
            int(s.category[i]),
            float(s.label[i]),
            int(s.timestamp[i]),
            s.history(i)[0].tolist(),
            s.history(i)[1].tolist(),
        )
        for i in range(len(s))
    ]


def test_handcrafted_ratings_give_the_expected_samples(tmp_path):
    ratings, movies = write_csvs(tmp_path / "raw")
    # 7 sample events at 150 200 300 650 700 900 960: 2 test (>= 900), 2 valid (>= 650).
    ds = prepare_movielens(
        ratings,
        movies,
        tmp_path / "ds",
        valid_fraction=0.3,
        test_fraction=0.3,
        seed=5,
        split="global_time",
    )

    # Training mentions user 1's 10, 20, 30 and user 2's 10, 20: items by frequency then id.
    assert ds.vocab("items") == ["<unk>", "10", "20", "30"]
    assert ds.vocab("categories") == ["<unk>", "Comedy", "Drama", "(no genres listed)"]
    assert ds.vocab("users") == ["<unk>", "1", "2"]  # user 1 has 2 training samples, user 2 one
    assert ds.item_frequency.tolist() == [0, 2, 2, 1]
    assert ds.item_category.tolist() == [0, 2, 1, 3]

    # (user, item, category, label, timestamp, history items, history categories). The
    # training split holds two movies, so each negative is the other one.
    assert samples(ds, "train") == [
        (1, 2, 1, 1.0, 200, [1], [2]),
        (1, 3, 3, 0.0, 200, [1], [2]),
        (1, 3, 3, 1.0, 300, [1, 2], [2, 1]),
        (1, 2, 1, 0.0, 300, [1, 2], [2, 1]),
        (2, 2, 1, 1.0, 150, [1], [2]),
        (2, 3, 3, 0.0, 150, [1], [2]),
    ]
    # Later negatives come from all sample events up to the split's end; '?' is drawn.
    valid, test = samples(ds, "valid"), samples(ds, "test")
    assert [(u, *rest) for u, _, _, *rest in valid] == [
        (1, 1.0, 700, [1, 2, 3], [2, 1, 3]),
        (1, 0.0, 700, [1, 2, 3], [2, 1, 3]),
        (2, 1.0, 650, [1, 2], [2, 1]),
        (2, 0.0, 650, [1, 2], [2, 1]),
    ]
    assert [(u, *rest) for u, _, _, *rest in test] == [
        (1, 1.0, 900, [1, 2, 3, 0], [2, 1, 3, 0]),  # movie 40 (Action) unseen in training
        (1, 0.0, 900, [1, 2, 3, 0], [2, 1, 3, 0]),
        (0, 1.0, 960, [3], [3]),  # user 3 has no training sample
        (0, 0.0, 960, [3], [3]),
    ]
    # (item, category) of movies 10, 20, 30, 40, 50: 40 and 50 are unseen in training.
    ids = {10: (1, 2), 20: (2, 1), 30: (3, 3), 40: (0, 0), 50: (0, 0)}
    targets = [(row[1], row[2]) for row in valid + test]
    assert targets[0::2] == [ids[40], ids[30], ids[50], ids[10]]
    assert targets[1] in {ids[20], ids[30]}  # pool 20 30 20 40 30, not 40
    assert targets[3] in {ids[20], ids[40]}  # not 30
    assert targets[5] in {ids[m] for m in (10, 20, 30, 40)}  # not 50
    assert targets[7] in {ids[m] for m in (20, 30, 40, 50)}  # not 10
    unknown_targets = [sum(t == (0, 0) for t in targets[:4]), sum(t == (0, 0) for t in targets[4:])]

    counts = ds.manifest["counts"]
    assert counts["users"] == 3 and counts["items"] == 5 and counts["categories"] == 4
    assert counts["events"] == 10
    assert counts["samples"] == {"train": 6, "valid": 4, "test": 4}
    assert counts["filtered"] == {"rating_movie_not_in_movies_csv": 1, "event_below_min_history": 3}
    v, t = unknown_targets
    assert counts["unknown"] == {
        "valid": {"users": 0, "items": v, "categories": v, "hist_items": 0},
        "test": {"users": 2, "items": t, "categories": t, "hist_items": 2},
    }
    assert counts["time_cutoffs"] == {"valid": 650, "test": 900}
    params = ds.manifest["params"]
    assert (params["seed"], params["min_history"]) == (5, 1)
    assert (params["valid_fraction"], params["test_fraction"]) == (0.3, 0.3)
    assert ds.manifest["source"] == "movielens"


def test_per_user_split_keeps_each_users_latest_events_out_of_training(tmp_path):
    ratings, movies = write_csvs(tmp_path / "raw")
    # Sample events (min_history 1): user 1 at 200 300 700 900, user 2 at 150 650, user 3 at
    # 960. Test takes rint(0.25 n) latest per user, validation the rint(0.25 n) before them:
    # user 1 -> test 900, valid 700; user 2 -> rint(0.5) = 0 of each; user 3 -> none.
    ds = prepare_movielens(
        ratings, movies, tmp_path / "ds", valid_fraction=0.25, test_fraction=0.25
    )
    assert ds.manifest["params"]["split"] == "user_time"
    assert ds.split("test").timestamp.tolist() == [900, 900]
    assert ds.split("valid").timestamp.tolist() == [700, 700]
    assert ds.split("train").timestamp.tolist() == [
        200,
        200,
        300,
        300,
        150,
        150,
        650,
        650,
        960,
        960,
    ]
    assert ds.vocab("users") == ["<unk>", "1", "2", "3"]
    test = ds.split("test")
    # movie 40 is rated only in user 1's validation event: not in the training vocabulary
    assert [ds.vocab("items")[i] for i in test.history(0)[0]] == ["10", "20", "30", "<unk>"]


def test_min_history_and_empty_validation_split(tmp_path):
    ratings, movies = write_csvs(tmp_path / "raw")
    # min_history=2: sample events 300(u1) 650(u2) 700 900(u1) -> test = last 1 (900).
    ds = prepare_movielens(
        ratings,
        movies,
        tmp_path / "ds",
        min_history=2,
        valid_fraction=0.0,
        test_fraction=0.25,
        split="global_time",
    )
    assert ds.manifest["counts"]["samples"] == {"train": 6, "valid": 0, "test": 2}
    assert ds.manifest["counts"]["filtered"]["event_below_min_history"] == 6
    assert ds.manifest["counts"]["time_cutoffs"] == {"valid": 900, "test": 900}
    train = ds.split("train")
    assert train.timestamp.tolist() == [300, 300, 700, 700, 650, 650]
    assert train.lengths().tolist() == [2, 2, 3, 3, 2, 2]


@pytest.mark.parametrize(
    ("ratings", "movies", "message"),
    [
        (RATINGS.replace("1,30,1.0,300", "1,30,300"), MOVIES, r"ratings\.csv, line 4: expected 4"),
        (RATINGS.replace("1,30,1.0,300", "1,30,1.0,3x0"), MOVIES, "line 4: timestamp must be an"),
        (RATINGS.replace("2,20,3.0,150", "u2,20,3.0,150"), MOVIES, "line 7: userId must be an"),
        (RATINGS.replace("userId", "user"), MOVIES, r"ratings\.csv, line 1: expected the header"),
        (RATINGS, MOVIES.replace("20,B", "10,B"), r"movies\.csv, line 3: movieId 10 listed twice"),
        (RATINGS, MOVIES.replace("Action\n", "\n"), r"movies\.csv, line 6: empty genres field"),
        (RATINGS, MOVIES.replace("30,C", "3O,C"), r"movies\.csv, line 4: movieId must be an"),
        # found by the fuzz tests: a number too large for int64, a bad row that spans lines
        (RATINGS.replace(",300", ",99999999999999999999"), MOVIES, "line 4: timestamp must be"),
        (RATINGS.replace("1,30,1.0,300", '1,"30\n",1.0'), MOVIES, r"line 4: expected 4 fields"),
        (RATINGS, MOVIES.replace("30,C", "30,C" + "x" * 200_000), r"line 4: not valid csv"),
        (RATINGS, MOVIES.replace("Action\n", "<unk>\n"), r"line 6: the first genre '<unk>' is"),
        (RATINGS, MOVIES.replace(",Comedy\n", ',"Com\nedy"\n'), r"line 3: the first genre 'Com"),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path, ratings, movies, message):
    r, m = write_csvs(tmp_path / "raw", ratings, movies)
    with pytest.raises(DatasetError, match=message):
        prepare_movielens(r, m, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_non_utf8_input_names_file_and_line(tmp_path):
    r, m = write_csvs(tmp_path / "raw")
    r.write_bytes(RATINGS.encode().replace(b"1,30,1.0", b"1,30\xff,1.0"))
    with pytest.raises(DatasetError, match=r"ratings\.csv, line 4: not UTF-8 text \(byte 4"):
        prepare_movielens(r, m, tmp_path / "ds")


def test_missing_file_and_bad_parameters(tmp_path):
    ratings, movies = write_csvs(tmp_path / "raw")
    with pytest.raises(DatasetError, match=r"nope\.csv: file not found"):
        prepare_movielens(tmp_path / "nope.csv", movies, tmp_path / "ds")
    with pytest.raises(ValueError, match="sum below 1"):
        prepare_movielens(ratings, movies, tmp_path / "ds", valid_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="min_history must be >= 0"):
        prepare_movielens(ratings, movies, tmp_path / "ds", min_history=-1)
    with pytest.raises(DatasetError, match="no training samples"):
        prepare_movielens(ratings, movies, tmp_path / "ds", min_history=9)


def reference(events, min_history, valid_fraction, test_fraction, mode="global_time"):
    """The protocol written plainly: per-user loops over (user, movie, timestamp) triples."""
    by_user = {}
    for user, movie, ts in events:
        by_user.setdefault(user, []).append((ts, movie))
    sample_events = []  # (user, movie, ts, raw history)
    for user in sorted(by_user):
        seq = sorted(by_user[user])
        for p in range(min_history, len(seq)):
            sample_events.append((user, seq[p][1], seq[p][0], [m for _, m in seq[:p]]))
    split = {"train": [], "valid": [], "test": []}
    if mode == "user_time":
        for user in sorted(by_user):
            mine = [e for e in sample_events if e[0] == user]
            n_test = int(np.rint(len(mine) * test_fraction))
            n_valid = int(np.rint(len(mine) * valid_fraction))
            for index, e in enumerate(mine):
                rank = len(mine) - 1 - index  # 0 = the user's latest sample event
                name = "test" if rank < n_test else "valid" if rank < n_test + n_valid else "train"
                split[name].append(e)
        return split
    times = sorted(e[2] for e in sample_events)
    n = len(times)
    n_test, n_valid = round(n * test_fraction), round(n * valid_fraction)
    test_from = times[n - n_test] if n_test else float("inf")
    valid_from = times[n - n_test - n_valid] if n_valid else test_from
    for e in sample_events:
        name = "train" if e[2] < valid_from else "valid" if e[2] < test_from else "test"
        split[name].append(e)
    return split


RATING_LOGS = st.lists(
    st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(0, 12)), min_size=2, max_size=40
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=RATING_LOGS,
    min_history=st.integers(0, 2),
    fractions=st.sampled_from([0.0, 0.2, 0.34]),
    mode=st.sampled_from(["global_time", "user_time"]),
)
def test_random_logs_match_the_reference_and_never_leak(events, min_history, fractions, mode):
    movies = "movieId,title,genres\n" + "".join(f"{m},M{m},G{m % 3}|X\n" for m in range(1, 8))
    ratings = "userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{m},1,{t}\n" for u, m, t in events
    )
    expected = reference(events, min_history, fractions, fractions, mode)

    with tempfile.TemporaryDirectory() as tmp:
        r, m = write_csvs(Path(tmp) / "raw", ratings, movies)
        train_movies = {e[1] for e in expected["train"]}
        all_movies = {e[1] for ev in expected.values() for e in ev}
        one_movie = len(train_movies) == 1 or len(all_movies) == 1
        if not expected["train"] or one_movie:
            with pytest.raises(DatasetError):
                prepare_movielens(
                    r,
                    m,
                    Path(tmp) / "ds",
                    min_history=min_history,
                    valid_fraction=fractions,
                    test_fraction=fractions,
                    split=mode,
                )
            return
        ds = prepare_movielens(
            r,
            m,
            Path(tmp) / "ds",
            min_history=min_history,
            valid_fraction=fractions,
            test_fraction=fractions,
            split=mode,
        )
        check_against_reference(ds, expected, mode)


def check_against_reference(ds, expected, mode="global_time"):
    # Vocabularies hold exactly what the training split mentions.
    train_movies = {m for _, movie, _, hist in expected["train"] for m in [movie, *hist]}
    train_users = {e[0] for e in expected["train"]}
    items = ds.vocab("items")
    assert sorted(map(int, items[1:])) == sorted(train_movies)
    assert sorted(map(int, ds.vocab("users")[1:])) == sorted(train_users)
    assert set(ds.vocab("categories")[1:]) == {f"G{m % 3}" for m in train_movies}
    last = {}  # each user's last training event: its history and target are all it mentions
    for user, movie, _, hist in expected["train"]:
        last[user] = [*hist, movie]
    frequency = Counter(m for mentioned in last.values() for m in mentioned)
    assert {int(items[i]): int(f) for i, f in enumerate(ds.item_frequency) if i} == frequency
    item_id = {int(raw): i for i, raw in enumerate(items) if i}
    user_id = {int(raw): i for i, raw in enumerate(ds.vocab("users")) if i}

    pool = set()  # movies of the sample events up to the end of the split
    for name, events in expected.items():
        s = ds.split(name)
        pool |= {e[1] for e in events}
        assert len(s) == 2 * len(events)
        np.testing.assert_array_equal(s.label, np.tile([1.0, 0.0], len(events)))
        for j, (user, movie, ts, hist) in enumerate(events):
            pos, neg = 2 * j, 2 * j + 1
            assert int(s.user[pos]) == int(s.user[neg]) == user_id.get(user, 0)
            assert int(s.item[pos]) == item_id.get(movie, 0)
            assert int(s.timestamp[pos]) == int(s.timestamp[neg]) == ts
            want = [item_id.get(h, 0) for h in hist]  # all earlier events, nothing later
            assert s.history(pos)[0].tolist() == want == s.history(neg)[0].tolist()
            if s.item[neg] != 0:
                assert int(items[s.item[neg]]) != movie
                assert int(items[s.item[neg]]) in pool
    # No split's future in training: globally, or within each user for the per-user split.
    owners = [ds.split(n).user for n in ("train", "valid", "test")]
    ends = [ds.split(n).timestamp for n in ("train", "valid", "test")]
    for (early, early_user), (late, late_user) in itertools.combinations(
        zip(ends, owners, strict=True), 2
    ):
        if mode == "global_time" and len(early) and len(late):
            assert early.max() < late.min()
        for u in np.intersect1d(early_user, late_user):
            if u:
                assert early[early_user == u].max() <= late[late_user == u].min()
    assert ds.split("train").item.min() > 0 and ds.split("train").hist_items.min(initial=1) > 0


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("movielens")
    raw = bundled_movielens_dir()
    ds = prepare_movielens(raw / "ratings.csv", raw / "movies.csv", folder / "ds", command="test")
    yield ds, raw
    shutil.rmtree(folder, ignore_errors=True)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_bundled_movielens_counts(bundled):
    ds, raw = bundled
    ratings = read_csv(raw / "ratings.csv")
    genre = {r["movieId"]: r["genres"].split("|")[0] for r in read_csv(raw / "movies.csv")}
    users = {r["userId"] for r in ratings}
    counts = ds.manifest["counts"]
    assert (counts["users"], counts["items"], counts["events"]) == (671, 9066, 100004)
    assert len(users) == 671 and len(ratings) == 100004
    assert counts["items"] == len({r["movieId"] for r in ratings})
    assert counts["categories"] == len({genre[r["movieId"]] for r in ratings})
    assert counts["filtered"] == {
        "rating_movie_not_in_movies_csv": 0,
        "event_below_min_history": 671,
    }

    n_samples = {name: len(ds.split(name)) for name in ("train", "valid", "test")}
    assert sum(n_samples.values()) == 2 * (100004 - 671)  # every event after a user's first
    by_user = {}
    for r in ratings:
        by_user.setdefault(r["userId"], []).append((int(r["timestamp"]), int(r["movieId"])))
    # the default split: each user's latest rint(10%) sample events test, the 10% before valid
    n_test = sum(int(np.rint(0.1 * (len(seq) - 1))) for seq in by_user.values())
    n_valid = sum(int(np.rint(0.1 * (len(seq) - 1))) for seq in by_user.values())
    assert (n_samples["test"], n_samples["valid"]) == (2 * n_test, 2 * n_valid)
    assert counts["time_cutoffs"] == {"valid": None, "test": None}

    train, test = ds.split("train"), ds.split("test")
    valid = ds.split("valid")
    for early, late in ((train, valid), (valid, test), (train, test)):
        last = np.full(ds.vocab_sizes.users, -1, np.int64)
        np.maximum.at(last, early.user, early.timestamp)
        assert (last[late.user] <= late.timestamp).all()  # no user's future in an earlier split
    assert (test.user > 0).all()  # every test user has trained embeddings
    assert ds.vocab_sizes.users - 1 == len(np.unique(train.user))
    assert ds.vocab_sizes.items - 1 == len(
        np.unique(np.concatenate([train.item, train.hist_items]))
    )
    longest = np.zeros(ds.vocab_sizes.users, np.int64)  # a user's last training history
    np.maximum.at(longest, train.user, train.lengths())
    assert int(ds.item_frequency.sum()) == int((longest[1:] + 1).sum())  # each mentioned event


@pytest.mark.slow
def test_bundled_histories_are_the_users_earlier_ratings(bundled):
    ds, raw = bundled
    by_user = {}
    for r in read_csv(raw / "ratings.csv"):
        by_user.setdefault(r["userId"], []).append((int(r["timestamp"]), int(r["movieId"])))
    items = ds.vocab("items")
    users = ds.vocab("users")
    train = ds.split("train")
    rng = np.random.default_rng(0)
    for i in rng.choice(len(train), 200, replace=False):
        seq = sorted(by_user[users[train.user[i]]])
        hist = [int(items[j]) for j in train.history(i)[0]]
        assert [m for _, m in seq[: len(hist)]] == hist
        target_time = int(train.timestamp[i])
        assert seq[len(hist)][0] == target_time  # the target is the next event
        if train.label[i] == 1:
            assert int(items[train.item[i]]) == seq[len(hist)][1]
        else:
            assert int(items[train.item[i]]) != seq[len(hist)][1]


def test_vocab_orders_by_frequency_then_raw_id_and_encodes_unknown_as_zero():
    raw, count = build_vocab(np.array([10, 9, 100, 10, 9, 7, 100, 100]))
    assert raw.tolist() == [100, 9, 10, 7] and count.tolist() == [3, 2, 2, 1]  # 9 < 10 numerically
    assert encode(np.array([[7, 8], [100, 10]]), raw).tolist() == [[4, 0], [1, 3]]
    assert vocab_strings(raw) == ["<unk>", "100", "9", "10", "7"]
    names, _ = build_vocab(np.array(["b", "a", "c", "a"]))
    assert names.tolist() == ["a", "b", "c"]
    assert encode(np.array([1, 2]), np.array([], np.int64)).tolist() == [0, 0]
