"""The prepared-dataset folder: what every preparation writes and every loader reads.

Layout of a prepared dataset (format version 1)::

    manifest.json            what made it, parameters, counts, vocab sizes, checksums
    vocab/users.txt          one raw id per line; line i is id i; line 0 is ``<unk>``
    vocab/items.txt
    vocab/categories.txt
    item_category.npy        (n_items,) int32, category id of each item id (0 for id 0)
    item_frequency.npy       (n_items,) int64, occurrences of each item in the training split
    train/ valid/ test/      one folder per split, each holding
        user.npy item.npy category.npy    (N,) int32
        label.npy                         (N,) float32, 1 = click
        timestamp.npy                     (N,) int64, target event time (0 if unknown)
        hist_offsets.npy                  (N+1,) int64
        hist_items.npy hist_cats.npy      (sum of history lengths,) int32

Histories are ragged: sample ``i``'s behaviour sequence is
``hist_items[hist_offsets[i]:hist_offsets[i + 1]]``, oldest first, stored in full; the batch
loader keeps the most recent ``max_history`` of them. Id 0 means unknown (an id the training
split never saw) in every vocabulary and is the padding id in batches.

:func:`write_prepared` checks every array against this contract before anything is written,
writes into a temporary folder next to the target and renames it into place, so a reader never
sees a half-written dataset. :class:`PreparedDataset` opens the folder with memory-mapped
arrays, so opening costs next to nothing whatever the size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from dien import __version__
from dien.data.batch import VocabSizes

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLIT_NAMES = ("train", "valid", "test")
VOCAB_NAMES = ("users", "items", "categories")
UNKNOWN = "<unk>"

# Storage dtype of each per-split array; the order is the order of files in a split folder.
SPLIT_DTYPES: dict[str, np.dtype] = {
    "user": np.dtype(np.int32),
    "item": np.dtype(np.int32),
    "category": np.dtype(np.int32),
    "label": np.dtype(np.float32),
    "timestamp": np.dtype(np.int64),
    "hist_offsets": np.dtype(np.int64),
    "hist_items": np.dtype(np.int32),
    "hist_cats": np.dtype(np.int32),
}
# Which vocabulary bounds each id array.
ID_ARRAYS = {
    "user": "users",
    "item": "items",
    "category": "categories",
    "hist_items": "items",
    "hist_cats": "categories",
}


class DatasetError(ValueError):
    """A prepared dataset, or the arrays meant for one, break the format; names file and problem."""


@dataclass(frozen=True)
class SplitArrays:
    """One split as flat arrays; histories are ragged (flat values plus offsets).

    Example with two samples, the first with history ``[4, 9]`` and the second with none::

        user = [7, 7]  item = [12, 40]  category = [2, 5]  label = [1., 0.]
        timestamp = [1000, 1000]  hist_offsets = [0, 2, 2]
        hist_items = [4, 9]  hist_cats = [1, 2]
    """

    user: np.ndarray  # (N,) int32
    item: np.ndarray  # (N,) int32, target item
    category: np.ndarray  # (N,) int32, target item's category
    label: np.ndarray  # (N,) float32, 1 = click
    timestamp: np.ndarray  # (N,) int64, target event time, 0 if unknown
    hist_offsets: np.ndarray  # (N+1,) int64
    hist_items: np.ndarray  # (sum of lengths,) int32, oldest first per sample
    hist_cats: np.ndarray  # (sum of lengths,) int32

    def __len__(self) -> int:
        return int(self.item.shape[0])

    def lengths(self) -> np.ndarray:
        """(N,) int64 full (untruncated) history length of each sample."""
        return np.diff(self.hist_offsets).astype(np.int64, copy=False)

    def history(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Items and categories of sample ``i``'s behaviour sequence, oldest first."""
        lo, hi = int(self.hist_offsets[i]), int(self.hist_offsets[i + 1])
        return self.hist_items[lo:hi], self.hist_cats[lo:hi]

    @classmethod
    def empty(cls) -> SplitArrays:
        """A split with no samples (for example a preparation without a validation split)."""
        arrays = {name: np.zeros(0, dtype) for name, dtype in SPLIT_DTYPES.items()}
        arrays["hist_offsets"] = np.zeros(1, np.int64)
        return cls(**arrays)


