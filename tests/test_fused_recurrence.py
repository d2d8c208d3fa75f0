"""The fused C++ recurrence against a per-row, per-step reference written here.

Compiling the extension takes 30-90 s the first time on a machine; PyTorch caches the build
(under ~/.cache/torch_extensions), so later runs only load it. These tests are in the default
run so that the fused path is always covered. Where no compiler is available they are skipped,
and the test of the fallback checks that the Python loop then takes over.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

import dien.layers.fused as fused
from dien.layers.recurrent import RecurrentLayer, run_recurrence, run_recurrence_loop

KINDS = ["gru", "agru", "augru_paper", "augru_authors"]
H = 4
IN = 3  # input width
NAMES = ["inputs", "attention", "weight_ih", "weight_hh", "bias_ih", "bias_hh", "h0"]
# (lengths, T): random lengths with 0, batch size 1, all rows empty, T = 0, a full batch
SHAPES = [([0, 3, 6, 1, 6], 6), ([4], 4), ([0], 3), ([2, 0, 5], 7), ([0, 0], 0), ([3, 3], 3)]


@pytest.fixture(scope="module")
def extension():
    ext = fused.load_extension()
    if ext is None:
        pytest.skip("the fused recurrence could not be compiled here")
    return ext


def reference(kind, inputs, a, mask, weights, h0):
    """One row and one step at a time; a padded step keeps the state and outputs zeros."""
    w_ih, w_hh, b_ih, b_hh = weights
    B, T, _ = inputs.shape
    outputs = torch.zeros(B, T, H, dtype=inputs.dtype)
    finals = []
    for b in range(B):
        h = h0[b]
        for t in range(T):
            if not mask[b, t]:
                continue
            hp = w_hh @ h + b_hh
            x = w_ih @ inputs[b, t] + b_ih
            r = torch.sigmoid(x[:H] + hp[:H])
            if kind == "agru":
                candidate = torch.tanh(x[H:] + r * hp[H:])
                c = a[b, t]
            else:
                u = 1 - torch.sigmoid(x[H : 2 * H] + hp[H : 2 * H])  # the paper's update gate
                candidate = torch.tanh(x[2 * H :] + r * hp[2 * H :])
                c = {
                    "gru": u,
                    "augru_paper": a[b, t] * u,
                    "augru_authors": u + a[b, t] * (1 - u),
                }[kind]
            h = (1 - c) * h + c * candidate
            outputs[b, t] = h
        finals.append(h)
    return outputs, torch.stack(finals) if finals else h0


def random_inputs(kind, lengths, T, seed, dtype=torch.float64, hole=False):
    """inputs, attention, mask, weights (weight_ih, weight_hh, bias_ih, bias_hh), h0."""
    g = torch.Generator().manual_seed(seed)
    B, G = len(lengths), 2 if kind == "agru" else 3

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()

    inputs = rand(B, T, IN)
    attention = torch.rand(B, T, generator=g, dtype=dtype).requires_grad_()
    weights = (rand(G * H, IN), rand(G * H, H, scale=0.7), rand(G * H), rand(G * H))
    h0 = rand(B, H)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    if hole and T > 2:
        mask[:, 1] = False  # a padded step inside the history: the state must be carried
    return inputs, attention, mask, weights, h0


def weighted_sum(outputs, final, seed, parts=("outputs", "final")):
    g = torch.Generator().manual_seed(seed)
    R1 = torch.randn(outputs.shape, generator=g, dtype=outputs.dtype)
    R2 = torch.randn(final.shape, generator=g, dtype=final.dtype)
    total = torch.zeros((), dtype=outputs.dtype)
    if "outputs" in parts:
        total = total + (outputs * R1).sum()
    if "final" in parts:
        total = total + (final * R2).sum()
    return total


def gradients(loss, wrt):
    if not loss.requires_grad:  # the reference of an all-empty batch: nothing depends on wrt
        return [torch.zeros_like(w) for w in wrt]
    got = torch.autograd.grad(loss, wrt, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(w) if d is None else d for w, d in zip(wrt, got, strict=True)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lengths,T", SHAPES)
def test_fused_matches_reference_values_and_gradients(extension, kind, lengths, T):
    inputs, a, mask, weights, h0 = random_inputs(kind, lengths, T, seed=len(lengths) + T)
    attention = None if kind == "gru" else a
    wrt = [inputs, a, *weights, h0]

    outputs, final = fused.fused_recurrence(kind, inputs, attention, mask, weights, h0)
    ref_outputs, ref_final = reference(kind, inputs, a, mask, weights, h0)
    torch.testing.assert_close(outputs, ref_outputs, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(final, ref_final, rtol=1e-12, atol=1e-13)
    if T == 0:
        return

    # gradients of the outputs and final state together, then of each alone (the models use
    # one or the other, and autograd then passes no gradient for the unused one)
    for parts in (("outputs", "final"), ("outputs",), ("final",)):
        outputs, final = fused.fused_recurrence(kind, inputs, attention, mask, weights, h0)
        got = gradients(weighted_sum(outputs, final, 5, parts), wrt)
        want = gradients(weighted_sum(ref_outputs, ref_final, 5, parts), wrt)
        for name, g_got, g_want in zip(NAMES, got, want, strict=True):
            torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12, msg=name)


def assert_fused_matches_reference(kind, inputs, a, mask, weights, h0, seed):
    """Outputs, final state and every gradient of the fused recurrence against the reference."""
    attention = None if kind == "gru" else a
    got = fused.fused_recurrence(kind, inputs, attention, mask, weights, h0)
    want = reference(kind, inputs, a, mask, weights, h0)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-13)
    wrt = [inputs, a, *weights, h0]
    got_grads = gradients(weighted_sum(*got, seed), wrt)
    want_grads = gradients(weighted_sum(*want, seed), wrt)
    for name, g, w in zip(NAMES, got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_carries_the_state_over_a_padded_step_inside_a_row(extension, kind):
    inputs, a, mask, weights, h0 = random_inputs(kind, [5, 4, 1], 5, seed=11, hole=True)
    assert_fused_matches_reference(kind, inputs, a, mask, weights, h0, seed=3)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_passes_gradcheck(extension, kind):
    inputs, a, mask, weights, h0 = random_inputs(kind, [3, 0, 2], 3, seed=7)
    if kind == "gru":
        args = (inputs, *weights, h0)

        def f(x, w_ih, w_hh, b_ih, b_hh, h):
            return fused.fused_recurrence(kind, x, None, mask, (w_ih, w_hh, b_ih, b_hh), h)
    else:
        args = (inputs, a, *weights, h0)

        def f(x, att, w_ih, w_hh, b_ih, b_hh, h):
            return fused.fused_recurrence(kind, x, att, mask, (w_ih, w_hh, b_ih, b_hh), h)

    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", KINDS)
def test_fused_float32_and_no_grad_agree_with_the_loop(extension, kind):
    lengths = [7, 0, 3, 7, 1, 5]
    inputs, a, mask, weights, h0 = random_inputs(kind, lengths, 7, 3, dtype=torch.float32)
    attention = None if kind == "gru" else a
    args = (kind, inputs, attention, mask, weights, h0)
    got = fused.fused_recurrence(*args)
    want = run_recurrence_loop(*args)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=2e-6)
    wrt = [inputs, a, *weights, h0]
    got_grads = gradients(weighted_sum(*got, 1), wrt)
    want_grads = gradients(weighted_sum(*want, 1), wrt)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        outputs, final = fused.fused_recurrence(*args)
    assert not outputs.requires_grad
    torch.testing.assert_close(outputs, got[0].detach(), rtol=0, atol=0)
    torch.testing.assert_close(final, got[1].detach(), rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_threads", [1, 3])
def test_fused_rows_shared_among_threads_match_the_reference(
    extension, kind, n_threads, restore_torch_globals
):
    # 53 rows make 3 shares of 16 or more rows on 3 threads, dealt round-robin by length
    torch.set_num_threads(n_threads)
    g = torch.Generator().manual_seed(4)
    lengths = torch.randint(0, 9, (53,), generator=g).tolist()
    inputs, a, mask, weights, h0 = random_inputs(kind, lengths, 8, seed=n_threads)
    assert_fused_matches_reference(kind, inputs, a, mask, weights, h0, seed=2)


def test_run_recurrence_takes_the_fused_path_and_the_switch_turns_it_off(extension, monkeypatch):
    calls = []
    real = fused.load_extension

    def counting():
        calls.append(1)
        return real()

    inputs, a, mask, weights, h0 = random_inputs("augru_paper", [2, 1], 2, seed=1)
    monkeypatch.delenv("DIEN_DISABLE_FUSED", raising=False)
    monkeypatch.setattr(fused, "load_extension", counting)
    run_recurrence("augru_paper", inputs, a, mask, weights, h0)
    assert calls, "run_recurrence did not use the fused recurrence on CPU float64"

    calls.clear()
    monkeypatch.setenv("DIEN_DISABLE_FUSED", "1")
    got = run_recurrence("augru_paper", inputs, a, mask, weights, h0)
    assert not calls
    want = reference("augru_paper", inputs, a, mask, weights, h0)
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-13)


def test_a_failed_build_warns_once_and_falls_back_to_the_loop(monkeypatch, caplog):
    from torch.utils import cpp_extension

    def broken_load(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.delenv("DIEN_DISABLE_FUSED", raising=False)
    monkeypatch.setattr(fused, "_extension", None)
    monkeypatch.setattr(fused, "_failed", False)
    monkeypatch.setattr(cpp_extension, "load", broken_load)
    inputs, a, mask, weights, h0 = random_inputs("agru", [3, 1], 3, seed=2)
    with caplog.at_level(logging.WARNING, logger="dien.layers.fused"):
        first = run_recurrence("agru", inputs, a, mask, weights, h0)
        run_recurrence("agru", inputs, a, mask, weights, h0)
    warnings = [r for r in caplog.records if "could not be compiled" in r.getMessage()]
    assert len(warnings) == 1 and "no compiler here" in warnings[0].getMessage()
    want = reference("agru", inputs, a, mask, weights, h0)
    torch.testing.assert_close(first[0], want[0], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cell", ["gru", "aigru"])
def test_layer_fused_gru_equals_torch_gru(extension, cell, monkeypatch):
    monkeypatch.delenv("DIEN_DISABLE_FUSED", raising=False)
    torch.manual_seed(0)
    layer = RecurrentLayer(3, H, cell).double()
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    a = torch.rand(4, 5, dtype=torch.float64)
    mask = torch.arange(5)[None, :] < torch.tensor([5, 0, 2, 4])[:, None]
    fused_out = layer(x, mask, None if cell == "gru" else a)
    monkeypatch.setenv("DIEN_DISABLE_FUSED", "1")
    torch_out = layer(x, mask, None if cell == "gru" else a)  # through torch.nn.GRU
    for f, t in zip(fused_out, torch_out, strict=True):
        torch.testing.assert_close(f, t, rtol=1e-12, atol=1e-13)


def test_the_ninja_package_comes_first_on_path_while_the_extension_loads(monkeypatch):
    ninja = pytest.importorskip("ninja")
    monkeypatch.setenv("PATH", "/somewhere/else")
    with fused._our_ninja_first():
        assert os.environ["PATH"].split(os.pathsep) == [ninja.BIN_DIR, "/somewhere/else"]
    assert os.environ["PATH"] == "/somewhere/else"


@pytest.mark.parametrize("kind", KINDS)
def test_final_state_alone_matches_and_its_gradients_match_the_reference(extension, kind):
    """all_outputs=False writes no (B, T, H) states; the final state and its gradients are
    those of the full recurrence."""
    lengths, T = [0, 3, 6, 1, 6], 6
    inputs, a, mask, weights, h0 = random_inputs(kind, lengths, T, seed=7)
    attention = None if kind == "gru" else a
    args = (kind, inputs, attention, mask, weights, h0)
    outputs, final = fused.fused_recurrence(*args, all_outputs=False)
    assert outputs is None
    want = reference(kind, inputs, a, mask, weights, h0)
    torch.testing.assert_close(final, want[1], rtol=1e-12, atol=1e-13)
    wrt = [inputs, a, *weights, h0] if kind != "gru" else [inputs, *weights, h0]
    R = torch.randn(final.shape, generator=torch.Generator().manual_seed(3), dtype=final.dtype)
    got_grads = gradients((final * R).sum(), wrt)
    want_grads = gradients((want[1] * R).sum(), wrt)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        none, final_no_grad = fused.fused_recurrence(*args, all_outputs=False)
    assert none is None
    torch.testing.assert_close(final_no_grad, final.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["gru", "aigru", "agru", "augru"])
@pytest.mark.parametrize("fused_on", [True, False])
@pytest.mark.parametrize("T", [5, 0])
def test_layer_final_state_equals_the_last_of_forward(extension, monkeypatch, cell, fused_on, T):
    monkeypatch.setenv(fused.DISABLE_VARIABLE, "0" if fused_on else "1")
    torch.manual_seed(1)
    layer = RecurrentLayer(3, H, cell).double()
    x = torch.randn(4, T, 3, dtype=torch.float64)
    a = torch.rand(4, T, dtype=torch.float64)
    mask = torch.arange(T)[None, :] < torch.tensor([5, 0, 2, 4])[:, None]
    attention = None if cell == "gru" else a
    torch.testing.assert_close(
        layer.final_state(x, mask, attention), layer(x, mask, attention)[1], rtol=0, atol=0
    )
