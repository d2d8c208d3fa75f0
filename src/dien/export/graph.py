"""An export-friendly copy of a model: plain tensors in, click probabilities out.

Dimension letters: B batch, T history steps, G*H gate blocks of the hidden width H.

:class:`ScoringModule` wraps a copy of a trained model whose recurrent layers are swapped for
:class:`ScriptedRecurrentLayer`, a layer with the same parameters whose loop over the history
steps is a TorchScript function. Tracing the wrapper then records everything but that loop as
a fixed graph of operators on dynamic shapes, and the loop itself as a real loop over the
traced ``T``: an exported model scores any batch size and any history length, 0 included.
(Tracing the eager layer instead would unroll its Python loop into exactly the ``T`` of the
example inputs.) The swapped layer always runs the plain per-step PyTorch recurrence: no
``torch.nn.GRU`` (its ONNX and traced forms need ``T >= 1``) and no fused kernel.

The per-step equations are those of :mod:`dien.layers.recurrent`, written out once more in
TorchScript's subset of Python; the export tests check both against each other.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dien.data.batch import Batch
from dien.layers.recurrent import RecurrentLayer
from dien.models import CTRModel

INPUT_NAMES = ("user", "item", "category", "hist_items", "hist_cats", "hist_lengths")
OUTPUT_NAMES = ("probability", "logit")


def _gru_gates(x: Tensor, hp: Tensor) -> tuple[Tensor, Tensor]:
    """The keep gate ``z_t`` and the candidate ``h~_t`` of a three-gate cell: ``(B, H)`` each."""
    x_r, x_z, x_n = x.chunk(3, dim=1)  # (B, H) each
    h_r, h_z, h_n = hp.chunk(3, dim=1)  # (B, H) each
    r = torch.sigmoid(x_r + h_r)  # (B, H)
    keep = torch.sigmoid(x_z + h_z)  # (B, H)
    return keep, torch.tanh(x_n + r * h_n)  # (B, H), (B, H)


def _step(kind: int, x: Tensor, hp: Tensor, h: Tensor, a: Tensor) -> Tensor:
    """One step of the cell numbered ``kind`` (see ``KINDS``); ``a`` is ``(B, 1)`` attention."""
    if kind == 1:  # agru
        x_r, x_n = x.chunk(2, dim=1)  # (B, H) each
        h_r, h_n = hp.chunk(2, dim=1)  # (B, H) each
        r = torch.sigmoid(x_r + h_r)  # (B, H)
        candidate = torch.tanh(x_n + r * h_n)  # (B, H)
        return h + a * (candidate - h)  # (B, H)
    keep, candidate = _gru_gates(x, hp)  # (B, H), (B, H)
    if kind == 0:  # gru
        weight = 1 - keep  # (B, H)
    elif kind == 2:  # augru, paper
        weight = a * (1 - keep)  # (B, H)
    else:  # augru, authors
        weight = 1 - (1 - a) * keep  # (B, H)
    return h + weight * (candidate - h)  # (B, H)


def _recurrence(
    kind: int, x_proj: Tensor, attention: Tensor, mask: Tensor, weight_hh: Tensor, bias_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`dien.layers.recurrent.run_recurrence` as a loop TorchScript keeps dynamic.

    ``x_proj (B, T, G*H)``, ``attention (B, T)`` (ignored by gru), ``mask (B, T)`` ->
    all hidden states ``(B, T, H)`` (zero at padding) and the final state ``(B, H)``.
    """
    B, T = x_proj.size(0), x_proj.size(1)
    H = weight_hh.size(1)
    h = x_proj.new_zeros([B, H])  # (B, H)
    valid = mask.unsqueeze(2)  # (B, T, 1)
    keep_valid = valid.to(x_proj.dtype)  # (B, T, 1)
    a = attention.unsqueeze(2)  # (B, T, 1)
    outputs = x_proj.new_zeros([B, T, H])  # (B, T, H)
    for t in range(T):
        hp = torch.addmm(bias_hh, h, weight_hh.t())  # (B, G*H)
        h_new = _step(kind, x_proj[:, t], hp, h, a[:, t])  # (B, H)
        h = torch.where(valid[:, t], h_new, h)  # (B, H)
        outputs[:, t] = h * keep_valid[:, t]
    return outputs, h  # (B, T, H), (B, H)


