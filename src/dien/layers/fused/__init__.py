"""Fused CPU kernels, each one C++ call instead of many separately dispatched tensor operations:
the GRU-family recurrence (forward and backward), the attention scorer's MLP and the behaviour
embeddings with their sum for inference, the auxiliary loss's MLP (forward and backward) and
SparseAdam's update.

Dimension letters: B batch, T history steps, H hidden width, G gates (3, or 2 for AGRU).

:func:`fused_recurrence` computes exactly what :func:`dien.layers.recurrent.run_recurrence_loop`
computes, with the same arguments, but per step it makes two matrix products (the step's input
and hidden projections) and one C++ loop over the gates instead of about a dozen separately
dispatched tensor operations, and its backward is written out by hand (a reverse loop with one
matrix product per step, then one matrix product over all steps for each gradient of the
inputs and weights). Rows are visited longest first, so a step only works on the rows whose
history is still running: padding costs nothing. The rows are shared among torch's intra-op
threads (``torch.get_num_threads()``, at least 16 rows per thread), each running the whole loop
for its own rows, so the recurrence uses every thread the rest of the model does.

:func:`fused_attention_scores` computes what
:class:`dien.layers.attention.AttentionScorer` computes, where no gradient is wanted (scoring,
evaluation, serving): blocks of valid steps go through the whole MLP while they are in the
cache. Training takes the layer's own operations, whose gradients autograd derives.
:func:`fused_history_embeddings` likewise copies the behaviours' table rows into place and sums
them in one pass where no gradient is wanted.

:func:`fused_scorer_mlp` is a sigmoid MLP over packed rows whose first layer adds a per-row
term, with its backward written out; the auxiliary loss scores its candidates with it.

The kernels' matrix products of at least 256 float32 rows (a share's running rows, a block of
attention steps or auxiliary-loss candidates) run on torch's oneDNN on AMD processors with
AVX-512, where torch's MKL runs its AVX2 kernels and oneDNN is about 1.6 times as fast
(``gemm.cpp``; ``DIEN_ONEDNN=0`` or ``1`` overrides the choice). Elsewhere, and always for
smaller products and float64, they run on MKL. The two give the same values up to rounding.

The extension (``bindings.cpp`` and the kernels' ``.cpp`` files beside this file) is compiled
with the system's C++ compiler the first time it is needed in a process and cached by PyTorch
in its extensions folder (``TORCH_EXTENSIONS_DIR``, by default under
``~/.cache/torch_extensions``); later processes load the cached build. Compiling needs a C++
compiler, ``ninja`` and ``setuptools``.

What it covers, and what happens otherwise:

- CPU tensors of float32 or float64. Other devices (CUDA) and dtypes run the Python loop and
  the layers' own operations, which dispatch the same work to the device, and torch's
  SparseAdam step.
- If the extension cannot be built or loaded, a single warning is logged and every call runs
  those instead. ``DIEN_DISABLE_FUSED=1`` in the environment forces them.
- float32 sigmoids and tanhs use the kernels' own exponential (relative error below 2e-7), so
  float32 results differ from the plain operations by rounding only; float64 results agree to
  about 1e-15.
- First-order gradients only: differentiating the backward again raises an error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

SOURCES = [
    Path(__file__).with_name(name)
    for name in (
        "bindings.cpp",
        "recurrence.cpp",
        "attention.cpp",
        "scorer_mlp.cpp",
        "embedding.cpp",
        "gemm.cpp",
        "sparse_adam.cpp",
    )
]
KIND_CODES = {"gru": 0, "agru": 1, "augru_paper": 2, "augru_authors": 3}
DISABLE_VARIABLE = "DIEN_DISABLE_FUSED"
ONEDNN_VARIABLE = "DIEN_ONEDNN"

_lock = threading.Lock()
_extension: ModuleType | None = None
_failed = False


def fused_disabled() -> bool:
    """True when ``DIEN_DISABLE_FUSED`` is set to anything but empty or ``0``."""
    return os.environ.get(DISABLE_VARIABLE, "") not in ("", "0")


def _compiler_flags() -> list[str]:
    flags = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    if platform.machine() in ("x86_64", "AMD64"):
        capability = torch.backends.cpu.get_cpu_capability()
        if capability in ("AVX2", "AVX512"):
            flags += ["-mavx2", "-mfma"]
    return flags + _openmp_flags()


def _openmp_flags() -> list[str]:
    """``-fopenmp`` where torch's threads are OpenMP's (its Linux builds).

    ``at::parallel_for`` is compiled into the extension: without the flag it runs every share
    of rows on the calling thread. The extension then uses the OpenMP runtime torch has already
    loaded (same library name), so the two share one thread pool. Elsewhere the shares run one
    after another: correct, on one thread.
    """
    if platform.system() == "Linux" and "OpenMP" in torch.__config__.parallel_info():
        return ["-fopenmp"]
    return []


@contextlib.contextmanager
def _our_ninja_first() -> Iterator[None]:
    """Put the ``ninja`` package's executable first on PATH while the extension loads.

    Two versions of ninja hash a build command differently, so a build made by one looks out
    of date to the other: with a system ninja beside the package's, every switch between an
    activated and a plain environment would recompile the extension (about 40 s). Always
    taking the dependency's ninja keeps one build valid for every process.
    """
    try:
        import ninja

        bin_dir = ninja.BIN_DIR
    except (ImportError, AttributeError):  # no package: whatever ninja PATH has
        yield
        return
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = bin_dir + os.pathsep + path
    try:
        yield
    finally:
        os.environ["PATH"] = path


def load_extension() -> ModuleType | None:
    """The compiled extension, building it on first use; None if it cannot be had."""
    global _extension, _failed
    if _extension is not None or _failed:
        return _extension
    with _lock:
        if _extension is not None or _failed:
            return _extension
        flags = _compiler_flags()
        name = "dien_fused" + ("_avx2" if "-mavx2" in flags else "")
        try:
            from torch.utils import cpp_extension

            with _our_ninja_first():
                _extension = cpp_extension.load(
                    name=name,
                    sources=[str(source) for source in SOURCES],
                    extra_cflags=flags,
                    extra_ldflags=_openmp_flags(),
                    verbose=False,
                )
            _choose_products(_extension)
        except Exception as error:  # a missing compiler, ninja or header: anything goes
            _extension = None
            _failed = True
            logger.warning(
                "the fused kernels could not be compiled (%s: %s); the GRU family runs "
                "the slower Python loop over steps and attention runs as separate operations",
                type(error).__name__,
                str(error).strip().splitlines()[-1] if str(error).strip() else "",
            )
    return _extension


def _choose_products(ext: ModuleType) -> None:
    """Put the kernels' large float32 matrix products on oneDNN where it beats MKL.

    torch sends float32 products to MKL, whose kernels on AMD processors are its AVX2 ones
    even where the processor has AVX-512 (Zen 4 and 5); the oneDNN inside torch uses AVX-512
    on any processor that has it. So oneDNN takes them on AMD processors with AVX-512 (there
    1.5x faster on the recurrence's 512-row product, ``benchmarks/speed.py`` prints both), MKL
    everywhere else. The rule reads the processor, not a timing, so that a run gives the same
    numbers every time on one machine. ``DIEN_ONEDNN=1`` or ``0`` forces the choice.
    """
    if not ext.onednn_available():
        return
    forced = os.environ.get(ONEDNN_VARIABLE, "")
    if forced in ("0", "1"):
        ext.set_onednn(forced == "1")
        return
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    ext.set_onednn(avx512 and cpu_vendor() == "AuthenticAMD")


def cpu_vendor() -> str:
    """The x86 vendor string of /proc/cpuinfo (``GenuineIntel``, ``AuthenticAMD``), else ''."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def fused_supported(inputs: Tensor) -> bool:
    """Whether :func:`fused_recurrence` can take these inputs (builds the extension if so)."""
    if fused_disabled():
        return False
    if inputs.device.type != "cpu" or inputs.dtype not in (torch.float32, torch.float64):
        return False
    return load_extension() is not None


def capturing_graph() -> bool:
    """True while tracing or exporting a graph, which must record plain tensor operations."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def fused_inference_supported(*tensors: Tensor) -> bool:
    """Whether the inference-only kernels can take these tensors: no gradient is wanted of
    any of them, no graph is being traced or exported, and the first is one
    :func:`fused_supported` takes."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return not capturing_graph() and fused_supported(tensors[0])


def fused_history_embeddings(
    item_weight: Tensor, category_weight: Tensor, items: Tensor, categories: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """The behaviour embeddings ``(B, T, 2D)`` (``[item row | category row]`` per step) and
    their sum over the valid steps ``(B, 2D)``, in one pass. Inference only: call when
    :func:`fused_inference_supported` is true for the tables.

    ``item_weight (items, D)``, ``category_weight (categories, D)``; ``items``,
    ``categories`` and ``mask`` ``(B, T)``. An id outside its table raises ``IndexError``.
    """
    ext = load_extension()
    assert ext is not None
    behaviours, pooled = ext.history_embeddings(
        item_weight.contiguous(),
        category_weight.contiguous(),
        items.contiguous(),
        categories.contiguous(),
        mask.contiguous(),
    )
    return behaviours, pooled


def fused_attention_scores(
    per_row: Tensor,
    query: Tensor,
    keys: Tensor,
    mask: Tensor,
    step_weight: Tensor,
    layers: list[tuple[Tensor, Tensor]],
) -> Tensor:
    """The attention scorer's MLP on every valid step, in one pass: scores ``(B, T)``, 0 at
    padding. Inference only: call when :func:`fused_inference_supported` is true.

    ``per_row (B, W1)``: the first layer's query part and bias; ``query (B, E)``;
    ``keys (B, T, E)``; ``mask (B, T)``; ``step_weight (W1, 2E)``: the first layer's weight on
    ``[k, q * k]``; ``layers``: the later layers' ``(weight, bias)``, each but the last followed
    by a sigmoid (as the first is), the last of width 1. Rows may be expanded from one.
    """
    ext = load_extension()
    assert ext is not None
    weights = [w.contiguous() for w, _ in layers]
    biases = [b.contiguous() for _, b in layers]
    return ext.attention_scores(per_row, query, keys, mask, step_weight, weights, biases)


class _ScorerMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features, row_of, per_row, first_weight, *layers):  # type: ignore
        ext = load_extension()
        assert ext is not None
        weights, biases = list(layers[0::2]), list(layers[1::2])
        *hidden, logits = ext.scorer_mlp_forward(
            features, row_of, per_row, first_weight, weights, biases
        )
        ctx.per_row_count = per_row.shape[0]
        ctx.save_for_backward(features, row_of, first_weight, *weights, *hidden)
        ctx.layer_count = len(weights)
        return logits

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logits):  # type: ignore
        ext = load_extension()
        assert ext is not None
        features, row_of, first_weight, *rest = ctx.saved_tensors
        weights, hidden = rest[: ctx.layer_count], rest[ctx.layer_count :]
        d_features, d_per_row, d_first, *d_layers = ext.scorer_mlp_backward(
            grad_logits.contiguous(),
            features,
            row_of,
            ctx.per_row_count,
            first_weight,
            weights,
            hidden,
        )
        return d_features, None, d_per_row, d_first, *d_layers