def _fail(where: str, problem: str) -> DatasetError:
    return DatasetError(f"{where}: {problem}")


def _check_split(name: str, split: SplitArrays, sizes: VocabSizes) -> SplitArrays:
    """Check one split against the contract; return it in the storage dtypes."""
    n = len(split)
    converted: dict[str, np.ndarray] = {}
    for f in fields(SplitArrays):
        where = f"split '{name}', {f.name}"
        a = np.asarray(getattr(split, f.name))
        if a.ndim != 1:
            raise _fail(where, f"must be one-dimensional, got shape {a.shape}")
        dtype = SPLIT_DTYPES[f.name]
        if dtype.kind == "i" and a.dtype.kind not in "iu":
            raise _fail(where, f"must hold integers, got dtype {a.dtype}")
        if dtype.kind == "f" and a.dtype.kind not in "iufb":
            raise _fail(where, f"must hold numbers, got dtype {a.dtype}")
        converted[f.name] = a
    for key in ("user", "category", "label", "timestamp"):
        if converted[key].shape[0] != n:
            raise _fail(
                f"split '{name}', {key}", f"has {converted[key].shape[0]} rows, item has {n}"
            )

    offsets = converted["hist_offsets"]
    n_hist = converted["hist_items"].shape[0]
    if offsets.shape[0] != n + 1:
        raise _fail(f"split '{name}', hist_offsets", f"must have N+1 = {n + 1} rows")
    if offsets[0] != 0 or offsets[-1] != n_hist or (n and np.any(np.diff(offsets) < 0)):
        raise _fail(
            f"split '{name}', hist_offsets",
            f"must start at 0, never decrease and end at len(hist_items) = {n_hist}",
        )
    if converted["hist_cats"].shape[0] != n_hist:
        raise _fail(f"split '{name}', hist_cats", "must have the length of hist_items")

    for key, vocab in ID_ARRAYS.items():
        a, bound = converted[key], getattr(sizes, vocab)
        if a.size and (a.min() < 0 or a.max() >= bound):
            raise _fail(
                f"split '{name}', {key}",
                f"ids must lie in [0, {bound}) (vocab '{vocab}'), got [{a.min()}, {a.max()}]",
            )
    label = converted["label"]
    if label.size and not (np.all(np.isfinite(label)) and label.min() >= 0 and label.max() <= 1):
        raise _fail(f"split '{name}', label", "must lie in [0, 1]")
    return SplitArrays(**{k: v.astype(SPLIT_DTYPES[k], copy=False) for k, v in converted.items()})


def _check_vocabs(vocabs: dict[str, list[str]]) -> VocabSizes:
    if set(vocabs) != set(VOCAB_NAMES):
        raise _fail("vocabs", f"must have exactly the keys {VOCAB_NAMES}, got {sorted(vocabs)}")
    for name in VOCAB_NAMES:
        values = vocabs[name]
        if not values or values[0] != UNKNOWN:
            raise _fail(f"vocab '{name}'", f"entry 0 must be '{UNKNOWN}'")
        if len(set(values)) != len(values):
            raise _fail(f"vocab '{name}'", "holds a raw id twice")
        for i, v in enumerate(values):
            if not isinstance(v, str) or not v or "\n" in v or "\r" in v:
                raise _fail(f"vocab '{name}'", f"entry {i} ({v!r}) must be a one-line string")
    return VocabSizes(*(len(vocabs[name]) for name in VOCAB_NAMES))


