"""The prepared-dataset folder: round trip, checksums, validation on write, errors on open."""

import hashlib
import json

import numpy as np
import pytest

from dien.data.batch import VocabSizes
from dien.data.format import DatasetError, PreparedDataset, SplitArrays, write_prepared

VOCABS = {
    "users": ["<unk>", "u7", "u3"],
    "items": ["<unk>", "i1", "i2", "i3", "i4"],
    "categories": ["<unk>", "c1", "c2"],
}
ITEM_CATEGORY = np.array([0, 1, 1, 2, 2], np.int64)
ITEM_FREQUENCY = np.array([0, 5, 3, 2, 1], np.int64)


def make_split(n: int, seed: int) -> SplitArrays:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 4, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    hist_items = rng.integers(0, 5, offsets[-1])
    return SplitArrays(
        user=rng.integers(0, 3, n),
        item=rng.integers(1, 5, n),
        category=rng.integers(0, 3, n),
        label=(np.arange(n) % 2 == 0).astype(np.float64),
        timestamp=np.arange(n, dtype=np.int64) * 10,
        hist_offsets=offsets,
        hist_items=hist_items,
        hist_cats=ITEM_CATEGORY[hist_items],
    )


def write(path, splits=None, **overrides):
    kwargs = dict(
        splits=splits
        or {"train": make_split(6, 0), "valid": make_split(3, 1), "test": make_split(4, 2)},
        vocabs=VOCABS,
        item_category=ITEM_CATEGORY,
        item_frequency=ITEM_FREQUENCY,
        source="events",
        params={"seed": 3},
        counts={"users": 2, "items": 4, "categories": 2, "events": 20, "filtered": {"x": 1}},
        command="dien prepare events",
    )
    kwargs.update(overrides)
    return write_prepared(path, **kwargs)


def test_round_trip_keeps_every_array_and_writes_the_manifest(tmp_path):
    splits = {"train": make_split(6, 0), "valid": SplitArrays.empty(), "test": make_split(4, 2)}
    path = write(tmp_path / "ds", splits=splits)
    ds = PreparedDataset.open(path, verify=True)

    assert ds.vocab_sizes == VocabSizes(users=3, items=5, categories=3)
    for name in ("users", "items", "categories"):
        assert ds.vocab(name) == VOCABS[name]
    np.testing.assert_array_equal(ds.item_category, ITEM_CATEGORY)
    np.testing.assert_array_equal(ds.item_frequency, ITEM_FREQUENCY)
    assert ds.item_category.dtype == np.int32 and ds.item_frequency.dtype == np.int64

    for name, expected in splits.items():
        got = ds.split(name)
        assert len(got) == len(expected)
        for field in ("user", "item", "category", "label", "timestamp", "hist_offsets"):
            np.testing.assert_array_equal(getattr(got, field), getattr(expected, field))
        np.testing.assert_array_equal(got.hist_items, expected.hist_items)
        np.testing.assert_array_equal(got.hist_cats, expected.hist_cats)
        assert got.user.dtype == np.int32 and got.label.dtype == np.float32
        assert got.hist_offsets.dtype == np.int64 and got.hist_items.dtype == np.int32
    assert isinstance(ds.split("train").hist_items, np.memmap)

    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["source"] == "events"
    assert manifest["created_by"]["command"] == "dien prepare events"
    assert manifest["params"] == {"seed": 3}
    assert manifest["counts"]["samples"] == {"train": 6, "valid": 0, "test": 4}
    assert manifest["counts"]["filtered"] == {"x": 1}
    assert manifest["vocab_sizes"] == {"users": 3, "items": 5, "categories": 3}
    assert manifest["splits"] == ["train", "valid", "test"]
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert sorted(manifest["checksums"]) == [f for f in files if f != "manifest.json"]
    assert len(files) == 1 + 3 + 2 + 3 * 8
    for rel, digest in manifest["checksums"].items():
        assert hashlib.sha256((path / rel).read_bytes()).hexdigest() == digest
    assert (path / "vocab" / "items.txt").read_text() == "<unk>\ni1\ni2\ni3\ni4\n"
    assert list(tmp_path.iterdir()) == [path]  # no temporary folder left behind


def test_split_arrays_lengths_and_history():
    split = SplitArrays(
        user=np.array([1, 1]),
        item=np.array([2, 3]),
        category=np.array([1, 2]),
        label=np.array([1.0, 0.0]),
        timestamp=np.array([5, 5]),
        hist_offsets=np.array([0, 2, 2]),
        hist_items=np.array([4, 1]),
        hist_cats=np.array([2, 1]),
    )
    assert len(split) == 2
    np.testing.assert_array_equal(split.lengths(), [2, 0])
    assert split.lengths().dtype == np.int64
    items, cats = split.history(0)
    assert items.tolist() == [4, 1] and cats.tolist() == [2, 1]
    assert split.history(1)[0].tolist() == []


