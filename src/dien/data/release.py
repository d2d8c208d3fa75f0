"""The DIEN authors' released prepared files, read into a prepared dataset unchanged.

A release folder holds:

- ``local_train_splitByUser``, ``local_test_splitByUser``: one sample per line, tab-separated
  ``label, user, item, category, history items, history categories``; each history list is
  joined by the byte 0x02 (empty when the history is empty), oldest first;
- ``uid_voc.pkl``, ``mid_voc.pkl``, ``cat_voc.pkl``: pickled dicts raw id -> integer id, often
  written by Python 2 (protocol 0, byte-string keys);
- ``item-info`` (``item, category`` per line) and ``reviews-info`` (``user, item, rating,
  time`` per line): what the authors' data iterator draws auxiliary-loss negatives from.

Ids are kept where the released vocabularies allow it, so an embedding row here is the same
row as in the authors' code:

- items and categories: the released ``mid_voc`` gives ``default_mid`` id 0 and ``cat_voc``
  gives ``default_cat`` id 0 (unless ``default_cat`` later got a frequency rank of its own);
  that id 0 is our unknown id 0, and every other id is kept as it is;
- users: ``uid_voc`` gives a real user id 0 (the most frequent one), so user ids are shifted
  by one: our id = released id + 1, and id 0 is unknown;
- a vocabulary whose ids have gaps is renumbered in released-id order.
``params["id_mapping"]`` in the manifest says which rule each vocabulary got. A raw id of a
sample that its vocabulary lacks becomes 0, as in the authors' iterator; how many did is in
``counts["unknown_ids"]``.

``item_category`` comes from ``item-info`` (first line of an item wins, as in the authors'
iterator), falling back to the category the samples give an item. ``item_frequency`` is the
number of ``reviews-info`` lines of each item, the distribution the authors draw auxiliary
negatives from (lines of items outside the vocabulary are counted in
``counts["reviews_info_unknown_items"]``); without ``reviews-info`` it is the training-split
count of positives and history steps. Samples have no time (timestamp 0); the validation
split is empty.
"""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import numpy as np

from dien.data.format import UNKNOWN, PreparedDataset, SplitArrays, write_prepared
from dien.data.rawio import (
    BadLines,
    RawInputError,
    decode_problem,
    iter_lines,
    raw_id_problem,
    where,
)

logger = logging.getLogger(__name__)

SPLIT_FILES = {"train": "local_train_splitByUser", "test": "local_test_splitByUser"}
VOCAB_FILES = {"users": "uid_voc.pkl", "items": "mid_voc.pkl", "categories": "cat_voc.pkl"}
DEFAULT_NAMES = {"default_mid", "default_cat", "default_uid"}
SEPARATOR = "\x02"


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only: any class or function reference is refused, never imported."""

    def find_class(self, module: str, name: str) -> None:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: expected a plain dict")


def _raw_key(key: object) -> str:
    if isinstance(key, bytes):  # a Python 2 byte string
        return key.decode("utf-8")
    if isinstance(key, str):
        return key
    raise TypeError(f"key {key!r} is not a string")


def load_vocab_pickle(path: Path) -> dict[str, int]:
    """A released vocabulary: raw id -> released id, from any pickle protocol, safely."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RawInputError(f"{path}: no such file (a release folder needs it)") from None
    try:
        obj = _PlainUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise RawInputError(f"{path}: not a readable pickle ({e})") from None
    if not isinstance(obj, dict):
        raise RawInputError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    vocab: dict[str, int] = {}
    for key, value in obj.items():
        try:
            raw = _raw_key(key)
        except (TypeError, UnicodeDecodeError) as e:
            raise RawInputError(f"{path}: key {key!r}: {e}") from None
        if (problem := raw_id_problem(raw)) is not None:
            raise RawInputError(f"{path}: key {raw!r:.80} cannot be a raw id: it {problem}")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RawInputError(f"{path}: key {raw!r} maps to {value!r}, not an id >= 0")
        vocab[raw] = value
    if len(set(vocab.values())) != len(vocab):
        raise RawInputError(f"{path}: two raw ids share one id")
    return vocab


def _our_vocab(released: dict[str, int]) -> tuple[list[str], dict[str, int], str]:
    """``(vocab list, raw -> our id, rule)`` keeping released ids where possible."""
    by_id = sorted((v, k) for k, v in released.items())
    zero = [k for v, k in by_id if v == 0]
    real = [(v, k) for v, k in by_id if not (v == 0 and k in DEFAULT_NAMES)]
    shift = 1 if zero and zero[0] not in DEFAULT_NAMES else 0
    ids = [v + shift for v, _ in real]
    if ids == list(range(1, len(real) + 1)):
        rule = "released id + 1" if shift else "released id"
    else:
        rule = "renumbered in released-id order"
    names = [UNKNOWN, *(k for _, k in real)]
    return names, {k: i for i, k in enumerate(names) if i}, rule


