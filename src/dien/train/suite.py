"""Several models x several seeds on one dataset, summarised as mean +- std.

Each (model, seed) trains into ``OUT/MODEL-seedS``. Running a suite again resumes it:

- a run whose ``results.json`` exists is finished and is read back, not trained again;
- a run stopped part-way that left ``checkpoints/last.pt`` continues from that checkpoint;
- a run stopped before its first checkpoint is removed and trained from the start.

A run folder is only reused or continued when it was made with the same settings: a run
whose ``config.toml`` differs from the requested config (other than where the run happens:
device, threads, progress bar, log and checkpoint intervals) raises :class:`SuiteMismatch`
instead of silently mixing two settings in one summary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dien.config import Config
from dien.train.loop import Trainer
from dien.train.run import RunFolder

logger = logging.getLogger(__name__)

# Config keys that say where and how visibly a run happens, not what it computes.
NOT_COMPARED = (
    "train.device",
    "train.threads",
    "train.progress",
    "train.log_interval",
    "train.checkpoint_interval",
)


class SuiteMismatch(ValueError):
    """An existing run folder was made with other settings than the ones requested."""


@dataclass(frozen=True)
class SuiteRow:
    """Test metrics of one model over its seeds: means and sample standard deviations."""

    model: str
    seeds: int
    auc_mean: float
    auc_std: float
    gauc_mean: float
    logloss_mean: float
    seconds_per_epoch: float
    gauc_std: float = 0.0
    logloss_std: float = 0.0


def run_dir_for(out: Path, model: str, seed: int) -> Path:
    return out / f"{model}-seed{seed}"


def suite_config(base: Config, model: str, seed: int) -> Config:
    """The config of one run of a suite: ``base`` with the model name and seed set."""
    return base.replace("model", name=model).replace("train", seed=seed)


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
                train_run(suite_config(base, model, seed), run)
            else:
                check_same_settings(run, suite_config(base, model, seed))
            if on_result:
                on_result(model, seed, run.results())
    return [summarise(out, model, seeds) for model in models]


def train_run(config: Config, run: RunFolder) -> None:
    """Train one run of a suite to the end, continuing a stopped one where it can."""
    resume = run.config_path.is_file() and run.last_checkpoint.is_file()
    if resume:
        saved = check_same_settings(run, config)
        config = config.replace("data", path=saved.data.path)
        logger.info("%s: continuing an unfinished run from its last checkpoint", run.path)
    elif run.path.exists():
        logger.info("%s: removing a run stopped before its first checkpoint", run.path)
        shutil.rmtree(run.path)
    started = time.perf_counter()
    trainer = Trainer(config, run.path, resume=resume)
    first_step = trainer.progress.step
    trainer.fit()
    steps = trainer.progress.step - first_step
    _record_time(run, time.perf_counter() - started, steps, len(trainer.train_loader))


def _comparable(config: Config) -> dict[str, Any]:
    flat = {f"{s}.{k}": v for s, values in config.to_dict().items() for k, v in values.items()}
    flat["data.path"] = str(Path(flat["data.path"]).resolve())
    return {k: v for k, v in flat.items() if k not in NOT_COMPARED}


def check_same_settings(run: RunFolder, config: Config) -> Config:
    """The run's saved config; :class:`SuiteMismatch` if it differs from ``config``."""
    saved = run.config()
    old, new = _comparable(saved), _comparable(config)
    differ = [
        f"{k} = {old.get(k)!r} there, {new.get(k)!r} now" for k in new if old.get(k) != new[k]
    ]
    if differ:
        raise SuiteMismatch(
            f"{run.path} was made with other settings ({'; '.join(differ)}); "
            "choose another output folder, or remove that run to train it again"
        )
    return saved


def _record_time(run: RunFolder, seconds: float, steps: int, steps_per_epoch: int) -> None:
    """Wall time of this process's part of the run, and that time scaled to one epoch."""
    results = run.results()
    results["train_seconds"] = seconds
    results["seconds_per_epoch"] = seconds * steps_per_epoch / steps if steps else math.nan
    run.write_results(results)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation of one value is 0."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarise(out: Path, model: str, seeds: Sequence[int]) -> SuiteRow:
    results = [RunFolder(run_dir_for(out, model, s)).results() for s in seeds]
    for seed, r in zip(seeds, results, strict=True):
        if not r.get("test"):
            raise ValueError(f"{run_dir_for(out, model, seed)}: no test metrics (no test split)")
    auc_mean, auc_std = _mean_std([r["test"]["auc"] for r in results])
    gauc_mean, gauc_std = _mean_std([r["test"]["gauc"] for r in results])
    logloss_mean, logloss_std = _mean_std([r["test"]["logloss"] for r in results])
    seconds = [r.get("seconds_per_epoch", math.nan) for r in results]
    return SuiteRow(
        model=model,
        seeds=len(results),
        auc_mean=auc_mean,
        auc_std=auc_std,
        gauc_mean=gauc_mean,
        logloss_mean=logloss_mean,
        seconds_per_epoch=float(np.mean([math.nan if s is None else s for s in seconds])),
        gauc_std=gauc_std,
        logloss_std=logloss_std,
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
