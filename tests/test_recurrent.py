"""The GRU family against a step-by-step reference written here from the equations."""

from __future__ import annotations

import pytest
import torch

from dien.layers.recurrent import RecurrentLayer, final_from_outputs, run_recurrence

CELLS = [("gru", "paper"), ("aigru", "paper"), ("agru", "paper"), ("augru", "paper"),
         ("augru", "authors")]  # fmt: skip
# (lengths, T): random lengths with 0, batch size 1, an all-padding batch, T = 0
SHAPES = [([0, 3, 6, 1, 6], 6), ([4], 4), ([0], 3), ([2, 0, 5], 7), ([0, 0], 0)]
IN, H = 3, 4


def reference(cell, form, x, a, lengths, w_ih, w_hh, b_ih, b_hh):
    """One row and one step at a time, in the paper's notation (u = update gate)."""
    B, T, _ = x.shape
    rows, finals = [], []
    for b in range(B):
        h = torch.zeros(H, dtype=x.dtype)
        steps = []
        for t in range(int(lengths[b])):
            i_t = x[b, t] * a[b, t] if cell == "aigru" else x[b, t]
            if cell == "agru":
                W_r, W_h = w_ih[:H], w_ih[H:]
                U_r, U_h = w_hh[:H], w_hh[H:]
                r = torch.sigmoid(W_r @ i_t + b_ih[:H] + U_r @ h + b_hh[:H])
                h_tilde = torch.tanh(W_h @ i_t + b_ih[H:] + r * (U_h @ h + b_hh[H:]))
                h = (1 - a[b, t]) * h + a[b, t] * h_tilde
            else:
                W_r, W_z, W_h = w_ih[:H], w_ih[H : 2 * H], w_ih[2 * H :]
                U_r, U_z, U_h = w_hh[:H], w_hh[H : 2 * H], w_hh[2 * H :]
                br, bz, bh = b_ih[:H], b_ih[H : 2 * H], b_ih[2 * H :]
                cr, cz, ch = b_hh[:H], b_hh[H : 2 * H], b_hh[2 * H :]
                r = torch.sigmoid(W_r @ i_t + br + U_r @ h + cr)
                keep = torch.sigmoid(W_z @ i_t + bz + U_z @ h + cz)  # torch.nn.GRU's z
                u = 1 - keep  # the paper's update gate
                h_tilde = torch.tanh(W_h @ i_t + bh + r * (U_h @ h + ch))
                if cell == "augru" and form == "paper":
                    u_att = a[b, t] * u
                    h = (1 - u_att) * h + u_att * h_tilde
                elif cell == "augru":  # authors: scale the gate that keeps the old state
                    keep_att = (1 - a[b, t]) * keep
                    h = keep_att * h + (1 - keep_att) * h_tilde
                else:
                    h = (1 - u) * h + u * h_tilde
            steps.append(h)
        steps += [torch.zeros(H, dtype=x.dtype)] * (T - len(steps))
        rows.append(torch.stack(steps) if steps else torch.zeros(0, H, dtype=x.dtype))
        finals.append(h)
    return torch.stack(rows), torch.stack(finals)


