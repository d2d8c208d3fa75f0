"""FusedSparseAdam against torch.optim.SparseAdam, step by step."""

from __future__ import annotations

from copy import deepcopy as copy_of

import pytest
import torch

import dien.layers.fused as fused
from dien.train.sparse_adam import FusedSparseAdam


@pytest.fixture
def extension(monkeypatch):
    monkeypatch.delenv(fused.DISABLE_VARIABLE, raising=False)
    if fused.load_extension() is None:
        pytest.skip("the fused kernels could not be compiled here")


def sparse_gradients(table_rows, width, steps, seed, dtype):
    """Per step, a sparse gradient naming random rows, duplicates included (they add up)."""
    g = torch.Generator().manual_seed(seed)
    gradients = []
    for step in range(steps):
        n = 0 if step == 2 else 12  # one step names no row at all
        rows = torch.randint(0, table_rows, (1, n), generator=g)
        values = torch.randn(n, width, generator=g, dtype=dtype)
        shape = (table_rows, width)
        gradients.append(torch.sparse_coo_tensor(rows, values, shape, check_invariants=True))
    return gradients


def run(optimizer_class, gradients, dtype, **options):
    torch.manual_seed(0)
    tables = [torch.nn.Parameter(torch.randn(30, 5, dtype=dtype)) for _ in range(2)]
    optimizer = optimizer_class(tables, lr=0.01, **options)
    for step, gradient in enumerate(gradients):
        tables[0].grad = gradient
        tables[1].grad = None if step % 3 == 1 else gradient * 2  # a table without a gradient
        optimizer.step()
    return tables, optimizer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("maximize", [False, True])
def test_fused_step_matches_sparse_adam(extension, dtype, maximize, monkeypatch):
    import dien.train.sparse_adam as module

    calls = []
    extension = fused.load_extension()

    class Counting:
        def sparse_adam_step(self, *args):
            calls.append(1)
            extension.sparse_adam_step(*args)

    monkeypatch.setattr(module, "load_extension", Counting)
    gradients = sparse_gradients(30, 5, 7, seed=1, dtype=dtype)
    got, fast = run(FusedSparseAdam, gradients, dtype, maximize=maximize)
    want, slow = run(torch.optim.SparseAdam, gradients, dtype, maximize=maximize)
    assert calls, "the fused step did not run"
    tolerance = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {}
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, **tolerance)
    for a, b in zip(fast.state.values(), slow.state.values(), strict=True):
        assert a["step"] == b["step"]
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], **tolerance)
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], **tolerance)


def test_state_dicts_load_into_each_other_and_the_switch_falls_back(extension, monkeypatch):
    gradients = sparse_gradients(30, 5, 4, seed=2, dtype=torch.float32)
    tables, fast = run(FusedSparseAdam, gradients[:2], torch.float32)
    copy = [torch.nn.Parameter(t.detach().clone()) for t in tables]
    slow = torch.optim.SparseAdam(copy, lr=0.01)
    slow.load_state_dict(copy_of(fast.state_dict()))  # as from a checkpoint file
    monkeypatch.setenv(fused.DISABLE_VARIABLE, "1")  # torch's own step from here on
    for gradient in gradients[2:]:
        for optimizer, params in ((fast, tables), (slow, copy)):
            params[0].grad, params[1].grad = gradient, gradient * 2
            optimizer.step()
    for a, b in zip(tables, copy, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dense_gradient_is_refused(extension):
    table = torch.nn.Parameter(torch.zeros(4, 2))
    optimizer = FusedSparseAdam([table])
    table.grad = torch.ones(4, 2)
    with pytest.raises(RuntimeError, match="dense gradients"):
        optimizer.step()
