"""Trimming a read-out into a budget, least confident units first.

Budget fitting removes *units* until the allocation fits: an **expert unit** is the
last expert of a module (of every module of a layer under layer granularity, whose
modules share one count), a **rank unit** is the last rank row of one expert. A unit
is only removable while its module keeps ``min_experts`` experts (default 2, like the
read-out; 1 is the hard floor) and its expert keeps rank 1.

**Confidence** of a unit: GSVs select a prefix through a *boundary* index ``b``
(``b = experts - 1`` or ``b = rank - 1``). Removing the unit moves the boundary
down, to any of the lower positions the GSV could still select. The confidence is
the sigmoid margin of the current boundary entry over the best of those::

    confidence = s[b] - max(s[lo .. b-1])        lo = min_experts - 1 (experts) or 0 (ranks)

At the read-out boundary this is the margin of the selected entry over the runner-up
below it (>= 0); it is recomputed after every removal, and it is negative when the
GSV itself preferred a smaller prefix. The least confident unit is removed first;
ties go to the unit that saves more of the budget, then to module order. Only units
that reduce the budgeted quantity are considered (for ``experts`` only expert units).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.budget import Budget, BudgetError
from guilomo.search.gsv import MIN_EXPERTS
from guilomo.search.readout import ModuleGSVs, minimum_allocation


def boundary_confidence(s: Tensor, b: int, lo: int = 0) -> float:
    """``s[b] - max(s[lo..b-1])``: support of boundary ``b`` over the best lower one."""
    if b <= lo:
        return float("inf")
    return float(s[b] - s[lo:b].max())


@dataclass
class FitReport:
    """What budget fitting removed, in removal order."""

    removed: list[dict] = field(default_factory=list)

    @property
    def expert_units(self) -> int:
        return sum(1 for r in self.removed if r["unit"] == "expert")

    @property
    def rank_units(self) -> int:
        return sum(1 for r in self.removed if r["unit"] == "rank")

    def summary(self) -> dict:
        return {"removed_expert_units": self.expert_units, "removed_rank_units": self.rank_units}


def fit_budget(
    allocation: Allocation,
    gsvs: Mapping[str, ModuleGSVs],
    budget: Budget,
    shapes: Mapping[str, tuple[int, int]],
    groups: Mapping[str, Sequence[str]] | None = None,
    min_experts: int = MIN_EXPERTS,
) -> tuple[Allocation, FitReport]:
    """Remove the least confident units until ``allocation`` fits ``budget``.

    ``groups`` maps a key to the modules that share one expert count (default: one
    module per group). Raises :class:`BudgetError` when even ``min_experts`` experts of
    rank 1 in every module do not fit.
    """
    report = FitReport()
    if not budget.active or budget.fits(allocation, shapes):
        return allocation, report
    if min_experts < 1:
        raise BudgetError(f"min_experts must be >= 1, got {min_experts}")
    names = list(allocation.modules)
    budget.check_minimum(minimum_allocation(names, min_experts, allocation.top_k), shapes)
    groups = {n: [n] for n in names} if groups is None else {k: list(v) for k, v in groups.items()}
    cost = budget.cost
    ranks = {n: list(m.ranks) for n, m in allocation.modules.items()}
    total = sum(cost(ranks[n], shapes[n]) for n in names)
    order = {n: i for i, n in enumerate(names)}
    group_of = {n: key for key, mods in groups.items() for n in mods}
    heap: list = []
    version: dict[tuple, int] = {}

    def saving_of(unit: tuple) -> int:
        if unit[0] == "expert":
            mods = groups[unit[1]]
            return sum(cost(ranks[n], shapes[n]) - cost(ranks[n][:-1], shapes[n]) for n in mods)
        _, name, i = unit
        shorter = [*ranks[name][:i], ranks[name][i] - 1, *ranks[name][i + 1 :]]
        return cost(ranks[name], shapes[name]) - cost(shorter, shapes[name])

    def push(unit: tuple) -> None:
        """(Re-)queue ``unit`` with its current confidence and saving, if removable."""
        version[unit] = version.get(unit, 0) + 1
        if unit[0] == "expert":
            first = groups[unit[1]][0]
            count = len(ranks[first])
            if count <= min_experts:
                return
            conf, pos = (
                boundary_confidence(gsvs[first].expert, count - 1, min_experts - 1),
                (order[first], -1),
            )
        else:
            _, name, i = unit
            if i >= len(ranks[name]) or ranks[name][i] <= 1:
                return
            conf, pos = (
                boundary_confidence(gsvs[name].rank[i], ranks[name][i] - 1, 0),
                (order[name], i),
            )
        saving = saving_of(unit)
        if saving > 0:
            heapq.heappush(heap, (conf, -saving, *pos, version[unit], unit))

    for key in groups:
        push(("expert", key))
    for n in names:
        for i in range(len(ranks[n])):
            push(("rank", n, i))

    while total > budget.value:
        if not heap:  # unreachable when the minimum fits; kept as a guard
            raise BudgetError(
                f"cannot fit budget {budget.kind}={budget.value}: no unit left to remove"
            )
        conf, neg_saving, _, _, ver, unit = heapq.heappop(heap)
        if ver != version[unit]:
            continue  # stale entry
        if unit[0] == "expert":
            for n in groups[unit[1]]:
                ranks[n].pop()
                gone = ("rank", n, len(ranks[n]))  # the removed expert's rank units go with it
                version[gone] = version.get(gone, 0) + 1
            push(unit)
        else:
            _, name, i = unit
            ranks[name][i] -= 1
            push(unit)
            push(("expert", group_of[name]))  # its saving may have changed
        total += neg_saving
        report.removed.append(
            {
                "unit": unit[0],
                "where": unit[1],
                "expert": unit[2] if unit[0] == "rank" else None,
                "confidence": conf,
            }
        )

    fitted = Allocation(
        {n: ModuleAllocation(tuple(ranks[n])) for n in names},
        top_k=allocation.top_k,
        meta=dict(allocation.meta),
    )
    budget.check(fitted, shapes)
    return fitted, report