def _check_item_tables(
    item_category: np.ndarray, item_frequency: np.ndarray, sizes: VocabSizes
) -> tuple[np.ndarray, np.ndarray]:
    item_category, item_frequency = np.asarray(item_category), np.asarray(item_frequency)
    for label, a in (("item_category", item_category), ("item_frequency", item_frequency)):
        if a.shape != (sizes.items,):
            raise _fail(label, f"must have shape ({sizes.items},), got {a.shape}")
        if a.dtype.kind not in "iu":
            raise _fail(label, f"must hold integers, got dtype {a.dtype}")
    if item_category.min() < 0 or item_category.max() >= sizes.categories:
        raise _fail("item_category", f"category ids must lie in [0, {sizes.categories})")
    if item_category[0] != 0:
        raise _fail("item_category", "the unknown item (id 0) must have category 0")
    if item_frequency.min() < 0:
        raise _fail("item_frequency", "must not be negative")
    return item_category.astype(np.int32), item_frequency.astype(np.int64)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_prepared(
    out_dir: str | Path,
    *,
    splits: dict[str, SplitArrays],
    vocabs: dict[str, list[str]],
    item_category: np.ndarray,
    item_frequency: np.ndarray,
    source: str,
    params: dict,
    counts: dict,
    command: str = "",
) -> Path:
    """Validate and write a prepared dataset to ``out_dir``; return its path.

    ``splits`` must hold ``train``, ``valid`` and ``test`` (an empty one is
    :meth:`SplitArrays.empty`). ``counts["samples"]`` is filled from the splits. An existing
    prepared dataset at ``out_dir`` is replaced; any other non-empty folder there is an error.
    """
    out_dir = Path(out_dir)
    if set(splits) != set(SPLIT_NAMES):
        raise _fail("splits", f"must have exactly the keys {SPLIT_NAMES}, got {sorted(splits)}")
    sizes = _check_vocabs(vocabs)
    item_category, item_frequency = _check_item_tables(item_category, item_frequency, sizes)
    checked = {name: _check_split(name, splits[name], sizes) for name in SPLIT_NAMES}
    counts = _complete_counts(counts, checked)
    try:
        json.dumps(params)
    except TypeError as e:
        raise _fail("params", f"must be JSON-serialisable: {e}") from None
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "manifest.json").exists():
        raise _fail(str(out_dir), "exists and is not a prepared dataset; refusing to replace it")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files = _write_files(tmp, checked, vocabs, item_category, item_frequency)
        manifest = {
            "format_version": FORMAT_VERSION,
            "source": source,
            "created_by": {"dien": __version__, "command": command},
            "params": params,
            "counts": counts,
            "vocab_sizes": {name: getattr(sizes, name) for name in VOCAB_NAMES},
            "splits": list(SPLIT_NAMES),
            "checksums": {rel: file_sha256(tmp / rel) for rel in files},
        }
        text = json.dumps(manifest, indent=2, sort_keys=False)
        (tmp / "manifest.json").write_text(text + "\n", encoding="utf-8")
        _replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote prepared dataset %s (%s)", out_dir, counts["samples"])
    return out_dir


def _complete_counts(counts: dict, splits: dict[str, SplitArrays]) -> dict:
    counts = dict(counts)
    samples = {name: len(split) for name, split in splits.items()}
    given = counts.get("samples")
    if given is not None and dict(given) != samples:
        raise _fail("counts['samples']", f"says {given}, the splits hold {samples}")
    counts["samples"] = samples
    counts.setdefault("filtered", {})
    try:
        json.dumps(counts)
    except TypeError as e:
        raise _fail("counts", f"must be JSON-serialisable: {e}") from None
    return counts


def _write_files(
    root: Path,
    splits: dict[str, SplitArrays],
    vocabs: dict[str, list[str]],
    item_category: np.ndarray,
    item_frequency: np.ndarray,
) -> list[str]:
    """Write everything but the manifest; return the relative paths written."""
    written: list[str] = []
    (root / "vocab").mkdir()
    for name in VOCAB_NAMES:
        rel = f"vocab/{name}.txt"
        (root / rel).write_text("\n".join(vocabs[name]) + "\n", encoding="utf-8")
        written.append(rel)
    for rel, array in (
        ("item_category.npy", item_category),
        ("item_frequency.npy", item_frequency),
    ):
        np.save(root / rel, array)
        written.append(rel)
    for name, split in splits.items():
        (root / name).mkdir()
        for f in fields(SplitArrays):
            rel = f"{name}/{f.name}.npy"
            np.save(root / rel, getattr(split, f.name))
            written.append(rel)
    return written


