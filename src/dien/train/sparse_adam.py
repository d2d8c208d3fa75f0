"""Lazy Adam for sparse embedding gradients: torch's SparseAdam with a fused CPU step.

:class:`FusedSparseAdam` is ``torch.optim.SparseAdam`` (same arguments, same state, same
update: only the rows a gradient names move, and their moments decay only then), whose step
on the CPU runs :mod:`dien.layers.fused`'s one-pass kernel: each named row of the parameter
and of both moments is read and written once. torch's own step makes several passes over those
rows through sparse tensors; on DIEN's tables (hundreds of thousands of rows, a few thousand
named per batch) it took about a tenth of a training step. Elsewhere (GPU, no compiler, or
``DIEN_DISABLE_FUSED=1``) the step is torch's. The state dicts are interchangeable with
SparseAdam's, so checkpoints of either load into the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dien.layers.fused import fused_supported, load_extension


class FusedSparseAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam`` whose step runs one fused pass over the named rows on CPU."""

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], float] | None = None
    ) -> float | None:
        params = [p for group in self.param_groups for p in group["params"]]
        if not all(fused_supported(p) and p.dim() == 2 for p in params):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._step_one(param, group)
        return loss

    def _step_one(self, param: torch.Tensor, group: dict) -> None:
        if not param.grad.is_sparse:
            raise RuntimeError("SparseAdam does not support dense gradients, use Adam instead")
        state = self.state[param]
        if not state:  # as SparseAdam initialises its state
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["step"] += 1
        grad = param.grad.coalesce()  # the update is not linear: each row once
        if grad._nnz() == 0:
            return
        values = grad._values()  # (R, D)
        if group.get("maximize", False):
            values = -values
        beta1, beta2 = group["betas"]
        step = state["step"]
        step_size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
        load_extension().sparse_adam_step(
            param.data,
            state["exp_avg"],
            state["exp_avg_sq"],
            grad._indices()[0].contiguous(),  # (R,)
            values.contiguous(),
            step_size,
            beta1,
            beta2,
            group["eps"],
        )
