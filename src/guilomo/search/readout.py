"""Reading the allocation off the GSVs.

Read-out (method section 3), with ``s = sigmoid(g)`` and the forward's own argmax::

    experts[module] = max(2, argmax(s_e) + 1)                  in 2..n_max
    rank[module][i] = argmax(s_r of expert i) + 1  (i < experts) in 1..r_max

What happens next under a budget lives beside it: :mod:`.trim` cuts the read-out to
the budget, least confident units first; :mod:`.fill` spends what is left, in order of
smoothed credit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from guilomo.allocation import Allocation, ModuleAllocation, uniform
from guilomo.search.gsv import MIN_EXPERTS, selected_experts, selected_ranks
from guilomo.search.layer import search_layers


@dataclass(frozen=True)
class ModuleGSVs:
    """Sigmoid GSVs of one module: ``expert`` (n_max,), ``rank`` (n_max, r_max)."""

    expert: Tensor
    rank: Tensor

    @classmethod
    def from_logits(cls, gsv_expert: Tensor, gsv_rank: Tensor) -> ModuleGSVs:
        return cls(
            torch.sigmoid(gsv_expert.detach().float().cpu()),
            torch.sigmoid(gsv_rank.detach().float().cpu()),
        )


def collect_gsvs(model) -> dict[str, ModuleGSVs]:
    """Sigmoid GSVs of every search layer of ``model``."""
    return {
        n: ModuleGSVs.from_logits(m.gsv_expert, m.gsv_rank) for n, m in search_layers(model).items()
    }


def read_allocation(
    gsvs: Mapping[str, ModuleGSVs],
    top_k: int = 2,
    meta: dict | None = None,
) -> Allocation:
    """The allocation the GSVs select (method section 3), by the search's own rule."""
    modules = {}
    for name, g in gsvs.items():
        experts = min(int(selected_experts(g.expert)), g.expert.numel())
        ranks = selected_ranks(g.rank[:experts]).tolist()
        modules[name] = ModuleAllocation(tuple(int(r) for r in ranks))
    return Allocation(modules, top_k=top_k, meta=dict(meta or {}))


def minimum_allocation(
    names: Sequence[str], min_experts: int = MIN_EXPERTS, top_k: int = 2, **meta
) -> Allocation:
    """The smallest allocation budget fitting may reach: ``min_experts`` experts of rank 1."""
    return uniform(names, min_experts, 1, top_k=top_k, **meta)