KINDS = {"gru": 0, "agru": 1, "augru_paper": 2, "augru_authors": 3}
_scripted_recurrence = None


def scripted_recurrence() -> torch.jit.ScriptFunction:
    """The TorchScript-compiled :func:`_recurrence` (compiled once, on first use)."""
    global _scripted_recurrence
    if _scripted_recurrence is None:
        _scripted_recurrence = torch.jit.script(_recurrence)
    return _scripted_recurrence


class ScriptedRecurrentLayer(nn.Module):
    """A :class:`RecurrentLayer`'s parameters with the loop over steps in TorchScript."""

    def __init__(self, layer: RecurrentLayer) -> None:
        super().__init__()
        self.cell = layer.cell
        self.kind = KINDS[layer.kind]
        weight_ih, weight_hh, bias_ih, bias_hh = layer.weights()
        self.weight_ih, self.weight_hh = weight_ih, weight_hh
        self.bias_ih, self.bias_hh = bias_ih, bias_hh

    def final_state(self, inputs: Tensor, mask: Tensor, attention: Tensor | None = None) -> Tensor:
        """The final state ``(B, H)`` alone, as :meth:`RecurrentLayer.final_state`."""
        return self(inputs, mask, attention)[1]

    def forward(
        self, inputs: Tensor, mask: Tensor, attention: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``inputs (B, T, I)``, ``mask (B, T)``, ``attention (B, T)`` -> ``(B, T, H), (B, H)``."""
        if self.cell != "gru" and attention is None:
            raise ValueError(f"the {self.cell} cell needs attention scores")
        if attention is None:
            attention = mask.to(inputs.dtype)  # (B, T), unused by the gru step
        if self.cell == "aigru":
            inputs = inputs * attention[..., None]  # (B, T, I)
        x_proj = F.linear(inputs, self.weight_ih, self.bias_ih)  # (B, T, G*H)
        recurrence = scripted_recurrence()
        return recurrence(self.kind, x_proj, attention, mask, self.weight_hh, self.bias_hh)


def exportable_copy(model: CTRModel) -> CTRModel:
    """A deep copy of ``model`` in eval mode with every recurrent layer scripted.

    Embedding tables of the copy are marked dense: sparse gradients are a training matter,
    and a lookup specialised for them must not reach an inference graph.
    """
    clone = copy.deepcopy(model).eval()
    for module in list(clone.modules()):
        if isinstance(module, nn.Embedding):
            module.sparse = False
        for child_name, child in list(module.named_children()):
            if isinstance(child, RecurrentLayer):
                setattr(module, child_name, ScriptedRecurrentLayer(child))
    return clone


class ScoringModule(nn.Module):
    """Plain int64 tensors in, ``(probability (B,), logit (B,))`` out.

    Inputs, as in :class:`~dien.data.batch.Batch`: ``user``, ``item``, ``category`` ``(B,)``;
    ``hist_items``, ``hist_cats`` ``(B, T)`` left-aligned, oldest first, 0 after each row's
    length; ``hist_lengths`` ``(B,)``.
    """

    def __init__(self, model: CTRModel) -> None:
        super().__init__()
        self.model = exportable_copy(model)

    def forward(
        self,
        user: Tensor,
        item: Tensor,
        category: Tensor,
        hist_items: Tensor,
        hist_cats: Tensor,
        hist_lengths: Tensor,
    ) -> tuple[Tensor, Tensor]:
        batch = Batch(user, item, category, hist_items, hist_cats, hist_lengths)
        history = self.model.encode_history(batch)
        logit, _ = self.model.score(history, item, category)  # (B,)
        return torch.sigmoid(logit), logit  # (B,), (B,)
