"""Time `dien prepare events` on a synthetic click log of tens of millions of events.

Writes an event table with columns ``user``, ``item``, ``category``, ``timestamp`` (and
``label`` with ``--labels``) shaped like a real click log: at the default 20,000,000 events
600,000 users with a long tail of events per user (at least one each), 370,000 items with
Zipf-like popularity, each in one of 1,600 categories (themselves of skewed sizes), and each
user's timestamps strictly increasing. ``--events`` scales users and items with it (same events
per user and per item) unless ``--users`` / ``--items`` say otherwise. Rows are grouped by
user. The table is generated in chunks of users with numpy and polars, so generation needs
memory for one chunk only, and is cached in ``--workdir``.

Then ``python -m dien prepare events`` runs in a child process so that its peak resident
memory (``ru_maxrss`` of the children, which counts numpy buffers) is its own, with the
default time split (latest 10% of events test, the 10% before validation), histories of at
most 100 clicks and, without labels, one sampled negative per click. Printed: the input,
the wall time of the command (interpreter start and imports included), its peak RSS and the
peak of its anonymous part (RSS without the pages of memory-mapped files), events per second,
the samples of each split and the size of the prepared folder. Run::

    python -m benchmarks.prepare_events --events 1000000
    python -m benchmarks.prepare_events              # 20,000,000 events
    python -m benchmarks.prepare_events --format csv --labels
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

FULL = {"events": 20_000_000, "users": 600_000, "items": 370_000, "categories": 1_600}
CHUNK = 1_000_000  # events per generated chunk
START = 1_500_000_000  # unix seconds of the log's first day
DAYS = 30
SUFFIX = {"parquet": ".parquet", "csv": ".csv", "jsonl": ".jsonl"}


def zipf_cdf(n: int, exponent: float, offset: float) -> np.ndarray:
    """Cumulative popularity of ranks 0..n-1, weight 1 / (rank + offset) ** exponent."""
    weight = 1.0 / (np.arange(n) + offset) ** exponent
    cdf = np.cumsum(weight)
    return cdf / cdf[-1]


def events_per_user(n_users: int, n_events: int, rng: np.random.Generator) -> np.ndarray:
    """At least one event per user, a log-normal tail (median a third of the mean), n_events."""
    extra = rng.lognormal(0.0, 1.5, n_users)
    extra = extra / extra.sum() * (n_events - n_users)
    counts = 1 + np.floor(extra).astype(np.int64)
    short = int(n_events - counts.sum())
    counts[rng.choice(n_users, short, replace=False)] += 1
    return counts


def user_chunks(counts: np.ndarray) -> list[tuple[int, int]]:
    """``[lo, hi)`` user ranges of about CHUNK events each."""
    ends = np.cumsum(counts)
    cuts = np.searchsorted(ends, np.arange(CHUNK, ends[-1], CHUNK), side="right")
    bounds = [0, *np.unique(cuts).tolist(), len(counts)]
    return [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True) if hi > lo]


def chunk_frame(
    users: np.ndarray, counts: np.ndarray, tables: dict, labels: bool, rng: np.random.Generator
) -> pl.DataFrame:
    """The events of ``users`` (``counts`` each): Zipf items, increasing times per user."""
    user = np.repeat(users, counts)
    n = len(user)
    item = np.searchsorted(tables["item_cdf"], rng.random(n), side="right")
    item = tables["item_ids"][np.minimum(item, len(tables["item_ids"]) - 1)]

    first = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    gaps = rng.exponential(3 * 3600, n).astype(np.int64) + 1  # seconds, mean 3 hours
    gaps[first] = rng.integers(0, DAYS * 86400, len(counts))  # each user's first event
    steps = np.cumsum(gaps)
    timestamp = START + steps - np.repeat(steps[first] - gaps[first], counts)

    columns = {
        "user": user,
        "item": item,
        "category": tables["item_category"][item],
        "timestamp": timestamp,
    }
    if labels:
        columns["label"] = (rng.random(n) < 0.3).astype(np.int8)  # three clicks in ten shown
    return pl.DataFrame(columns)


def write_events(path: Path, sizes: dict, fmt: str, labels: bool, seed: int) -> None:
    """Write the event table chunk by chunk to ``path`` (via a temporary name)."""
    rng = np.random.default_rng(seed)
    tables = {
        "item_cdf": zipf_cdf(sizes["items"], 1.0, 10.0),
        "item_ids": rng.permutation(sizes["items"]),  # popularity unrelated to the raw id
        "item_category": np.searchsorted(
            zipf_cdf(sizes["categories"], 0.8, 5.0), rng.random(sizes["items"]), side="right"
        ),
    }
    tables["item_category"] = np.minimum(tables["item_category"], sizes["categories"] - 1)
    counts = events_per_user(sizes["users"], sizes["events"], rng)
    partial = path.with_name(path.name + ".partial")
    parts = path.with_name(path.name + ".parts")
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir()
    with open(partial, "wb") as f:
        for k, (lo, hi) in enumerate(user_chunks(counts)):
            df = chunk_frame(np.arange(lo, hi), counts[lo:hi], tables, labels, rng)
            if fmt == "parquet":
                df.write_parquet(parts / f"part-{k:05d}.parquet")
            elif fmt == "csv":
                df.write_csv(f, include_header=k == 0)
            else:
                df.write_ndjson(f)
    if fmt == "parquet":  # one file from the parts, streamed
        pl.scan_parquet(parts / "*.parquet").sink_parquet(partial)
    shutil.rmtree(parts)
    partial.replace(path)


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def run_prepare(
    events: Path, out: Path, labels: bool, max_history: int
) -> tuple[float, float, float]:
    """``dien prepare events`` in a child process: wall seconds, peak RSS and peak anonymous RSS.

    Peak RSS (``ru_maxrss``) counts the pages of memory-mapped files that are resident, which
    the kernel can drop at any time; the anonymous part (``RssAnon`` of /proc, sampled every
    0.1 s) is the memory the command itself holds.
    """
    command = [sys.executable, "-m", "dien", "-q", "prepare", "events", "--input", str(events)]
    command += ["--user-col", "user", "--item-col", "item", "--time-col", "timestamp"]
    command += ["--category-col", "category", "--max-history", str(max_history)]
    command += ["--out", str(out)]
    if labels:
        command += ["--label-col", "label"]
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_anon_kib = 0
    while child.poll() is None:
        peak_anon_kib = max(peak_anon_kib, anonymous_kib(child.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    _, stderr = child.communicate()
    if child.returncode != 0:
        sys.exit(f"dien prepare events failed ({child.returncode}):\n{stderr}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    return seconds, peak_mib, peak_anon_kib / 1024


def anonymous_kib(pid: int) -> int:
    """The process's resident anonymous memory in KiB now (0 once it has gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def sizes_for(args: argparse.Namespace) -> dict:
    scale = args.events / FULL["events"]
    sizes = {
        "events": args.events,
        "users": args.users or max(1, round(FULL["users"] * scale)),
        "items": args.items or max(2, round(FULL["items"] * scale)),
        "categories": args.categories,
    }
    if sizes["users"] > sizes["events"]:
        sys.exit(f"--users {sizes['users']:,} is more than --events {sizes['events']:,}")
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=FULL["events"], help="rows of the table")
    parser.add_argument("--users", type=int, help="default: 600,000 per 20M events")
    parser.add_argument("--items", type=int, help="default: 370,000 per 20M events")
    parser.add_argument("--categories", type=int, default=FULL["categories"])
    parser.add_argument("--format", choices=tuple(SUFFIX), default="parquet")
    parser.add_argument("--labels", action="store_true", help="write a 0/1 label column")
    parser.add_argument("--max-history", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dien-bench-events"
    )
    args = parser.parse_args()

    sizes = sizes_for(args)
    name = f"events-{sizes['events']}-u{sizes['users']}-i{sizes['items']}-c{sizes['categories']}"
    name += f"-s{args.seed}{'-labels' if args.labels else ''}"
    args.workdir.mkdir(parents=True, exist_ok=True)
    events = args.workdir / (name + SUFFIX[args.format])
    if not events.exists():
        start = time.perf_counter()
        write_events(events, sizes, args.format, args.labels, args.seed)
        print(f"wrote {events.name} in {time.perf_counter() - start:.1f} s")
    print(
        f"input: {sizes['events']:,} events of {sizes['users']:,} users on {sizes['items']:,} "
        f"items in {sizes['categories']:,} categories, {args.format} "
        f"{events.stat().st_size / 2**20:,.0f} MiB"
    )

    out = args.workdir / ("prepared-" + name)
    seconds, peak_mib, peak_anon_mib = run_prepare(events, out, args.labels, args.max_history)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    counts = manifest["counts"]
    print(
        f"dien prepare events (split time, max history {args.max_history}, "
        f"{'labels' if args.labels else '1 sampled negative per click'}): "
        f"{seconds:.1f} s wall, peak RSS {peak_mib:,.0f} MiB "
        f"(anonymous {peak_anon_mib:,.0f} MiB), "
        f"{counts['events'] / seconds:,.0f} events/s"
    )
    samples = "  ".join(f"{k} {v:,}" for k, v in counts["samples"].items())
    print(f"  samples: {samples}  (prepared folder {folder_mib(out):,.0f} MiB)")
    for reason, n in counts.get("filtered", {}).items():
        print(f"  filtered: {reason}: {n:,}")


if __name__ == "__main__":
    main()
