"""The auxiliary loss against a hand-computed reference."""

from __future__ import annotations

import math

import pytest
import torch

from dien.layers.auxiliary import AuxiliaryLoss

H, E = 3, 2


def mlp_score(aux, h, e):
    """sigmoid of the aux MLP (sigmoid hidden layers) on [h, e], one pair at a time."""
    linears = [m for m in aux.modules() if isinstance(m, torch.nn.Linear)]
    z = torch.cat([h, e])
    for i, linear in enumerate(linears):
        z = linear.weight @ z + linear.bias
        if i < len(linears) - 1:
            z = torch.sigmoid(z)
    return torch.sigmoid(z[0]).item()


def random_case(lengths, T, K, seed):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    interests = torch.randn(B, T, H, generator=g, dtype=torch.float64) * mask[..., None]
    behaviours = torch.randn(B, T, E, generator=g, dtype=torch.float64) * mask[..., None]
    negatives = torch.randn(B, T, K, E, generator=g, dtype=torch.float64)
    return interests, behaviours, negatives * mask[..., None, None], mask


@pytest.mark.parametrize("K", [1, 3])
def test_auxiliary_loss_matches_hand_computed_reference(K):
    torch.manual_seed(0)
    aux = AuxiliaryLoss(H, E, (4,)).double()
    interests, behaviours, negatives, mask = random_case([3, 1, 0, 2], 3, K, seed=1)
    got = aux(interests, behaviours, negatives, mask)

    # valid pairs (row, t): (0, 0), (0, 1), (3, 0); rows with 0 or 1 behaviour give none
    terms = []
    for b, t in [(0, 0), (0, 1), (3, 0)]:
        h = interests[b, t]
        positive = -math.log(mlp_score(aux, h, behaviours[b, t + 1]))
        negative = sum(-math.log(1 - mlp_score(aux, h, negatives[b, t + 1, k])) for k in range(K))
        terms.append(positive + negative / K)
    assert got.item() == pytest.approx(sum(terms) / 3, rel=1e-12)


def test_auxiliary_loss_ignores_padding_content():
    torch.manual_seed(0)
    aux = AuxiliaryLoss(H, E, (4,)).double()
    interests, behaviours, negatives, mask = random_case([2, 3], 4, 2, seed=2)
    base = aux(interests, behaviours, negatives, mask)
    pad = ~mask
    noisy = aux(
        interests + 5 * pad[..., None],
        behaviours - 3 * pad[..., None],
        negatives + 7 * pad[..., None, None],
        mask,
    )
    torch.testing.assert_close(noisy, base, rtol=0, atol=0)


@pytest.mark.parametrize("lengths,T", [([0, 0], 0), ([0, 1, 1], 1), ([1, 0], 3)])
def test_auxiliary_loss_without_pairs_is_zero_with_a_gradient_path(lengths, T):
    aux = AuxiliaryLoss(H, E, (4,))
    interests, behaviours, negatives, mask = random_case(lengths, T, 2, seed=3)
    interests = interests.float().requires_grad_()
    loss = aux(interests, behaviours.float(), negatives.float(), mask)
    assert loss.item() == 0.0
    loss.backward()
    for p in aux.parameters():
        assert p.grad is not None and not bool(p.grad.any())
    assert not bool(interests.grad.any())


def test_packed_and_padded_pairs_agree_in_values_and_gradients(monkeypatch):
    """The CPU scores only the valid pairs; CUDA and export score all. Both must agree."""
    import dien.layers.auxiliary as auxiliary_module

    torch.manual_seed(0)
    aux = AuxiliaryLoss(H, E, (4, 3)).double()
    interests, behaviours, negatives, mask = random_case([4, 1, 0, 3, 2], 4, 3, seed=3)

    def run():
        aux.zero_grad()
        tensors = [t.clone().requires_grad_() for t in (interests, behaviours, negatives)]
        loss = aux(*tensors, mask)
        loss.backward()
        return [loss, *(t.grad for t in tensors), *(p.grad.clone() for p in aux.parameters())]

    packed = run()
    monkeypatch.setattr(auxiliary_module, "packing_index", lambda mask: None)
    padded = run()
    for a, b in zip(packed, padded, strict=True):
        torch.testing.assert_close(a, b)
