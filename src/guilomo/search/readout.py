"""Reading the allocation off the GSVs, and fitting it into a budget.

Read-out (method section 3), with ``s = sigmoid(g)`` and the forward's own argmax::

    experts[module] = max(2, argmax(s_e) + 1)                  in 2..n_max
    rank[module][i] = argmax(s_r of expert i) + 1  (i < experts) in 1..r_max

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

import torch
from torch import Tensor

from guilomo.allocation import Allocation, ModuleAllocation, uniform
from guilomo.budget import Budget, BudgetError
from guilomo.budget.scale import scale_to_budget
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


def boundary_confidence(s: Tensor, b: int, lo: int = 0) -> float:
    """``s[b] - max(s[lo..b-1])``: support of boundary ``b`` over the best lower one."""
    if b <= lo:
        return float("inf")
    return float(s[b] - s[lo:b].max())


def minimum_allocation(
    names: Sequence[str], min_experts: int = MIN_EXPERTS, top_k: int = 2, **meta
) -> Allocation:
    """The smallest allocation budget fitting may reach: ``min_experts`` experts of rank 1."""
    return uniform(names, min_experts, 1, top_k=top_k, **meta)


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
