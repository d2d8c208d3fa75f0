"""The GRU family over a padded behaviour sequence: GRU, AIGRU, AGRU and AUGRU.

Dimension letters: B batch, T history steps, I input width, H hidden width, G gates (3 for
GRU, AIGRU and AUGRU: reset, update, candidate; 2 for AGRU: reset, candidate).

The GRU of the DIEN paper (eq. 1-4), with ``i_t`` the input and ``h_{t-1}`` the state::

    u_t  = sigmoid(W_u i_t + b_iu + U_u h_{t-1} + b_hu)          update gate
    r_t  = sigmoid(W_r i_t + b_ir + U_r h_{t-1} + b_hr)          reset gate
    h~_t = tanh(W_h i_t + b_ih + r_t * (U_h h_{t-1} + b_hh))     candidate
    h_t  = (1 - u_t) * h_{t-1} + u_t * h~_t

The weights are laid out as in ``torch.nn.GRU`` (rows ``[reset | keep | candidate]``), whose
middle gate ``z_t`` is the gate that *keeps* the old state: ``u_t = 1 - z_t``. So a plain GRU
here is exactly ``torch.nn.GRU`` with the same weights. With an attention score ``a_t`` in
[0, 1] for each step, the cells differ only in the candidate weight ``c_t`` of
``h_t = (1 - c_t) * h_{t-1} + c_t * h~_t``:

=====================  ==========================  =======================================
cell                   candidate weight ``c_t``    attention 0 / attention 1
=====================  ==========================  =======================================
gru                    ``u_t``                     (no attention)
aigru                  ``u_t``, input ``a_t i_t``  input zeroed / plain GRU
agru                   ``a_t`` (no update gate)    state kept / state replaced by ``h~_t``
augru, form 'paper'    ``a_t * u_t``               state kept / plain GRU
augru, form 'authors'  ``u_t + a_t (1 - u_t)``     plain GRU / state replaced by ``h~_t``
=====================  ==========================  =======================================

The 'authors' form is the public DIEN code's cell, which scales the gate that keeps the old
state: ``z'_t = (1 - a_t) z_t``, so ``c_t = 1 - (1 - a_t)(1 - u_t) = u_t + a_t (1 - u_t)``.
One difference from the public code remains in every cell: its TensorFlow GRU cell resets the
state before the candidate's matrix product, ``tanh(W_h i_t + U_h (r_t * h_{t-1}))``, while
this module follows the paper's equation 3 (and cuDNN), ``r_t * (U_h h_{t-1})``, which lets
one matrix product per step serve all gates.

Padding: histories are left-aligned, so a row's valid steps come first. At a padded step the
state is carried unchanged (``h_t = h_{t-1}``), the final state is the state after the row's
last valid step (zeros for an empty history), and the returned hidden states are zero at
padded steps. Lengths stay on the device: everything is done with the (B, T) mask.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dien.layers.fused import fused_recurrence, fused_supported

CellKind = Literal["gru", "aigru", "agru", "augru"]
AugruForm = Literal["paper", "authors"]
RecurrenceKind = Literal["gru", "agru", "augru_paper", "augru_authors"]
RECURRENCE_KINDS: tuple[str, ...] = ("gru", "agru", "augru_paper", "augru_authors")
CELL_KINDS: tuple[str, ...] = ("gru", "aigru", "agru", "augru")
AUGRU_FORMS: tuple[str, ...] = ("paper", "authors")


def recurrence_kind(cell: CellKind, augru_form: AugruForm = "paper") -> RecurrenceKind:
    """The step rule a cell needs; AIGRU is a plain GRU over attention-scaled inputs."""
    if cell not in CELL_KINDS:
        raise ValueError(f"unknown cell {cell!r}; expected one of {', '.join(CELL_KINDS)}")
    if augru_form not in AUGRU_FORMS:
        raise ValueError(f"unknown AUGRU form {augru_form!r}; expected paper or authors")
    if cell in ("gru", "aigru"):
        return "gru"
    if cell == "agru":
        return "agru"
    return "augru_paper" if augru_form == "paper" else "augru_authors"


Weights = tuple[Tensor, Tensor, Tensor, Tensor]  # weight_ih, weight_hh, bias_ih, bias_hh


def run_recurrence(
    kind: RecurrenceKind,
    inputs: Tensor,
    attention: Tensor | None,
    mask: Tensor,
    weights: Weights,
    h0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Run one recurrent layer over a padded batch.

    On CPU in float32 or float64 this runs the fused C++ recurrence of
    :mod:`dien.layers.fused` (the same result, several times faster); elsewhere, or when the
    extension cannot be built or ``DIEN_DISABLE_FUSED=1`` is set, the Python loop over steps
    of :func:`run_recurrence_loop`. Arguments and results are those of the loop.
    """
    if kind not in RECURRENCE_KINDS:
        raise ValueError(f"unknown recurrence kind {kind!r}")
    if fused_supported(inputs):
        return fused_recurrence(kind, inputs, attention, mask, weights, h0)
    return run_recurrence_loop(kind, inputs, attention, mask, weights, h0)


