"""A tiny prepared dataset with a learnable signal, for end-to-end tests of training."""

from pathlib import Path

import numpy as np

from dien.data.format import PreparedDataset, SplitArrays, write_prepared

N_USERS, N_ITEMS, N_CATS = 30, 60, 6
# Model sizes for end-to-end tests: every layer there, a few units each.
SMALL = dict(
    embedding_dim=4, hidden_size=6, mlp_sizes=(8,), attention_mlp_sizes=(6,), aux_mlp_sizes=(6,)
)


def _split(
    rng: np.random.Generator, n: int, item_category: np.ndarray, appeal: np.ndarray
) -> SplitArrays:
    lengths = rng.integers(0, 12, n)
    lengths[0] = 0  # always one empty history
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    hist_items = rng.integers(1, N_ITEMS, offsets[-1]).astype(np.int32)
    hist_cats = item_category[hist_items]
    item = rng.integers(1, N_ITEMS, n).astype(np.int32)
    category = item_category[item]
    # a click is likely for appealing items and when the history shares the target's category
    share = np.array(
        [
            np.mean(hist_cats[offsets[i] : offsets[i + 1]] == category[i]) if lengths[i] else 0.0
            for i in range(n)
        ]
    )
    p = 1 / (1 + np.exp(-(appeal[item] + 3 * share - 0.5)))
    label = (rng.random(n) < p).astype(np.float32)
    return SplitArrays(
        user=rng.integers(1, N_USERS, n).astype(np.int32),
        item=item,
        category=category.astype(np.int32),
        label=label,
        timestamp=np.arange(n, dtype=np.int64),
        hist_offsets=offsets,
        hist_items=hist_items,
        hist_cats=hist_cats.astype(np.int32),
    )


def make_tiny_dataset(out: Path, seed: int = 0, sizes=(1200, 300, 300)) -> PreparedDataset:
    rng = np.random.default_rng(seed)
    item_category = np.r_[0, rng.integers(1, N_CATS, N_ITEMS - 1)].astype(np.int32)
    appeal = rng.normal(0, 2, N_ITEMS)
    splits = {
        name: _split(rng, n, item_category, appeal)
        for name, n in zip(("train", "valid", "test"), sizes, strict=True)
    }
    frequency = np.bincount(splits["train"].hist_items, minlength=N_ITEMS).astype(np.int64)
    frequency[0] = 0
    write_prepared(
        out,
        splits=splits,
        vocabs={
            "users": ["<unk>"] + [f"u{i}" for i in range(1, N_USERS)],
            "items": ["<unk>"] + [f"i{i}" for i in range(1, N_ITEMS)],
            "categories": ["<unk>"] + [f"c{i}" for i in range(1, N_CATS)],
        },
        item_category=item_category,
        item_frequency=frequency,
        source="synthetic",
        params={"seed": seed},
        counts={"users": N_USERS - 1, "items": N_ITEMS - 1, "categories": N_CATS - 1},
    )
    return PreparedDataset.open(out)


def train_tiny_dien(root: Path, sizes: tuple[int, int, int], batch_size: int) -> Path:
    """One epoch of a SMALL DIEN on a tiny dataset made under ``root``; its run folder."""
    from dien.config import Config
    from dien.train.loop import Trainer

    tiny = make_tiny_dataset(root / "tiny", sizes=sizes)
    config = Config().replace(
        "data", path=str(tiny.path), batch_size=batch_size, eval_batch_size=2 * batch_size
    )
    config = config.replace("model", name="dien", **SMALL)
    config = config.replace("train", epochs=1, log_interval=5, progress=False)
    Trainer(config, root / "run").fit()
    return root / "run"