def fused_scorer_mlp(
    features: Tensor,
    row_of: Tensor,
    per_row: Tensor,
    first_weight: Tensor,
    layers: list[tuple[Tensor, Tensor]],
) -> Tensor:
    """Logits ``(N,)`` of a sigmoid MLP whose first layer adds a per-row term, with gradients.

    ``features (N, F)``; ``row_of (N,)`` indexes ``per_row (R, W1)``; ``first_weight (W1, F)``;
    ``layers``: the later layers' ``(weight, bias)``, at least the last, of width 1. Every
    layer but the last is followed by a sigmoid:
    ``sigmoid(features first_weight^T + per_row[row_of])`` then the later layers. CPU only:
    call where :func:`fused_supported` is true for ``features``.
    """
    flat = [t.contiguous() for layer in layers for t in layer]
    return _ScorerMLP.apply(
        features.contiguous(),
        row_of.contiguous(),
        per_row.contiguous(),
        first_weight.contiguous(),
        *flat,
    )


class _FusedRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore
        ctx, kind_code, inputs, w_ih, b_ih, attention, mask, w_hh, b_hh, h0, all_outputs
    ):
        ext = load_extension()
        assert ext is not None
        outputs, final, gates, hidden_n, previous = ext.forward(
            kind_code, inputs, w_ih, b_ih, attention, mask, w_hh, b_hh, h0, True, all_outputs
        )
        if outputs is None:  # only the final state was wanted
            outputs = inputs.new_empty(0)
        ctx.kind_code = kind_code
        ctx.save_for_backward(inputs, w_ih, attention, mask, w_hh, gates, hidden_n, previous)
        ctx.set_materialize_grads(False)
        return outputs, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_outputs, grad_final):  # type: ignore
        ext = load_extension()
        assert ext is not None
        inputs, w_ih, attention, mask, w_hh, gates, hidden_n, previous = ctx.saved_tensors
        empty = gates.new_empty(0)
        d_inputs, d_w_ih, d_b_ih, d_attention, d_w_hh, d_b_hh, d_h0 = ext.backward(
            ctx.kind_code,
            empty if grad_outputs is None else grad_outputs,
            empty if grad_final is None else grad_final,
            inputs,
            w_ih,
            attention,
            mask,
            w_hh,
            gates,
            hidden_n,
            previous,
        )
        d_attention = d_attention if ctx.kind_code != KIND_CODES["gru"] else None
        return None, d_inputs, d_w_ih, d_b_ih, d_attention, None, d_w_hh, d_b_hh, d_h0, None


