"""Dice and the MLP: the DIN paper's formula, running statistics, batch independence in eval."""

from __future__ import annotations

import pytest
import torch

from dien.layers.mlp import MLP, Dice


def dice_reference(x, mean, var, alpha, eps):
    p = 1 / (1 + torch.exp(-(x - mean) / torch.sqrt(var + eps)))
    return p * x + (1 - p) * alpha * x


def test_dice_training_uses_batch_statistics_and_updates_running_ones():
    torch.manual_seed(0)
    dice = Dice(3).double()
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.5, -0.2, 0.0]))
    x = torch.randn(6, 3, dtype=torch.float64) * 2 + 1
    mean, biased = x.mean(0), ((x - x.mean(0)) ** 2).mean(0)
    torch.testing.assert_close(dice(x), dice_reference(x, mean, biased, dice.alpha, dice.eps))
    unbiased = biased * 6 / 5
    torch.testing.assert_close(dice.running_mean, 0.1 * mean)
    torch.testing.assert_close(dice.running_var, 0.9 + 0.1 * unbiased)


def test_dice_eval_uses_running_statistics_and_ignores_the_rest_of_the_batch():
    torch.manual_seed(0)
    dice = Dice(3).double()
    for _ in range(5):
        dice(torch.randn(8, 3, dtype=torch.float64) + 2)
    dice.eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    out = dice(x)
    expected = dice_reference(x, dice.running_mean, dice.running_var, dice.alpha, dice.eps)
    torch.testing.assert_close(out, expected)
    # a batch of one may take another vector kernel: equal to the last bits of float64
    for i in range(5):
        torch.testing.assert_close(dice(x[i : i + 1]), out[i : i + 1], rtol=0, atol=1e-15)
    other = torch.cat([x[:2], 100 * torch.randn(3, 3, dtype=torch.float64)])
    torch.testing.assert_close(dice(other)[:2], out[:2], rtol=0, atol=0)


def test_dice_training_batch_of_one_is_finite_and_keeps_running_statistics():
    dice = Dice(4)
    x = torch.randn(1, 4)
    out = dice(x)
    p = 0.5  # zero variance normalises to 0
    torch.testing.assert_close(out, p * x + (1 - p) * dice.alpha * x)
    assert torch.equal(dice.running_mean, torch.zeros(4))
    assert torch.equal(dice.running_var, torch.ones(4))


@pytest.mark.parametrize("activation", ["dice", "prelu"])
def test_mlp_eval_output_of_a_row_does_not_depend_on_the_batch(activation):
    torch.manual_seed(0)
    mlp = MLP(5, (7, 3), activation)
    mlp(torch.randn(16, 5))  # one training step moves Dice's running statistics
    mlp.eval()
    x = torch.randn(4, 5)
    out = mlp(x)
    assert out.shape == (4, 1)
    for i in range(4):
        torch.testing.assert_close(mlp(x[i : i + 1]), out[i : i + 1], rtol=0, atol=1e-7)


def test_mlp_layers_and_widths():
    mlp = MLP(5, (7, 3), "prelu", out_features=2)
    linear = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(5, 7), (7, 3), (3, 2)]


def test_per_feature_activations_refuse_sequence_input():
    with pytest.raises(ValueError, match=r"\(B, F\)"):
        MLP(5, (4,), "dice")(torch.randn(2, 3, 5))
    assert MLP(5, (4,), "sigmoid")(torch.randn(2, 3, 5)).shape == (2, 3, 1)
