"""FLOPs per sample of DIEN and DIN at the paper's sizes, and the speed bound they imply.

Counted: multiply-adds of matrix products, 2 FLOPs each (linear layers, GRU gates,
attention-weighted pooling). Not counted: biases, activations, element-wise gate arithmetic,
embedding lookups, softmax and the optimizer; they are memory-bound and small next to the
matrix products at these widths. A training step is taken as 3 forward passes (the backward
pass computes gradients for both the inputs and the weights of each product).

Per behaviour step of a history of length L:
- DIEN: interest-extractor GRU and interest-evolution GRU (3 gates, each on input and state),
  attention MLP on [q, h, q - h, q * h], and in training the auxiliary-loss MLP on [h_t, e]
  for the next behaviour and each negative (L - 1 transitions per history).
- DIN: attention MLP on [q, k, q - k, q * k] and the weighted sum of the history.
Per sample: the output MLP on [user, target, sum of history, target * sum, interest].

Run ``python -m benchmarks.flops`` to print the counts and this machine's matmul rate.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sizes:
    """Widths of the paper's public-data setting."""

    embedding_dim: int = 18  # user, item and category ids each
    hidden_size: int = 36  # both GRUs
    mlp_sizes: tuple[int, ...] = (200, 80)
    attention_mlp_sizes: tuple[int, ...] = (80, 40)
    aux_mlp_sizes: tuple[int, ...] = (100, 50)
    aux_negatives: int = 1

    @property
    def item_dim(self) -> int:
        """An item is its id embedding and its category embedding side by side."""
        return 2 * self.embedding_dim


@dataclass(frozen=True)
class SampleFlops:
    train: float  # per training sample: 3 forward passes, auxiliary loss included if on
    score: float  # per scored sample: one forward pass, no auxiliary loss


def mlp_flops(widths: tuple[int, ...] | list[int]) -> int:
    """FLOPs of an MLP through the given layer widths, input first: 2 * sum(n_in * n_out)."""
    return 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def gru_step_flops(input_size: int, hidden_size: int) -> int:
    """FLOPs of one GRU step: three gates, each a product with the input and the state."""
    return 2 * 3 * hidden_size * (input_size + hidden_size)


def _output_mlp(s: Sizes, interest_dim: int) -> int:
    width = s.embedding_dim + 3 * s.item_dim + interest_dim
    return mlp_flops((width, *s.mlp_sizes, 1))


def dien_flops(mean_length: float, sizes: Sizes = Sizes(), aux_loss: bool = True) -> SampleFlops:
    """FLOPs per sample of DIEN for histories of the given mean length (at least 1)."""
    s, h = sizes, sizes.hidden_size
    per_step = (
        gru_step_flops(s.item_dim, h)
        + gru_step_flops(h, h)
        + mlp_flops((4 * h, *s.attention_mlp_sizes, 1))
    )
    forward = mean_length * per_step + _output_mlp(s, h)
    aux_step = (1 + s.aux_negatives) * mlp_flops((h + s.item_dim, *s.aux_mlp_sizes, 1))
    aux = max(mean_length - 1, 0.0) * aux_step if aux_loss else 0.0
    return SampleFlops(train=3 * (forward + aux), score=forward)


def din_flops(mean_length: float, sizes: Sizes = Sizes()) -> SampleFlops:
    """FLOPs per sample of DIN for histories of the given mean length."""
    s, d = sizes, sizes.item_dim
    per_step = mlp_flops((4 * d, *s.attention_mlp_sizes, 1)) + 2 * d
    forward = mean_length * per_step + _output_mlp(s, d)
    return SampleFlops(train=3 * forward, score=forward)


def matmul_rates(threads: int = 2, seconds: float = 0.3) -> dict[str, float]:
    """Measured GFLOP/s of float32 matrix products: shapes met in DIEN at batch 128 and mean
    history 13.7 (1,792 behaviour steps), and one large square product."""
    torch.set_num_threads(threads)
    steps = 128 * 14
    shapes = {
        "attention MLP (1792x144 @ 144x80)": (steps, 144, 80),
        "GRU input gates (1792x36 @ 36x108)": (steps, 36, 108),
        "GRU state gates (128x36 @ 36x108)": (128, 36, 108),
        "output MLP (128x162 @ 162x200)": (128, 162, 200),
        "square (1024x1024 @ 1024x1024)": (1024, 1024, 1024),
    }
    gen = torch.Generator().manual_seed(0)
    rates = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        out = torch.empty(m, n)
        torch.mm(a, b, out=out)
        reps, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            for _ in range(10):
                torch.mm(a, b, out=out)
            reps += 10
        rates[name] = 2 * m * k * n * reps / elapsed / 1e9
    return rates


def bound_lines(mean_length: float, rates: dict[str, float]) -> list[str]:
    """Human-readable FLOPs and implied samples/s bounds at the given rates."""
    lo, hi = min(rates.values()) * 1e9, max(rates.values()) * 1e9
    rows = [
        ("DIEN, aux loss on", dien_flops(mean_length)),
        ("DIN", din_flops(mean_length)),
    ]
    lines = []
    for name, f in rows:
        lines.append(
            f"{name}: {f.train / 1e6:.2f} MFLOP per training sample, {f.score / 1e6:.2f} per "
            f"scored sample; at {lo / 1e9:.0f}-{hi / 1e9:.0f} GFLOP/s at most "
            f"{lo / f.train:,.0f}-{hi / f.train:,.0f} training and "
            f"{lo / f.score:,.0f}-{hi / f.score:,.0f} scoring samples/s"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="FLOPs per sample and the implied speed bound.")
    parser.add_argument("--mean-history", type=float, default=13.7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    print(
        "| mean history | DIEN train MFLOP | DIEN score MFLOP | DIN train MFLOP | DIN score MFLOP |"
    )
    print("| --- | --- | --- | --- | --- |")
    for length in sorted({1.0, 5.0, args.mean_history, 25.0, 50.0, 100.0}):
        dien, din = dien_flops(length), din_flops(length)
        print(
            f"| {length:g} | {dien.train / 1e6:.2f} | {dien.score / 1e6:.2f} | "
            f"{din.train / 1e6:.2f} | {din.score / 1e6:.2f} |"
        )
    rates = matmul_rates(args.threads)
    print(f"\nMeasured float32 matmul rate, {args.threads} threads:")
    for name, rate in rates.items():
        print(f"- {name}: {rate:.1f} GFLOP/s")
    print(f"\nBound at mean history {args.mean_history:g}:")
    for line in bound_lines(args.mean_history, rates):
        print("- " + line)


if __name__ == "__main__":
    main()