def random_inputs(lengths, T, seed):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    x = torch.randn(B, T, IN, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.rand(B, T, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor(lengths)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return x, a, lengths, mask


# the step loop for every cell, and the torch.nn.GRU path that GRU and AIGRU take by default
IMPLEMENTATIONS = [(c, f, False) for c, f in CELLS] + [
    ("gru", "paper", True),
    ("aigru", "paper", True),
]


@pytest.mark.parametrize("cell,form,use_torch_gru", IMPLEMENTATIONS)
@pytest.mark.parametrize("lengths,T", SHAPES)
def test_cell_matches_reference_values_and_gradients(cell, form, lengths, T, use_torch_gru):
    torch.manual_seed(1)
    layer = RecurrentLayer(IN, H, cell, form, use_torch_gru=use_torch_gru).double()
    x, a, lengths, mask = random_inputs(lengths, T, seed=2)
    attention = None if cell == "gru" else a

    outputs, final = layer(x, mask, attention)
    ref_outputs, ref_final = reference(cell, form, x, a, lengths, *layer.weights())
    torch.testing.assert_close(outputs, ref_outputs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(final, ref_final, rtol=1e-10, atol=1e-12)

    g = torch.Generator().manual_seed(3)
    R1 = torch.randn(outputs.shape, generator=g, dtype=torch.float64)
    R2 = torch.randn(final.shape, generator=g, dtype=torch.float64)
    wrt = [x, a, *layer.weights()]

    def grads(out, fin):
        # the zero term keeps a graph when nothing depends on the inputs (all rows empty)
        loss = (out * R1).sum() + (fin * R2).sum() + sum(0 * w.sum() for w in wrt)
        got = torch.autograd.grad(loss, wrt, allow_unused=True, retain_graph=True)
        return [torch.zeros_like(w) if d is None else d for w, d in zip(wrt, got, strict=True)]

    for got, want in zip(grads(outputs, final), grads(ref_outputs, ref_final), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def gate_inputs(seed, B=3, T=5, gates=3):
    """inputs, weights (weight_ih, weight_hh, bias_ih, bias_hh), h0 and a mask of lengths
    5, 2, 0."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    inputs = rand(B, T, IN)
    weights = (rand(gates * H, IN), rand(gates * H, H), rand(gates * H), rand(gates * H))
    h0 = rand(B, H)
    mask = torch.arange(T)[None, :] < torch.tensor([5, 2, 0])[:, None]
    return inputs, weights, h0, mask


def test_paper_augru_with_attention_one_is_gru():
    inputs, weights, h0, mask = gate_inputs(0)
    ones = torch.ones(mask.shape, dtype=torch.float64)
    got = run_recurrence("augru_paper", inputs, ones, mask, weights, h0)
    want = run_recurrence("gru", inputs, None, mask, weights, h0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_paper_augru_with_attention_zero_keeps_the_state():
    inputs, weights, h0, mask = gate_inputs(1)
    zeros = torch.zeros(mask.shape, dtype=torch.float64)
    outputs, final = run_recurrence("augru_paper", inputs, zeros, mask, weights, h0)
    torch.testing.assert_close(final, h0, rtol=0, atol=0)
    expected = h0[:, None, :] * mask[..., None]  # the initial state at every valid step
    torch.testing.assert_close(outputs, expected, rtol=0, atol=0)


def test_authors_augru_with_attention_zero_is_gru():
    inputs, weights, h0, mask = gate_inputs(2)
    zeros = torch.zeros(mask.shape, dtype=torch.float64)
    got = run_recurrence("augru_authors", inputs, zeros, mask, weights, h0)
    want = run_recurrence("gru", inputs, None, mask, weights, h0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_authors_augru_with_attention_one_replaces_the_state_by_the_candidate():
    # c_t = u + a(1 - u) = 1 at a = 1: the update gate drops out, as in AGRU with a = 1.
    inputs, weights, h0, mask = gate_inputs(3)
    ones = torch.ones(mask.shape, dtype=torch.float64)
    got = run_recurrence("augru_authors", inputs, ones, mask, weights, h0)
    no_update_gate = torch.cat([torch.arange(H), torch.arange(2 * H, 3 * H)])
    agru_weights = tuple(w[no_update_gate] for w in weights)
    want = run_recurrence("agru", inputs, ones, mask, agru_weights, h0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def test_agru_with_attention_zero_keeps_the_state():
    inputs, weights, h0, mask = gate_inputs(4, gates=2)
    zeros = torch.zeros(mask.shape, dtype=torch.float64)
    _, final = run_recurrence("agru", inputs, zeros, mask, weights, h0)
    torch.testing.assert_close(final, h0, rtol=0, atol=0)


def test_aigru_with_attention_one_is_gru():
    torch.manual_seed(0)
    aigru = RecurrentLayer(IN, H, "aigru").double()
    gru = RecurrentLayer(IN, H, "gru").double()
    gru.load_state_dict(aigru.state_dict())
    x, _, _, mask = random_inputs([3, 1], 3, seed=0)
    ones = torch.ones(mask.shape, dtype=torch.float64)
    torch.testing.assert_close(aigru(x, mask, ones), gru(x, mask), rtol=0, atol=0)


@pytest.mark.parametrize("cell,form", CELLS)
def test_padding_steps_change_nothing(cell, form):
    torch.manual_seed(0)
    layer = RecurrentLayer(IN, H, cell, form, use_torch_gru=False).double()
    x, a, _, mask = random_inputs([4, 0, 2], 4, seed=5)
    attention = None if cell == "gru" else a
    outputs, final = layer(x, mask, attention)

    extra = 3
    x_pad = torch.cat([x, torch.randn(3, extra, IN, dtype=torch.float64)], dim=1)
    a_pad = torch.cat([a, torch.rand(3, extra, dtype=torch.float64)], dim=1)
    mask_pad = torch.cat([mask, torch.zeros(3, extra, dtype=torch.bool)], dim=1)
    outputs_pad, final_pad = layer(x_pad, mask_pad, None if cell == "gru" else a_pad)
    torch.testing.assert_close(outputs_pad[:, :4], outputs, rtol=0, atol=0)
    assert bool((outputs_pad[:, 4:] == 0).all())
    torch.testing.assert_close(final_pad, final, rtol=0, atol=0)


def test_torch_gru_and_step_loop_agree_in_float32():
    torch.manual_seed(0)
    fast = RecurrentLayer(IN, H, "gru", use_torch_gru=True)
    loop = RecurrentLayer(IN, H, "gru", use_torch_gru=False)
    loop.load_state_dict(fast.state_dict())
    x = torch.randn(6, 9, IN)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 0, 1, 5, 8, 2])[:, None]
    for got, want in zip(fast(x, mask), loop(x, mask), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_final_from_outputs_picks_the_last_valid_step():
    outputs = torch.arange(2 * 3 * 1, dtype=torch.float64).reshape(2, 3, 1) + 1
    mask = torch.tensor([[True, True, False], [False, False, False]])
    final = final_from_outputs(outputs * mask[..., None], mask)
    torch.testing.assert_close(final, torch.tensor([[2.0], [0.0]], dtype=torch.float64))


def test_attention_cells_need_attention():
    layer = RecurrentLayer(IN, H, "augru")
    with pytest.raises(ValueError, match="attention"):
        layer(torch.randn(1, 2, IN), torch.ones(1, 2, dtype=torch.bool))


def test_agru_has_no_update_gate_parameters():
    layer = RecurrentLayer(IN, H, "agru")
    shapes = [tuple(w.shape) for w in layer.weights()]
    assert shapes == [(2 * H, IN), (2 * H, H), (2 * H,), (2 * H,)]