def _read_split(path: Path, vocabs: dict[str, dict[str, int]], bad: BadLines) -> tuple:
    """One split file as SplitArrays, how many ids of each kind were unknown, the raw ids."""
    users, items, cats, labels, lengths = [], [], [], [], []
    hist_items: list[str] = []
    hist_cats: list[str] = []
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        problem = decode_problem(line)
        if problem is not None:
            bad.report("release_not_utf8", where(path, lineno), problem)
            continue
        fields = line.decode("utf-8").split("\t")
        if len(fields) != 6:
            bad.report(
                "release_malformed",
                where(path, lineno),
                f"expected 6 tab-separated fields, got {len(fields)}",
            )
            continue
        label, user, item, cat, h_items, h_cats = fields
        if label not in ("0", "1"):
            bad.report(
                "release_wrong_type", where(path, lineno), f"label must be 0 or 1, got {label!r}"
            )
            continue
        h_items_list = h_items.split(SEPARATOR) if h_items else []
        h_cats_list = h_cats.split(SEPARATOR) if h_cats else []
        if len(h_items_list) != len(h_cats_list):
            bad.report(
                "release_malformed",
                where(path, lineno),
                f"{len(h_items_list)} history items but {len(h_cats_list)} history categories",
            )
            continue
        labels.append(float(label))
        users.append(user)
        items.append(item)
        cats.append(cat)
        lengths.append(len(h_items_list))
        hist_items.extend(h_items_list)
        hist_cats.extend(h_cats_list)

    unknown: dict[str, int] = {}

    def encode(values: list[str], vocab: str) -> np.ndarray:
        table = vocabs[vocab]
        ids = np.fromiter((table.get(v, 0) for v in values), np.int32, len(values))
        unknown[vocab] = unknown.get(vocab, 0) + int((ids == 0).sum())
        return ids

    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    split = SplitArrays(
        user=encode(users, "users"),
        item=encode(items, "items"),
        category=encode(cats, "categories"),
        label=np.array(labels, np.float32),
        timestamp=np.zeros(len(labels), np.int64),
        hist_offsets=offsets,
        hist_items=encode(hist_items, "items"),
        hist_cats=encode(hist_cats, "categories"),
    )
    raw = {"users": set(users), "items": {*items, *hist_items}, "categories": {*cats, *hist_cats}}
    return split, unknown, raw


def _item_info(path: Path, items: dict, cats: dict, table: np.ndarray, bad: BadLines) -> None:
    """Overwrite ``table[item id]`` with the category ``item-info`` gives (first line wins)."""
    seen: set[str] = set()
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.decode("utf-8", "replace").split("\t")
        if len(fields) < 2 or decode_problem(line):
            bad.report("item_info_malformed", where(path, lineno), "expected 'item<TAB>category'")
            continue
        if fields[0] in seen:
            continue
        seen.add(fields[0])
        item = items.get(fields[0], 0)
        if item:
            table[item] = cats.get(fields[1], 0)


def _reviews_info(path: Path, items: dict, n_items: int, bad: BadLines) -> tuple[np.ndarray, int]:
    """Number of ``reviews-info`` lines of each item id; lines of unknown items counted apart."""
    ids = []
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.decode("utf-8", "replace").split("\t")
        if len(fields) < 2 or decode_problem(line):
            bad.report("reviews_info_malformed", where(path, lineno), "expected 'user<TAB>item...'")
            continue
        ids.append(items.get(fields[1], 0))
    freq = np.bincount(np.array(ids, np.int64), minlength=n_items)
    unknown = int(freq[0])
    freq[0] = 0
    return freq.astype(np.int64), unknown


def prepare_dien_release(
    path: str | Path, out_dir: str | Path, *, on_bad_lines: str = "error", command: str = ""
) -> PreparedDataset:
    """Read the authors' released files in folder ``path`` into a prepared dataset.

    See the module docstring for the id mapping and where each table comes from.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise RawInputError(f"{folder}: no such folder (expected the authors' released files)")
    bad = BadLines(on_bad_lines)
    vocabs, raw_to_id, rules = {}, {}, {}
    for name, file in VOCAB_FILES.items():
        vocabs[name], raw_to_id[name], rules[name] = _our_vocab(load_vocab_pickle(folder / file))

    splits, unknown, raw = {}, {}, {"users": set(), "items": set(), "categories": set()}
    for name, file in SPLIT_FILES.items():
        splits[name], unknown[name], raw_ids = _read_split(folder / file, raw_to_id, bad)
        for key, values in raw_ids.items():
            raw[key] |= values
    if len(splits["train"]) == 0:
        raise RawInputError(f"{folder / SPLIT_FILES['train']}: holds no samples")
    splits["valid"] = SplitArrays.empty()

    train = splits["train"]
    n_items = len(vocabs["items"])
    item_category = np.zeros(n_items, np.int32)
    item_category[train.hist_items] = train.hist_cats
    item_category[train.item] = train.category
    item_category[0] = 0
    counts: dict = {}
    if (folder / "item-info").exists():
        _item_info(
            folder / "item-info", raw_to_id["items"], raw_to_id["categories"], item_category, bad
        )
    else:
        logger.warning("%s: no item-info; item categories come from the samples", folder)
    if (folder / "reviews-info").exists():
        item_frequency, counts["reviews_info_unknown_items"] = _reviews_info(
            folder / "reviews-info", raw_to_id["items"], n_items, bad
        )
        frequency_source = "reviews-info"
    else:
        logger.warning("%s: no reviews-info; item frequency counts the training split", folder)
        positives = train.item[train.label == 1]
        item_frequency = np.bincount(
            np.concatenate([positives, train.hist_items]), minlength=n_items
        )
        item_frequency[0] = 0
        frequency_source = "training split"

    counts.update(
        users=len(raw["users"]),
        items=len(raw["items"]),
        categories=len(raw["categories"]),
        events=int(sum(len(s) for s in splits.values())),
        filtered=dict(bad.counts),
        unknown_ids=unknown,
    )
    params = {
        "path": str(folder),
        "on_bad_lines": on_bad_lines,
        "id_mapping": rules,
        "item_frequency": frequency_source,
    }
    out = write_prepared(
        out_dir,
        splits=splits,
        vocabs=vocabs,
        item_category=item_category,
        item_frequency=item_frequency.astype(np.int64),
        source="dien-release",
        params=params,
        counts=counts,
        command=command,
    )
    return PreparedDataset.open(out)
