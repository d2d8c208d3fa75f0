"""The nine models: registry and defaults, padding and batch invariance, every switch trains."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import TINY, VOCAB, make_batch, pad_batch, take_rows

from dien.config import MODEL_NAMES, ConfigError
from dien.models import (
    DIEN,
    DIN,
    PNN,
    BaseModel,
    GRUAttention,
    WideDeep,
    build_model,
)

FAMILY = ("gru_aigru", "gru_agru", "gru_augru", "dien")
WITH_ATTENTION = ("din", "gru_att", *FAMILY)
LENGTHS = [3, 0, 1, 5, 2, 4]


def build(name: str, **changes) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(replace(TINY, name=name, **changes), VOCAB)


def total_loss(model, out, batch) -> torch.Tensor:
    loss = F.binary_cross_entropy_with_logits(out.logit, batch.label)
    if out.aux_loss is not None:
        loss = loss + model.aux_loss_alpha * out.aux_loss
    return loss


# ---------------------------------------------------------------- registry and defaults


@pytest.mark.parametrize(
    "name,cls",
    [("base", BaseModel), ("wide_deep", WideDeep), ("pnn", PNN), ("din", DIN),
     ("gru_att", GRUAttention)] + [(n, DIEN) for n in FAMILY],
)  # fmt: skip
def test_build_model_maps_names_to_models(name, cls):
    assert type(build(name)) is cls


@pytest.mark.parametrize(
    "name,cell,alpha",
    [("dien", "augru", 1.0), ("gru_augru", "augru", 0.0), ("gru_agru", "agru", 0.0),
     ("gru_aigru", "aigru", 0.0)],
)  # fmt: skip
def test_dien_family_defaults(name, cell, alpha):
    model = build(name)
    assert (model.cell, model.evolution.cell, model.aux_loss_alpha) == (cell, cell, alpha)
    assert (model.auxiliary is not None) == (alpha > 0)


def test_config_overrides_cell_and_alpha():
    model = build("dien", evolution_cell="agru", aux_loss_alpha=0.0)
    assert model.evolution.cell == "agru" and model.auxiliary is None
    model = build("gru_augru", aux_loss_alpha=0.5, augru_form="authors")
    assert model.aux_loss_alpha == 0.5 and model.auxiliary is not None
    assert model.evolution.kind == "augru_authors"
    model = build("dien", evolution_cell="gru")
    assert model.attention is None
    assert build("din", aux_loss_alpha=0.0).aux_loss_alpha == 0.0


@pytest.mark.parametrize(
    "changes,match",
    [(dict(name="base", evolution_cell="augru"), "evolution_cell"),
     (dict(name="din", aux_loss_alpha=1.0), "aux_loss_alpha"),
     (dict(name="gru_att", aux_loss_alpha=0.1), "aux_loss_alpha"),
     (dict(name="dinn"), "model.name")],
)  # fmt: skip
def test_build_model_rejects_switches_a_model_does_not_have(changes, match):
    with pytest.raises(ConfigError, match=match):
        build_model(replace(TINY, **changes), VOCAB)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_sparse_and_dense_parameters_split_all_parameters(name):
    model = build(name)
    sparse, dense = model.sparse_parameters(), model.dense_parameters()
    assert {id(p) for p in sparse} | {id(p) for p in dense} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in sparse} & {id(p) for p in dense}
    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    assert len(sparse) == len(tables) == (6 if name == "wide_deep" else 3)


# ---------------------------------------------------------------- invariances


def eval_model(name, **changes):
    model = build(name, **changes).double()
    model(make_batch([4, 2, 3, 1], seed=9))  # training step: Dice running statistics move
    return model.eval()


@pytest.mark.parametrize("name", [*MODEL_NAMES, "dien_authors"])
def test_eval_predictions_ignore_padding_batch_order_and_batch_size(name):
    changes = {}
    if name == "dien_authors":
        name, changes = "dien", {"augru_form": "authors"}
    model = eval_model(name, **changes)
    batch = make_batch(LENGTHS, K=2, seed=1)
    with torch.no_grad():
        out = model(batch)
        padded = model(pad_batch(batch, 3))
        order = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(0))
        shuffled = model(take_rows(batch, order))
        alone = [model(take_rows(batch, torch.tensor([i]), trim=True)) for i in order]
        alone_padded = [model(take_rows(batch, torch.tensor([i]))) for i in order]
        again = model(batch)

    tight = dict(rtol=0, atol=1e-10)
    assert torch.equal(again.logit, out.logit)
    torch.testing.assert_close(padded.logit, out.logit, **tight)
    torch.testing.assert_close(shuffled.logit, out.logit[order], **tight)
    torch.testing.assert_close(torch.cat([o.logit for o in alone]), out.logit[order], **tight)
    torch.testing.assert_close(
        torch.cat([o.logit for o in alone_padded]), out.logit[order], **tight
    )
    if out.attention is not None:
        T = batch.hist_items.shape[1]
        torch.testing.assert_close(padded.attention[:, :T], out.attention, **tight)
        assert not bool(padded.attention[:, T:].any())
        assert not bool(out.attention[~batch.history_mask()].any())
    if out.aux_loss is not None:
        torch.testing.assert_close(padded.aux_loss, out.aux_loss, **tight)
        torch.testing.assert_close(shuffled.aux_loss, out.aux_loss, **tight)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_one_history_scored_against_many_targets_equals_the_batch(name):
    model = eval_model(name)
    one = make_batch([4], seed=2, negatives=False)
    N = 5
    many = make_batch([4] * N, seed=3, negatives=False)
    many = replace(
        many,
        user=one.user.expand(N),
        hist_items=one.hist_items.expand(N, -1),
        hist_cats=one.hist_cats.expand(N, -1),
    )
    with torch.no_grad():
        expected = model(many)
        history = model.encode_history(one).expand(N)
        logit, attention = model.score(history, many.item, many.category)
    torch.testing.assert_close(logit, expected.logit, rtol=0, atol=1e-10)
    assert (attention is None) == (name not in WITH_ATTENTION)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_attention_output_shape(name):
    model = build(name)
    out = model(make_batch([2, 0, 3]))
    assert out.logit.shape == (3,)
    if name in WITH_ATTENTION:
        assert out.attention.shape == (3, 3)
    else:
        assert out.attention is None


# ---------------------------------------------------------------- edge batches train


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize(
    "lengths,T",
    [([0, 0, 0], 0), ([0, 0], 2), ([0, 3, 0], None), ([5], None), ([0], 0), ([1, 1], None)],
)
def test_edge_batches_train(name, lengths, T):
    model = build(name, aux_loss_alpha=1.0 if name in FAMILY else None)
    batch = make_batch(lengths, T=T, K=2, seed=4)
    out = model(batch)
    loss = total_loss(model, out, batch)
    assert torch.isfinite(loss)
    loss.backward()
    for p in model.parameters():
        if p.grad is not None:
            grad = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
            assert torch.isfinite(grad).all()


def test_aux_loss_needs_negatives_in_training_only():
    model = build("dien")
    batch = make_batch([3, 2], negatives=False)
    with pytest.raises(ValueError, match="negatives"):
        model(batch)
    model.eval()
    assert model(batch).aux_loss is None
    assert build("dien").eval()(make_batch([3, 2])).aux_loss is not None


# ---------------------------------------------------------------- every switch


def switch_cases():
    cases = []
    for name in MODEL_NAMES:
        for activation in ("dice", "prelu"):
            for sparse in (True, False):
                cases.append((name, dict(activation=activation, sparse_embeddings=sparse)))
    for name in FAMILY:
        for cell, form in [("gru", "paper"), ("aigru", "paper"), ("agru", "paper"),
                           ("augru", "paper"), ("augru", "authors")]:  # fmt: skip
            for alpha, K in [(0.0, 1), (1.0, 1), (0.5, 3)]:
                changes = dict(evolution_cell=cell, augru_form=form, aux_loss_alpha=alpha)
                cases.append((name, dict(changes, aux_negatives=K)))
    return cases


def case_id(case):
    name, changes = case
    return name + "-" + "-".join(f"{k}={v}" for k, v in changes.items())


@pytest.mark.parametrize("case", switch_cases(), ids=case_id)
def test_every_switch_trains_and_reaches_every_parameter(case):
    name, changes = case
    model = build(name, **changes)
    K = changes.get("aux_negatives", 1)
    batch = make_batch(LENGTHS, K=K, seed=5)
    out = model(batch)
    assert (out.aux_loss is not None) == (model.aux_loss_alpha > 0)
    loss = total_loss(model, out, batch)
    assert torch.isfinite(loss)
    loss.backward()
    tables = {id(p) for p in model.sparse_parameters()}
    sparse = changes.get("sparse_embeddings", True)
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert p.grad.is_sparse == (sparse and id(p) in tables), pname
        grad = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
        assert torch.isfinite(grad).all(), pname
        assert bool(grad.any()), f"{pname} got an all-zero gradient"