def test_verify_catches_a_corrupted_file(tmp_path):
    path = write(tmp_path / "ds")
    file = path / "train" / "hist_items.npy"
    data = bytearray(file.read_bytes())
    data[-1] ^= 1  # still a valid array, different content
    file.write_bytes(bytes(data))

    PreparedDataset.open(path)  # without verify only presence and shapes are checked
    with pytest.raises(DatasetError, match=r"train/hist_items\.npy: checksum does not match"):
        PreparedDataset.open(path, verify=True)


def test_missing_files_are_named(tmp_path):
    path = write(tmp_path / "ds")
    (path / "valid" / "label.npy").unlink()
    with pytest.raises(DatasetError, match=r"valid/label\.npy: missing"):
        PreparedDataset.open(path)

    (path / "manifest.json").unlink()
    with pytest.raises(DatasetError, match=r"manifest\.json: missing"):
        PreparedDataset.open(path)
    with pytest.raises(DatasetError, match="no such prepared dataset folder"):
        PreparedDataset.open(tmp_path / "nowhere")


def test_bad_manifest_is_named(tmp_path):
    path = write(tmp_path / "ds")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 2
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="format_version 2 is not supported"):
        PreparedDataset.open(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"manifest\.json: not valid JSON"):
        PreparedDataset.open(path)


def test_wrong_dtype_on_disk_is_named(tmp_path):
    path = write(tmp_path / "ds")
    np.save(path / "test" / "user.npy", np.zeros(4, np.float64))
    ds = PreparedDataset.open(path)
    with pytest.raises(DatasetError, match=r"test/user\.npy: must be a 1-D int32 array"):
        ds.split("test")


def test_unknown_split_and_vocab(tmp_path):
    ds = PreparedDataset.open(write(tmp_path / "ds"))
    with pytest.raises(DatasetError, match="has no split 'dev'; its splits: train, valid, test"):
        ds.split("dev")
    with pytest.raises(DatasetError, match="unknown vocab 'movies'"):
        ds.vocab("movies")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"item": np.array([1, 2, 3, 4, 5, 1])}, r"split 'train', item: ids must lie in \[0, 5\)"),
        ({"user": np.array([0, 1, 2, 0, 1])}, r"split 'train', user: has 5 rows, item has 6"),
        ({"label": np.array([1, 0, 2, 0, 1, 0.0])}, r"split 'train', label: must lie in \[0, 1\]"),
        ({"hist_offsets": np.array([0, 1, 1, 1, 1, 1, 99])}, "hist_offsets: must start at 0"),
        ({"item": np.array([1.0, 2, 3, 4, 4, 1])}, "item: must hold integers"),
    ],
)
def test_write_rejects_bad_split_arrays_and_writes_nothing(tmp_path, change, message):
    base = make_split(6, 0)
    bad = SplitArrays(**{**base.__dict__, **change})
    splits = {"train": bad, "valid": make_split(3, 1), "test": make_split(4, 2)}
    with pytest.raises(DatasetError, match=message):
        write(tmp_path / "ds", splits=splits)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_bad_vocabs_tables_and_split_names(tmp_path):
    with pytest.raises(DatasetError, match="vocab 'items': entry 0 must be '<unk>'"):
        write(tmp_path / "ds", vocabs={**VOCABS, "items": ["i1", "i2", "i3", "i4", "i5"]})
    with pytest.raises(DatasetError, match="vocab 'users': holds a raw id twice"):
        write(tmp_path / "ds", vocabs={**VOCABS, "users": ["<unk>", "u", "u"]})
    with pytest.raises(DatasetError, match=r"item_category: must have shape \(5,\)"):
        write(tmp_path / "ds", item_category=ITEM_CATEGORY[:4])
    with pytest.raises(DatasetError, match="unknown item \\(id 0\\) must have category 0"):
        write(tmp_path / "ds", item_category=np.array([1, 1, 1, 2, 2]))
    with pytest.raises(DatasetError, match="splits: must have exactly the keys"):
        write(tmp_path / "ds", splits={"train": make_split(2, 0), "test": make_split(2, 1)})
    with pytest.raises(DatasetError, match="params: must be JSON-serialisable"):
        write(tmp_path / "ds", params={"seed": np.int64(3)})
    with pytest.raises(DatasetError, match="counts\\['samples'\\]: says"):
        write(tmp_path / "ds", counts={"samples": {"train": 1, "valid": 3, "test": 4}})
    assert list(tmp_path.iterdir()) == []


def test_rewrite_replaces_a_dataset_but_not_other_folders(tmp_path):
    path = write(tmp_path / "ds")
    write(path, params={"seed": 4})
    assert PreparedDataset.open(path, verify=True).manifest["params"] == {"seed": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not a prepared dataset; refusing to replace it"):
        write(other)
    assert (other / "keep.txt").read_text() == "mine"
