"""Integer apportionment and scaling of an allocation to a budget.

:func:`apportion` splits an integer total in proportion to weights with a floor
per item (used by AlphaLoRA and by the scaling rules).

:func:`scale_to_budget` multiplies every rank (``mode="rank"``) or every expert
count (``mode="experts"``) of an allocation by one factor ``s`` so that it spends
the budget. The rule, for units ``u`` (experts in rank mode, modules in experts
mode) with original values ``v0_u``:

1. ``s = (T - F) / (M - F)`` where ``T`` is the budget, ``M`` what the allocation
   spends now and ``F`` the part that does not scale (the routers when ranks scale
   under a parameter budget; 0 otherwise).
2. ``v_u = max(1, floor(s * v0_u))``.
3. While over the budget, take one unit off the value that is furthest above its
   share ``s * v0_u`` (ratio ``v_u / (s v0_u)``; ties: first unit).
4. Then, visiting units by decreasing fractional part of ``s * v0_u`` (largest
   remainder; ties: first unit), add one unit wherever it still fits, and repeat
   passes until nothing fits.

The result never exceeds the budget. For ``experts`` and ``rank`` budgets every
step costs 1 (in rank mode) or one expert (in experts mode under an experts
budget), so the target is met exactly; under a ``params`` budget the remaining gap
is smaller than the cheapest further step, i.e. less than one rank (rank mode) or
one expert (experts mode) of some module. In experts mode, a module that grows
repeats its own ranks cyclically (``ranks[i % n]``) and one that shrinks drops
experts from the end; a per-module ``top_k`` is capped at the new count.

With a ``cap`` (the search's ``r_max`` in rank mode, ``n_max`` in experts mode) no
value exceeds it: where step 1's ``s`` would pass it, ``s`` becomes the largest factor whose capped values
``min(cap, max(1, floor(s v0_u)))`` still fit (bisection; spend is monotone in ``s``),
so units that hit the cap stop and the others keep growing in proportion, and step 4
skips capped units. If every unit is at the cap and the budget is still not spent,
the result is all-cap (the caller says so).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.budget import Budget, BudgetError

MODES = ("rank", "experts")


def apportion(weights: Sequence[float], total: int, minimum: int = 1) -> list[int]:
    """Integers ``>= minimum`` summing exactly to ``total``, proportional to ``weights``.

    Items whose proportional share falls below ``minimum`` are fixed at ``minimum``
    and the rest is re-shared among the others (repeated until no share is below);
    the remaining shares are floored and the leftover units go to the largest
    fractional parts (ties: lower index). All-zero weights share equally.
    """
    n = len(weights)
    if n == 0:
        raise ValueError("apportion needs at least one weight")
    w = [float(x) for x in weights]
    if any(not math.isfinite(x) or x < 0 for x in w):
        raise ValueError(f"weights must be finite and >= 0, got {weights}")
    total, minimum = int(total), int(minimum)
    if total < minimum * n:
        raise BudgetError(
            f"cannot give {n} items at least {minimum} each out of {total}: "
            f"the total must be >= {minimum * n}"
        )
    fixed = [False] * n
    while True:
        free = [i for i in range(n) if not fixed[i]]
        rest = total - minimum * (n - len(free))
        wsum = sum(w[i] for i in free)
        quota = {i: (rest * w[i] / wsum if wsum > 0 else rest / len(free)) for i in free}
        low = [i for i in free if quota[i] < minimum]
        if not low:
            break
        for i in low:
            fixed[i] = True
    out = [minimum] * n
    for i in free:
        out[i] = max(minimum, math.floor(quota[i]))
    left = total - sum(out)
    order = sorted(free, key=lambda i: (-(quota[i] - math.floor(quota[i])), i))
    for i in order[:left]:
        out[i] += 1
    # float round-off can leave the sum off by a unit in pathological cases
    while sum(out) > total:
        i = max((j for j in range(n) if out[j] > minimum), key=lambda j: out[j] - quota.get(j, 0))
        out[i] -= 1
    return out


def _capped_factor(
    base: Sequence[int],
    s: float,
    cost: Callable[[int, int], int],
    fixed: int,
    target: int,
    cap: int,
) -> float:
    """The largest factor whose capped values fit ``target`` (bisection; at least ``s``
    when ``s`` itself fits, at most the factor that puts every unit at the cap)."""

    def spend(x: float) -> int:
        return fixed + sum(cost(u, min(cap, max(1, math.floor(x * b)))) for u, b in enumerate(base))

    top = cap / max(min(base), 1) + 1.0  # every unit at the cap from here on
    if spend(top) <= target:
        return top
    lo, hi = (s, top) if spend(s) <= target else (0.0, s)
    for _ in range(60):  # to float precision of the factor
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if spend(mid) <= target else (lo, mid)
    return lo


def _fit(
    base: Sequence[int],
    s: float,
    cost: Callable[[int, int], int],
    fixed: int,
    target: int,
    what: str,
    cap: int | None = None,
) -> list[int]:
    """Steps 2-4 of the rule: values in ``1..cap`` near ``s * base`` with
    ``fixed + sum cost <= target``."""
    if cap is not None and any(math.floor(s * b) > cap for b in base):  # the cap binds
        s = _capped_factor(base, s, cost, fixed, target, cap)
    top = math.inf if cap is None else cap
    shares = [s * b for b in base]
    vals = [min(top, max(1, math.floor(x))) for x in shares]
    spent = fixed + sum(cost(u, v) for u, v in enumerate(vals))
    while spent > target:
        candidates = [u for u, v in enumerate(vals) if v > 1]
        if not candidates:
            raise BudgetError(
                f"the budget {target} is below the smallest allocation reachable by scaling "
                f"{what} ({spent}, with one {'rank per expert' if what == 'ranks' else 'expert per module'}); "
                "raise the budget or scale the other way (scale_mode='experts' / 'rank'; on "
                "the command line +allocation.scale_mode=experts)"
            )
        u = max(candidates, key=lambda j: (vals[j] / max(shares[j], 1e-12), -j))
        spent -= cost(u, vals[u]) - cost(u, vals[u] - 1)
        vals[u] -= 1
    order = sorted(range(len(base)), key=lambda u: (-(shares[u] - math.floor(shares[u])), u))
    grown = True
    while grown:
        grown = False
        for u in order:
            if vals[u] >= top:
                continue
            step = cost(u, vals[u] + 1) - cost(u, vals[u])
            if spent + step <= target:
                vals[u] += 1
                spent += step
                grown = True
    return vals


def _cycled(ranks: Sequence[int], n: int) -> tuple[int, ...]:
    return tuple(ranks[i % len(ranks)] for i in range(n))


def scale_to_budget(
    allocation: Allocation,
    budget: Budget | Mapping,
    shapes: Mapping[str, tuple[int, int]],
    mode: str | None = None,
    cap: int | None = None,
) -> Allocation:
    """Scale ``allocation`` uniformly so it spends ``budget`` (see the module docstring),
    no value above ``cap`` (ranks in rank mode, expert counts in experts mode) if given.

    ``mode`` is ``"rank"`` (multiply every expert's rank; the default for ``rank`` and
    ``params`` budgets) or ``"experts"`` (multiply every module's expert count; the
    default and only choice for an ``experts`` budget). An inactive budget returns the
    allocation unchanged. Returns a new :class:`Allocation` whose ``meta`` records the
    scaling.
    """
    budget = Budget.from_config(budget, shapes)
    if not budget.active:
        return allocation
    mode = mode or ("experts" if budget.kind == "experts" else "rank")
    if mode not in MODES:
        raise ValueError(f"scaling mode '{mode}' is not one of {list(MODES)}")
    if budget.kind == "experts" and mode == "rank":
        raise BudgetError("scaling ranks does not change the number of experts: use mode='experts'")
    allocation.check_modules(shapes.keys())
    names = list(allocation.modules)
    target = int(budget.value)
    before = budget.measure(allocation, shapes)

    if mode == "rank":
        units = [(n, i) for n in names for i in range(allocation.modules[n].experts)]
        base = [allocation.modules[n].ranks[i] for n, i in units]
        # what one more rank of an expert costs (1, or d_in + d_out parameters)
        unit_cost = [budget.cost((2,), shapes[n]) - budget.cost((1,), shapes[n]) for n, _ in units]
        fixed = before - sum(c * r for c, r in zip(unit_cost, base, strict=True))
        s = (target - fixed) / max(before - fixed, 1)
        vals = _fit(base, s, lambda u, v: unit_cost[u] * v, fixed, target, "ranks", cap)
        new_ranks: dict[str, list[int]] = {n: [] for n in names}
        for (n, _), v in zip(units, vals, strict=True):
            new_ranks[n].append(v)
        modules = {
            n: ModuleAllocation(tuple(new_ranks[n]), allocation.modules[n].top_k) for n in names
        }
    else:
        mods = [allocation.modules[n] for n in names]

        def cost(u: int, v: int) -> int:
            return budget.cost(_cycled(mods[u].ranks, v), shapes[names[u]])

        base = [m.experts for m in mods]
        s = target / max(before, 1)
        vals = _fit(base, s, cost, 0, target, "expert counts", cap)
        modules = {
            n: ModuleAllocation(_cycled(m.ranks, v), None if m.top_k is None else min(m.top_k, v))
            for n, m, v in zip(names, mods, vals, strict=True)
        }
    meta = dict(allocation.meta)
    meta["scaled"] = {
        "budget": budget.to_dict(),
        "mode": mode,
        "factor": s,
        "before": before,
    }
    out = Allocation(modules, allocation.top_k, meta)
    out.meta["scaled"]["after"] = budget.measure(out, shapes)
    return out
