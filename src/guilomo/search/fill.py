"""Spending what a trimmed read-out leaves of the budget, in order of smoothed credit.

:func:`fill_budget` adds units best predicted value per cost first (AdaLoRA's global
ranking of importance, here the credit meter's smoothed credit less its deviation);
:func:`spend_budget`, what a budgeted search runs after the trim, adds the units the
credit says are needed and then (``fill="spend"``) grows the result in the search's own
order until the budget is spent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.budget import Budget
from guilomo.budget.scale import scale_to_budget
from guilomo.search.gsv import MIN_EXPERTS


@dataclass
class FillReport:
    """What budget filling added, in the order it added them."""

    added: list[dict] = field(default_factory=list)

    @property
    def expert_units(self) -> int:
        return sum(1 for r in self.added if r["unit"] == "expert")

    @property
    def rank_units(self) -> int:
        return sum(1 for r in self.added if r["unit"] == "rank")


@dataclass(frozen=True)
class ModuleCredits:
    """Smoothed sigmoid-space credit of one module's GSVs (:class:`CreditMeter`): ``expert``
    (n_max,), ``rank`` (n_max, r_max). With the neighbour credit, ``c[j] - c[j-1]`` is the
    predicted loss change of adding unit ``j`` to the prefix ``0..j-1``."""

    expert: Tensor
    rank: Tensor
    expert_dev: Tensor | None = None  # the meter's deviation of each entry (same shapes)
    rank_dev: Tensor | None = None


def fill_budget(
    allocation: Allocation,
    credits: Mapping[str, ModuleCredits],
    budget: Budget,
    shapes: Mapping[str, tuple[int, int]],
    groups: Mapping[str, Sequence[str]] | None = None,
    n_max: int | None = None,
    r_max: int | None = None,
    parsimony: float | tuple[float, float] = 0.0,
    needed_only: bool = True,
) -> tuple[Allocation, FillReport]:
    """Spend what ``allocation`` leaves of ``budget``, best predicted value per cost first.

    The value of a unit is its smoothed predicted loss decrease less ``parsimony`` times
    its deviation, ``c[j-1] - c[j] - z u[j]`` (the search's own pessimistic rule). With
    ``needed_only`` a unit is added only if that value is positive (modules that need
    nothing stay where the search left them, however large the budget); without it the
    budget is spent until no unit fits (within one unit's cost), the least harmful
    units last (``search.budget_fill=spend``). An
    **expert unit** appends the next expert of a module (of every module of a group), at
    rank 1; a **rank unit** adds the next rank row of a kept expert. Modules that need
    nothing therefore stay where the search left them, however large the budget.
    """
    report = FillReport()
    if not budget.active:
        return allocation, report
    names = list(allocation.modules)
    groups = {n: [n] for n in names} if groups is None else {k: list(v) for k, v in groups.items()}
    ranks = {n: list(m.ranks) for n, m in allocation.modules.items()}
    cost = budget.cost
    left = budget.value - sum(cost(ranks[n], shapes[n]) for n in names)

    z_expert, z_rank = parsimony if isinstance(parsimony, tuple) else (parsimony, parsimony)

    def value(c: Tensor, u: Tensor | None, j: int, z: float) -> float:
        noise = z * float(u[j]) if u is not None else 0.0
        return float(c[j - 1] - c[j]) - noise  # predicted loss decrease of adding unit j

    while True:
        best = None
        for key, mods in groups.items():
            first = mods[0]
            count = len(ranks[first])
            n = credits[first].expert.numel() if n_max is None else n_max
            if count >= n:
                continue
            v = value(credits[first].expert, credits[first].expert_dev, count, z_expert)
            c = sum(cost([*ranks[m], 1], shapes[m]) - cost(ranks[m], shapes[m]) for m in mods)
            if (v > 0 or not needed_only) and 0 < c <= left and (best is None or v / c > best[0]):
                best = (v / c, c, ("expert", key))
        for name in names:
            for i, r in enumerate(ranks[name]):
                rmax = credits[name].rank.shape[-1] if r_max is None else r_max
                if r >= rmax:
                    continue
                dev = credits[name].rank_dev
                v = value(credits[name].rank[i], None if dev is None else dev[i], r, z_rank)
                grown = [*ranks[name][:i], r + 1, *ranks[name][i + 1 :]]
                c = cost(grown, shapes[name]) - cost(ranks[name], shapes[name])
                ok = v > 0 or not needed_only
                if ok and 0 < c <= left and (best is None or v / c > best[0]):
                    best = (v / c, c, ("rank", name, i))
        if best is None:
            break
        _, c, unit = best
        if unit[0] == "expert":
            for m in groups[unit[1]]:
                ranks[m].append(1)
        else:
            ranks[unit[1]][unit[2]] += 1
        left -= c
        report.added.append(
            {
                "unit": unit[0],
                "where": unit[1],
                "expert": unit[2] if unit[0] == "rank" else None,
                "value_per_cost": best[0],
            }
        )
    filled = Allocation(
        {n: ModuleAllocation(tuple(ranks[n])) for n in names},
        top_k=allocation.top_k,
        meta=dict(allocation.meta),
    )
    budget.check(filled, shapes)
    return filled, report


def spend_budget(
    allocation: Allocation,
    credits: Mapping[str, ModuleCredits],
    budget: Budget,
    shapes: Mapping[str, tuple[int, int]],
    groups: Mapping[str, Sequence[str]] | None = None,
    parsimony: float | tuple[float, float] = 0.0,
    fill: str = "spend",
) -> tuple[Allocation, dict]:
    """After a budgeted search: add the units the credit says are needed, then (``fill=
    "spend"``) grow the result in proportion to what the search gave each unit until the
    budget is spent (:func:`guilomo.budget.scale.scale_to_budget`, ranks for ``rank`` /
    ``params`` budgets, experts for ``experts``; within one unit's cost). Scaling keeps
    the search's order between modules; units the credit does not value go where the
    search already put capacity, not to the modules it left at the minimum. Growth is
    capped at the search space (``r_max`` ranks, ``n_max`` experts; the search checks
    before it starts that the budget fits in it).

    Growth runs in two tiers so that the order survives the caps: first only the modules
    the search gave more than the minimum (``MIN_EXPERTS`` experts of rank 1) grow, the
    others held; only once every one of them is at ``n_max`` experts of rank ``r_max``
    does the rest of the budget grow the modules left at the minimum. So a module whose
    credit was noise never ends with more experts or rank than one that needed capacity.
    Returns the allocation and a record for ``meta.budget_fit``."""
    filled, report = fill_budget(
        allocation, credits, budget, shapes, groups, parsimony=parsimony, needed_only=True
    )
    record = {
        "fill": fill,
        "added_expert_units": report.expert_units,
        "added_rank_units": report.rank_units,
    }
    if fill != "spend" or not budget.active:
        return filled, record
    mode = "experts" if budget.kind == "experts" else "rank"
    if mode == "experts" and groups is not None and any(len(g) > 1 for g in groups.values()):
        record["scaled"] = "no: tied expert counts (granularity=layer) do not scale per module"
        return filled, record
    before = budget.measure(filled, shapes)
    # growth stays inside the search space: no rank above r_max, no count above n_max
    n_max, r_max = (int(n) for n in next(iter(credits.values())).rank.shape)
    floor = (1,) * MIN_EXPERTS
    needed = [n for n, m in filled.modules.items() if m.ranks != floor]
    held = [n for n in filled.modules if n not in needed]
    scaled = filled
    for tier in (needed, held):
        if tier and budget.measure(scaled, shapes) < budget.value:
            scaled = _grow(scaled, tier, budget, shapes, mode, n_max, r_max)
    scaled.meta.pop("scaled", None)
    after = budget.measure(scaled, shapes)
    record["scaled"] = {
        "mode": mode,
        "before": before,
        "after": after,
        "caps": [n_max, r_max],
        "grew_minimum_modules": any(scaled.modules[n].ranks != floor for n in held),
    }
    return scaled, record


def _grow(
    alloc: Allocation,
    tier: Sequence[str],
    budget: Budget,
    shapes: Mapping[str, tuple[int, int]],
    mode: str,
    n_max: int,
    r_max: int,
) -> Allocation:
    """``alloc`` with only the modules of ``tier`` grown in proportion to spend what the
    others leave of ``budget`` (ranks to ``r_max``, then new experts of rank 1 up to
    ``n_max`` and the ranks again; experts alone under an ``experts`` budget)."""
    fixed = {n: m for n, m in alloc.modules.items() if n not in tier}
    part = Allocation({n: alloc.modules[n] for n in tier}, alloc.top_k, dict(alloc.meta))
    sub_shapes = {n: shapes[n] for n in tier}
    rest = Allocation(fixed, alloc.top_k) if fixed else None
    left = budget.value - (budget.measure(rest, shapes) if rest is not None else 0)
    sub = Budget(budget.kind, left)
    if mode == "experts":
        part = scale_to_budget(part, sub, sub_shapes, mode="experts", cap=n_max)
    else:
        part = scale_to_budget(part, sub, sub_shapes, mode="rank", cap=r_max)
        while sub.measure(part, sub_shapes) < sub.value:
            # ranks at r_max where they could grow, budget left: a new expert of rank 1
            # where it fits (largest modules first), then the ranks grow again
            bigger = _add_experts(part, sub, sub_shapes, n_max)
            if bigger is None:
                break
            part = scale_to_budget(bigger, sub, sub_shapes, mode="rank", cap=r_max)
    modules = {n: part.modules[n] if n in part.modules else alloc.modules[n] for n in alloc.modules}
    return Allocation(modules, alloc.top_k, part.meta)


def _add_experts(
    alloc: Allocation, budget: Budget, shapes: Mapping[str, tuple[int, int]], n_max: int
) -> Allocation | None:
    """``alloc`` with one more expert of rank 1 in every module below ``n_max`` experts
    where it still fits ``budget``, visiting the modules by decreasing size (parameters;
    ties in module order); None when no expert fits."""
    ranks = {n: list(m.ranks) for n, m in alloc.modules.items()}
    order = sorted(ranks, key=lambda n: -alloc.modules[n].params(*shapes[n]))
    spent, added = budget.measure(alloc, shapes), False
    for n in order:
        if len(ranks[n]) >= n_max:
            continue
        step = budget.cost([*ranks[n], 1], shapes[n]) - budget.cost(ranks[n], shapes[n])
        if spent + step <= budget.value:
            ranks[n].append(1)
            spent += step
            added = True
    if not added:
        return None
    return Allocation(
        {n: ModuleAllocation(tuple(r)) for n, r in ranks.items()}, alloc.top_k, alloc.meta
    )