def run_recurrence_loop(
    kind: RecurrenceKind,
    inputs: Tensor,
    attention: Tensor | None,
    mask: Tensor,
    weights: Weights,
    h0: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Run one recurrent layer: the input projections of all steps in one matrix product,
    then a Python loop over steps for the hidden projection and the gates.

    Args:
        kind: the step rule (see :func:`recurrence_kind`).
        inputs: ``(B, T, I)`` the step inputs ``i_t``.
        attention: ``(B, T)`` scores for ``agru`` and ``augru_*``; ignored for ``gru``.
        mask: ``(B, T)`` bool, True at valid steps.
        weights: ``weight_ih (G*H, I)``, ``weight_hh (G*H, H)``, ``bias_ih (G*H,)``,
            ``bias_hh (G*H,)``, gate blocks ordered ``[reset, keep, candidate]``
            (``[reset, candidate]`` for ``agru``).
        h0: ``(B, H)`` initial state, zeros when None.

    Returns:
        All hidden states ``(B, T, H)`` (zeros at padded steps) and the final state ``(B, H)``.
    """
    weight_ih, weight_hh, bias_ih, bias_hh = weights
    B, T, _ = inputs.shape
    H = weight_hh.shape[1]
    if kind != "gru" and attention is None:
        raise ValueError(f"the {kind} cell needs attention scores")
    x_proj = F.linear(inputs, weight_ih, bias_ih)  # (B, T, G*H)
    h = x_proj.new_zeros(B, H) if h0 is None else h0  # (B, H)
    # unbind once: indexing step t of a (B, T, .) tensor in the loop would make its backward
    # write a full-size zero gradient per step (quadratic in T)
    x_steps = x_proj.unbind(dim=1)  # T x (B, G*H)
    valid = mask[..., None].unbind(dim=1)  # T x (B, 1)
    keep_valid = mask[..., None].to(x_proj.dtype).unbind(dim=1)  # T x (B, 1)
    a = [None] * T if attention is None else attention[..., None].unbind(dim=1)  # T x (B, 1)
    outputs = []
    for t in range(T):
        h_proj = torch.addmm(bias_hh, h, weight_hh.t())  # (B, G*H)
        h_new = _step(kind, x_steps[t], h_proj, h, a[t])  # (B, H)
        h = torch.where(valid[t], h_new, h)  # (B, H)
        outputs.append(h * keep_valid[t])  # (B, H)
    if not outputs:
        return x_proj.new_zeros(B, 0, H), h
    return torch.stack(outputs, dim=1), h  # (B, T, H), (B, H)


def _step(kind: RecurrenceKind, x: Tensor, hp: Tensor, h: Tensor, a: Tensor | None) -> Tensor:
    """One step: ``h_t = h_{t-1} + c_t * (h~_t - h_{t-1})`` with the cell's candidate weight."""
    if kind == "agru":
        x_r, x_n = x.chunk(2, dim=-1)  # (B, H) each
        h_r, h_n = hp.chunk(2, dim=-1)  # (B, H) each
        r = torch.sigmoid(x_r + h_r)  # (B, H)
        candidate = torch.tanh(x_n + r * h_n)  # (B, H)
        return h + a * (candidate - h)  # (B, H)
    x_r, x_z, x_n = x.chunk(3, dim=-1)  # (B, H) each
    h_r, h_z, h_n = hp.chunk(3, dim=-1)  # (B, H) each
    r = torch.sigmoid(x_r + h_r)  # (B, H)
    keep = torch.sigmoid(x_z + h_z)  # (B, H), keep gate z = 1 - u
    candidate = torch.tanh(x_n + r * h_n)  # (B, H)
    if kind == "gru":
        weight = 1 - keep  # (B, H)
    elif kind == "augru_paper":
        weight = a * (1 - keep)  # (B, H)
    else:
        weight = 1 - (1 - a) * keep  # (B, H)
    return h + weight * (candidate - h)  # (B, H)


def final_from_outputs(outputs: Tensor, mask: Tensor) -> Tensor:
    """The hidden state at each row's last valid step, zeros for an empty history.

    ``outputs`` must be zero at padded steps. Uses the mask only (no host sync).
    """
    B, T, H = outputs.shape
    last = (mask.sum(dim=1) - 1).clamp(min=0)  # (B,)
    index = last[:, None, None].expand(B, 1, H)  # (B, 1, H)
    return outputs.gather(1, index)[:, 0]  # (B, H)


class RecurrentLayer(nn.Module):
    """One GRU-family layer over a padded batch: see the module docstring for the cells.

    The layer runs :func:`run_recurrence`: where the fused CPU recurrence applies, every cell
    runs it, being faster than ``torch.nn.GRU`` on CPU. Elsewhere (GPU), plain GRU and AIGRU
    run through ``torch.nn.GRU`` (cuDNN) when ``use_torch_gru``; padded steps then run too but
    are masked out of the outputs and the final state, which is gathered at each row's last
    valid step.

    Parameters are initialised as ``torch.nn.GRU`` does: uniform in +-1/sqrt(H).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        cell: CellKind = "gru",
        augru_form: AugruForm = "paper",
        use_torch_gru: bool = True,
    ) -> None:
        super().__init__()
        self.cell = cell
        self.kind = recurrence_kind(cell, augru_form)
        self.hidden_size = hidden_size
        self.use_torch_gru = use_torch_gru
        if self.kind == "gru":
            self.gru = nn.GRU(input_size, hidden_size, batch_first=True)
            return
        gates = 2 if self.kind == "agru" else 3
        bound = 1 / math.sqrt(hidden_size)
        shapes = {
            "weight_ih": (gates * hidden_size, input_size),
            "weight_hh": (gates * hidden_size, hidden_size),
            "bias_ih": (gates * hidden_size,),
            "bias_hh": (gates * hidden_size,),
        }
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(weight_ih (G*H, I), weight_hh (G*H, H), bias_ih (G*H,), bias_hh (G*H,))``."""
        if self.kind == "gru":
            g = self.gru
            return g.weight_ih_l0, g.weight_hh_l0, g.bias_ih_l0, g.bias_hh_l0
        return self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh

    def forward(
        self, inputs: Tensor, mask: Tensor, attention: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``inputs (B, T, I)``, ``mask (B, T)``, ``attention (B, T)`` -> ``(B, T, H), (B, H)``."""
        outputs, final = self._run(inputs, mask, attention, all_outputs=True)
        assert outputs is not None
        return outputs, final

    def final_state(self, inputs: Tensor, mask: Tensor, attention: Tensor | None = None) -> Tensor:
        """Only the final state ``(B, H)`` of :meth:`forward`: where the fused recurrence runs,
        the ``(B, T, H)`` hidden states are never written to memory."""
        return self._run(inputs, mask, attention, all_outputs=False)[1]

    def _run(
        self, inputs: Tensor, mask: Tensor, attention: Tensor | None, all_outputs: bool
    ) -> tuple[Tensor | None, Tensor]:
        B, T, _ = inputs.shape
        if self.cell != "gru" and attention is None:
            raise ValueError(f"the {self.cell} cell needs attention scores")
        if self.cell == "aigru":
            inputs = inputs * attention[..., None]  # (B, T, I)
        if T == 0:
            return inputs.new_zeros(B, 0, self.hidden_size), inputs.new_zeros(B, self.hidden_size)
        if self.kind == "gru" and self.use_torch_gru and not fused_supported(inputs):
            outputs, _ = self.gru(inputs)  # (B, T, H)
            outputs = outputs * mask[..., None].to(outputs.dtype)  # (B, T, H)
            return outputs, final_from_outputs(outputs, mask)
        if not all_outputs and fused_supported(inputs):  # the states are never written
            return fused_recurrence(
                self.kind, inputs, attention, mask, self.weights(), all_outputs=False
            )
        return run_recurrence(self.kind, inputs, attention, mask, self.weights())
