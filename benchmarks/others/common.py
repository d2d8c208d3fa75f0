"""What every library runner shares: settings, padding, AUC, timing and the command line.

A runner module defines ``LIBRARY`` (its name and version in the table), ``AUX_LOSS`` (for
each model, whether the library's version has the auxiliary loss on) and
``run(data, model, settings, timer) -> np.ndarray`` that trains one epoch with the library's
own training call inside ``timer("train")``, then scores the test split
``settings.score_repeats`` times with ``timer.repeat("score", ...)`` and returns the click
probabilities in test order. A scoring pass lasts a second or two, so one burst of other work
on a shared machine can halve it: the median pass counts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import numpy as np

from benchmarks.synthetic import SyntheticData

T = TypeVar("T")


@dataclass(frozen=True)
class Settings:
    """The paper's public-data setting, shared by every library."""

    embedding_dim: int = 18
    gru_hidden: int = 36
    mlp_sizes: tuple[int, ...] = (200, 80)
    attention_mlp_sizes: tuple[int, ...] = (80, 40)
    batch_size: int = 128
    score_batch_size: int = 1024
    learning_rate: float = 0.001
    max_history: int = 100
    threads: int = 2
    score_repeats: int = 3  # scoring passes; the median's time counts
    seed: int = 0
    work_dir: str = "."


class Timer:
    """Wall-clock seconds of named phases, measured with ``time.perf_counter``; a phase timed
    several times keeps each lap, and its seconds are the median lap."""

    def __init__(self) -> None:
        self.laps: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.laps.setdefault(phase, []).append(time.perf_counter() - start)

    def repeat(self, phase: str, times: int, work: Callable[[], T]) -> T:
        """Run ``work`` ``times`` times (at least once), each a lap of ``phase``; its last
        result."""
        for _ in range(max(1, times) - 1):
            with self(phase):
                work()
        with self(phase):
            return work()

    @property
    def seconds(self) -> dict[str, float]:
        """The median lap of each phase."""
        return {phase: statistics.median(laps) for phase, laps in self.laps.items()}


def padded(offsets: np.ndarray, values: np.ndarray, width: int, left: bool = False) -> np.ndarray:
    """Ragged rows (the most recent ``width`` values of each) as an (N, width) int64 array
    padded with 0: after the values, or before them with ``left``."""
    lengths = np.minimum(np.diff(offsets), width)
    n = lengths.size
    out = np.zeros((n, width), np.int64)
    rows = np.repeat(np.arange(n), lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    source = np.repeat(offsets[1:] - lengths, lengths) + within
    cols = within + (np.repeat(width - lengths, lengths) if left else 0)
    out[rows, cols] = values[source]
    return out


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; tied scores count one half."""
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size)
    ranks[order] = np.arange(1, scores.size + 1)
    # average the ranks within runs of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    mean_rank = (starts + ends + 1) / 2
    ranks[order] = np.repeat(mean_rank, ends - starts)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def short_error(exc: BaseException) -> str:
    """The exception's type and first message line, and where in the library it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" at {Path(last.filename).name}:{last.lineno}"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message[:160]}{where}"


def worker_main(runner: ModuleType, argv: list[str] | None = None) -> None:
    """Command line of a runner module: run one model, write a JSON result."""
    parser = argparse.ArgumentParser(description=f"Benchmark {runner.LIBRARY} on generated data.")
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", choices=("dien", "din"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--work-dir", default=".")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--score-batch-size", type=int, default=1024)
    parser.add_argument("--score-repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    settings = Settings(
        threads=args.threads,
        score_batch_size=args.score_batch_size,
        score_repeats=args.score_repeats,
        work_dir=args.work_dir,
    )
    os.makedirs(args.work_dir, exist_ok=True)
    data = SyntheticData.load(args.data)
    result = measure(runner.run, data, args.model, settings)
    result.update(library=runner.LIBRARY, model=args.model, aux_loss=runner.AUX_LOSS[args.model])
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def measure(
    run: Callable[[SyntheticData, str, Settings, Timer], np.ndarray],
    data: SyntheticData,
    model: str,
    settings: Settings,
) -> dict:
    """Run one library and turn its timings and predictions into the result record."""
    timer = Timer()
    n_train = int(data.splits["train"]["label"].size)
    n_test = int(data.splits["test"]["label"].size)
    record: dict = {"train_samples": n_train, "test_samples": n_test, "settings": asdict(settings)}
    try:
        scores = np.asarray(run(data, model, settings, timer), np.float64).reshape(-1)
    except Exception as exc:  # a library's crash is a result to report, not a harness failure
        traceback.print_exc(file=sys.stderr)
        record.update(error=short_error(exc), seconds=timer.seconds)
        return record
    if scores.size != n_test:
        record["error"] = f"returned {scores.size} scores for {n_test} test samples"
        return record
    seconds = timer.seconds
    train_s, score_s = seconds["train"], seconds["score"]
    record.update(
        seconds=seconds,
        score_laps=timer.laps["score"],
        train_per_s=n_train / train_s,
        score_per_s=n_test / score_s,
        auc=auc(data.splits["test"]["label"], scores),
    )
    return record
