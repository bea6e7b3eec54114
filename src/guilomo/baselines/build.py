"""The one rule by which every allocation is built for a run, and sized to its budget.

A builder is a function ``fn(targets, ..., **options) -> Allocation`` (a baseline in this
package, or :func:`guilomo.allocation.load_allocation`), usually with its options already
bound (``functools.partial``, as Hydra's ``_partial_: true`` gives it). The run knows two
things a builder may ask for by naming them as parameters: ``num_layers`` (the
backbone's depth) and ``budget`` (the run's :class:`~guilomo.budget.Budget`). Each is
passed where the builder has the parameter and its options leave it unset (absent or
null), so an explicit option always wins.

Sizing: a builder that takes ``budget`` fits (``random``, ``concentrated``) or checks
(``file``, ``shuffled``, ``inverted``) the budget itself and is never rescaled; any other
allocation is scaled to an active budget by :func:`guilomo.budget.scale.scale_to_budget`.
``train.py`` (through :func:`guilomo.pipeline.build_allocation`) and
:func:`guilomo.baselines.make_baseline` both call :func:`build_allocation`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping

from guilomo.allocation import Allocation, module_shapes
from guilomo.budget import Budget
from guilomo.budget.scale import scale_to_budget

RUN_BOUND = ("num_layers", "budget")  # what the run knows and a builder may ask for


def takes(builder: Callable, name: str) -> bool:
    """Whether ``builder`` (a function or a partial of one) has a parameter ``name``."""
    return name in inspect.signature(builder).parameters


def fits_budget_itself(builder: Callable) -> bool:
    """A builder with a ``budget`` parameter fits or checks the budget: never rescaled."""
    return takes(builder, "budget")


def _unset(builder: Callable, name: str) -> bool:
    bound = builder.keywords if isinstance(builder, functools.partial) else {}
    return bound.get(name) is None


def build_allocation(
    builder: Callable[..., Allocation],
    targets: Mapping,
    *,
    budget: Budget,
    num_layers: int | None = None,
    scale_mode: str | None = None,
) -> Allocation:
    """``builder(targets, ...)`` with what the run knows, sized to ``budget`` (module docstring).

    ``scale_mode`` ("rank" or "experts") is how an allocation that does not fit the
    budget itself is scaled; None: :func:`scale_to_budget`'s default for the budget kind.
    """
    run = {"num_layers": num_layers, "budget": budget}
    bound = {k: run[k] for k in RUN_BOUND if takes(builder, k) and _unset(builder, k)}
    alloc = builder(targets, **bound)
    if budget.active and not fits_budget_itself(builder):
        alloc = scale_to_budget(alloc, budget, module_shapes(targets), mode=scale_mode)
    return alloc
