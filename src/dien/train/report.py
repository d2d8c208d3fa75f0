"""A short human-readable report of a finished run."""

from __future__ import annotations

from typing import Any

from dien.config import Config
from dien.train.run import RunFolder


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_report(run: RunFolder, config: Config, results: dict[str, Any]) -> None:
    rows = []
    for split in ("valid", "test"):
        m = results.get(split)
        if m:
            rows.append(
                f"| {split} | {_fmt(m['auc'])} | {_fmt(m['gauc'])} | "
                f"{_fmt(m['logloss'])} | {m['samples']} |"
            )
    text = "\n".join(
        [
            f"# Run {run.path.name}: {config.model.name}",
            "",
            f"- data: `{config.data.path}`",
            f"- steps: {results['steps']}, samples seen: {results['samples_seen']}",
            f"- best checkpoint: step {results['best_step']}, "
            f"chosen on {results['best_chosen_on']}"
            + (" (stopped early)" if results["stopped_early"] else ""),
            "",
            "| split | AUC | GAUC | logloss | samples |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            "![learning curves](learning_curves.png)",
            "",
        ]
    )
    (run.path / "report.md").write_text(text, encoding="utf-8")
