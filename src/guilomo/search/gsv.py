"""Straight-through prefix masks of the GuidedSelection Vectors (GSVs).

A GSV ``g`` of length ``n`` selects a *prefix*: with ``s = sigmoid(g)`` and
``k* = argmax(s)`` the entries ``0..k*`` are kept. The forward value is a fixed
two-level mask; the backward is GuiLoMo's hand-made straight-through rule:

    delta_j = dL/dmask_j                      (already summed over tokens by autograd)
    dL/ds_{k*} = sum_{i <= k*} delta_i * s_i  (the boundary gets the credit of the prefix)
    dL/ds_j    = off_grad * delta_j           (every other j)

and autograd continues through the sigmoid. Two masks use the rule:

- :func:`expert_mask` (router-logit bias): ``+0.5`` for ``j <= k*``, ``-1e4`` above,
  ``k*`` at least 1 (so at least two experts stay), ``off_grad = 0``.
- :func:`rank_mask` (multiplies the rank rows of one expert): ``1`` for ``j <= k*``
  and the floor above (``1e-4`` soft, ``0`` hard); ``off_grad`` = the floor, so the
  soft form gives the reference's ``1e-4 * delta_j``.

Both work on any leading shape ``(..., n)`` (e.g. all experts of a module at once),
with no Python loop and no host synchronisation. The backward is written in
differentiable torch ops, so it can sit inside a graph built with ``create_graph``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

EXPERT_KEEP = 0.5
EXPERT_DROP = -1e4
RANK_FLOORS = {"soft": 1e-4, "hard": 0.0}


def prefix_index(s: Tensor, min_index: int = 0) -> Tensor:
    """``k*`` per row: ``argmax`` over the last dim, at least ``min_index`` (shape ``(..., 1)``)."""
    return s.argmax(-1, keepdim=True).clamp(min=min_index)


class PrefixMaskSTE(torch.autograd.Function):
    """``mask = where(j <= k*, keep, drop)`` with the GSV straight-through backward."""

    @staticmethod
    def forward(ctx: Any, s: Tensor, keep: float, drop: float, min_index: int, off_grad: float):
        k = prefix_index(s, min_index)
        idx = torch.arange(s.shape[-1], device=s.device)
        mask = torch.where(idx <= k, torch.full_like(s, keep), torch.full_like(s, drop))
        ctx.save_for_backward(s, k)
        ctx.off_grad = off_grad
        return mask

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        s, k = ctx.saved_tensors
        idx = torch.arange(s.shape[-1], device=s.device)
        prefix = (grad * s).cumsum(-1)  # prefix[j] = sum_{i <= j} delta_i s_i
        grad_s = torch.where(idx == k, prefix, grad * ctx.off_grad)
        return grad_s, None, None, None, None


def expert_mask(s: Tensor) -> Tensor:
    """Additive router-logit mask from ``s = sigmoid(g_e)``: +0.5 kept, -1e4 dropped."""
    return PrefixMaskSTE.apply(s, EXPERT_KEEP, EXPERT_DROP, 1, 0.0)


def rank_mask(s: Tensor, floor: float = RANK_FLOORS["soft"]) -> Tensor:
    """Multiplicative rank mask from ``s = sigmoid(g_r)``: 1 kept, ``floor`` above ``k*``."""
    return PrefixMaskSTE.apply(s, 1.0, floor, 0, floor)


def gsv_init(
    n: int, generator: torch.Generator | None = None, shape: tuple[int, ...] = ()
) -> Tensor:
    """The reference's GSV init: ``softmax(randn(n))`` (per row for a leading ``shape``)."""
    return torch.randn(*shape, n, generator=generator).softmax(-1)


def margin(s: Tensor) -> Tensor:
    """Margin of the largest entry over the runner-up along the last dim (0 when n = 1)."""
    if s.shape[-1] < 2:
        return torch.zeros(s.shape[:-1], dtype=s.dtype, device=s.device)
    top = s.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]
