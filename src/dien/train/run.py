"""The run folder: everything a training run leaves behind.

RUN/
  config.toml          the resolved config (all defaults filled in)
  metrics.jsonl        one JSON line per log interval and per evaluation
  checkpoints/last.pt  model, optimizers and progress, to resume
  checkpoints/best.pt  the model with the best validation AUC
  results.json         validation and test metrics of the best checkpoint
  learning_curves.png  training loss and validation AUC against steps
  report.md            a short human-readable summary
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dien.config import Config, config_to_toml, load_config


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    def create(self, config: Config) -> None:
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_to_toml(config), encoding="utf-8")
        self.metrics_path.touch()

    def config(self) -> Config:
        if not self.config_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a run folder: no config.toml")
        return load_config(self.config_path)

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def write_results(self, results: dict[str, Any]) -> None:
        self.results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")

    def results(self) -> dict[str, Any]:
        return json.loads(self.results_path.read_text(encoding="utf-8"))
