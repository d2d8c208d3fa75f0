"""Training and scoring speed of this project's DIEN and DIN, fused kernels against plain ones.

On Books-shaped generated data (``benchmarks.synthetic``: Books' vocabulary sizes, histories of
mean length 13.7 capped at 100) at the paper's sizes (embedding 18, GRU 36, MLP 200-80,
batch 128), this prints samples/s with the fused C++ kernels of ``dien.layers.fused`` (column
``fused``) against the same code with ``DIEN_DISABLE_FUSED=1`` (column ``loop``: the Python
loop over steps, the attention layer's own operations, torch's SparseAdam step) for:

1. the recurrence alone (interest extractor GRU and AUGRU evolution, forward and backward,
   on the training batches' shapes);
2. a full training step (forward, click loss plus auxiliary loss for DIEN, backward,
   SparseAdam on the embeddings and Adam on the rest, as ``dien.train.loop``'s
   ``build_optimizers``): DIEN with the auxiliary loss and DIN;
3. scoring the test split in eval mode, batches of 1,024 in the split's order (as
   ``dien evaluate`` reads a split), and the same samples in length-bucketed batches;
4. the kernels' float32 matrix products on MKL against oneDNN (``dien.layers.fused`` takes
   oneDNN's on AMD processors with AVX-512): typical products alone on one thread, and DIEN
   scoring with each.

Training batches are bucketed by length, as the training loop does by default. Batches are
made before timing, so the figures are model and optimizer time only. Both variants run in the
same process, in alternating rounds, and each figure is the median over rounds, so that the
ratio holds on a machine shared with other work. Besides wall-clock samples/s, the figure per
second of this process's CPU time is printed (with one thread it is the rate the machine would
give without other load).

Run ``python -m benchmarks.speed`` from the repository root (``--help`` for options).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.synthetic import SyntheticData, SyntheticSpec, generate
from dien.config import ModelConfig, TrainConfig
from dien.data.batch import Batch, VocabSizes
from dien.data.loader import BatchLoader
from dien.data.sampling import NegativeSampler
from dien.layers import fused
from dien.layers.recurrent import RecurrentLayer
from dien.models import CTRModel, build_model
from dien.train.loop import build_optimizers


@dataclass(frozen=True)
class Rate:
    """Samples per wall-clock second and per second of this process's CPU time."""

    wall: float
    cpu: float


def timed(fn: Callable[[Batch], object], batches: list[Batch]) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    samples = 0
    for batch in batches:
        fn(batch)
        samples += batch.size
    return time.perf_counter() - wall, time.process_time() - cpu, samples


def compare(
    variants: dict[str, Callable[[Batch], object]], batches: list[Batch], rounds: int
) -> dict[str, Rate]:
    """Median rates over ``rounds`` alternating rounds, after one warm-up batch each."""
    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    for name, fn in variants.items():
        with_variant(name, lambda fn=fn: fn(batches[0]))
    for _ in range(rounds):
        for name, fn in variants.items():
            wall, cpu, samples = with_variant(name, lambda fn=fn: timed(fn, batches))
            walls[name].append(samples / wall)
            cpus[name].append(samples / max(cpu, 1e-9))
    return {n: Rate(statistics.median(walls[n]), statistics.median(cpus[n])) for n in variants}


def with_variant(name: str, fn: Callable[[], object]) -> object:
    """Run ``fn`` with the fused kernels off (variant ``loop``) or on (``fused``)."""
    before = os.environ.get(fused.DISABLE_VARIABLE)
    os.environ[fused.DISABLE_VARIABLE] = "1" if name == "loop" else "0"
    try:
        return fn()
    finally:
        if before is None:
            del os.environ[fused.DISABLE_VARIABLE]
        else:
            os.environ[fused.DISABLE_VARIABLE] = before


def make_batches(data: SyntheticData, seed: int) -> tuple[list[Batch], list[Batch], list[Batch]]:
    sampler = NegativeSampler(data.item_frequency, data.item_category, "frequency")
    train = BatchLoader(
        data.split_arrays("train"),
        batch_size=128,
        max_history=100,
        shuffle=True,
        seed=seed,
        bucket_by_length=True,
        aux_sampler=sampler,
    )
    test = BatchLoader(
        data.split_arrays("test"), batch_size=1024, max_history=100, shuffle=False, seed=seed
    )
    bucketed = BatchLoader(
        data.split_arrays("test"),
        batch_size=1024,
        max_history=100,
        shuffle=True,
        seed=seed,
        bucket_by_length=True,
    )
    return list(train), [b.without_label() for b in test], [b.without_label() for b in bucketed]


def train_step(model: CTRModel, optimizers: list[torch.optim.Optimizer], batch: Batch) -> None:
    out = model(batch)
    loss = F.binary_cross_entropy_with_logits(out.logit, batch.label)  # ()
    if out.aux_loss is not None:
        loss = loss + model.aux_loss_alpha * out.aux_loss  # ()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()


def recurrence_rates(batches: list[Batch], rounds: int) -> dict[str, dict[str, Rate]]:
    """Forward and backward of one recurrent layer on each training batch's mask."""
    torch.manual_seed(0)
    results = {}
    for cell, width in (("gru", 36), ("augru", 36)):
        layer = RecurrentLayer(width, 36, cell)
        inputs = {id(b): torch.randn(b.size, b.hist_items.shape[1], width) for b in batches}

        def step(batch: Batch, layer: RecurrentLayer = layer, inputs: dict = inputs) -> None:
            x = inputs[id(batch)].requires_grad_()
            mask = batch.history_mask()  # (B, T)
            attention = torch.softmax(x[..., 0].detach(), dim=-1)  # (B, T)
            outputs, final = layer(x, mask, None if layer.cell == "gru" else attention)
            (outputs.sum() + final.sum()).backward()

        name = "extractor GRU" if cell == "gru" else "AUGRU"
        results[name] = compare({"loop": step, "fused": step}, batches, rounds)
    return results