def fused_recurrence(
    kind: str,
    inputs: Tensor,
    attention: Tensor | None,
    mask: Tensor,
    weights: tuple[Tensor, Tensor, Tensor, Tensor],
    h0: Tensor | None = None,
    all_outputs: bool = True,
) -> tuple[Tensor | None, Tensor]:
    """The arguments and results of :func:`dien.layers.recurrent.run_recurrence`.

    Call only when :func:`fused_supported` is true for ``inputs``. Without gradients to track
    (inference, ``torch.no_grad``) nothing is stored for backward. With ``all_outputs=False``
    the ``(B, T, H)`` hidden states are never written and None stands in their place.
    """
    B, T, _ = inputs.shape
    weight_ih, weight_hh, bias_ih, bias_hh = weights
    H = weight_hh.shape[1]
    code = KIND_CODES[kind]
    if code != KIND_CODES["gru"] and attention is None:
        raise ValueError(f"the {kind} cell needs attention scores")
    h = inputs.new_zeros(B, H) if h0 is None else h0  # (B, H)
    if T == 0:
        return (inputs.new_zeros(B, 0, H) if all_outputs else None), h  # (B, 0, H), (B, H)
    a = inputs.new_empty(0) if code == KIND_CODES["gru"] else attention.contiguous()  # (B, T)
    args = (
        inputs.contiguous(),  # (B, T, I)
        weight_ih.contiguous(),  # (G*H, I)
        bias_ih.contiguous(),  # (G*H,)
        a,
        mask.contiguous(),  # (B, T)
        weight_hh.contiguous(),  # (G*H, H)
        bias_hh.contiguous(),  # (G*H,)
        h.contiguous(),  # (B, H)
    )
    tracked = torch.is_grad_enabled() and any(t.requires_grad for t in args)
    if not tracked:
        outputs, final = load_extension().forward(code, *args, False, all_outputs)
        return outputs, final  # (B, T, H) or None, (B, H)
    outputs, final = _FusedRecurrence.apply(code, *args, all_outputs)
    return (outputs if all_outputs else None), final
