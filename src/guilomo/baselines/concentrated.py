"""A deliberately poor allocation at the run's size: the whole budget on one module kind,
or on the lowest adapted layers.

The sensitivity control of the comparison: if it scores like ``uniform``, the task
cannot rank allocations at this scale. ``module_kind`` is a module name's last component
(``k_proj``); by default it is the kind a searched allocation values least
(:func:`least_valued_kind`: the lowest mean trainable parameters per module). With
``lowest_layers=L`` the chosen modules are instead every module of the ``L`` lowest
adapted layers (a second poor placement: the whole budget far from the output; its
method name is ``concentrated_low``).

The rule (:func:`concentrated`), for an active ``params`` or ``rank`` budget ``T``:

1. every module of the other kinds gets the smallest adapter, one expert of rank 1
   (plain LoRA r=1; a one-expert module uses top-1 whatever the allocation's top-k);
2. every module of the kind gets ``experts`` experts of the largest rank ``r`` such
   that the whole allocation spends at most ``T``;
3. the leftover goes one rank at a time, first expert of every module of the kind in
   module order, then the second, ..., wherever the rank still fits (one pass).

The result never exceeds ``T`` and is short of it by less than one rank of a module
of the kind (one rank row, ``d_in + d_out`` parameters, or exactly on target for a
``rank`` budget). An ``experts`` budget does not count ranks, so it cannot be
concentrated this way and is refused, as is a budget below step 1 with ``r = 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from guilomo.allocation import Allocation, ModuleAllocation, layer_of, module_shapes
from guilomo.budget import Budget, BudgetError


def kind_of(name: str) -> str:
    """The module kind of a path: its last component (``...self_attn.k_proj`` -> ``k_proj``)."""
    return name.split(".")[-1]


def least_valued_kind(alloc: Allocation, shapes: Mapping[str, tuple[int, int]]) -> str:
    """The kind with the lowest mean share of ``alloc``'s trainable parameters per module,
    i.e. the fewest parameters per module on average (ties: the first kind in module order)."""
    alloc.check_modules(shapes)
    per_kind: dict[str, list[int]] = {}
    for name, m in alloc.modules.items():
        per_kind.setdefault(kind_of(name), []).append(m.params(*shapes[name]))
    return min(per_kind, key=lambda k: sum(per_kind[k]) / len(per_kind[k]))


def concentrated(
    targets: Mapping,
    budget: Budget | Mapping | None = None,
    module_kind: str | None = None,
    from_file: str | Path | None = None,
    experts: int = 2,
    top_k: int = 2,
    lowest_layers: int | None = None,
) -> Allocation:
    """The budget on the modules of ``module_kind`` (null: :func:`least_valued_kind` of the
    allocation in ``from_file``) or, with ``lowest_layers``, of the lowest adapted layers;
    the smallest adapter elsewhere (see the module docstring)."""
    shapes = module_shapes(targets)  # {name: nn.Linear} or {name: (d_in, d_out)}
    budget = Budget.from_config(budget, shapes)
    if budget.kind not in ("params", "rank"):
        raise BudgetError(
            f"allocation=concentrated spends a params or rank budget, got budget={budget.kind}: "
            "use budget=params|rank budget.value=N, or budget=match searched=<allocation.json>"
        )
    if experts < 1 or top_k < 1:
        raise ValueError(f"experts and top_k must be >= 1, got {experts}, {top_k}")
    kind, chosen_from = module_kind, None
    if lowest_layers is not None:
        chosen = _lowest_layers(shapes, lowest_layers)
        kind = None
    elif kind is None:
        if from_file is None:
            raise BudgetError(
                "allocation=concentrated needs allocation.module_kind=<kind, e.g. k_proj> or a "
                "searched allocation to pick the least valued kind (searched=<allocation.json>)"
            )
        kind, chosen_from = least_valued_kind(Allocation.load(from_file), shapes), str(from_file)
    if lowest_layers is None:
        chosen = [n for n in shapes if kind_of(n) == kind]
    if not chosen:
        kinds = sorted({kind_of(n) for n in shapes})
        raise BudgetError(f"no target module of kind '{kind}': the targets' kinds are {kinds}")

    ranks = {n: [1] * (experts if n in chosen else 1) for n in shapes}
    budget.check_minimum(Allocation({n: ModuleAllocation(r) for n, r in ranks.items()}), shapes)
    others = sum(budget.cost(rs, shapes[n]) for n, rs in ranks.items() if n not in chosen)

    def spent(rank: int) -> int:  # linear in the rank (rank 0: the routers alone)
        return others + sum(budget.cost([rank] * experts, shapes[n]) for n in chosen)

    rank = (budget.value - spent(0)) // (spent(1) - spent(0))
    total = spent(rank)
    for n in chosen:
        ranks[n] = [rank] * experts
    for e in range(experts):
        for n in chosen:
            row = budget.cost([1], shapes[n])  # one more rank: d_in + d_out parameters, or 1
            if total + row <= budget.value:
                ranks[n][e] += 1
                total += row

    meta = {
        "source": "baseline:concentrated",
        "module_kind": kind,
        "lowest_layers": lowest_layers,
        "module_kind_from": chosen_from,
        "experts": experts,
        "rank": rank,
        "budget": budget.to_dict(),
    }
    if lowest_layers is not None:
        meta["method"] = "concentrated_low"
    return Allocation({n: ModuleAllocation(tuple(r)) for n, r in ranks.items()}, top_k, meta)


def _lowest_layers(shapes: Mapping, count: int) -> list[str]:
    """The modules of the ``count`` lowest adapted layers, in module order."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise BudgetError(f"allocation.lowest_layers must be an integer >= 1, got {count!r}")
    layers = sorted({layer_of(n) for n in shapes})
    if count >= len(layers):
        raise BudgetError(
            f"allocation.lowest_layers={count} would choose all {len(layers)} adapted layers: "
            f"give fewer than {len(layers)}"
        )
    keep = set(layers[:count])
    return [n for n in shapes if layer_of(n) in keep]
