"""The DIEN paper's model tables, several seeds each, reported beside the paper's figures.

Table 2 of the paper compares DIEN with its baselines, Table 4 compares the interest-evolution
cells. :func:`reproduce` trains each model of the chosen tables once per seed with a suite
(finished runs are reused, stopped ones continued, see :mod:`dien.train.suite`), then writes

  OUT/report.md      the command, the data, test AUC mean +- std per model beside the paper's
                     AUC where the data is the paper's, GAUC, logloss, time per epoch, per run
  OUT/report.png     test AUC per model with error bars (one sample standard deviation)
  OUT/summary.json   the same summary at full precision
  OUT/runs/MODEL-seedS/   one run folder per model and seed

The paper's figures are test AUC means over 5 runs on Amazon Electronics and Books. They are
set beside ours only when the prepared dataset is one of those: an ``amazon`` preparation whose
raw file names say Books or Electronics, or the authors' released files (``dien-release``),
which are Books unless their path says Electronics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dien.config import Config
from dien.data.format import PreparedDataset
from dien.train.run import RunFolder
from dien.train.suite import SuiteRow, run_dir_for, run_suite, summarise

logger = logging.getLogger(__name__)

TableName = Literal["2", "4", "all"]
TABLES: dict[str, tuple[str, ...]] = {
    "2": ("base", "wide_deep", "pnn", "din", "gru_att", "dien"),
    "4": ("gru_aigru", "gru_agru", "gru_augru", "dien"),
}
PAPER_NAMES = {
    "base": "BaseModel",
    "wide_deep": "Wide&Deep",
    "pnn": "PNN",
    "din": "DIN",
    "gru_att": "Two-layer GRU Attention",
    "gru_aigru": "GRU+AIGRU",
    "gru_agru": "GRU+AGRU",
    "gru_augru": "GRU+AUGRU",
    "dien": "DIEN",
}
# Test AUC, mean over 5 runs, from the paper's Table 2 and Table 4.
PAPER_AUC: dict[str, dict[str, float]] = {
    "Electronics": {
        "base": 0.7435,
        "wide_deep": 0.7456,
        "pnn": 0.7543,
        "din": 0.7603,
        "gru_att": 0.7605,
        "gru_aigru": 0.7606,
        "gru_agru": 0.7628,
        "gru_augru": 0.7640,
        "dien": 0.7792,
    },
    "Books": {
        "base": 0.7686,
        "wide_deep": 0.7735,
        "pnn": 0.7799,
        "din": 0.7880,
        "gru_att": 0.7890,
        "gru_aigru": 0.7892,
        "gru_agru": 0.7890,
        "gru_augru": 0.7911,
        "dien": 0.8453,
    },
}
# Config keys that do not change what a run computes; left out of the list of overrides.
NOT_SETTINGS = (
    "data.path",
    "model.name",
    "train.seed",
    "train.device",
    "train.threads",
    "train.progress",
)


def table_models(table: TableName) -> tuple[str, ...]:
    """The models of Table 2, Table 4, or both (DIEN once, last), in the paper's order."""
    if table == "all":
        return tuple(m for m in TABLES["2"] if m not in TABLES["4"]) + TABLES["4"]
    if table not in TABLES:
        raise ValueError(f"table must be 2, 4 or all, got {table!r}")
    return TABLES[table]


def paper_dataset(manifest: dict[str, Any]) -> str | None:
    """'Books' or 'Electronics' when a prepared dataset is the paper's data, else None."""
    source = manifest.get("source")
    if source not in ("amazon", "dien-release"):
        return None
    text = " ".join(str(v) for v in manifest.get("params", {}).values())
    found = [name for name in PAPER_AUC if re.search(rf"(?<![a-z]){name}(?![a-z])", text, re.I)]
    if len(found) == 1:
        return found[0]
    if source == "dien-release" and not found:
        return "Books"  # the authors released their Books preparation
    return None


@dataclass(frozen=True)
class ReproduceResult:
    rows: list[SuiteRow]
    paper: str | None  # 'Books', 'Electronics', or None when the data is not the paper's
    report: Path
    chart: Path


