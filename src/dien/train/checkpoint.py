"""Checkpoints written atomically, and the storage checks a run makes before it starts.

A checkpoint is written to a temporary file in the same folder, flushed to disk, then renamed
over the old one, so a crash or ``kill -9`` during a write leaves the previous checkpoint
intact. A temporary file left behind by such a crash is removed when the run resumes.

Before training starts, the run folder must take a small probe file and its file system must
have room for three checkpoints (``last.pt``, ``best.pt`` and the temporary copy of an atomic
write), estimated from the model's and the optimizers' tensors. Both failures are a
:class:`StorageError` that names the folder, instead of an error after the first epoch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_COPIES = 3  # last.pt, best.pt, and the temporary file of an atomic write
_OVERHEAD_BYTES = 1 << 20  # pickled config, progress and random states, with room to spare


class StorageError(OSError, ValueError):
    """The run folder cannot be written, or its disk is too full for the run's checkpoints."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to a temporary file in the same folder, fsync it, then rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise StorageError(
            f"cannot write checkpoint {path}: {e.strerror or e}; the previous checkpoint "
            "there (if any) is intact"
        ) from e
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=False)


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete temporary files that a crash during :func:`save_checkpoint` left in ``folder``."""
    if not folder.is_dir():
        return []
    stale = sorted(folder.glob(".*.pt.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def estimate_checkpoint_bytes(
    modules: Iterable[torch.nn.Module], optimizer_state_copies: int = 2
) -> int:
    """Bytes of one checkpoint: parameters and buffers, plus Adam's two moments per parameter."""
    params = buffers = 0
    for module in modules:
        params += sum(p.numel() * p.element_size() for p in module.parameters())
        buffers += sum(b.numel() * b.element_size() for b in module.buffers())
    return params * (1 + optimizer_state_copies) + buffers + _OVERHEAD_BYTES


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write, fsync and delete a probe file in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe.") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise StorageError(f"run folder {folder} is not writable: {e.strerror or e}") from e


def check_free_space(folder: Path, checkpoint_bytes: int, existing_bytes: int = 0) -> None:
    """Raise :class:`StorageError` unless ``folder``'s disk holds the run's checkpoints.

    The run needs room for ``CHECKPOINT_COPIES`` checkpoints of ``checkpoint_bytes``, less the
    ``existing_bytes`` of checkpoints already there (a resumed run replaces them), and always
    for at least one more (the temporary file of the next write).
    """
    needed = max(checkpoint_bytes, CHECKPOINT_COPIES * checkpoint_bytes - existing_bytes)
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise StorageError(
            f"run folder {folder}: {_size(free)} free on its disk, but the run's checkpoints "
            f"need about {_size(needed)} more (each about {_size(checkpoint_bytes)}); "
            "free some space or choose another --out"
        )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"
