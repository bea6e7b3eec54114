"""The read-out's cost as a straight-through term: what the GSVs' allocation spends now,
and, as its gradient, the exact cost change of moving any GSV boundary.

For one search module with expert GSV ``s_e`` (n,) and rank GSVs ``s_r`` (n, r), the
kept experts ``K_e = 1[j <= k*_e]`` and kept ranks ``K_r[i] = 1[j <= k*_r(i)]`` are the
read-out's own prefixes, built with :class:`PrefixMaskSTE` (keep 1, drop 0) and the
``neighbour`` credit whatever credit the losses use. With ``d = d_in + d_out``::

    rank_i  = sum_j K_r[i, j]                       the read-out rank of expert i
    experts = sum_i K_e[i]
    rank    = sum_i K_e[i] rank_i
    params  = sum_i K_e[i] (rank_i d + d_in)        A and B rows, one router row per expert
                                                    (the read-out keeps >= 2 experts, so the
                                                    router always exists: budget.module_params)

The forward value equals :meth:`Budget.cost` of the read-out. Backward: entry ``j`` of a
GSV gets ``C_j - C_{k*}`` of the cost's derivatives w.r.t. the mask, i.e. the cost
change of moving that boundary from ``k*`` to ``j``: adding expert ``j`` costs its
current rank rows and its router row, a rank row of a kept expert costs ``d``, a rank
row of a dropped expert nothing (``K_e[i] = 0`` in the product). Autograd then goes
through the sigmoid, as for the loss credit. Shared (layer-granularity) expert GSVs sum
the cost changes of their modules.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from guilomo.budget import KINDS
from guilomo.search.gsv import MIN_EXPERTS, PrefixMaskSTE

COSTED_KINDS = tuple(k for k in KINDS if k != "none")


def kept_prefix(s: Tensor, min_index: int = 0) -> Tensor:
    """0/1 prefix mask of the read-out (``j <= k*``) with the neighbour straight-through credit."""
    return PrefixMaskSTE.apply(s, 1.0, 0.0, min_index, 0.0, "neighbour")


def module_cost(layer, kind: str) -> Tensor:
    """The read-out cost of one search layer in the budget unit ``kind`` (a 0-d tensor)."""
    if kind not in COSTED_KINDS:
        raise ValueError(f"budget kind '{kind}' has no cost; one of {list(COSTED_KINDS)}")
    k_e = kept_prefix(torch.sigmoid(layer.gsv_expert), MIN_EXPERTS - 1)
    if kind == "experts":
        return k_e.sum()
    ranks = kept_prefix(torch.sigmoid(layer.gsv_rank)).sum(-1)
    if kind == "rank":
        return (k_e * ranks).sum()
    d_in, d_out = layer.base.in_features, layer.base.out_features
    return (k_e * (ranks * (d_in + d_out) + d_in)).sum()


def readout_cost(layers: Iterable, kind: str) -> Tensor:
    """Sum of :func:`module_cost` over ``layers`` (differentiable w.r.t. their GSVs)."""
    return torch.stack([module_cost(m, kind) for m in layers]).sum()


def unit_cost(layers: Iterable, kind: str) -> float:
    """The cost of one typical unit: a rank row (mean ``d_in + d_out``) for ``params``, one
    rank for ``rank``, one expert for ``experts``; the controller measures cost in it."""
    if kind != "params":
        return 1.0
    sizes = [m.base.in_features + m.base.out_features for m in layers]
    return float(sum(sizes)) / max(1, len(sizes))