def model_rates(
    name: str,
    train: list[Batch],
    tests: list[list[Batch]],
    vocab: VocabSizes,
    rounds: int,
) -> list[dict[str, Rate]]:
    """Rates of the training step on ``train``, then of scoring each list of ``tests``."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), vocab)
    optimizers = build_optimizers(model, TrainConfig())

    def train_fn(batch: Batch) -> None:
        model.train()
        train_step(model, optimizers, batch)

    def score_fn(batch: Batch) -> None:
        model.eval()
        with torch.inference_mode():
            torch.sigmoid(model(batch).logit)

    variants = {"loop": train_fn, "fused": train_fn}
    rates = [compare(variants, train, rounds)]
    for test in tests:
        rates.append(compare({"loop": score_fn, "fused": score_fn}, test, rounds))
    return rates


PRODUCTS = {  # the kernels' typical float32 products: (rows, inner, outer)
    "recurrence step, 512 rows": (512, 36, 108),
    "attention block, 512 steps": (512, 72, 80),
}


def product_lines(
    name: str, test: list[Batch], vocab: VocabSizes, rounds: int, threads: int
) -> list[str]:
    """The kernels' matrix products on MKL and on oneDNN: each typical product alone on one
    thread, then scoring ``name`` on ``test`` with the products on each, alternating rounds."""
    ext = fused.load_extension()
    assert ext is not None
    if not ext.onednn_available():
        return ["products: this torch has no oneDNN matrix product; all run on MKL"]
    chosen = ext.onednn_enabled()
    lines = [f"products on {'oneDNN' if chosen else 'MKL'} here (dien.layers.fused's choice)"]
    torch.set_num_threads(1)
    for label, (rows, inner, outer) in PRODUCTS.items():
        mkl, onednn = (
            min(t)
            for t in zip(
                *(ext.time_products(rows, inner, outer, 200) for _ in range(3)), strict=True
            )
        )
        lines.append(
            f"{label} ({rows}x{inner} @ {inner}x{outer}), 1 thread: MKL {mkl / 200e-6:.1f} us, "
            f"oneDNN {onednn / 200e-6:.1f} us, {mkl / onednn:.2f}x"
        )
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name), vocab).eval()

    def scoring(onednn: bool) -> Callable[[Batch], None]:
        def score(batch: Batch) -> None:
            ext.set_onednn(onednn)
            with torch.inference_mode():
                model(batch)

        return score

    try:
        rates = compare({"MKL": scoring(False), "oneDNN": scoring(True)}, test, rounds)
    finally:
        ext.set_onednn(chosen)
    mkl, onednn = rates["MKL"].wall, rates["oneDNN"].wall
    lines.append(
        f"{name.upper()} score, bucketed, {threads} threads: MKL {mkl:,.0f}, oneDNN "
        f"{onednn:,.0f} samples/s, {onednn / mkl:.2f}x"
    )
    return lines


def line(label: str, rates: dict[str, Rate]) -> str:
    loop, fast = rates["loop"], rates["fused"]
    return (
        f"{label:<28} {loop.wall:>9,.0f} {fast.wall:>9,.0f} {fast.wall / loop.wall:>6.1f}x"
        f"   {loop.cpu:>9,.0f} {fast.cpu:>9,.0f} {fast.cpu / loop.cpu:>6.1f}x"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-samples", type=int, default=6_400, help="training samples")
    parser.add_argument("--test-samples", type=int, default=8_192, help="scored samples")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per figure")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="dien,din", help="comma-separated: dien, din")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if fused.load_extension() is None:
        raise SystemExit("the fused recurrence could not be built here; nothing to compare")
    build_seconds = time.perf_counter() - start
    spec = SyntheticSpec(
        train_samples=args.train_samples, test_samples=args.test_samples, seed=args.seed
    )
    data = generate(spec)
    train, test, bucketed_test = make_batches(data, args.seed)
    vocab = VocabSizes(**data.vocab_sizes)
    widths = [b.hist_items.shape[1] for b in train]
    lengths = np.concatenate([b.hist_lengths.numpy() for b in train])

    print(
        f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or ''} "
        f"{os.cpu_count()} CPUs; fused extension ready in {build_seconds:.1f} s"
    )
    print(
        f"{len(train)} training batches of 128 (mean history {lengths.mean():.1f}, "
        f"mean padded width {np.mean(widths):.1f}, bucketed), "
        f"{len(test)} scoring batches of 1,024 (in split order, as evaluation reads them; "
        f"'bucketed': the same samples in length-bucketed batches); "
        f"median of {args.rounds} rounds"
    )
    header = (
        f"{'samples/s':<28} {'loop':>9} {'fused':>9} {'ratio':>7}   "
        f"{'loop/cpu-s':>9} {'fused/cpu-s':>9} {'ratio':>7}"
    )
    print(header)
    for name, rates in recurrence_rates(train, args.rounds).items():
        print(line(f"{name} fwd+bwd", rates))
    for name in args.models.split(","):
        training, scoring, bucketed = model_rates(
            name, train, [test, bucketed_test], vocab, args.rounds
        )
        label = "DIEN (aux on)" if name == "dien" else name.upper()
        print(line(f"{label} train step", training))
        print(line(f"{label} score", scoring))
        print(line(f"{label} score, bucketed", bucketed))
    print()
    print("\n".join(product_lines("dien", bucketed_test, vocab, args.rounds, args.threads)))


if __name__ == "__main__":
    main()
