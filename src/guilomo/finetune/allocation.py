"""The fine-tune's allocation: the builder ``cfg.allocation`` names, its options, its budget.

- :func:`check_allocation_config`: the ``allocation.*`` options of
  ``conf/allocation/*.yaml`` (checked before any weights load); returns the builder.
- :func:`resolve_allocation`: the allocation that builder makes for the run's targets,
  scaled to the budget, the run recorded in its ``meta``.
- :func:`budget_record`: what the run's budget is and what the allocation spends.
"""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig

from guilomo.allocation import Allocation, module_shapes
from guilomo.budget import Budget
from guilomo.pipeline import build_allocation, build_budget
from guilomo.utils.checks import ConfigError, check_int, check_real, check_target, get, is_int

# allocation options (conf/allocation/*.yaml) that are counts
ALLOCATION_INTS = (
    "experts",
    "rank",
    "top_k",
    "total",
    "n_min",
    "n_max",
    "r_min",
    "r_max",
    "num_layers",
    "k",
    "seed",
)


def check_allocation_config(cfg: DictConfig) -> Callable:
    """The builder ``allocation._target_`` names, after checking the options it gets."""
    build = check_target("allocation._target_", get(cfg, "allocation._target_"))
    spec = get(cfg, "allocation")
    for key in ALLOCATION_INTS:
        if key in spec:
            check_int(f"allocation.{key}", spec[key], 0 if key == "seed" else 1, none_ok=True)
    if "pattern" in spec and not (
        isinstance(spec["pattern"], list) and all(is_int(x) and x >= 1 for x in spec["pattern"])
    ):
        raise ConfigError(
            f"allocation.pattern={spec['pattern']!r} must be a list of expert counts >= 1"
        )
    if "beta" in spec:
        check_real("allocation.beta", spec["beta"], positive=True)
    if "path" in spec and (not isinstance(spec.get("path"), str) or spec["path"] == "???"):
        raise ConfigError(
            "allocation=file needs allocation.path=<allocation.json written by search.py>"
        )
    return build


def resolve_allocation(
    cfg: DictConfig, targets: dict, num_layers: int, budget: Budget | None = None
) -> Allocation:
    """The allocation ``cfg.allocation`` builds for these targets under ``budget``
    (default: the one ``cfg.budget`` builds); a baseline made for this run records the
    run in its ``meta`` (a file keeps the meta it was saved with)."""
    shapes = module_shapes(targets)
    budget = build_budget(cfg, shapes) if budget is None else budget
    alloc = build_allocation(cfg.allocation, targets, num_layers, budget)
    alloc.check_ranks(shapes)
    run = {
        "method": alloc.method,
        "backbone": cfg.backbone.id,
        "num_layers": num_layers,
        "task": cfg.task.id,
        "budget": budget.to_dict(),
        "trainable_params": alloc.trainable_params(shapes),
    }
    if "path" not in cfg.allocation:
        alloc.meta.update(run)
    return alloc


def budget_record(budget: Budget, alloc: Allocation, shapes: dict) -> dict:
    """``{kind, value, spent[, matched]}`` of the run's budget; ``spent`` is what the
    allocation spends in the budget's unit (trainable parameters when there is none)."""
    return {**budget.to_dict(), "spent": budget.measure(alloc, shapes)}
