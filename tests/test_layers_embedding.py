"""The embedding layer: item = concat(item, category), padding id 0 embeds to zero."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import VOCAB, make_batch

from dien.layers.embedding import EmbeddingLayer, lookup


def test_embeddings_shapes_concatenation_and_padding():
    torch.manual_seed(0)
    layer = EmbeddingLayer(VOCAB, 3, sparse=False)
    batch = make_batch([2, 0, 3], K=2)
    out = layer(batch, with_negatives=True)
    assert out.user.shape == (3, 3) and out.target.shape == (3, 6)
    assert out.behaviours.shape == (3, 3, 6) and out.negatives.shape == (3, 3, 2, 6)
    torch.testing.assert_close(out.target[:, :3], layer.item.weight[batch.item])
    torch.testing.assert_close(out.target[:, 3:], layer.category.weight[batch.category])
    assert not bool(out.behaviours[~batch.history_mask()].any())
    assert not bool(out.negatives[~batch.history_mask()].any())


def test_sparse_tables_give_sparse_gradients_that_skip_padding():
    layer = EmbeddingLayer(VOCAB, 3, sparse=True)
    batch = make_batch([2, 0])
    out = layer(batch)
    (out.behaviours.sum() + out.target.sum()).backward()
    grad = layer.item.weight.grad
    assert grad.is_sparse
    assert not bool(grad.coalesce().to_dense()[0].any())


def test_one_lookup_per_table_equals_one_lookup_per_tensor_in_values_and_gradients():
    torch.manual_seed(0)
    batch = make_batch([2, 0, 3], K=2)
    grads = []
    for together in (True, False):
        torch.manual_seed(1)
        layer = EmbeddingLayer(VOCAB, 3, sparse=True)
        if together:
            out = layer(batch, with_negatives=True)
            parts = [out.target, out.behaviours, out.negatives]
        else:
            parts = [
                layer.items(batch.item, batch.category),
                layer.items(batch.hist_items, batch.hist_cats),
                layer.items(batch.neg_items, batch.neg_cats),
            ]
        sum(p.sum() * (i + 1) for i, p in enumerate(parts)).backward()
        grads.append([parts, layer.item.weight.grad.to_dense()])
    for a, b in zip(grads[0][0], grads[1][0], strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_sparse_lookup_has_one_gradient_row_per_distinct_id_and_plain_values_without_grad():
    torch.manual_seed(0)
    table = torch.nn.Embedding(10, 4, padding_idx=0, sparse=True)
    ids = torch.tensor([[3, 3, 5, 0], [5, 3, 7, 7]])
    (lookup(table, ids) * torch.arange(1.0, 5.0)).sum().backward()
    grad = table.weight.grad
    assert grad._indices().shape[1] == 3  # ids 3, 5, 7 once each (padding 0 gets none)
    expected = torch.zeros(10, 4)
    expected.index_add_(0, ids.reshape(-1), torch.arange(1.0, 5.0).expand(8, 4))
    expected[0] = 0  # the padding row gets no gradient
    torch.testing.assert_close(grad.to_dense(), expected)
    with torch.no_grad():
        torch.testing.assert_close(lookup(table, ids), table.weight[ids])


@pytest.fixture
def fused_history_calls(count_fused_calls):
    """Count the calls of the fused history lookup (skip where it cannot be built)."""
    import dien.layers.embedding as embedding_module

    return count_fused_calls(embedding_module, "fused_history_embeddings")


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("lengths", [[i % 7 for i in range(50)], [1], [0, 0], []])
def test_fused_history_lookup_matches_lookups_and_masked_sum(
    fused_history_calls, restore_torch_globals, threads, lengths
):
    """Rows in any number of threads; ids at padded steps (nonzero here) are looked up but
    not summed, as the plain lookup and masked sum do."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layer = EmbeddingLayer(VOCAB, 3, sparse=True).double()
    B, T = len(lengths), 8
    g = torch.Generator().manual_seed(1)
    items = torch.randint(0, VOCAB.items, (B, T), generator=g)
    categories = torch.randint(0, VOCAB.categories, (B, T), generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor(lengths, dtype=torch.int64)[:, None]
    with torch.no_grad():
        behaviours, pooled = layer.history(items, categories, mask)
    assert fused_history_calls, "a lookup without gradients did not take the fused kernel"
    want = torch.cat([layer.item.weight[items], layer.category.weight[categories]], dim=-1)
    torch.testing.assert_close(behaviours, want, rtol=0, atol=0)
    want_pooled = (want * mask[..., None]).sum(dim=1)
    torch.testing.assert_close(pooled, want_pooled, rtol=1e-14, atol=1e-15)
    assert pooled.shape == (B, 6) and behaviours.shape == (B, T, 6)


def test_fused_history_lookup_with_gradients_wanted_takes_the_plain_path(fused_history_calls):
    layer = EmbeddingLayer(VOCAB, 3, sparse=False)
    batch = make_batch([2, 0, 3])
    out = layer(batch)
    assert not fused_history_calls and out.pooled.requires_grad
    torch.testing.assert_close(out.pooled, out.behaviours.sum(dim=1))


@pytest.mark.parametrize("table", ["item", "category"])
@pytest.mark.parametrize("bad_id", [-1, 10_000])
def test_fused_history_lookup_rejects_ids_outside_the_tables(fused_history_calls, table, bad_id):
    layer = EmbeddingLayer(VOCAB, 3, sparse=True)
    items = torch.ones(2, 4, dtype=torch.int64)
    categories = torch.ones(2, 4, dtype=torch.int64)
    (items if table == "item" else categories)[1, 2] = bad_id
    mask = torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad(), pytest.raises(IndexError, match="out of range"):
        layer.history(items, categories, mask)
    assert fused_history_calls
