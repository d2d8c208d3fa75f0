"""DIN and DIEN attention against references written here."""

from __future__ import annotations

import pytest
import torch

from dien.layers.attention import AttentionScorer, DIENAttention, DINAttention, masked_softmax


def scorer_reference(mlp_linears, q, k):
    """MLP with sigmoid hidden layers on [q, k, q - k, q * k], one key at a time."""
    z = torch.cat([q, k, q - k, q * k])
    for i, linear in enumerate(mlp_linears):
        z = linear.weight @ z + linear.bias
        if i < len(mlp_linears) - 1:
            z = torch.sigmoid(z)
    return z[0]


def linears(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def inputs(lengths, E, seed):
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    query = torch.randn(B, E, generator=g, dtype=torch.float64)
    keys = torch.randn(B, T, E, generator=g, dtype=torch.float64)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    return query, keys * mask[..., None], mask


def test_masked_softmax_matches_softmax_over_valid_steps():
    scores = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 9.0], [4.0, 4.0, 4.0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [False, False, False]])
    got = masked_softmax(scores, mask)
    e = torch.exp(torch.tensor([0.5, -1.0]))
    expected = torch.stack(
        [torch.softmax(scores[0], 0), torch.cat([e / e.sum(), torch.zeros(1)]), torch.zeros(3)]
    )
    torch.testing.assert_close(got, expected)


def test_dien_attention_matches_reference():
    torch.manual_seed(0)
    attention = DIENAttention(query_width=6, key_width=4, hidden_sizes=(5, 3)).double()
    query, keys, mask = inputs([3, 1, 4], 4, seed=1)
    query = torch.randn(3, 6, dtype=torch.float64)
    got = attention(query, keys, mask)

    projection, prelu = attention.query_projection
    scorer = linears(attention.scorer)
    expected = torch.zeros(3, 4, dtype=torch.float64)
    for b in range(3):
        q = projection.weight @ query[b] + projection.bias
        q = torch.where(q > 0, q, prelu.weight * q)
        n = int(mask[b].sum())
        scores = torch.stack([scorer_reference(scorer, q, keys[b, t]) for t in range(n)])
        expected[b, :n] = torch.exp(scores) / torch.exp(scores).sum()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got.sum(1), torch.ones(3, dtype=torch.float64))


def test_dien_attention_gives_zero_weights_and_finite_gradients_for_empty_history():
    torch.manual_seed(0)
    attention = DIENAttention(4, 4, (5,))
    query, keys, mask = inputs([0, 2], 4, seed=2)
    query, keys = query.float().requires_grad_(), keys.float().requires_grad_()
    weights = attention(query, keys, mask)
    assert torch.equal(weights[0], torch.zeros(2))
    assert not bool(weights[:, ~mask[1]].any())
    (weights * torch.randn(2, 2)).sum().backward()
    for t in [query, keys, *attention.parameters()]:
        assert torch.isfinite(t.grad).all()


def test_din_attention_is_unnormalised_and_zero_at_padding():
    torch.manual_seed(0)
    attention = DINAttention(4, (5, 3)).double()
    query, keys, mask = inputs([3, 1, 0], 4, seed=3)
    pooled, weights = attention(query, keys, mask)

    scorer = linears(attention.scorer)
    for b in range(3):
        n = int(mask[b].sum())
        raw = [scorer_reference(scorer, query[b], keys[b, t]) for t in range(n)]
        expected = torch.zeros(3, dtype=torch.float64)
        expected[:n] = torch.stack(raw) if raw else expected[:0]
        torch.testing.assert_close(weights[b], expected)
        torch.testing.assert_close(pooled[b], (expected[:, None] * keys[b]).sum(0))
    assert not torch.allclose(weights[0].sum(), torch.tensor(1.0, dtype=torch.float64))


