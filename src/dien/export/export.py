"""Export a run's model to ONNX or TorchScript, with a JSON sidecar that describes it.

Both formats take the :class:`~dien.export.graph.ScoringModule` inputs (int64 ``user``,
``item``, ``category`` ``(B,)``; ``hist_items``, ``hist_cats`` ``(B, T)``; ``hist_lengths``
``(B,)``) and return ``probability`` and ``logit`` ``(B,)``, for any ``B >= 1`` and any
``T >= 0``. Ids are the run's vocabulary ids (0 = unknown / padding), not raw ids: the
sidecar names the prepared dataset whose vocabularies map them.

How the loop over history steps stays dynamic:

- TorchScript: the wrapper is traced (``torch.jit.trace``) with its recurrent layers' loops
  compiled by ``torch.jit.script``, so the trace keeps a real loop over ``T``.
- ONNX: the same mixed trace goes through PyTorch's TorchScript-based exporter
  (``torch.onnx.export(..., dynamo=False)``), which turns the scripted loop into an ONNX
  ``Loop`` over the dynamic history axis. The newer ``torch.export``-based exporter would need
  the loop rewritten with a scan operator; the TorchScript-based one is deprecated upstream
  but still shipped, and its warning is silenced here because the choice is deliberate.
  Opset 17; onnxruntime runs the result.

After writing, :func:`export_run` reloads the file (onnxruntime for ONNX, when installed) and
checks it against the eager model on a batch of varied history lengths.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dien import __version__
from dien.export.graph import INPUT_NAMES, OUTPUT_NAMES, ScoringModule
from dien.models import CTRModel
from dien.train.inference import LoadedRun, load_run

logger = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
ONNX_OPSET = 17
TOLERANCE = 1e-5


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the model file
    sidecar: Path  # the JSON description beside it
    max_abs_diff: float | None  # exported vs eager on the check batch; None when not checked


def example_inputs(
    lengths: list[int], users: int, items: int, categories: int, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random valid inputs in :data:`INPUT_NAMES` order with the given history lengths."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths, default=0)
    hist_lengths = torch.tensor(lengths, dtype=torch.int64)  # (B,)
    mask = torch.arange(T)[None, :] < hist_lengths[:, None]  # (B, T)

    def ids(high: int, *shape: int) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=g)

    return (
        ids(users, B),
        ids(items, B),
        ids(categories, B),
        ids(items, B, T) * mask,
        ids(categories, B, T) * mask,
        hist_lengths,
    )


def trace_scoring_module(
    model: CTRModel, example: tuple[torch.Tensor, ...]
) -> torch.jit.ScriptModule:
    """The traced :class:`ScoringModule` of ``model`` (dynamic batch size and history length)."""
    wrapper = ScoringModule(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
        return torch.jit.trace(wrapper, example, check_trace=False)


def export_onnx(model: CTRModel, example: tuple[torch.Tensor, ...], out: Path) -> None:
    """Write ``model`` as ONNX with dynamic ``batch`` and ``history`` axes."""
    wrapper = ScoringModule(model).eval()
    axes: dict[str, dict[int, str]] = {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES}
    axes["hist_items"] = axes["hist_cats"] = {0: "batch", 1: "history"}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*advanced indexing.*", category=UserWarning)
        torch.onnx.export(
            wrapper,
            example,
            str(out),
            dynamo=False,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
        )


def load_exported(path: str | Path, fmt: ExportFormat) -> Callable[..., np.ndarray]:
    """A function of the :data:`INPUT_NAMES` tensors -> probabilities ``(B,)`` from a file.

    TorchScript through ``torch.jit.load``; ONNX through onnxruntime (CPU).
    """
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
            module = torch.jit.load(str(path))

        def run_torchscript(*inputs: torch.Tensor) -> np.ndarray:
            with torch.no_grad():
                return module(*inputs)[0].numpy()

        return run_torchscript
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # its optimiser's notes about loop-body names are noise
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run_onnx(*inputs: torch.Tensor) -> np.ndarray:
        feed = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)}
        return session.run([OUTPUT_NAMES[0]], feed)[0]

    return run_onnx


def run_exported(
    path: str | Path, fmt: ExportFormat, inputs: tuple[torch.Tensor, ...]
) -> np.ndarray:
    """Probabilities ``(B,)`` of one batch from an exported file."""
    return load_exported(path, fmt)(*inputs)


def sidecar_path(model_path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    return model_path.with_name(model_path.name + ".json")


def export_run(
    run_dir: str | Path,
    format: ExportFormat,
    out: str | Path | None = None,
    checkpoint: str = "best",
    verify: bool = True,
) -> ExportResult:
    """Export a run's model; ``out`` defaults to ``RUN/export/<model name>.onnx`` (or ``.pt``).

    Writes the model file and ``<file>.json`` beside it (inputs, outputs, vocabulary sizes,
    the history limit the model was trained with). With ``verify``, reloads the file and
    raises RuntimeError when it differs from the eager model by more than 1e-5.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected onnx or torchscript")
    loaded = load_run(run_dir, device="cpu", checkpoint=checkpoint)
    name = loaded.config.model.name
    path = Path(out) if out else Path(run_dir) / "export" / f"{name}{SUFFIXES[format]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    vocab = loaded.vocab
    example = example_inputs([3, 0, 5], vocab.users, vocab.items, vocab.categories)
    description = describe(name, format, path, loaded, checkpoint)
    if format == "torchscript":
        traced = trace_scoring_module(loaded.model, example)
        extra = {"dien.json": json.dumps(description)}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit")
            torch.jit.save(traced, str(path), _extra_files=extra)
    else:
        export_onnx(loaded.model, example, path)
    sidecar = sidecar_path(path)
    sidecar.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    logger.info("exported %s as %s to %s", name, format, path)

    diff = check_export(loaded.model, path, format) if verify else None
    return ExportResult(path, sidecar, diff)


