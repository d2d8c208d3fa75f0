"""Books-shaped generated click data for benchmarks, with a learnable signal.

Sizes follow the Amazon Books set of the DIEN paper: 603,668 users, 367,982 items and 1,600
categories (each ``scale``-d down if asked), histories of mean length 13.7 capped at 100.

How samples are made, following the Amazon protocol of the paper's public code:
- each user follows a few interests (categories, drawn by a Zipf-like category popularity);
  each behaviour keeps the current interest or, now and then, switches to another of the
  user's interests; a small share of behaviours is off-interest noise;
- a behaviour's item is drawn from its category, popular items more often;
- the step after the history is the clicked target (label 1); a second sample with the same
  history has a target drawn by item frequency, not the clicked one (label 0).
So a click is predictable from the category overlap between target and history, most of all
with the recent history. Negatives for the auxiliary loss (one per history step, by item
frequency, never the step's own item) are stored too, for libraries that take them as input.

Everything depends on ``seed`` only. Run ``python -m benchmarks.synthetic --help``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

BOOKS_USERS = 603_668
BOOKS_ITEMS = 367_982
BOOKS_CATEGORIES = 1_600

SPLIT_FIELDS = (
    "user",
    "item",
    "category",
    "label",
    "hist_offsets",
    "hist_items",
    "hist_cats",
    "neg_items",
    "neg_cats",
)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Sample counts are rounded up to even (samples come in pairs)."""

    train_samples: int = 40_000
    test_samples: int = 10_000
    users: int = BOOKS_USERS
    items: int = BOOKS_ITEMS
    categories: int = BOOKS_CATEGORIES
    mean_history: float = 13.7
    max_history: int = 100
    history_sigma: float = 1.0  # spread of the log-normal history length
    interests_per_user: int = 3
    stay_probability: float = 0.8  # a behaviour keeps the previous behaviour's interest
    noise_probability: float = 0.1  # a behaviour's category is drawn off-interest
    category_zipf: float = 1.0  # category popularity ~ rank ** -category_zipf
    seed: int = 0

    def scaled(self, scale: float) -> SyntheticSpec:
        """The same spec with user, item and category counts multiplied by ``scale``."""
        counts = {k: max(3, round(getattr(self, k) * scale)) for k in ("users", "items")}
        counts["categories"] = max(3, round(self.categories * scale))
        return SyntheticSpec(**{**asdict(self), **counts})


