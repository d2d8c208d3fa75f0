"""The training loop: Adam with the paper's schedule, validation, best checkpoint, resume.

One step: forward, click loss (binary cross-entropy on the logit) plus ``alpha`` times the
auxiliary loss, backward, optimizer step. Losses are summed on the device and read back only
at log intervals, so a step never waits for the host. The learning rate is
``learning_rate * lr_decay ** epoch`` (the authors' code halves it after each epoch).

The best checkpoint is chosen on the validation split's AUC, never on test. A dataset without a
validation split (the paper's Amazon protocol has none) keeps the last checkpoint as the best
one and says so in the log and in ``results.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dien.config import Config, DataConfig, TrainConfig
from dien.data.batch import VocabSizes
from dien.data.format import PreparedDataset, SplitArrays
from dien.data.loader import BatchLoader
from dien.data.sampling import NegativeSampler
from dien.models import CTRModel, build_model
from dien.train.checkpoint import load_checkpoint, save_checkpoint
from dien.train.metrics import Metrics, compute_metrics
from dien.train.plots import plot_learning_curves
from dien.train.report import write_report
from dien.train.run import RunFolder

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint so ``--resume`` continues exactly."""

    epoch: int = 0
    batch: int = 0  # next batch of the current epoch
    step: int = 0
    samples: int = 0
    best_auc: float = -1.0
    best_step: int = -1
    stale_evals: int = 0
    stopped_early: bool = False


@dataclass(frozen=True)
class TrainResult:
    run: RunFolder
    best_step: int
    valid: Metrics | None
    test: Metrics | None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but CUDA is not available here")
    return device