def test_attention_broadcasts_one_history_over_many_targets():
    torch.manual_seed(0)
    attention = DIENAttention(4, 4, (5,)).double()
    query, keys, mask = inputs([3, 3, 3], 4, seed=4)
    one = attention(query, keys[:1], mask[:1])
    many = attention(query, keys[:1].expand(3, -1, -1), mask[:1].expand(3, -1))
    torch.testing.assert_close(one, many)


def test_packed_and_padded_scoring_agree_in_values_and_gradients(monkeypatch):
    """The CPU packs the valid steps; CUDA and export score every step. Both must agree."""
    import dien.layers.attention as attention_module

    torch.manual_seed(0)
    attention = DIENAttention(6, 4, (5, 3)).double()
    query, keys, mask = inputs([4, 1, 0, 2, 4], 4, seed=5)
    query = torch.randn(5, 6, dtype=torch.float64)

    def run():
        attention.zero_grad()
        q, k = query.clone().requires_grad_(), keys.clone().requires_grad_()
        weights = attention(q, k, mask)
        (weights * torch.arange(20.0, dtype=torch.float64).view(5, 4)).sum().backward()
        return [weights, q.grad, k.grad, *(p.grad.clone() for p in attention.parameters())]

    packed = run()
    monkeypatch.setattr(attention_module, "packing_index", lambda mask: None)
    padded = run()
    for a, b in zip(packed, padded, strict=True):
        torch.testing.assert_close(a, b)


@pytest.fixture
def fused_calls(count_fused_calls):
    """Count the calls of the fused attention kernel (skip where it cannot be built)."""
    import dien.layers.attention as attention_module

    return count_fused_calls(attention_module, "fused_attention_scores")


@pytest.mark.parametrize("hidden", [(5, 3), (), (6, 5, 4)])
@pytest.mark.parametrize("lengths", [[4, 1, 0, 2, 4], [3], [0, 0]])
def test_fused_scores_without_gradients_match_the_reference(fused_calls, hidden, lengths):
    torch.manual_seed(len(hidden))
    scorer = AttentionScorer(4, hidden).double()
    query, keys, mask = inputs(lengths, 4, seed=6)
    with torch.no_grad():
        got = scorer(query, keys, mask)
    assert fused_calls, "scoring without gradients did not take the fused kernel"
    expected = torch.zeros(mask.shape, dtype=torch.float64)
    for b, t in mask.nonzero().tolist():
        expected[b, t] = scorer_reference(linears(scorer), query[b], keys[b, t])
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)


def test_fused_scores_take_one_history_against_many_targets_and_agree_in_float32(fused_calls):
    torch.manual_seed(0)
    attention = DIENAttention(6, 4, (80, 40))
    query, keys, mask = inputs([30] * 200, 4, seed=7)
    query, keys = torch.randn(200, 6), keys.float()
    with torch.no_grad():
        fast = attention(query, keys, mask)
        one_history = attention(query, keys[:1], mask[:1])
    assert len(fused_calls) == 2
    want = attention(query, keys, mask).detach()  # with gradients: the layer's own operations
    torch.testing.assert_close(fast, want, rtol=1e-5, atol=1e-6)
    want_one = attention(query, keys[:1].expand(200, -1, -1), mask[:1].expand(200, -1))
    torch.testing.assert_close(one_history, want_one.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("shape", ["sorted", "one long row last"])
def test_fused_scores_split_sorted_rows_among_threads(
    fused_calls, restore_torch_globals, threads, shape
):
    """Threads take rows of equal valid-step counts, not equal row counts: a length-bucketed
    batch is sorted by length. Every split must still score each valid step once."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(threads)
    if shape == "sorted":
        lengths = sorted(torch.randint(0, 41, (67,), generator=g).tolist())
    else:
        lengths = [0] * 66 + [40]
    torch.manual_seed(1)
    scorer = AttentionScorer(4, (6, 5)).double()
    query, keys, mask = inputs(lengths, 4, seed=8)
    with torch.no_grad():
        got = scorer(query, keys, mask)
    assert fused_calls
    want = scorer(query.requires_grad_(), keys, mask).detach()  # the layer's own operations
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-13)