@dataclass(frozen=True)
class SyntheticData:
    """Generated samples. Ids start at 1; 0 is padding. Histories are ragged, oldest first.

    ``splits[name]`` holds ``user, item, category`` (N,) int32, ``label`` (N,) float32,
    ``hist_offsets`` (N+1,) int64, ``hist_items, hist_cats, neg_items, neg_cats``
    (sum of lengths,) int32, where ``neg_items[j]`` is an auxiliary-loss negative for the
    behaviour ``hist_items[j]``. Vocabulary sizes count id 0.
    """

    spec: SyntheticSpec
    splits: dict[str, dict[str, np.ndarray]]
    item_category: np.ndarray  # (items,) int32, category of each item id, 0 for id 0
    item_frequency: np.ndarray  # (items,) int64, occurrences in the training split

    @property
    def vocab_sizes(self) -> dict[str, int]:
        s = self.spec
        return {"users": s.users, "items": s.items, "categories": s.categories}

    def lengths(self, split: str) -> np.ndarray:
        return np.diff(self.splits[split]["hist_offsets"])

    def split_arrays(self, split: str):
        """One split in this project's on-disk form (``dien.data.format.SplitArrays``)."""
        from dien.data.format import SplitArrays

        s = self.splits[split]
        return SplitArrays(
            user=s["user"],
            item=s["item"],
            category=s["category"],
            label=s["label"],
            timestamp=np.zeros(s["label"].size, np.int64),
            hist_offsets=s["hist_offsets"],
            hist_items=s["hist_items"],
            hist_cats=s["hist_cats"],
        )

    def write_prepared(self, folder: Path, command: str) -> Path:
        """Write these samples as a prepared dataset (an empty validation split) to ``folder``."""
        from dien.data.format import SplitArrays, write_prepared

        spec = self.spec
        splits = {name: self.split_arrays(name) for name in self.splits}
        empty = {k: np.zeros(0, v.dtype) for k, v in splits["test"].__dict__.items()}
        splits["valid"] = SplitArrays(**{**empty, "hist_offsets": np.zeros(1, np.int64)})
        vocabs = {
            name: ["<unk>"] + [f"{prefix}{i}" for i in range(1, n)]
            for name, prefix, n in (
                ("users", "u", spec.users),
                ("items", "i", spec.items),
                ("categories", "c", spec.categories),
            )
        }
        write_prepared(
            folder,
            splits=splits,
            vocabs=vocabs,
            item_category=self.item_category,
            item_frequency=self.item_frequency,
            source="synthetic-books",
            params={"seed": spec.seed, "train_samples": spec.train_samples},
            counts={"users": spec.users - 1, "items": spec.items - 1},
            command=command,
        )
        return folder

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"{s}.{k}": v for s, d in self.splits.items() for k, v in d.items()}
        arrays["item_category"] = self.item_category
        arrays["item_frequency"] = self.item_frequency
        arrays["spec_json"] = np.array(json.dumps(asdict(self.spec)))
        tmp = path.with_name(path.name + ".partial.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> SyntheticData:
        with np.load(path) as z:
            spec = SyntheticSpec(**json.loads(str(z["spec_json"])))
            splits = {s: {k: z[f"{s}.{k}"] for k in SPLIT_FIELDS} for s in ("train", "test")}
            return cls(spec, splits, z["item_category"], z["item_frequency"])


def expected_length(mu: float, sigma: float, cap: int) -> float:
    """Mean of ``min(max(ceil(exp(X)), 1), cap)`` for X ~ Normal(mu, sigma).

    Uses E[L] = sum over k >= 0 of P(L > k): P(L > 0) = 1 and P(L > k) = P(exp(X) > k).
    """
    tail = sum(0.5 * math.erfc((math.log(k) - mu) / (sigma * math.sqrt(2))) for k in range(1, cap))
    return 1.0 + tail


def length_mu(mean: float, sigma: float, cap: int) -> float:
    """The log-normal location that gives histories of the wanted mean after capping."""
    if not 1.0 <= mean < cap:
        raise ValueError(f"mean history length must lie in [1, {cap}), got {mean}")
    lo, hi = -10.0, math.log(cap) + 10 * sigma
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_length(mid, sigma, cap) < mean else (lo, mid)
    return (lo + hi) / 2


def sample_lengths(spec: SyntheticSpec, n: int, rng: np.random.Generator) -> np.ndarray:
    mu = length_mu(spec.mean_history, spec.history_sigma, spec.max_history)
    raw = np.ceil(np.exp(rng.normal(mu, spec.history_sigma, n)))
    return np.clip(raw, 1, spec.max_history).astype(np.int64)


def generate(spec: SyntheticSpec) -> SyntheticData:
    """Make the train and test splits described in the module docstring."""
    if min(spec.users, spec.items, spec.categories) < 3:
        raise ValueError("users, items and categories must each be at least 3 (id 0 is padding)")
    rng = np.random.default_rng(spec.seed)
    train_pairs = (spec.train_samples + 1) // 2
    pairs = train_pairs + (spec.test_samples + 1) // 2

    category_p = _zipf(spec.categories - 1, spec.category_zipf)  # over categories 1..C-1
    item_category = _item_categories(spec, category_p, rng)
    by_category, first, count = _items_by_category(item_category, spec.categories)

    def items_of(cats: np.ndarray) -> np.ndarray:
        popular_first = np.floor(count[cats] * rng.random(cats.shape) ** 2).astype(np.int64)
        return by_category[first[cats] + popular_first]

    def random_categories(n: int) -> np.ndarray:
        return 1 + rng.choice(spec.categories - 1, size=n, p=category_p)

    lengths = sample_lengths(spec, pairs, rng)
    steps = lengths + 1  # the history, then the clicked target
    ends = np.cumsum(steps)
    starts = ends - steps
    pair_of = np.repeat(np.arange(pairs), steps)
    interests = random_categories(pairs * spec.interests_per_user).reshape(pairs, -1)

    n_events = int(ends[-1])
    switch = rng.random(n_events) >= spec.stay_probability
    switch[starts] = True
    drawn = rng.integers(0, spec.interests_per_user, n_events)
    last_switch = np.maximum.accumulate(np.where(switch, np.arange(n_events), 0))
    cats = interests[pair_of, drawn[last_switch]]
    noise = rng.random(n_events) < spec.noise_probability
    cats[noise] = random_categories(int(noise.sum()))
    items = items_of(cats)

    is_target = np.zeros(n_events, bool)
    is_target[ends - 1] = True
    pos_item = items[ends - 1]
    neg_item = _draw_other(items, pos_item, rng)  # by frequency: a random event's item
    step_neg = _draw_other(items, items, rng)[~is_target]
    hist_items = items[~is_target]
    hist_offsets = np.concatenate([[0], np.cumsum(lengths)])
    users = rng.integers(1, spec.users, pairs)

    split_pairs = {"train": np.arange(train_pairs), "test": np.arange(train_pairs, pairs)}
    splits = {}
    for name, chosen in split_pairs.items():
        splits[name] = _pair_samples(
            chosen,
            users,
            pos_item,
            neg_item,
            hist_offsets,
            hist_items,
            step_neg,
            item_category,
            rng,
        )
    train = splits["train"]
    frequency = np.bincount(train["hist_items"], minlength=spec.items)
    frequency += np.bincount(train["item"][train["label"] == 1], minlength=spec.items)
    return SyntheticData(spec, splits, item_category.astype(np.int32), frequency.astype(np.int64))


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def _item_categories(
    spec: SyntheticSpec, category_p: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Every category gets at least one item; the rest follow category popularity."""
    n_real = spec.items - 1
    base = np.arange(1, spec.categories)[: min(n_real, spec.categories - 1)]
    rest = 1 + rng.choice(spec.categories - 1, size=n_real - base.size, p=category_p)
    assigned = rng.permutation(np.concatenate([base, rest]))
    return np.concatenate([[0], assigned]).astype(np.int64)


def _items_by_category(
    item_category: np.ndarray, n_categories: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item ids grouped by category, and each category's first position and item count."""
    order = np.argsort(item_category[1:], kind="stable") + 1
    count = np.bincount(item_category[1:], minlength=n_categories)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    return order, first, count


def _draw_other(pool: np.ndarray, avoid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One element of ``pool`` per entry of ``avoid`` (uniform over the pool, so by frequency
    of its values), never equal to that entry."""
    drawn = pool[rng.integers(0, pool.size, avoid.size)]
    clash = np.flatnonzero(drawn == avoid)
    while clash.size:
        drawn[clash] = pool[rng.integers(0, pool.size, clash.size)]
        clash = clash[drawn[clash] == avoid[clash]]
    return drawn


def _pair_samples(
    chosen: np.ndarray,
    users: np.ndarray,
    pos_item: np.ndarray,
    neg_item: np.ndarray,
    hist_offsets: np.ndarray,
    hist_items: np.ndarray,
    step_neg: np.ndarray,
    item_category: np.ndarray,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Two samples per chosen pair (clicked target, frequency-drawn target), shuffled."""
    pair = np.repeat(chosen, 2)
    label = np.tile(np.array([1.0, 0.0], np.float32), chosen.size)
    order = rng.permutation(pair.size)
    pair, label = pair[order], label[order]
    item = np.where(label == 1, pos_item[pair], neg_item[pair])

    starts, ends = hist_offsets[pair], hist_offsets[pair + 1]
    lengths = ends - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    h_items, h_neg = hist_items[gather], step_neg[gather]
    return {
        "user": users[pair].astype(np.int32),
        "item": item.astype(np.int32),
        "category": item_category[item].astype(np.int32),
        "label": label,
        "hist_offsets": offsets,
        "hist_items": h_items.astype(np.int32),
        "hist_cats": item_category[h_items].astype(np.int32),
        "neg_items": h_neg.astype(np.int32),
        "neg_cats": item_category[h_neg].astype(np.int32),
    }


def describe(data: SyntheticData) -> dict[str, float | int]:
    """Summary figures of the generated data."""
    out: dict[str, float | int] = dict(data.vocab_sizes)
    for split, arrays in data.splits.items():
        lengths = data.lengths(split)
        out[f"{split}_samples"] = int(lengths.size)
        out[f"{split}_mean_history"] = round(float(lengths.mean()), 3)
        out[f"{split}_max_history"] = int(lengths.max())
        out[f"{split}_click_rate"] = round(float(arrays["label"].mean()), 3)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = SyntheticSpec()
    for f in fields(SyntheticSpec):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(getattr(defaults, f.name)),
            default=getattr(defaults, f.name),
        )
    parser.add_argument("--scale", type=float, default=1.0, help="Scale users/items/categories.")
    parser.add_argument("--out", required=True, help="Output .npz file.")
    args = vars(parser.parse_args(argv))
    scale, out = args.pop("scale"), args.pop("out")
    data = generate(SyntheticSpec(**args).scaled(scale))
    data.save(out)
    print(json.dumps(describe(data), indent=1))


if __name__ == "__main__":
    main()