def reproduce(
    base: Config,
    out: Path,
    table: TableName = "all",
    seeds: int = 5,
    models: Sequence[str] | None = None,
    command: str = "",
    on_result: Callable[[str, int, dict], None] | None = None,
) -> ReproduceResult:
    """Train the table's models (or the given subset of them) for seeds 0..seeds-1, report.

    ``base`` holds the settings of every run (the config defaults are the paper's); its model
    name and seed are replaced per run. Runs go to ``out/runs``; re-running continues there.
    """
    chosen = _check_models(table, models)
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    out.mkdir(parents=True, exist_ok=True)
    run_suite(base, chosen, range(seeds), out / "runs", on_result=on_result)
    return write_report(out, base, chosen, range(seeds), table=table, command=command)


def _check_models(table: TableName, models: Sequence[str] | None) -> tuple[str, ...]:
    in_table = table_models(table)
    if models is None:
        return in_table
    unknown = [m for m in models if m not in in_table]
    if unknown:
        raise ValueError(
            f"not in table {table}: {', '.join(unknown)}; its models are {', '.join(in_table)}"
        )
    return tuple(m for m in in_table if m in models)


def write_report(
    out: Path,
    base: Config,
    models: Sequence[str],
    seeds: Sequence[int],
    table: TableName = "all",
    command: str = "",
) -> ReproduceResult:
    """Summarise the finished runs in ``out/runs`` into report.md, report.png, summary.json."""
    dataset = PreparedDataset.open(base.data.path)
    paper = paper_dataset(dataset.manifest)
    rows = [summarise(out / "runs", m, seeds) for m in models]
    by_model = {r.model: r for r in rows}
    lines = [
        "# DIEN (Zhou et al., AAAI 2019): the paper's tables reproduced",
        "",
        "Made by:",
        "",
        "```",
        command or "(command not recorded)",
        "```",
        "",
        *_data_lines(dataset, base.data.path, paper),
        "",
        *_settings_lines(base, seeds),
        "",
    ]
    for name in ("2", "4"):
        shown = [by_model[m] for m in TABLES[name] if m in by_model and table in (name, "all")]
        if shown:
            lines += [f"## Table {name}", "", _summary_table(shown, paper), ""]
    lines += _paper_note(paper, dataset.manifest.get("source", "?"))
    lines += ["", "![test AUC per model](report.png)", ""]
    lines += ["## Every run", "", _runs_table(out / "runs", models, seeds), ""]

    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    chart = out / "report.png"
    plot_auc(rows, paper, chart)
    (out / "summary.json").write_text(
        json.dumps({"paper": paper, "rows": [dataclasses.asdict(r) for r in rows]}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    logger.info("wrote %s and %s", report, chart)
    return ReproduceResult(rows, paper, report, chart)


def _data_lines(dataset: PreparedDataset, data_path: str, paper: str | None) -> list[str]:
    manifest = dataset.manifest
    counts = manifest.get("counts", {})
    samples = ", ".join(f"{k} {v:,}" for k, v in counts.get("samples", {}).items())
    source = manifest.get("source", "?")
    label = f"{source} ({paper})" if paper else source
    sizes = ", ".join(
        f"{counts[k]:,} {k}" for k in ("users", "items", "categories", "events") if k in counts
    )
    return [
        f"Data: `{data_path}`, source {label}: {sizes}.",
        f"Samples: {samples}.",
    ]


def _settings_lines(base: Config, seeds: Sequence[int]) -> list[str]:
    m, d, t = base.model, base.data, base.train
    overrides = _overrides(base)
    return [
        f"Seeds {', '.join(map(str, seeds))}: each figure is the mean over {len(seeds)} runs "
        "+- the sample standard deviation (n - 1) over them. Metrics are on the test split, "
        "from each run's best checkpoint (best validation AUC, or the last checkpoint when "
        "there is no validation split).",
        "",
        f"Settings: embedding {m.embedding_dim}, hidden {m.hidden_size}, MLP "
        f"{'-'.join(map(str, m.mlp_sizes))} ({m.activation}), batch {d.batch_size}, "
        f"Adam lr {t.learning_rate:g} times {t.lr_decay:g} after each epoch, "
        f"epochs {t.epochs}, "
        f"histories cut to the last {d.max_history}; AUGRU form '{m.augru_form}', "
        f"{'sparse embeddings with lazy Adam' if m.sparse_embeddings else 'dense Adam'}.",
        "Changed from the paper's settings (the config defaults): "
        + (", ".join(overrides) if overrides else "none")
        + ".",
    ]


def _overrides(config: Config) -> list[str]:
    default = Config().to_dict()
    changed = []
    for section, values in config.to_dict().items():
        for key, value in values.items():
            name = f"{section}.{key}"
            if name not in NOT_SETTINGS and value != default[section][key]:
                changed.append(f"{name} = {value!r}")
    return changed


def _fmt(value: float, digits: int = 4) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _summary_table(rows: Sequence[SuiteRow], paper: str | None) -> str:
    paper_head = f"paper AUC ({paper})" if paper else "paper AUC"
    lines = [
        f"| model | runs | test AUC | {paper_head} | ours - paper | test GAUC | test logloss "
        "| s / epoch |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        figure = PAPER_AUC[paper][r.model] if paper else None
        diff = "-" if figure is None else f"{r.auc_mean - figure:+.4f}"
        lines.append(
            f"| {PAPER_NAMES[r.model]} (`{r.model}`) | {r.seeds} | "
            f"{_fmt(r.auc_mean)} +- {_fmt(r.auc_std)} | "
            f"{'-' if figure is None else f'{figure:.4f}'} | {diff} | "
            f"{_fmt(r.gauc_mean)} +- {_fmt(r.gauc_std)} | "
            f"{_fmt(r.logloss_mean)} +- {_fmt(r.logloss_std)} | {_fmt(r.seconds_per_epoch, 1)} |"
        )
    return "\n".join(lines)


def _paper_note(paper: str | None, source: str) -> list[str]:
    if paper:
        return [
            f"The paper's column is its Table 2 / Table 4 test AUC on Amazon {paper}, a mean "
            "over 5 runs; the paper's own spread is not repeated here.",
        ]
    return [
        "The paper's figures are for Amazon Books and Electronics; this data "
        f"(source '{source}') is not one of them, so there is no paper figure to set beside "
        "ours ('-')."
    ]


def _runs_table(runs: Path, models: Sequence[str], seeds: Sequence[int]) -> str:
    lines = [
        "| model | seed | test AUC | test GAUC | test logloss | s / epoch | best step | run |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in models:
        for seed in seeds:
            path = run_dir_for(runs, model, seed)
            r = RunFolder(path).results()
            t = r["test"]
            lines.append(
                f"| {model} | {seed} | {_fmt(t['auc'])} | {_fmt(t['gauc'])} | "
                f"{_fmt(t['logloss'])} | {_fmt(r.get('seconds_per_epoch', math.nan), 1)} | "
                f"{r['best_step']} | `runs/{path.name}` |"
            )
    return "\n".join(lines)


def plot_auc(rows: Sequence[SuiteRow], paper: str | None, out: Path) -> None:
    """Bars of test AUC per model with one-standard-deviation error bars; the paper's beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    width = 0.4 if paper else 0.6
    means = np.array([r.auc_mean for r in rows])
    stds = np.array([r.auc_std for r in rows])
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 4.5))
    ours_x = x - width / 2 if paper else x
    ax.bar(
        ours_x, means, width, yerr=stds, capsize=4, label=f"ours (mean +- std, n={rows[0].seeds})"
    )
    heights = list(means + stds)
    if paper:
        figures = np.array([PAPER_AUC[paper][r.model] for r in rows])
        ax.bar(x + width / 2, figures, width, label=f"paper (Amazon {paper})", color="tab:gray")
        heights += list(figures)
    ax.set_xticks(x, [PAPER_NAMES[r.model] for r in rows], rotation=30, ha="right")
    finite = [h for h in heights if np.isfinite(h)] or [1.0]
    lows = [m for m in means - stds if np.isfinite(m)] or [0.5]
    ax.set_ylim(min(0.5, min(lows) - 0.02), min(1.0, max(finite) + 0.06))
    ax.set_ylabel("test AUC")
    ax.set_title("Test AUC per model" + (f", beside the paper (Amazon {paper})" if paper else ""))
    ax.legend(loc="upper left", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