def _replace_folder(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an old folder there is moved aside first, then deleted."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class PreparedDataset:
    """A prepared dataset folder, opened with memory-mapped arrays.

    ``PreparedDataset.open(path, verify=True)`` also checks every file's sha256 against the
    manifest (reads everything once); without it only presence, dtypes and shapes are checked.
    """

    def __init__(self, path: Path, manifest: dict) -> None:
        self.path = path
        self.manifest = manifest
        sizes = manifest["vocab_sizes"]
        self.vocab_sizes = VocabSizes(*(int(sizes[name]) for name in VOCAB_NAMES))
        self.item_category = self._load("item_category.npy", np.dtype(np.int32))
        self.item_frequency = self._load("item_frequency.npy", np.dtype(np.int64))
        for name in ("item_category", "item_frequency"):
            if getattr(self, name).shape != (self.vocab_sizes.items,):
                raise _fail(str(path / f"{name}.npy"), f"must have {self.vocab_sizes.items} rows")
        self._splits: dict[str, SplitArrays] = {}
        self._vocabs: dict[str, list[str]] = {}

    @classmethod
    def open(cls, path: str | Path, verify: bool = False) -> PreparedDataset:
        path = Path(path)
        manifest = _read_manifest(path)
        for rel in manifest["checksums"]:
            if not (path / rel).is_file():
                raise _fail(str(path / rel), "missing (listed in manifest.json)")
        if verify:
            for rel, expected in manifest["checksums"].items():
                if file_sha256(path / rel) != expected:
                    raise _fail(str(path / rel), "checksum does not match manifest.json (corrupt)")
        return cls(path, manifest)

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str) -> SplitArrays:
        """The split ``name``, memory-mapped (read-only)."""
        if name not in self.manifest["splits"]:
            known = ", ".join(self.manifest["splits"])
            raise _fail(str(self.path), f"has no split '{name}'; its splits: {known}")
        if name not in self._splits:
            arrays = {k: self._load(f"{name}/{k}.npy", dtype) for k, dtype in SPLIT_DTYPES.items()}
            split = SplitArrays(**arrays)
            offsets = split.hist_offsets
            n = len(split)
            if any(a.shape != (n,) for a in (split.user, split.category, split.label)):
                raise _fail(str(self.path / name), "per-sample arrays differ in length")
            if offsets.shape != (n + 1,) or offsets[0] != 0 or offsets[-1] != len(split.hist_items):
                raise _fail(str(self.path / name / "hist_offsets.npy"), "does not fit hist_items")
            self._splits[name] = split
        return self._splits[name]

    def vocab(self, name: str) -> list[str]:
        """Raw ids of vocabulary ``name`` (users, items or categories); entry i is id i."""
        if name not in VOCAB_NAMES:
            raise _fail(str(self.path), f"unknown vocab '{name}'; vocabs: {', '.join(VOCAB_NAMES)}")
        if name not in self._vocabs:
            file = self.path / "vocab" / f"{name}.txt"
            values = file.read_text(encoding="utf-8").split("\n")
            if values and values[-1] == "":
                values.pop()
            expected = getattr(self.vocab_sizes, name)
            if len(values) != expected or values[0] != UNKNOWN:
                raise _fail(str(file), f"must hold {expected} lines starting with '{UNKNOWN}'")
            self._vocabs[name] = values
        return self._vocabs[name]

    def _load(self, rel: str, dtype: np.dtype) -> np.ndarray:
        file = self.path / rel
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise _fail(str(file), "missing") from None
        except ValueError as e:
            raise _fail(str(file), f"not a readable .npy array: {e}") from None
        if array.dtype != dtype or array.ndim != 1:
            raise _fail(str(file), f"must be a 1-D {dtype} array, got {array.ndim}-D {array.dtype}")
        return array

    def __repr__(self) -> str:
        return f"PreparedDataset({str(self.path)!r}, samples={self.manifest['counts']['samples']})"


REQUIRED_KEYS = ("format_version", "source", "counts", "vocab_sizes", "splits", "checksums")


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / "manifest.json"
    if not path.is_dir():
        raise _fail(str(path), "no such prepared dataset folder")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(str(file), "missing; is this a folder made by `dien prepare`?") from None
    except json.JSONDecodeError as e:
        raise _fail(str(file), f"not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise _fail(str(file), "must hold a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise _fail(str(file), f"lacks the keys {', '.join(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise _fail(
            str(file),
            f"format_version {manifest['format_version']} is not supported "
            f"(this dien reads version {FORMAT_VERSION})",
        )
    if set(manifest["vocab_sizes"]) != set(VOCAB_NAMES):
        raise _fail(str(file), f"vocab_sizes must have the keys {', '.join(VOCAB_NAMES)}")
    return manifest
