"""Time `prepare_amazon` on a synthetic Amazon Books-sized raw file pair, then the batch loader.

Writes a gzip reviews file (JSON lines with every field of the 2014 files) and a gzip
metadata file (Python literals, as the 2014 metadata files are) at Books scale: 8,898,041
reviews of 603,668 users on 367,982 items in 1,600 categories, every user with at least five
reviews (5-core). ``--scale`` shrinks all counts. The files are cached in ``--workdir``.

The preparation runs in a child process so that its peak resident memory (``ru_maxrss``, which
counts numpy buffers, unlike tracemalloc) is its own. Then the batch loader reads the result
(batch 128, histories cut to 100, one auxiliary negative per step) and its samples/s is
printed. Run::

    python benchmarks/prepare_amazon.py --scale 0.1
    python benchmarks/prepare_amazon.py              # full Books scale
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BOOKS = {"reviews": 8_898_041, "users": 603_668, "items": 367_982, "categories": 1_600}
CHUNK = 200_000


def user_counts(n_users: int, n_reviews: int, rng: np.random.Generator) -> np.ndarray:
    """Reviews per user: at least 5, a long tail, summing to n_reviews."""
    extra = rng.pareto(1.5, n_users) + 0.05
    extra = extra / extra.sum() * (n_reviews - 5 * n_users)
    counts = 5 + np.floor(extra).astype(np.int64)
    short = n_reviews - counts.sum()
    counts[rng.choice(n_users, int(short), replace=False)] += 1
    return counts


def write_reviews(path: Path, sizes: dict, text_chars: int, rng: np.random.Generator) -> None:
    counts = user_counts(sizes["users"], sizes["reviews"], rng)
    users = np.repeat(np.arange(sizes["users"]), counts)
    weight = 1.0 / (np.arange(sizes["items"]) + 20.0) ** 0.9  # popular items, a long tail
    items = rng.choice(sizes["items"], len(users), p=weight / weight.sum())
    items[: sizes["items"]] = np.arange(sizes["items"])  # every item reviewed at least once
    times = rng.integers(1_000_000_000, 1_400_000_000, len(users)) // 86400 * 86400
    order = np.argsort(items, kind="stable")  # the 2014 files list reviews item by item
    words = rng.choice(["good", "book", "story", "read", "plot", "the", "a", "loved"], 4096)
    text = " ".join(words.tolist())
    with gzip.open(path, "wt", compresslevel=1, encoding="utf-8") as f:
        for lo in range(0, len(order), CHUNK):
            rows = order[lo : lo + CHUNK]
            lines = []
            columns = (users[rows].tolist(), items[rows].tolist(), times[rows].tolist())
            for u, i, t in zip(*columns, strict=True):
                start = (u * 7 + i) % (len(text) - text_chars)
                lines.append(
                    f'{{"reviewerID": "A{u:012X}", "asin": "{i:010d}", "reviewerName": "R {u}", '
                    f'"helpful": [0, 0], "reviewText": "{text[start : start + text_chars]}", '
                    f'"overall": 5.0, "summary": "Fine", "unixReviewTime": {t}, '
                    f'"reviewTime": "01 01, 2010"}}\n'
                )
            f.write("".join(lines))


def write_meta(path: Path, sizes: dict, rng: np.random.Generator) -> None:
    categories = rng.integers(0, sizes["categories"], sizes["items"])
    related = rng.integers(0, sizes["items"], (sizes["items"], 20))
    with gzip.open(path, "wt", compresslevel=1, encoding="utf-8") as f:
        for lo in range(0, sizes["items"], CHUNK):
            lines = []
            for i in range(lo, min(lo + CHUNK, sizes["items"])):
                bought = ", ".join(f"'{r:010d}'" for r in related[i].tolist())
                lines.append(
                    f"{{'asin': '{i:010d}', 'related': {{'also_bought': [{bought}]}}, "
                    f"'title': \"Book {i}: a title\", 'price': 9.99, "
                    f"'salesRank': {{'Books': {i * 3}}}, "
                    f"'imUrl': 'http://ecx.images-amazon.com/images/I/{i}.jpg', "
                    f"'categories': [['Books', 'Genre {categories[i] // 40}', "
                    f"'Topic {categories[i]}']]}}\n"
                )
            f.write("".join(lines))


def run_prepare(reviews: Path, meta: Path, out: Path) -> dict:
    """prepare_amazon in this process; prints one JSON line with its figures."""
    from dien.data.amazon import prepare_amazon

    start = time.perf_counter()
    ds = prepare_amazon(reviews, meta, out, seed=0)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    counts = ds.manifest["counts"]
    keys = ("users", "items", "categories", "events", "samples")
    return {"seconds": seconds, "peak_mib": peak_mib, **{k: counts[k] for k in keys}}


def loader_rate(out: Path, batches: int) -> float:
    """Training batches (128, max history 100, one aux negative per step) per second x 128."""
    from dien.data.format import PreparedDataset
    from dien.data.loader import BatchLoader
    from dien.data.sampling import NegativeSampler

    ds = PreparedDataset.open(out)
    sampler = NegativeSampler(ds.item_frequency, ds.item_category, "frequency")
    loader = BatchLoader(
        ds.split("train"),
        batch_size=128,
        max_history=100,
        shuffle=True,
        seed=0,
        bucket_by_length=True,
        aux_sampler=sampler,
        aux_negatives=1,
    )
    n = 0
    start = time.perf_counter()
    for k, batch in enumerate(loader):
        n += batch.size
        if k + 1 >= batches:
            break
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of Books scale")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dien-bench")
    parser.add_argument("--text-chars", type=int, default=300, help="review text length")
    parser.add_argument("--loader-batches", type=int, default=2000)
    parser.add_argument("--child", nargs=3, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_prepare(*args.child)))
        return

    sizes = {k: max(5, int(round(v * args.scale))) for k, v in BOOKS.items()}
    sizes["reviews"] = max(sizes["reviews"], 5 * sizes["users"], sizes["items"])
    folder = args.workdir / f"scale-{args.scale:g}"
    folder.mkdir(parents=True, exist_ok=True)
    reviews, meta = folder / "reviews_Books_5.json.gz", folder / "meta_Books.json.gz"
    if not (reviews.exists() and meta.exists()):
        start = time.perf_counter()
        rng = np.random.default_rng(0)
        write_reviews(reviews, sizes, args.text_chars, rng)
        write_meta(meta, sizes, rng)
        print(f"wrote synthetic files in {time.perf_counter() - start:.0f} s: {sizes}")
    mib = (reviews.stat().st_size + meta.stat().st_size) / 2**20
    print(f"input: {reviews.name} + {meta.name}, {mib:.0f} MiB gzip")

    out = folder / "prepared"
    child = [sys.executable, __file__, "--child", str(reviews), str(meta), str(out)]
    result = subprocess.run(child, check=True, capture_output=True, text=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    print(
        f"prepare_amazon: {figures['seconds']:.1f} s wall, peak RSS {figures['peak_mib']:.0f} MiB"
    )
    print(
        f"  users {figures['users']:,}  items {figures['items']:,}  "
        f"categories {figures['categories']:,}  reviews {figures['events']:,}  "
        f"samples {figures['samples']}"
    )
    rate = loader_rate(out, args.loader_batches)
    print(f"BatchLoader (batch 128, max history 100, 1 aux negative): {rate:,.0f} samples/s")


if __name__ == "__main__":
    main()
