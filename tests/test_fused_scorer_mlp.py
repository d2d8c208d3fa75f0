"""The fused sigmoid MLP with a per-row first-layer term against the same layers under autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dien.layers.fused as fused


def reference(features, row_of, per_row, first_weight, layers):
    hidden = torch.sigmoid(F.linear(features, first_weight) + per_row[row_of])
    for i, (weight, bias) in enumerate(layers):
        hidden = F.linear(hidden, weight, bias)
        if i < len(layers) - 1:
            hidden = torch.sigmoid(hidden)
    return hidden[:, 0]


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("N,widths", [(700, [7, 5]), (1, [3]), (0, [4, 3]), (600, [6, 5, 4])])
def test_fused_scorer_mlp_matches_autograd(n_threads, N, widths, restore_torch_globals):
    if fused.load_extension() is None:
        pytest.skip("the fused kernels could not be compiled here")
    torch.set_num_threads(n_threads)  # 700 rows: blocks of 256 shared by two threads
    g = torch.Generator().manual_seed(N)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    features, per_row, first_weight = rand(N, 9), rand(13, widths[0]), rand(widths[0], 9)
    row_of = torch.randint(0, 13, (N,), generator=g)
    layers = [(rand(b, a), rand(b)) for a, b in zip(widths, [*widths[1:], 1], strict=True)]
    wrt = [features, per_row, first_weight, *(t for layer in layers for t in layer)]
    weight = torch.randn(N, generator=g, dtype=torch.float64)

    got = fused.fused_scorer_mlp(features, row_of, per_row, first_weight, layers)
    want = reference(features, row_of, per_row, first_weight, layers)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
    got_grads = torch.autograd.grad((got * weight).sum(), wrt, allow_unused=True)
    want_grads = torch.autograd.grad((want * weight).sum(), wrt, allow_unused=True)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, torch.zeros_like(a) if b is None else b)
