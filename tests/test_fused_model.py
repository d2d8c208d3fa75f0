"""Whole models with the fused kernels on and off: the same outputs, gradients and scores."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from model_fixtures import TINY, VOCAB, make_batch

import dien.layers.fused as fused
from dien.models import build_model

# 40 rows: two shares of rows on two threads; histories of every length up to 9, empty included
LENGTHS = [i % 10 for i in range(40)]


@pytest.fixture
def extension():
    if fused.load_extension() is None:
        pytest.skip("the fused kernels could not be compiled here")


def run(name, batch, monkeypatch, fused_on):
    monkeypatch.setenv(fused.DISABLE_VARIABLE, "0" if fused_on else "1")
    torch.manual_seed(0)
    config = replace(TINY, name=name, attention_mlp_sizes=(6, 5))
    model = build_model(config, VOCAB).double()
    model.train()
    out = model(batch)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logit, batch.label)
    if out.aux_loss is not None:
        loss = loss + out.aux_loss
    loss.backward()
    grads = [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in model.parameters()]
    model.eval()
    with torch.no_grad():
        scores = model(batch).logit
    return [out.logit, loss, *grads, scores]


@pytest.mark.parametrize("name", ["dien", "gru_agru", "gru_aigru", "din", "gru_att"])
def test_fused_and_plain_models_agree(extension, name, monkeypatch):
    batch = make_batch(LENGTHS, K=2, seed=3)
    on = run(name, batch, monkeypatch, fused_on=True)
    off = run(name, batch, monkeypatch, fused_on=False)
    for a, b in zip(on, off, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
