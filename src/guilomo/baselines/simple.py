"""Hand-set baselines: LoRA, uniform LoRA-MoE, MoLA depth patterns, random allocation.

Every function takes the target module names (or ``{name: (d_in, d_out)}`` shapes)
and returns an :class:`~guilomo.allocation.Allocation` over exactly those modules.

MoLA depth blocks. With ``P = len(pattern)`` blocks (4 in MoLA: quarters) and
``L`` layers, layer ``l`` gets ``pattern[min(P * l // L, P - 1)]`` experts per
module. Block ``g`` is therefore ``{l : g L / P <= l < (g + 1) L / P}``: when ``L``
is not a multiple of ``P`` the block sizes are ``floor(L/P)`` or ``ceil(L/P)``,
the longer blocks falling where the boundaries ``g L / P`` round up. For 32 layers
and 2-4-6-8 that is 8 layers each (8 * (2+4+6+8) = 160 experts per module type);
for 30 layers the blocks are layers 0-7, 8-14, 15-22, 23-29 (8, 7, 8, 7 layers;
16 + 28 + 48 + 56 = 148 experts per module type). ``L`` is the backbone's depth
(``num_layers``) when given, else one more than the largest layer index among the
targets, so adapting only some layers keeps each layer's block of the full model.
"""

from __future__ import annotations

import random as _random
from collections.abc import Iterable, Mapping, Sequence

from guilomo.allocation import (
    Allocation,
    AllocationError,
    ModuleAllocation,
    layer_of,
    module_shapes,
)
from guilomo.allocation import uniform as _uniform
from guilomo.budget import Budget, BudgetError


def lora(names: Iterable[str], rank: int = 8, top_k: int = 1) -> Allocation:
    """Plain LoRA: one expert of rank ``rank`` in every module (top-1, no router)."""
    return _uniform(names, 1, rank, top_k=min(top_k, 1), source="baseline:lora")


def uniform_moe(
    names: Iterable[str], experts: int = 8, rank: int = 8, top_k: int = 2
) -> Allocation:
    """Uniform LoRA-MoE (MixLoRA/LoRAMoE style): ``experts`` experts of rank ``rank`` everywhere."""
    return _uniform(names, experts, rank, top_k=top_k, source="baseline:uniform")


def layer_indices(names: Iterable[str]) -> dict[str, int]:
    """Decoder-layer index of every module path; raises if a path has none."""
    out = {n: layer_of(n) for n in names}
    missing = [n for n, idx in out.items() if idx < 0]
    if missing:
        raise AllocationError(
            f"module paths without a layer index: {missing[:3]}; depth-dependent baselines "
            "need paths like 'model.layers.<i>.<...>'"
        )
    return out


def depth_of(names: Iterable[str], num_layers: int | None = None) -> int:
    """``num_layers`` if given (checked against the indices), else max layer index + 1."""
    idx = layer_indices(names)
    deepest = max(idx.values()) + 1
    if num_layers is None:
        return deepest
    if num_layers < deepest:
        raise AllocationError(f"num_layers={num_layers} but a target is in layer {deepest - 1}")
    return int(num_layers)