def check_export(model: CTRModel, path: Path, fmt: ExportFormat) -> float | None:
    """Max abs difference of exported and eager probabilities on varied lengths, or None."""
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            logger.warning("onnxruntime is not installed: %s was not checked", path)
            return None
    vocab = model.embedding
    sizes = (vocab.user.num_embeddings, vocab.item.num_embeddings, vocab.category.num_embeddings)
    run = load_exported(path, fmt)
    worst = 0.0
    for seed, lengths in enumerate(([0], [7, 2, 0, 12], [1])):
        inputs = example_inputs(lengths, *sizes, seed=seed + 1)
        with torch.no_grad():
            eager = torch.sigmoid(ScoringModule(model)(*inputs)[1]).numpy()  # (B,)
        worst = max(worst, float(np.abs(run(*inputs) - eager).max()))
    if worst > TOLERANCE:
        raise RuntimeError(f"{path}: exported model differs from the eager one by {worst:.3g}")
    return worst


def describe(
    name: str, fmt: ExportFormat, path: Path, loaded: LoadedRun, checkpoint: str
) -> dict[str, Any]:
    """The sidecar: how to feed the exported model and what it returns."""
    batch, history = "batch", "history"
    shapes = {
        "user": [batch],
        "item": [batch],
        "category": [batch],
        "hist_items": [batch, history],
        "hist_cats": [batch, history],
        "hist_lengths": [batch],
    }
    return {
        "format": fmt,
        "file": path.name,
        "model": name,
        "dien_version": __version__,
        "opset": ONNX_OPSET if fmt == "onnx" else None,
        "checkpoint": checkpoint,
        "inputs": [{"name": n, "dtype": "int64", "shape": shapes[n]} for n in INPUT_NAMES],
        "outputs": [{"name": n, "dtype": "float32", "shape": [batch]} for n in OUTPUT_NAMES],
        "vocab_sizes": {
            "users": loaded.vocab.users,
            "items": loaded.vocab.items,
            "categories": loaded.vocab.categories,
        },
        "max_history": loaded.config.data.max_history,
        "data_path": loaded.config.data.path,
        "conventions": (
            "ids are vocabulary ids of the prepared dataset at data_path (line i of "
            "vocab/<table>.txt is id i; 0 = unknown and padding); histories are left-aligned, "
            "oldest first, 0 after hist_lengths, cut to the most recent max_history"
        ),
    }
