"""Straight-through prefix masks of the GuidedSelection Vectors (GSVs).

A GSV ``g`` of length ``n`` selects a *prefix*: with ``s = sigmoid(g)`` and
``k* = argmax(s)`` the entries ``0..k*`` are kept. The forward value is a fixed
two-level mask; the backward is GuiLoMo's hand-made straight-through rule:

    delta_j = dL/dmask_j                      (already summed over tokens by autograd)
    dL/ds_{k*} = sum_{i <= k*} delta_i * s_i  (the boundary gets the credit of the prefix)
    dL/ds_j    = off_grad * delta_j           (every other j)

and autograd continues through the sigmoid (``credit="reference"``, GuiLoMo's rule). The
boundary is the only entry that learns from the kept prefix, so under Adam every GSV
mostly reinforces its initial argmax. ``credit="neighbour"`` instead gives every index
the first-order loss change of moving the boundary there::

    C_j = sum_{i <= j} delta_i
    dL/ds_j = C_j - C_{k*}     (j > k*: the units k*+1..j switched on; j < k*: k*..j+1 off)

so an index whose prefix is predicted to lower the loss grows, one predicted to raise it
shrinks, and the boundary itself gets 0: the argmax moves to a neighbouring prefix length
only when the masks' own gradients say that prefix is better. Two masks use the rule:

- :func:`expert_mask` (router-logit bias): ``+0.5`` for ``j <= k*``, ``-1e4`` above,
  ``k*`` at least ``MIN_EXPERTS - 1`` (so at least two experts stay), ``off_grad = 0``.
  :func:`expert_gate` is the same prefix as a 1/0 gate on the experts' *outputs*: its
  ``delta_j`` is what expert ``j`` contributes to the loss, where the router-logit
  mask's ``delta_j`` sum to zero over the kept experts (softmax shift invariance).
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
CREDITS = ("reference", "neighbour")
# The one place that owns the minimum expert count: the search's masks and the read-out
# keep at least two experts per module (top-2 routing needs two).
MIN_EXPERTS = 2


def prefix_index(s: Tensor, min_index: int = 0) -> Tensor:
    """``k*`` per row: ``argmax`` over the last dim, at least ``min_index`` (shape ``(..., 1)``)."""
    return s.argmax(-1, keepdim=True).clamp(min=min_index)


def selected_experts(s_e: Tensor) -> Tensor:
    """Experts the expert GSV(s) ``s_e = sigmoid(g_e)`` keep: ``max(MIN_EXPERTS, argmax + 1)``."""
    return prefix_index(s_e, MIN_EXPERTS - 1).squeeze(-1) + 1


def selected_ranks(s_r: Tensor) -> Tensor:
    """Rank the rank GSV(s) ``s_r = sigmoid(g_r)`` select: ``argmax + 1`` per row."""
    return prefix_index(s_r).squeeze(-1) + 1


class PrefixMaskSTE(torch.autograd.Function):
    """``mask = where(j <= k*, keep, drop)`` with a GSV straight-through backward."""

    @staticmethod
    def forward(
        ctx: Any,
        s: Tensor,
        keep: float,
        drop: float,
        min_index: int,
        off_grad: float,
        credit: str = "reference",
    ):
        k = prefix_index(s, min_index)
        idx = torch.arange(s.shape[-1], device=s.device)
        mask = torch.where(idx <= k, torch.full_like(s, keep), torch.full_like(s, drop))
        ctx.save_for_backward(s, k)
        ctx.off_grad, ctx.credit = off_grad, credit
        return mask

    @staticmethod
    def backward(ctx: Any, grad: Tensor):
        s, k = ctx.saved_tensors
        if ctx.credit == "neighbour":
            # C_j - C_{k*}: first-order loss change of moving the boundary from k* to j
            c = grad.cumsum(-1)
            return c - c.gather(-1, k), None, None, None, None, None
        idx = torch.arange(s.shape[-1], device=s.device)
        prefix = (grad * s).cumsum(-1)  # prefix[j] = sum_{i <= j} delta_i s_i
        grad_s = torch.where(idx == k, prefix, grad * ctx.off_grad)
        return grad_s, None, None, None, None, None


def _check_credit(credit: str) -> None:
    if credit not in CREDITS:
        raise ValueError(f"credit='{credit}' is not one of {list(CREDITS)}")


def expert_mask(s: Tensor, credit: str = "reference") -> Tensor:
    """Additive router-logit mask from ``s = sigmoid(g_e)``: +0.5 kept, -1e4 dropped."""
    _check_credit(credit)
    return PrefixMaskSTE.apply(s, EXPERT_KEEP, EXPERT_DROP, MIN_EXPERTS - 1, 0.0, credit)


def expert_gate(s: Tensor, credit: str = "reference", floor: float = 0.0) -> Tensor:
    """Multiplicative gate on the experts' outputs from ``s = sigmoid(g_e)``: 1 kept, ``floor``
    dropped (the same prefix as :func:`expert_mask`); ``delta_j`` is then expert ``j``'s
    first-order contribution to the loss. ``off_grad`` = the floor, as for the rank mask."""
    _check_credit(credit)
    return PrefixMaskSTE.apply(s, 1.0, floor, MIN_EXPERTS - 1, floor, credit)


def rank_mask(s: Tensor, floor: float = RANK_FLOORS["soft"], credit: str = "reference") -> Tensor:
    """Multiplicative rank mask from ``s = sigmoid(g_r)``: 1 kept, ``floor`` above ``k*``."""
    _check_credit(credit)
    return PrefixMaskSTE.apply(s, 1.0, floor, 0, floor, credit)


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
