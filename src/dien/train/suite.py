"""Several models x several seeds on one dataset, summarised as mean +- std.

Each (model, seed) trains into ``OUT/MODEL-seedS``; a pair whose ``results.json`` exists is
read back instead of trained again, so an interrupted suite resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dien.config import Config
from dien.train.loop import Trainer
from dien.train.run import RunFolder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SuiteRow:
    model: str
    seeds: int
    auc_mean: float
    auc_std: float
    gauc_mean: float
    logloss_mean: float
    seconds_per_epoch: float


def run_dir_for(out: Path, model: str, seed: int) -> Path:
    return out / f"{model}-seed{seed}"


def run_suite(
    base: Config,
    models: Sequence[str],
    seeds: Sequence[int],
    out: Path,
    on_result: Callable[[str, int, dict], None] | None = None,
) -> list[SuiteRow]:
    """Train every (model, seed) not yet finished, then summarise test metrics per model."""
    for model in models:
        for seed in seeds:
            run = RunFolder(run_dir_for(out, model, seed))
            if not run.results_path.is_file():
                config = base.replace("model", name=model).replace("train", seed=seed)
                if run.path.exists():
                    logger.info("%s: removing an unfinished run before training it again", run.path)
                    shutil.rmtree(run.path)
                started = time.perf_counter()
                Trainer(config, run.path).fit()
                _record_time(run, time.perf_counter() - started, config.train.epochs)
            if on_result:
                on_result(model, seed, run.results())
    return [summarise(out, model, seeds) for model in models]


def _record_time(run: RunFolder, seconds: float, epochs: int) -> None:
    results = run.results()
    results["train_seconds"] = seconds
    results["seconds_per_epoch"] = seconds / epochs
    run.write_results(results)


def summarise(out: Path, model: str, seeds: Sequence[int]) -> SuiteRow:
    results = [RunFolder(run_dir_for(out, model, s)).results() for s in seeds]
    auc = np.array([r["test"]["auc"] for r in results])
    return SuiteRow(
        model=model,
        seeds=len(results),
        auc_mean=float(auc.mean()),
        auc_std=float(auc.std(ddof=1)) if len(auc) > 1 else 0.0,
        gauc_mean=float(np.mean([r["test"]["gauc"] for r in results])),
        logloss_mean=float(np.mean([r["test"]["logloss"] for r in results])),
        seconds_per_epoch=float(np.mean([r.get("seconds_per_epoch", np.nan) for r in results])),
    )


def suite_table(rows: Sequence[SuiteRow]) -> str:
    """A markdown table of the summary rows."""
    lines = [
        "| model | seeds | test AUC | test GAUC | test logloss | s / epoch |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.seeds} | {r.auc_mean:.4f} +- {r.auc_std:.4f} | "
            f"{r.gauc_mean:.4f} | {r.logloss_mean:.4f} | {r.seconds_per_epoch:.1f} |"
        )
    return "\n".join(lines)


def write_summary(out: Path, rows: Sequence[SuiteRow]) -> None:
    (out / "summary.json").write_text(
        json.dumps([dataclasses.asdict(r) for r in rows], indent=2) + "\n", encoding="utf-8"
    )
    (out / "summary.md").write_text(suite_table(rows) + "\n", encoding="utf-8")
