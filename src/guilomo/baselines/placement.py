"""Placement controls: a searched allocation's own modules, handed to other modules.

Both keep every per-module allocation of the searched file and only move them between
modules of the same shape ``(d_in, d_out)``, so the trainable parameters, the expert
count and the total rank are exactly the searched ones (same shape -> same cost):

- ``shuffled``: within each shape, the allocations permuted at random (``seed``);
- ``inverted``: within each shape, modules ranked by what the search gave them
  (parameters, then module order on ties), and the allocations handed out in reverse:
  the module given most gets the least, the second-most the second-least, and so on.

If the search beats ``inverted`` but not ``shuffled`` its placement carries a little
information; if it ties both, the placement is noise at this setting. Modules the file
does not adapt stay unadapted.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path

from guilomo.allocation import Allocation, ModuleAllocation, load_allocation, module_shapes


def shape_groups(alloc: Allocation, shapes: Mapping) -> dict[tuple[int, int], list[str]]:
    """``{(d_in, d_out): [module names in file order]}`` of the allocation's modules."""
    groups: dict[tuple[int, int], list[str]] = {}
    for name in alloc.modules:
        groups.setdefault(tuple(shapes[name]), []).append(name)
    return groups


def _rebuilt(alloc: Allocation, moved: dict[str, ModuleAllocation], meta: dict) -> Allocation:
    modules = {n: moved[n] for n in alloc.modules}  # the file's module order
    return Allocation(modules, alloc.top_k, {**meta, "searched_meta": _brief(alloc.meta)})


def _brief(meta: Mapping) -> dict:
    """The searched file's identity, not its whole record (diagnostics stay in the file)."""
    keep = ("source", "backbone", "num_layers", "task", "seed", "trainable_params")
    return {k: meta[k] for k in keep if k in meta}


def shuffled(
    targets: Mapping,
    from_file: str | Path | None,
    seed: int = 0,
    backbone: str | None = None,
    num_layers: int | None = None,
    budget=None,
) -> Allocation:
    """The searched allocation permuted among same-shape modules (see the module docstring).

    ``backbone``, ``num_layers`` and ``budget`` check the file as ``allocation=file`` does
    (:func:`~guilomo.allocation.load_allocation`); the budget is checked, never rescaled.
    """
    shapes = module_shapes(targets)
    alloc = load_allocation(targets, from_file, backbone, num_layers, budget)
    rng = random.Random(seed)
    moved: dict[str, ModuleAllocation] = {}
    for names in shape_groups(alloc, shapes).values():
        given = [alloc.modules[n] for n in names]
        rng.shuffle(given)
        moved.update(zip(names, given, strict=True))
    meta = {"source": "baseline:shuffled", "seed": seed, "from_file": str(from_file)}
    return _rebuilt(alloc, moved, meta)


def inverted(
    targets: Mapping,
    from_file: str | Path | None,
    backbone: str | None = None,
    num_layers: int | None = None,
    budget=None,
) -> Allocation:
    """The searched allocation reversed by size within each shape (see the module docstring).

    ``backbone``, ``num_layers`` and ``budget`` check the file as in :func:`shuffled`.
    """
    shapes = module_shapes(targets)
    alloc = load_allocation(targets, from_file, backbone, num_layers, budget)
    moved: dict[str, ModuleAllocation] = {}
    for shape, names in shape_groups(alloc, shapes).items():
        order = {n: i for i, n in enumerate(names)}
        size = {n: alloc.modules[n].params(*shape) for n in names}
        most_first = sorted(names, key=lambda n: (-size[n], order[n]))
        least_first = sorted(names, key=lambda n: (size[n], order[n]))
        moved.update((m, alloc.modules[g]) for m, g in zip(most_first, least_first, strict=True))
    meta = {"source": "baseline:inverted", "from_file": str(from_file)}
    return _rebuilt(alloc, moved, meta)
