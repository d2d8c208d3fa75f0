"""prepare_dien_release on a small handcrafted release folder in the authors' exact format."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from dien.data.format import DatasetError
from dien.data.release import load_vocab_pickle, prepare_dien_release

# What Python 2's cPickle.dumps(d) (protocol 0) writes for a dict with byte-string keys.
PY2_MID_VOC = b"(dp0\nS'default_mid'\np1\nI0\nsS'i1'\np2\nI1\nsS'i2'\np3\nI2\nsS'i3'\np4\nI3\ns."
SEP = "\x02"
TRAIN = [
    f"0\tuA\ti2\tc2\ti1{SEP}i3\tc1{SEP}c2",
    f"1\tuA\ti3\tc2\ti1{SEP}i3\tc1{SEP}c2",
    "0\tuB\ti1\tc1\ti2\tc2",
    "1\tuB\ti2\tc2\t\t",  # an empty history: both lists empty
]
TEST = [
    f"0\tuZ\ti9\tc1\ti1{SEP}i2\tc1{SEP}c2",
    f"1\tuZ\ti3\tc2\ti1{SEP}i2\tc1{SEP}c2",
]
ITEM_INFO = ["i1\tc1", "i2\tc2", "i3\tc2", "i3\tc1", "i9\tc1"]
REVIEWS_INFO = [f"uA\t{i}\t5.0\t100" for i in ("i1", "i1", "i3", "i1", "i2", "i3", "i9")]


def write_release(folder, train=TRAIN, test=TEST, cat_voc=None):
    folder.mkdir(exist_ok=True)
    (folder / "uid_voc.pkl").write_bytes(pickle.dumps({"uA": 0, "uB": 1}, protocol=0))
    (folder / "mid_voc.pkl").write_bytes(PY2_MID_VOC)
    cat_voc = cat_voc or {"default_cat": 0, "c1": 1, "c2": 2}
    (folder / "cat_voc.pkl").write_bytes(pickle.dumps(cat_voc, protocol=4))
    (folder / "local_train_splitByUser").write_text("\n".join(train) + "\n")
    (folder / "local_test_splitByUser").write_text("\n".join(test) + "\n")
    (folder / "item-info").write_text("\n".join(ITEM_INFO) + "\n")
    (folder / "reviews-info").write_text("\n".join(REVIEWS_INFO) + "\n")
    return folder


def rows(split) -> list[tuple]:
    return [
        (
            int(split.user[i]),
            int(split.item[i]),
            int(split.category[i]),
            float(split.label[i]),
            split.history(i)[0].tolist(),
            split.history(i)[1].tolist(),
        )
        for i in range(len(split))
    ]


def test_every_sample_keeps_the_released_ids(tmp_path):
    ds = prepare_dien_release(write_release(tmp_path / "rel"), tmp_path / "out")
    assert ds.vocab("users") == ["<unk>", "uA", "uB"]  # released id + 1
    assert ds.vocab("items") == ["<unk>", "i1", "i2", "i3"]  # released ids kept
    assert ds.vocab("categories") == ["<unk>", "c1", "c2"]
    assert rows(ds.split("train")) == [
        (1, 2, 2, 0.0, [1, 3], [1, 2]),
        (1, 3, 2, 1.0, [1, 3], [1, 2]),
        (2, 1, 1, 0.0, [2], [2]),
        (2, 2, 2, 1.0, [], []),
    ]
    assert rows(ds.split("test")) == [
        (0, 0, 1, 0.0, [1, 2], [1, 2]),  # uZ and i9 are not in the vocabularies
        (0, 3, 2, 1.0, [1, 2], [1, 2]),
    ]
    assert len(ds.split("valid")) == 0
    assert not ds.split("train").timestamp.any()

    np.testing.assert_array_equal(ds.item_category, [0, 1, 2, 2])  # item-info, first line wins
    np.testing.assert_array_equal(ds.item_frequency, [0, 3, 1, 2])  # reviews-info lines
    m = ds.manifest
    assert m["params"]["id_mapping"] == {
        "users": "released id + 1",
        "items": "released id",
        "categories": "released id",
    }
    assert m["counts"]["unknown_ids"]["test"] == {"users": 2, "items": 1, "categories": 0}
    assert m["counts"]["reviews_info_unknown_items"] == 1
    assert (m["counts"]["users"], m["counts"]["items"], m["counts"]["categories"]) == (3, 4, 2)
    assert m["source"] == "dien-release"


def test_vocab_pickles_of_every_protocol_load_alike(tmp_path):
    d = {"x": 0, "y\u00e9": 1}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.pkl"
        path.write_bytes(pickle.dumps(d, protocol=protocol))
        assert load_vocab_pickle(path) == d
    py2 = tmp_path / "py2.pkl"
    py2.write_bytes(PY2_MID_VOC)
    assert load_vocab_pickle(py2) == {"default_mid": 0, "i1": 1, "i2": 2, "i3": 3}


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(print))
    with pytest.raises(DatasetError, match=r"evil.pkl: not a readable pickle.*builtins.print"):
        load_vocab_pickle(path)
    path.write_bytes(pickle.dumps(["a"]))
    with pytest.raises(DatasetError, match=r"expected a pickled dict, got list"):
        load_vocab_pickle(path)


@pytest.mark.parametrize(
    "key, problem", [("<unk>", "is '<unk>'"), ("", "is empty"), ("c\n", "holds a line")]
)
def test_a_vocabulary_key_that_cannot_be_a_raw_id_is_refused(tmp_path, key, problem):
    # found by the fuzz tests: these failed when the dataset was written, naming no file
    folder = write_release(tmp_path / "rel", cat_voc={"default_cat": 0, "c1": 1, "c2": 2, key: 3})
    with pytest.raises(
        DatasetError, match=rf"cat_voc.pkl: key .* cannot be a raw id: it {problem}"
    ):
        prepare_dien_release(folder, tmp_path / "out")


def test_default_cat_with_its_own_rank_and_gaps(tmp_path):
    # default_cat got a frequency rank (id 2), nothing holds id 0, id 3 is missing
    cat_voc = {"c1": 1, "default_cat": 2, "c2": 4}
    ds = prepare_dien_release(write_release(tmp_path / "rel", cat_voc=cat_voc), tmp_path / "out")
    assert ds.vocab("categories") == ["<unk>", "c1", "default_cat", "c2"]
    assert ds.manifest["params"]["id_mapping"]["categories"] == "renumbered in released-id order"
    assert rows(ds.split("train"))[0] == (1, 2, 3, 0.0, [1, 3], [1, 3])


BAD_LINES = [
    ("0\tuA\ti1\tc1\ti2", "expected 6 tab-separated fields, got 5", "release_malformed"),
    ("x\tuA\ti1\tc1\ti2\tc2", "label must be 0 or 1, got 'x'", "release_wrong_type"),
    (
        f"1\tuA\ti1\tc1\ti2{SEP}i3\tc2",
        "2 history items but 1 history categories",
        "release_malformed",
    ),
]


@pytest.mark.parametrize("line, message, reason", BAD_LINES)
def test_bad_lines_name_file_line_and_problem(tmp_path, line, message, reason):
    folder = write_release(tmp_path / "rel", train=[*TRAIN[:2], line, *TRAIN[2:]])
    with pytest.raises(DatasetError) as err:
        prepare_dien_release(folder, tmp_path / "out")
    assert "local_train_splitByUser, line 3: " + message in str(err.value)
    ds = prepare_dien_release(folder, tmp_path / "out", on_bad_lines="skip")
    assert ds.manifest["counts"]["filtered"] == {reason: 1}
    assert len(ds.split("train")) == 4


def test_non_utf8_and_missing_files(tmp_path):
    folder = write_release(tmp_path / "rel")
    (folder / "local_test_splitByUser").write_bytes(b"1\tu\xff\ti1\tc1\t\t\n")
    with pytest.raises(DatasetError, match=r"local_test_splitByUser, line 1: not UTF-8"):
        prepare_dien_release(folder, tmp_path / "out")
    (folder / "cat_voc.pkl").unlink()
    with pytest.raises(DatasetError, match=r"cat_voc.pkl: no such file"):
        prepare_dien_release(folder, tmp_path / "out")
    with pytest.raises(DatasetError, match=r"no such folder"):
        prepare_dien_release(tmp_path / "nowhere", tmp_path / "out")


def test_without_info_files_tables_come_from_the_samples(tmp_path):
    folder = write_release(tmp_path / "rel")
    (folder / "item-info").unlink()
    (folder / "reviews-info").unlink()
    ds = prepare_dien_release(folder, tmp_path / "out")
    np.testing.assert_array_equal(ds.item_category, [0, 1, 2, 2])
    # positives i3, i2 and history steps i1, i3, i2
    np.testing.assert_array_equal(ds.item_frequency, [0, 2, 2, 3])
    assert ds.manifest["params"]["item_frequency"] == "training split"
