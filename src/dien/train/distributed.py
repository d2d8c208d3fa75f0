"""Training across processes and machines with ``torch.distributed`` (started by ``torchrun``).

A *world* is the set of processes (ranks) that train one model together. ``torchrun`` tells
each process its place through the environment variables ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; without them (or with ``WORLD_SIZE=1``) the world is this one process and
nothing here communicates.

How a training step is split. The global batch is ``data.batch_size`` samples, the same batches
in the same order as one process draws them (the shuffling depends only on the seed and the
epoch). Rank ``r`` of ``N`` takes every N-th row of each global batch, starting at row ``r``;
with batches grouped by history length this gives every rank rows of similar lengths, so the
ranks wait little for one another. Each rank weights its mean click loss by its share of the
global batch's rows and its mean auxiliary loss by its share of the global batch's valid step
pairs, times ``N``; DistributedDataParallel averages the gradients over the ranks, so the
gradient is that of the global batch's mean losses, as one process would compute it, for every
layer that treats rows independently. Dice (the output MLP's default activation) normalises by
the statistics of the rows it sees, on each rank its own (as BatchNorm without SyncBatchNorm),
so with Dice the gradient is close to one process's, not equal; its running statistics are rank
0's, which DDP broadcasts to the other ranks at every forward pass. When a global batch has
fewer rows than there are ranks (the last batch of an epoch can), a rank without rows runs one
stand-in row with weight zero, because every rank must take part in every gradient all-reduce.

Embedding tables are replicated: every rank holds all of them. Their sparse gradients (the
default) are all-reduced by gloo; nccl cannot all-reduce sparse tensors, so a run on GPUs needs
dense tables (:func:`check_sparse_gradients`). docs/distributed.md weighs this against sharded
tables.

Evaluation. Each rank scores every N-th batch of the split, the logits are summed over the
ranks into one array in the split's order (each sample is scored by exactly one rank, the other
ranks add zeros, so the sum is exact), and every rank computes AUC, GAUC and logloss on the
whole split.

Rank 0 alone reads and writes the run folder; what it reads (the run's config, a checkpoint)
reaches the other ranks through :func:`on_main`, so the other machines of a multi-machine run
need the prepared dataset but not the run folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from dien.config import ConfigError
from dien.data.batch import Batch
from dien.data.loader import BatchLoader
from dien.models import CTRModel
from dien.models.ctr import ModelOutput

logger = logging.getLogger(__name__)

Result = TypeVar("Result")


@dataclass(frozen=True)
class World:
    """This process's place among the processes that train together."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank among the processes of this machine

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that reads and writes the run folder."""
        return self.rank == 0


SINGLE = World()  # one process, training alone


def world_from_env() -> World:
    """The world that ``torchrun``'s environment variables describe (one process without them)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={size} do not describe a process")
    return World(rank, size, local_rank)


def backend() -> str:
    """gloo for CPU tensors, and nccl for CUDA tensors where this build of torch has it."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_from_env() -> World:
    """Join the process group that ``torchrun`` set up; a no-op for a world of one process.

    The group's rendezvous comes from ``MASTER_ADDR`` and ``MASTER_PORT`` (set by torchrun).
    On a machine with CUDA, each process first selects the GPU of its local rank, where there
    is one: more processes than GPUs can still train on the CPU (``--device cpu``).
    """
    world = world_from_env()
    if not world.distributed or dist.is_initialized():
        return world
    if torch.cuda.is_available() and world.local_rank < torch.cuda.device_count():
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend=backend())
    logger.info("rank %d of %d joined the process group (%s)", world.rank, world.size, backend())
    return world


def current_world() -> World:
    """The world of the initialised process group, else this one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), world_from_env().local_rank)


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, world: World) -> torch.device:
    """A CUDA device without an index becomes the GPU of this process's local rank."""
    if not (world.distributed and device.type == "cuda" and device.index is None):
        return device
    gpus = torch.cuda.device_count()
    if world.local_rank >= gpus:
        raise ConfigError(
            f"train.device: local rank {world.local_rank} has no GPU of its own (this machine "
            f"has {gpus}); start at most {gpus} processes per machine (--nproc-per-node), or "
            "train on the CPU (--device cpu)"
        )
    return torch.device("cuda", world.local_rank)


