"""Loading a finished run and scoring a prepared split with it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dien.config import Config
from dien.data.batch import VocabSizes
from dien.data.format import PreparedDataset
from dien.models import CTRModel, build_model
from dien.train.checkpoint import load_checkpoint
from dien.train.loop import eval_loader, predict_logits, resolve_device
from dien.train.metrics import Metrics, compute_metrics
from dien.train.run import RunFolder


@dataclass(frozen=True)
class LoadedRun:
    config: Config
    model: CTRModel  # in eval mode
    vocab: VocabSizes
    device: torch.device


def load_run(run_dir: str | Path, device: str = "cpu", checkpoint: str = "best") -> LoadedRun:
    """A run's config and model with its ``best`` (or ``last``) weights; needs no config file."""
    run = RunFolder(Path(run_dir))
    config = run.config()
    path = run.best_checkpoint if checkpoint == "best" else run.last_checkpoint
    state = load_checkpoint(path)
    vocab = VocabSizes(**state["vocab_sizes"])
    model = build_model(config.model, vocab)
    model.load_state_dict(state["model"])
    target = resolve_device(device)
    return LoadedRun(config, model.to(target).eval(), vocab, target)


def score_split(
    loaded: LoadedRun, dataset: PreparedDataset, split: str
) -> tuple[np.ndarray, Metrics]:
    """Click probabilities of every sample of ``split`` and the metrics they give."""
    if dataset.vocab_sizes != loaded.vocab:
        raise ValueError(
            f"{dataset.path}: vocabulary sizes {dataset.vocab_sizes} differ from the run's "
            f"{loaded.vocab}; score a dataset prepared with the run's vocabularies"
        )
    arrays = dataset.split(split)
    loader = eval_loader(arrays, loaded.config.data)
    logits = predict_logits(loaded.model, loader, loaded.device)
    metrics = compute_metrics(np.asarray(arrays.user), logits, np.asarray(arrays.label))
    return torch.sigmoid(torch.from_numpy(logits).double()).numpy(), metrics