def build_optimizers(model: CTRModel, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """Adam for the dense parameters; SparseAdam (lazy, row-wise) for sparse embedding tables.

    Lazy Adam differs from dense Adam: a row's moment estimates decay only on steps where the
    row appears in the batch, and rows absent from a batch are not moved at all, whereas dense
    Adam keeps moving every row with its decaying momentum.
    """
    dense = torch.optim.Adam(
        model.dense_parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    sparse = model.sparse_parameters()
    if not sparse:
        return [dense]
    return [dense, torch.optim.SparseAdam(sparse, lr=config.learning_rate)]


def eval_loader(split: SplitArrays, data: DataConfig) -> BatchLoader:
    """Batches of similar history lengths, in a fixed order, for scoring a whole split."""
    return BatchLoader(
        split,
        batch_size=data.eval_batch_size,
        max_history=data.max_history,
        shuffle=False,
        seed=0,
        bucket_by_length=True,
    )


@torch.no_grad()
def predict_logits(model: CTRModel, loader: BatchLoader, device: torch.device) -> np.ndarray:
    """Logits of every sample of the loader's split, in the split's order, in eval mode.

    The loader may group samples by history length; each batch's logits are written back to
    its samples' positions.
    """
    was_training = model.training
    model.eval()
    logits = np.zeros(len(loader.split), np.float32)
    for position, index in enumerate(loader.batch_indices()):
        batch = loader.assemble(index, position).without_label().to(device)
        logits[index] = model(batch).logit.float().cpu().numpy()  # (B,)
    model.train(was_training)
    return logits


def evaluate_split(
    model: CTRModel, split: SplitArrays, data: DataConfig, device: torch.device
) -> Metrics:
    logits = predict_logits(model, eval_loader(split, data), device)
    return compute_metrics(np.asarray(split.user), logits, np.asarray(split.label))


class Trainer:
    """Trains one model on one prepared dataset into one run folder."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False):
        self.config = config
        self.run = RunFolder(Path(run_dir))
        self.device = resolve_device(config.train.device)
        self.dataset = PreparedDataset.open(config.data.path)
        self.vocab: VocabSizes = self.dataset.vocab_sizes
        self.progress = Progress()
        self._seed_everything()
        self.model = build_model(config.model, self.vocab).to(self.device)
        self.optimizers = build_optimizers(self.model, config.train)
        self.train_loader = self._train_loader()
        self.valid = self._split_or_none("valid")
        if resume:
            self._resume()
        else:
            self._start()

    def _seed_everything(self) -> None:
        if self.config.train.threads:
            torch.set_num_threads(self.config.train.threads)
        torch.manual_seed(self.config.train.seed)
        if self.config.train.deterministic:
            torch.use_deterministic_algorithms(True)

    def _split_or_none(self, name: str) -> SplitArrays | None:
        if name not in self.dataset.manifest["splits"]:
            return None
        split = self.dataset.split(name)
        return split if len(split) else None

    def _train_loader(self) -> BatchLoader:
        data, model = self.config.data, self.config.model
        sampler = None
        if self.model.aux_loss_alpha > 0:
            sampler = NegativeSampler(
                self.dataset.item_frequency,
                self.dataset.item_category,
                mode=data.aux_negative_sampling,
            )
        return BatchLoader(
            self.dataset.split("train"),
            batch_size=data.batch_size,
            max_history=data.max_history,
            shuffle=True,
            seed=self.config.train.seed,
            bucket_by_length=data.bucket_by_length,
            aux_sampler=sampler,
            aux_negatives=model.aux_negatives,
        )

    def _start(self) -> None:
        if self.run.config_path.exists():
            raise FileExistsError(
                f"{self.run.path} already holds a run; pass --resume to continue it "
                "or choose another --out"
            )
        self.run.create(self.config)

    def _resume(self) -> None:
        saved = self.run.config()
        if dataclasses.replace(saved, train=self.config.train) != dataclasses.replace(
            self.config, train=self.config.train
        ):
            raise ValueError(
                f"{self.run.path}: the data or model config differs from the run's config.toml; "
                "resume with the same settings"
            )
        state = load_checkpoint(self.run.last_checkpoint)
        self.model.load_state_dict(state["model"])
        for optimizer, saved_state in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved_state)
        self.progress = Progress(**state["progress"])
        torch.set_rng_state(state["torch_rng"])
        logger.info(
            "resumed %s at epoch %d, step %d",
            self.run.path,
            self.progress.epoch,
            self.progress.step,
        )

    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "progress": dataclasses.asdict(self.progress),
            "torch_rng": torch.get_rng_state(),
            "config": self.config.to_dict(),
            "vocab_sizes": dataclasses.asdict(self.vocab),
        }

    def _set_learning_rate(self, epoch: int) -> float:
        lr = self.config.train.learning_rate * self.config.train.lr_decay**epoch
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
        return lr

    def fit(self) -> TrainResult:
        """Train to the end (or early stop), then evaluate the best checkpoint on test."""
        t = self.config.train
        while self.progress.epoch < t.epochs and not self.progress.stopped_early:
            self._train_epoch()
        return self._finish()

    def _train_epoch(self) -> None:
        p, t = self.progress, self.config.train
        lr = self._set_learning_rate(p.epoch)
        self.train_loader.set_epoch(p.epoch)
        total = len(self.train_loader)
        bar = tqdm(
            total=total,
            initial=p.batch,
            desc=f"epoch {p.epoch + 1}/{t.epochs}",
            disable=not (t.progress and sys.stderr.isatty()),
            leave=False,
        )
        window = _LossWindow(self.device)
        self.model.train()
        for batch in self.train_loader.iterate(p.batch):
            window.add(*self._step(batch), batch.size)
            p.batch, p.step, p.samples = p.batch + 1, p.step + 1, p.samples + batch.size
            bar.update(1)
            if p.step % t.log_interval == 0:
                record = self._log(window, lr)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if t.eval_interval and p.step % t.eval_interval == 0:
                self._validate()
                if p.stopped_early:
                    break
        bar.close()
        if window.steps:
            self._log(window, lr)
        if not p.stopped_early:
            p.epoch, p.batch = p.epoch + 1, 0
            if not t.eval_interval:
                self._validate()
        save_checkpoint(self.run.last_checkpoint, self._checkpoint_state())

    def _log(self, window: _LossWindow, lr: float) -> dict[str, Any]:
        record = window.flush(self.progress, lr, self.model.aux_loss_alpha)
        self.run.log(record)
        return record

    def _step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch = batch.to(self.device, non_blocking=True)
        out = self.model(batch)
        click_loss = F.binary_cross_entropy_with_logits(out.logit, batch.label)  # ()
        loss = click_loss
        if out.aux_loss is not None:
            loss = click_loss + self.model.aux_loss_alpha * out.aux_loss  # ()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer in self.optimizers:
            optimizer.step()
        aux = None if out.aux_loss is None else out.aux_loss.detach()
        return click_loss.detach(), aux

    def _validate(self) -> None:
        p = self.progress
        if self.valid is None:
            logger.warning("no validation split: the last checkpoint is kept as the best one")
            p.best_step = p.step
            save_checkpoint(self.run.best_checkpoint, self._checkpoint_state())
            return
        metrics = evaluate_split(self.model, self.valid, self.config.data, self.device)
        improved = metrics.auc > p.best_auc
        if improved:
            p.best_auc, p.best_step, p.stale_evals = metrics.auc, p.step, 0
            save_checkpoint(self.run.best_checkpoint, self._checkpoint_state())
        else:
            p.stale_evals += 1
        patience = self.config.train.early_stopping_patience
        if patience and p.stale_evals >= patience:
            p.stopped_early = True
            logger.info(
                "early stop at step %d: %d checks without a better validation AUC",
                p.step,
                p.stale_evals,
            )
        self.run.log(
            {
                "kind": "eval",
                "split": "valid",
                "step": p.step,
                "epoch": p.epoch,
                **metrics.as_dict(),
                "best": improved,
            }
        )
        logger.info(
            "step %d valid AUC %.4f GAUC %.4f logloss %.4f",
            p.step,
            metrics.auc,
            metrics.gauc,
            metrics.logloss,
        )
        save_checkpoint(self.run.last_checkpoint, self._checkpoint_state())

    def _finish(self) -> TrainResult:
        best = load_checkpoint(self.run.best_checkpoint)
        self.model.load_state_dict(best["model"])
        valid = (
            None
            if self.valid is None
            else evaluate_split(self.model, self.valid, self.config.data, self.device)
        )
        test_split = self._split_or_none("test")
        test = (
            None
            if test_split is None
            else evaluate_split(self.model, test_split, self.config.data, self.device)
        )
        results = {
            "model": self.config.model.name,
            "best_step": self.progress.best_step,
            "steps": self.progress.step,
            "samples_seen": self.progress.samples,
            "stopped_early": self.progress.stopped_early,
            "best_chosen_on": "valid" if self.valid is not None else "last checkpoint",
            "valid": None if valid is None else valid.as_dict(),
            "test": None if test is None else test.as_dict(),
        }
        self.run.write_results(results)
        if test is not None:
            self.run.log(
                {
                    "kind": "eval",
                    "split": "test",
                    "step": self.progress.best_step,
                    "epoch": self.progress.epoch,
                    **test.as_dict(),
                    "best": True,
                }
            )
        plot_learning_curves(
            self.run.records(),
            self.run.path / "learning_curves.png",
            title=f"{self.config.model.name} - {self.run.path.name}",
        )
        write_report(self.run, self.config, results)
        return TrainResult(self.run, self.progress.best_step, valid, test)


class _LossWindow:
    """Sums losses on the device between log lines; one host sync per log interval."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.click = torch.zeros((), device=self.device)
        self.aux = torch.zeros((), device=self.device)
        self.has_aux = False
        self.steps = 0
        self.samples = 0
        self.started = time.perf_counter()

    def add(self, click: torch.Tensor, aux: torch.Tensor | None, samples: int) -> None:
        self.click += click
        if aux is not None:
            self.aux += aux
            self.has_aux = True
        self.steps += 1
        self.samples += samples

    def flush(self, progress: Progress, lr: float, alpha: float) -> dict[str, Any]:
        """The window's mean losses as a metrics record; starts a new window."""
        elapsed = time.perf_counter() - self.started
        click = self.click.item() / self.steps
        aux = self.aux.item() / self.steps if self.has_aux else None
        record = {
            "kind": "train",
            "step": progress.step,
            "epoch": progress.epoch,
            "samples": progress.samples,
            "loss": click + alpha * (aux or 0.0),
            "bce_loss": click,
            "aux_loss": aux,
            "lr": lr,
            "samples_per_s": self.samples / max(elapsed, 1e-9),
        }
        self.reset()
        return record
