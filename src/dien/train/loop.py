"""The training loop: Adam with the paper's schedule, validation, best checkpoint, resume.

One step: forward, click loss (binary cross-entropy on the logit) plus ``alpha`` times the
auxiliary loss, backward, optimizer step. Losses are summed on the device and read back only
at log intervals, so a step never waits for the host. The learning rate is
``learning_rate * lr_decay ** epoch`` (the authors' code halves it after each epoch).

The best checkpoint is chosen on the validation split's AUC, never on test. A dataset without a
validation split (the paper's Amazon protocol has none) keeps the last checkpoint as the best
one and says so in the log and in ``results.json``.

Crash recovery. ``checkpoints/last.pt`` is written atomically at the start, every
``train.checkpoint_interval`` steps, at each evaluation and at each epoch end. It holds the
model, both optimizers' states, the :class:`Progress` (epoch, batch within the epoch, step),
the torch random states (CPU, and CUDA where used), the loss sums of the unfinished log window
and the length of ``metrics.jsonl`` at that moment. The loader needs no state: its shuffling
and auxiliary-loss negatives derive from (seed, epoch, batch position). So a run killed at any
point (``kill -9`` included) and continued with ``--resume`` rewinds ``metrics.jsonl`` to the
checkpoint, replays the same batches with the same states and ends with the same metrics as a
run that never stopped (bit for bit on CPU with ``train.deterministic``). Only the steps after
the last checkpoint are computed twice. For tests of this, the environment variable
``DIEN_TEST_STEP_DELAY`` (seconds) makes every step sleep, so a kill can land mid-epoch.

Several processes. Started by ``torchrun``, each process trains on its rows of every global
batch of ``data.batch_size`` samples, through DistributedDataParallel, and all of them score
the evaluation splits together (see :mod:`dien.train.distributed`). The :class:`Progress` counts
global batches, steps and samples, the checkpoint holds the unwrapped model and rank 0's
states, and the loss sums of the log window are summed over the ranks before they are saved,
so a checkpoint continues on any number of processes. Only rank 0 touches the run folder.

Non-finite numbers. After each backward pass, a flag on the device records the first step
whose loss or gradient holds a NaN or an infinity (a gradient counts as non-finite when its
sum is, which NaN and infinite entries always make it). With ``train.on_nonfinite = "stop"``
the flag is read only where the host reads numbers anyway: at each log line, before each
checkpoint and before each evaluation. A bad step is therefore noticed up to
``log_interval`` steps late, during which the run computes on NaN weights, but no step waits
for the device, and no checkpoint is ever written from a state after a bad step: the run stops
with :class:`NonFiniteError`, naming the bad step and the last good checkpoint. With
``"skip"`` the flag must be read before every optimizer step (one host sync per step, which
costs little on CPU and stalls the GPU queue on CUDA); a bad step's update is dropped, the
step is counted in ``results.json`` as ``skipped_steps`` and training goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
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
from dien.train import distributed
from dien.train.checkpoint import (
    check_free_space,
    check_writable,
    estimate_checkpoint_bytes,
    load_checkpoint,
    remove_stale_temporaries,
    save_checkpoint,
)
from dien.train.distributed import SINGLE, Shard, World
from dien.train.metrics import Metrics, compute_metrics
from dien.train.plots import plot_learning_curves
from dien.train.report import write_report
from dien.train.run import RunFolder
from dien.train.sparse_adam import FusedSparseAdam

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
    skipped_steps: int = 0  # updates dropped for a non-finite loss or gradient


class NonFiniteError(ValueError):
    """A training step produced a NaN or infinite loss or gradient (``on_nonfinite="stop"``)."""


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
    """Adam for the dense parameters; SparseAdam (lazy, row-wise) for sparse embedding tables,
    with its step fused on the CPU (:class:`~dien.train.sparse_adam.FusedSparseAdam`).

    Lazy Adam differs from dense Adam: a row's moment estimates decay only on steps where the
    row appears in the batch, and rows absent from a batch are not moved at all, whereas dense
    Adam keeps moving every row with its decaying momentum.

    Dense Adam is torch's fused implementation (one kernel for all parameters) on the CPU and
    CUDA, where it exists; on the CPU torch's default is a Python loop over the parameters,
    which took about a twentieth of a DIEN training step.
    """
    parameters = model.dense_parameters()
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)
    dense = torch.optim.Adam(
        parameters, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused
    )
    sparse = model.sparse_parameters()
    if not sparse:
        return [dense]
    return [dense, FusedSparseAdam(sparse, lr=config.learning_rate)]


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
def predict_logits(
    model: CTRModel, loader: BatchLoader, device: torch.device, world: World = SINGLE
) -> np.ndarray:
    """Logits of every sample of the loader's split, in the split's order, in eval mode.

    The loader may group samples by history length; each batch's logits are written back to
    its samples' positions. In a world of several ranks, each rank scores every N-th batch and
    every rank gets all the logits.
    """
    was_training = model.training
    model.eval()
    logits = np.zeros(len(loader.split), np.float32)
    for position, index in enumerate(loader.batch_indices()):
        if position % world.size != world.rank:
            continue
        batch = loader.assemble(index, position).without_label().to(device)
        logits[index] = model(batch).logit.float().cpu().numpy()  # (B,)
    model.train(was_training)
    return distributed.sum_over_ranks(logits, world)  # one rank scored each sample: exact


def evaluate_split(
    model: CTRModel,
    split: SplitArrays,
    data: DataConfig,
    device: torch.device,
    world: World = SINGLE,
) -> Metrics:
    """AUC, GAUC and logloss of the whole split (scored by all ranks of ``world`` together)."""
    logits = predict_logits(model, eval_loader(split, data), device, world)
    return compute_metrics(np.asarray(split.user), logits, np.asarray(split.label))


class Trainer:
    """Trains one model on one prepared dataset into one run folder."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False):
        self.config = config
        self.run = RunFolder(Path(run_dir))
        self.world = distributed.current_world()
        self.device = distributed.rank_device(resolve_device(config.train.device), self.world)
        distributed.check_sparse_gradients(config.model.sparse_embeddings, self.device, self.world)
        self.dataset = PreparedDataset.open(config.data.path)
        self.vocab: VocabSizes = self.dataset.vocab_sizes
        self.progress = Progress()
        self._seed_everything()
        self.model = build_model(config.model, self.vocab).to(self.device)
        self.optimizers = build_optimizers(self.model, config.train)
        self.train_loader = self._train_loader()
        self.valid = self._split_or_none("valid")
        self._window = _LossWindow(self.device, self.world)
        self._guard = _NonFiniteGuard(self.device, self.world)
        self._saved_at: tuple[int, int] | None = None  # (epoch, step) of the last.pt on disk
        self._step_delay = float(os.environ.get("DIEN_TEST_STEP_DELAY", "0") or 0)
        if resume:
            self._resume()
        else:
            self._start()
        self._forward = distributed.wrap(self.model, self.world)  # the model itself for one rank

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
            rank=self.world.rank,
        )

    def _check_storage(self) -> None:
        """A clear error now, not after an epoch, if checkpoints cannot be written."""
        check_writable(self.run.path)
        existing = sum(
            p.stat().st_size
            for p in (self.run.last_checkpoint, self.run.best_checkpoint)
            if p.is_file()
        )
        check_free_space(self.run.path, estimate_checkpoint_bytes([self.model]), existing)

    def _start(self) -> None:
        distributed.on_main(self._create_run, self.world)
        self._save_last()

    def _create_run(self) -> None:
        if self.run.config_path.exists():
            raise FileExistsError(
                f"{self.run.path} already holds a run; pass --resume to continue it "
                "or choose another --out"
            )
        self._check_storage()
        self.run.create(self.config)

    def _resume(self) -> None:
        saved = distributed.on_main(self.run.config, self.world)
        if dataclasses.replace(saved, train=self.config.train) != dataclasses.replace(
            self.config, train=self.config.train
        ):
            raise ValueError(
                f"{self.run.path}: the data or model config differs from the run's config.toml; "
                "resume with the same settings"
            )
        state = distributed.on_main(self._read_last_checkpoint, self.world)
        if state is None:
            self._save_last()
            return
        self.model.load_state_dict(state["model"])
        for optimizer, saved_state in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved_state)
        self.progress = Progress(**state["progress"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if "loss_window" in state:
            self._window.load_state(state["loss_window"])
        self._saved_at = (self.progress.epoch, self.progress.step)
        logger.info(
            "resumed %s at epoch %d, step %d (saved by %d processes, continued by %d)",
            self.run.path,
            self.progress.epoch,
            self.progress.step,
            state.get("world_size", 1),
            self.world.size,
        )

    def _read_last_checkpoint(self) -> dict[str, Any] | None:
        """Rank 0's part of resuming: checks, clean-up, and the last checkpoint (None if none)."""
        self._check_storage()
        for stale in remove_stale_temporaries(self.run.last_checkpoint.parent):
            logger.info("removed %s, left by a write that was interrupted", stale)
        if not self.run.last_checkpoint.is_file():
            logger.warning("%s: no checkpoint yet; starting from step 0", self.run.path)
            self._rewind_metrics(0)
            return None
        state = load_checkpoint(self.run.last_checkpoint)
        if "metrics_bytes" in state:
            self._rewind_metrics(state["metrics_bytes"])
        return state

    def _rewind_metrics(self, size: int) -> None:
        """Drop the metrics lines written after the checkpoint (or half-written by a kill)."""
        path = self.run.metrics_path
        if path.is_file() and path.stat().st_size > size:
            with path.open("r+b") as f:
                f.truncate(size)

    def _write_checkpoint(self, path: Path) -> None:
        """Save the run's state to ``path`` from rank 0 (every rank must call this)."""
        self._window.sum_over_ranks()
        if self.world.is_main:
            save_checkpoint(path, self._checkpoint_state())

    def _checkpoint_state(self) -> dict[str, Any]:
        cuda = self.device.type == "cuda"
        return {
            "model": self.model.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "progress": dataclasses.asdict(self.progress),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if cuda else None,
            "loss_window": self._window.state(),
            "metrics_bytes": self.run.metrics_path.stat().st_size,
            "config": self.config.to_dict(),
            "vocab_sizes": dataclasses.asdict(self.vocab),
            "world_size": self.world.size,
        }

    def _save_last(self) -> None:
        """Write checkpoints/last.pt unless it already holds this state; never after a bad step."""
        p = self.progress
        if self._saved_at == (p.epoch, p.step):
            return
        self._guard.check(self._last_good())
        self._write_checkpoint(self.run.last_checkpoint)
        self._saved_at = (p.epoch, p.step)

    def _last_good(self) -> str:
        if self._saved_at is None or not self.run.last_checkpoint.is_file():
            return "none was written"
        return f"{self.run.last_checkpoint} (step {self._saved_at[1]})"

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
            disable=not (t.progress and sys.stderr.isatty() and self.world.is_main),
            leave=False,
        )
        window = self._window
        if not window.steps:
            window.reset()
        self.model.train()
        for shard in self._shards(p.batch):
            losses = self._step(shard.batch, p.step + 1, (shard.click_share, shard.aux_share))
            if losses is not None:
                window.add(*losses, shard.samples)
            p.batch, p.step, p.samples = p.batch + 1, p.step + 1, p.samples + shard.samples
            bar.update(1)
            if p.step % t.log_interval == 0 and window.steps:
                record = self._log(window, lr)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if t.eval_interval and p.step % t.eval_interval == 0:
                self._validate()
                if p.stopped_early:
                    break
            if t.checkpoint_interval and p.step % t.checkpoint_interval == 0:
                self._save_last()
            if self._step_delay:
                time.sleep(self._step_delay)
        bar.close()
        if window.steps:
            self._log(window, lr)
        if not p.stopped_early:
            p.epoch, p.batch = p.epoch + 1, 0
            if not t.eval_interval:
                self._validate()
        self._save_last()

    def _shards(self, start_batch: int) -> Iterator[Shard]:
        """This rank's part of each batch of the epoch (the whole batch for one process)."""
        if self.world.distributed:
            return distributed.sharded_batches(self.train_loader, start_batch, self.world)
        return (Shard(b, b.size, 1.0, 1.0) for b in self.train_loader.iterate(start_batch))

    def _log(self, window: _LossWindow, lr: float) -> dict[str, Any]:
        self._guard.check(self._last_good())
        record = window.flush(self.progress, lr, self.model.aux_loss_alpha)
        self._write_record(record)
        return record

    def _write_record(self, record: dict[str, Any]) -> None:
        if self.world.is_main:
            self.run.log(record)

    def _step(
        self, batch: Any, step: int, shares: tuple[float, float] = (1.0, 1.0)
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """One update; its click and auxiliary losses, or None if it was skipped.

        ``shares``: this rank's shares of the global batch's rows and auxiliary-loss pairs;
        the losses are weighted by them so that the gradient averaged over the ranks is the
        global batch's (see :mod:`dien.train.distributed`). The losses returned are this
        rank's contributions to the global batch's mean losses.
        """
        skip_bad = self.config.train.on_nonfinite == "skip"
        # forward() moves running statistics (Dice); a skipped step must not keep their change
        buffers = [b.clone() for b in self.model.buffers()] if skip_bad else []
        batch = batch.to(self.device, non_blocking=True)
        out = self._forward(batch)
        click_loss = F.binary_cross_entropy_with_logits(out.logit, batch.label)  # ()
        aux_loss = out.aux_loss
        if self.world.distributed:
            click_loss = click_loss * shares[0]  # ()
            aux_loss = None if aux_loss is None else aux_loss * shares[1]  # ()
        loss = click_loss
        if aux_loss is not None:
            loss = click_loss + self.model.aux_loss_alpha * aux_loss  # ()
        if self.world.distributed:
            loss = loss * self.world.size  # () DDP averages the gradients over the ranks
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        bad = self._guard.observe(step, loss, self.model.parameters())
        if skip_bad and bool(self._guard.any_rank(bad)):  # host sync
            for buffer, saved in zip(self.model.buffers(), buffers, strict=True):
                buffer.copy_(saved)
            self._guard.forgive()
            self.progress.skipped_steps += 1
            logger.warning(
                "step %d: non-finite loss or gradient; update skipped (%d so far)",
                step,
                self.progress.skipped_steps,
            )
            return None
        for optimizer in self.optimizers:
            optimizer.step()
        aux = None if aux_loss is None else aux_loss.detach()
        return click_loss.detach(), aux

    def _validate(self) -> None:
        p = self.progress
        self._guard.check(self._last_good())
        if self.valid is None:
            logger.warning("no validation split: the last checkpoint is kept as the best one")
            p.best_step = p.step
            self._write_checkpoint(self.run.best_checkpoint)
            self._saved_at = None  # best_step changed at the same step
            self._save_last()
            return
        distributed.broadcast_buffers(self.model, self.world)  # score with rank 0's statistics
        metrics = self._evaluate(self.valid)
        improved = metrics.auc > p.best_auc
        if improved:
            p.best_auc, p.best_step, p.stale_evals = metrics.auc, p.step, 0
            self._write_checkpoint(self.run.best_checkpoint)
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
        self._write_record(
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
        self._saved_at = None  # the state changed (best_auc, stale_evals) at the same step
        self._save_last()

    def _evaluate(self, split: SplitArrays) -> Metrics:
        return evaluate_split(self.model, split, self.config.data, self.device, self.world)

    def _finish(self) -> TrainResult:
        best = distributed.on_main(
            lambda: load_checkpoint(self.run.best_checkpoint)["model"], self.world
        )
        self.model.load_state_dict(best)
        valid = None if self.valid is None else self._evaluate(self.valid)
        test_split = self._split_or_none("test")
        test = None if test_split is None else self._evaluate(test_split)
        if self.world.is_main:
            self._write_results(valid, test)
        return TrainResult(self.run, self.progress.best_step, valid, test)

    def _write_results(self, valid: Metrics | None, test: Metrics | None) -> None:
        results = {
            "model": self.config.model.name,
            "best_step": self.progress.best_step,
            "steps": self.progress.step,
            "samples_seen": self.progress.samples,
            "stopped_early": self.progress.stopped_early,
            "skipped_steps": self.progress.skipped_steps,
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


class _LossWindow:
    """Sums losses on the device between log lines; one host sync per log interval.

    In a world of several ranks each rank sums its contributions to the global batches' mean
    losses; :meth:`sum_over_ranks` moves the totals to rank 0 (the others keep zeros), before
    a log line and before a checkpoint, so rank 0 logs and saves the global batches' losses.
    """

    def __init__(self, device: torch.device, world: World = SINGLE):
        self.device = device
        self.world = world
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

    def sum_over_ranks(self) -> None:
        """Rank 0 gets the sums over all ranks and the other ranks zeros (all ranks call it)."""
        if not self.world.distributed:
            return
        for total in (self.click, self.aux):
            distributed.sum_tensor_(total, self.world)
            if not self.world.is_main:
                total.zero_()

    def flush(self, progress: Progress, lr: float, alpha: float) -> dict[str, Any]:
        """The window's mean losses as a metrics record (right on rank 0); starts a new window."""
        self.sum_over_ranks()
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

    def state(self) -> dict[str, Any]:
        """The unfinished window, saved in checkpoints so a resumed run logs the same losses."""
        return {
            "click": self.click.detach().cpu().clone(),
            "aux": self.aux.detach().cpu().clone(),
            "has_aux": self.has_aux,
            "steps": self.steps,
            "samples": self.samples,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue a saved window; its sums, over all ranks, stay with rank 0 only."""
        self.click = state["click"].to(self.device)
        self.aux = state["aux"].to(self.device)
        if not self.world.is_main:
            self.click.zero_()
            self.aux.zero_()
        self.has_aux, self.steps, self.samples = state["has_aux"], state["steps"], state["samples"]
        self.started = time.perf_counter()


class _NonFiniteGuard:
    """Remembers, on the device, the first steps with a non-finite loss and gradient.

    Across ranks, :meth:`check` and :meth:`any_rank` combine the ranks' flags, so that every
    rank stops or skips the same step.
    """

    def __init__(self, device: torch.device, world: World = SINGLE):
        self.world = world
        self.first_bad = torch.full((2,), -1, dtype=torch.int64, device=device)  # loss, gradient

    def observe(
        self, step: int, loss: torch.Tensor, parameters: Iterable[torch.nn.Parameter]
    ) -> torch.Tensor:
        """Record ``step`` if its loss or gradients are non-finite; the flag, left on the device."""
        sums = [
            (p.grad._values() if p.grad.is_sparse else p.grad).sum()
            for p in parameters
            if p.grad is not None
        ]
        grad_sum = torch.stack(sums).sum() if sums else torch.zeros((), device=loss.device)
        bad = ~torch.isfinite(torch.stack([loss.detach(), grad_sum]))  # (2,)
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        return bad.any()

    def any_rank(self, bad: torch.Tensor) -> torch.Tensor:
        """``bad`` (a flag of this rank's step) or'ed over all ranks."""
        if not self.world.distributed:
            return bad
        return distributed.sum_tensor_(bad.to(torch.int64), self.world) > 0

    def forgive(self) -> None:
        """Forget a bad step whose update was skipped."""
        self.first_bad.fill_(-1)

    def check(self, last_good: str) -> None:
        """Raise :class:`NonFiniteError` if a bad step was seen (reads the flag: a host sync)."""
        distributed.first_over_ranks_(self.first_bad, self.world)
        loss_step, grad_step = self.first_bad.tolist()
        if loss_step < 0 and grad_step < 0:
            return
        if loss_step >= 0 and (grad_step < 0 or loss_step <= grad_step):
            what, step = "loss", loss_step
        else:
            what, step = "gradient", grad_step
        raise NonFiniteError(
            f"non-finite {what} (NaN or infinity) at step {step}; training stopped. "
            f"Last good checkpoint: {last_good}. Continue from it with `dien train --resume` "
            'and, say, a lower learning rate, or set train.on_nonfinite = "skip" to drop '
            "such steps' updates"
        )