def mola_block(layer: int, num_layers: int, blocks: int = 4) -> int:
    """Depth block of ``layer`` among ``blocks`` equal parts of ``num_layers`` layers."""
    return min(blocks * layer // num_layers, blocks - 1)


def mola(
    names: Iterable[str],
    pattern: Sequence[int] | str = (2, 4, 6, 8),
    rank: int = 8,
    top_k: int = 2,
    num_layers: int | None = None,
) -> Allocation:
    """MoLA: ``pattern[b]`` experts of rank ``rank`` in every module of depth block ``b``.

    ``pattern`` is a list of counts or their digits as in the MoLA names ("2468")."""
    if isinstance(pattern, str):
        if not pattern.isdigit():
            raise ValueError(f"MoLA pattern '{pattern}' is not a string of digits like '2468'")
        pattern = tuple(pattern)
    pattern = tuple(int(p) for p in pattern)
    if not pattern or any(p < 1 for p in pattern):
        raise ValueError(f"MoLA pattern must be a non-empty list of counts >= 1, got {pattern}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    idx = layer_indices(names)
    depth = depth_of(idx, num_layers)
    modules = {
        n: ModuleAllocation((rank,) * pattern[mola_block(layer, depth, len(pattern))])
        for n, layer in idx.items()
    }
    meta = {"source": "baseline:mola", "pattern": list(pattern), "depth": depth}
    return Allocation(modules, top_k, meta)


def random_allocation(
    shapes: Mapping,
    budget: Budget | Mapping | None = None,
    n_min: int = 2,
    n_max: int = 8,
    r_min: int = 1,
    r_max: int = 8,
    top_k: int = 2,
    seed: int = 0,
) -> Allocation:
    """Random counts in ``n_min..n_max`` and ranks in ``r_min..r_max``, fitted to ``budget``.

    Draw every module's count and every expert's rank uniformly (``random.Random(seed)``).
    With an active budget, then shrink while over it (each step: a random module with a
    legal move, then a random move of that module: lower one expert's rank by 1, or drop
    one of its experts) and grow while a step still fits (a random module, then raise one
    expert's rank by 1 or add an expert of rank ``r_min``, among the moves that fit).
    Under an ``experts`` budget ranks are left alone: only experts are dropped or added
    (an added expert gets a random rank).
    The result fits the budget and is within one step of it: exactly on target for
    ``experts`` and ``rank`` budgets (when ``r_min`` is 1), and short by less than the
    cheapest remaining step (one rank of some module, or one new expert) for ``params``.
    An unreachable target (outside what ``n_min..n_max`` x ``r_min..r_max`` allows)
    raises :class:`~guilomo.budget.BudgetError`.
    """
    shapes = module_shapes(shapes)  # {name: nn.Linear} or {name: (d_in, d_out)}
    budget = Budget.from_config(budget, shapes)
    if not (1 <= n_min <= n_max and 1 <= r_min <= r_max):
        raise ValueError(
            f"need 1 <= n_min <= n_max and 1 <= r_min <= r_max, got {n_min}..{n_max}, {r_min}..{r_max}"
        )
    rng = _random.Random(seed)
    names = list(shapes)
    ranks = {
        n: [rng.randint(r_min, r_max) for _ in range(rng.randint(n_min, n_max))] for n in names
    }

    if budget.active:
        _fit_random(ranks, shapes, budget, rng, n_min, n_max, r_min, r_max)
    meta = {
        "source": "baseline:random",
        "seed": seed,
        "ranges": {"experts": [n_min, n_max], "rank": [r_min, r_max]},
        "budget": budget.to_dict() if budget.active else None,
    }
    return Allocation({n: ModuleAllocation(tuple(ranks[n])) for n in names}, top_k, meta)


def _fit_random(
    ranks: dict[str, list[int]],
    shapes: Mapping[str, tuple[int, int]],
    budget: Budget,
    rng: _random.Random,
    n_min: int,
    n_max: int,
    r_min: int,
    r_max: int,
) -> None:
    """Shrink then grow ``ranks`` in place by random single steps until it fits ``budget``."""
    kind, target = budget.kind, int(budget.value)
    names = list(ranks)

    def cost(n: str, rs: list[int]) -> int:
        return budget.cost(rs, shapes[n])

    def shrunk(n: str) -> list[list[int]]:
        rs = ranks[n]
        out = []
        if kind != "experts":
            out += [rs[:i] + [r - 1] + rs[i + 1 :] for i, r in enumerate(rs) if r > r_min]
        if len(rs) > n_min:
            out += [rs[:i] + rs[i + 1 :] for i in range(len(rs))]
        return out

    def grown(n: str) -> list[list[int]]:
        rs = ranks[n]
        out = []
        if kind != "experts":
            out += [rs[:i] + [r + 1] + rs[i + 1 :] for i, r in enumerate(rs) if r < r_max]
        if len(rs) < n_max:
            out.append(rs + [r_min if kind != "experts" else rng.randint(r_min, r_max)])
        return out

    lo = sum(cost(n, [r_min] * n_min) for n in names)
    hi = sum(cost(n, [r_max] * n_max) for n in names)
    if not lo <= target <= hi:
        raise BudgetError(
            f"random allocation: budget {kind}={target} is outside what {n_min}..{n_max} experts "
            f"of rank {r_min}..{r_max} per module can spend ({lo}..{hi}); change the budget or "
            "the ranges"
        )
    spent = {n: cost(n, ranks[n]) for n in names}
    total = sum(spent.values())
    while total > target:
        n = rng.choice([m for m in names if shrunk(m)])
        rs = rng.choice(shrunk(n))
        c = cost(n, rs)
        total += c - spent[n]
        ranks[n], spent[n] = rs, c
    order = list(names)
    while True:
        rng.shuffle(order)
        for n in order:
            fitting = [rs for rs in grown(n) if total + cost(n, rs) - spent[n] <= target]
            if fitting:
                rs = rng.choice(fitting)
                c = cost(n, rs)
                total += c - spent[n]
                ranks[n], spent[n] = rs, c
                break
        else:
            return
