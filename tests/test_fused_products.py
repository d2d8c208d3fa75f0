"""The fused kernels' matrix products on oneDNN against the same kernels on MKL and against the
plain operations; and the choice between the two."""

from __future__ import annotations

import pytest
import torch
from test_fused_recurrence import random_inputs

import dien.layers.fused as fused
from dien.layers.attention import AttentionScorer
from dien.layers.recurrent import run_recurrence_loop


@pytest.fixture
def onednn():
    """The extension with oneDNN available; its choice of products restored afterwards."""
    ext = fused.load_extension()
    if ext is None:
        pytest.skip("the fused kernels could not be compiled here")
    if not ext.onednn_available():
        pytest.skip("this torch has no oneDNN matrix product")
    was = ext.onednn_enabled()
    yield ext
    ext.set_onednn(was)


def both_ways(ext, run):
    """``run()`` with the large products on oneDNN, then on MKL."""
    ext.set_onednn(True)
    on = run()
    ext.set_onednn(False)
    return on, run()


@pytest.mark.parametrize("kind", ["gru", "augru_paper"])
def test_recurrence_on_onednn_matches_mkl_and_the_loop(onednn, kind, restore_torch_globals):
    # one share of 700 rows: the running rows fall from 700 (oneDNN, rounded up to multiples
    # of 64 within the share) below 256 (MKL) as histories end
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(5)
    lengths = torch.randint(0, 12, (700,), generator=g).tolist()
    inputs, a, mask, weights, h0 = random_inputs(kind, lengths, 11, seed=1, dtype=torch.float32)
    args = (kind, inputs, None if kind == "gru" else a, mask, weights, h0)
    with torch.no_grad():
        on, off = both_ways(onednn, lambda: fused.fused_recurrence(*args))
        want = run_recurrence_loop(*args)
    for got, mkl, loop in zip(on, off, want, strict=True):
        torch.testing.assert_close(got, mkl, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got, loop, rtol=1e-5, atol=2e-6)


def test_attention_on_onednn_matches_mkl_and_the_layers_own_operations(
    onednn, restore_torch_globals
):
    # 1,300 valid steps on one thread: two full blocks of 512 on oneDNN, then 276 rounded up
    torch.set_num_threads(1)
    torch.manual_seed(2)
    scorer = AttentionScorer(8, (80, 40))
    lengths = torch.tensor([26] * 50)
    mask = torch.arange(30)[None, :] < lengths[:, None]
    query, keys = torch.randn(50, 8), torch.randn(50, 30, 8) * mask[..., None]
    with torch.no_grad():
        on, off = both_ways(onednn, lambda: scorer(query, keys, mask))
    want = scorer(query.requires_grad_(), keys, mask).detach()  # the layer's own operations
    torch.testing.assert_close(on, off, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(on, want, rtol=1e-5, atol=1e-6)
    assert int((on != 0).sum()) == int(mask.sum())


class FakeExtension:
    """Stands in for the extension in the choice of products and records the choice."""

    def __init__(self):
        self.chosen = None

    def onednn_available(self):
        return True

    def set_onednn(self, on):
        self.chosen = on


@pytest.mark.parametrize(
    "capability,vendor,forced,chosen",
    [
        ("AVX512", "AuthenticAMD", "", True),  # MKL would run its AVX2 kernels
        ("AVX512", "GenuineIntel", "", False),  # MKL runs AVX-512 itself
        ("AVX2", "AuthenticAMD", "", False),  # nothing for oneDNN to add
        ("AVX512", "AuthenticAMD", "0", False),  # forced off
        ("AVX2", "GenuineIntel", "1", True),  # forced on
    ],
)
def test_products_go_to_onednn_on_amd_processors_with_avx512_or_when_forced(
    monkeypatch, capability, vendor, forced, chosen
):
    monkeypatch.setenv(fused.ONEDNN_VARIABLE, forced)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(fused, "cpu_vendor", lambda: vendor)
    ext = FakeExtension()
    fused._choose_products(ext)
    assert ext.chosen is chosen