def check_sparse_gradients(sparse_embeddings: bool, device: torch.device, world: World) -> None:
    """Sparse embedding gradients need gloo: nccl has no all-reduce for sparse tensors."""
    if world.distributed and device.type == "cuda" and sparse_embeddings:
        raise ConfigError(
            "model.sparse_embeddings: nccl (the GPU backend) cannot all-reduce sparse "
            "gradients; train on GPUs with dense embedding tables (--no-sparse-embeddings, "
            "plain Adam on every row), or on CPUs (gloo) with sparse ones"
        )


def on_main(fn: Callable[[], Result], world: World) -> Result:
    """``fn()`` on rank 0 only; its result, or the exception it raised, reaches every rank."""
    if not world.distributed:
        return fn()
    box: list[Any] = [None]
    if world.is_main:
        try:
            box[0] = (True, fn())
        except Exception as error:  # re-raised below, on every rank
            box[0] = (False, error)
    dist.broadcast_object_list(box, src=0)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def sum_over_ranks(values: np.ndarray, world: World) -> np.ndarray:
    """The element-wise sum of ``values`` over all ranks, on every rank."""
    if not world.distributed:
        return values
    tensor = torch.from_numpy(np.ascontiguousarray(values)).clone()
    dist.all_reduce(tensor)
    return tensor.numpy()


def sum_tensor_(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place."""
    if world.distributed:
        dist.all_reduce(tensor)
    return tensor


def first_over_ranks_(steps: torch.Tensor, world: World) -> torch.Tensor:
    """Element-wise, the smallest non-negative entry over all ranks (-1 where none), in place."""
    if not world.distributed:
        return steps
    none = torch.iinfo(steps.dtype).max
    masked = torch.where(steps < 0, none, steps)
    dist.all_reduce(masked, op=dist.ReduceOp.MIN)
    return steps.copy_(torch.where(masked == none, -1, masked))


def broadcast_buffers(module: torch.nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (Dice's running statistics), e.g. before scoring."""
    if world.distributed:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def wrap(model: CTRModel, world: World) -> torch.nn.Module:
    """``model`` in DistributedDataParallel for a world of several ranks, else ``model`` itself.

    ``find_unused_parameters``: a rank whose rows all have empty histories skips the
    recurrent layers that another rank uses in the same step; DDP must then still all-reduce
    (zero) gradients for them, which costs one walk over the autograd graph per step.
    """
    if not world.distributed:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        _LossOutputs(model), find_unused_parameters=True
    )


class _LossOutputs(torch.nn.Module):
    """A model whose output keeps only what enters the loss: the logit and the auxiliary loss.

    DDP counts as used every parameter that any output tensor depends on. The attention
    weights depend on the attention parameters even for a batch of empty histories, where
    the logit does not, and DDP would then wait forever for their gradients.
    """

    def __init__(self, model: CTRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> ModelOutput:
        out = self.model(batch)
        return ModelOutput(out.logit, out.aux_loss)


@dataclass(frozen=True)
class Shard:
    """This rank's rows of one global batch, and their weight in the global batch's losses."""

    batch: Batch
    samples: int  # rows of the global batch, all ranks together
    click_share: float  # this rank's rows / the global batch's rows (0 for a stand-in row)
    aux_share: float  # this rank's valid step pairs / the global batch's (0 when it has none)


def shard_rows(index: np.ndarray, world: World) -> np.ndarray:
    """This rank's rows of a global batch: every ``size``-th row, starting at ``rank``."""
    return index[world.rank :: world.size]


def sharded_batches(loader: BatchLoader, start_batch: int, world: World) -> Iterator[Shard]:
    """This rank's part of each global batch of the loader's epoch, from ``start_batch`` on."""
    if not 0 <= start_batch <= len(loader):
        raise ValueError(f"start_batch must lie in [0, {len(loader)}], got {start_batch}")
    pairs = np.maximum(loader.history_lengths - 1, 0)  # (N,) auxiliary-loss step pairs
    batches = loader.batch_indices()
    for position in range(start_batch, len(batches)):
        index = batches[position]
        rows = shard_rows(index, world)
        global_pairs = int(pairs[index].sum())
        if len(rows):
            click_share = len(rows) / len(index)
            aux_share = int(pairs[rows].sum()) / global_pairs if global_pairs else 0.0
        else:
            rows, click_share, aux_share = index[:1], 0.0, 0.0  # a stand-in row
        yield Shard(loader.assemble(rows, position), len(index), click_share, aux_share)
