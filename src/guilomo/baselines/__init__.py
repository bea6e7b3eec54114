"""Baseline allocations sharing GuiLoMo's harness, and scaling them to a budget.

``make_baseline(kind, model_or_targets, **kw)`` builds any of them by name::

    lora        one expert of rank ``rank`` (8), top-1
    uniform     ``experts`` (8) experts of rank ``rank`` (8) everywhere, top-``top_k`` (2)
    mola        MoLA depth pattern ``pattern`` ([2, 4, 6, 8]) of rank ``rank`` (8), top-2;
                ``mola_<digits>`` names the pattern (``mola_2468``, ``mola_8642``, ...)
    alphalora   counts per layer from the weights' spectra (``total``, ``beta`` 2.5, ``rank`` 8)
    random      random counts/ranks fitted to the budget (``seed``)
    concentrated
                the budget on one module kind (``module_kind``, or the kind the allocation
                in ``from_file`` values least, or with ``lowest_layers`` the lowest adapted
                layers: ``concentrated_low``), LoRA r=1 elsewhere: the poor controls
    shuffled / inverted
                a searched file's module allocations permuted (``seed``) or handed out in
                reverse order of size among same-shape modules (:mod:`.placement`)

``model_or_targets`` is a model (targets found with ``target_modules`` and
``layers``), ``{name: nn.Linear}`` (from :func:`~guilomo.moe.find_targets`), or
``{name: (d_in, d_out)}`` shapes (enough for every kind but ``alphalora``, which
needs the weights unless ``alphas`` is given). Every kind accepts ``seed``,
``num_layers`` (the backbone depth, for depth-dependent kinds) and ``budget`` (a
:class:`~guilomo.budget.Budget` or its config mapping, the one way to size a
baseline): ``random`` and ``concentrated`` fit it and every other kind is scaled to it
with :func:`scale_to_budget` (``scale_mode`` "rank" or "experts"), by the rule
``train.py`` runs (:func:`.build.build_allocation`).
``allocation.meta["method"]`` names the result exactly (see :func:`method_name`).
Allocation files are read by :func:`guilomo.allocation.load_allocation`.

The Hydra configs (``conf/allocation/*.yaml``) call these functions directly through
``_target_``; ``make_baseline`` is the by-name shortcut for Python.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from guilomo.allocation import Allocation, method_name, module_shapes
from guilomo.baselines.alphalora import (
    alpha_counts,
    alphalora,
    esd,
    hill_alpha,
    ks_alpha,
    layer_alphas,
    spectrum_alpha,
)
from guilomo.baselines.build import build_allocation, takes
from guilomo.baselines.concentrated import concentrated, least_valued_kind
from guilomo.baselines.placement import inverted, shuffled
from guilomo.baselines.simple import (
    lora,
    mola,
    mola_block,
    random_allocation,
    uniform_moe,
)
from guilomo.budget import Budget
from guilomo.budget.scale import apportion, scale_to_budget
from guilomo.moe.inject import find_targets

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BUILDERS: dict[str, Callable[..., Allocation]] = {
    "lora": lora,
    "uniform": uniform_moe,
    "mola": mola,  # and mola_<digits>: the pattern in the name
    "alphalora": alphalora,
    "random": random_allocation,
    "concentrated": concentrated,
}
KINDS = (*BUILDERS, "mola_<digits>")

__all__ = [
    "BUILDERS",
    "KINDS",
    "alpha_counts",
    "alphalora",
    "apportion",
    "build_allocation",
    "concentrated",
    "esd",
    "inverted",
    "hill_alpha",
    "ks_alpha",
    "layer_alphas",
    "least_valued_kind",
    "lora",
    "make_baseline",
    "mola",
    "mola_block",
    "random_allocation",
    "resolve_targets",
    "scale_to_budget",
    "shuffled",
    "spectrum_alpha",
    "uniform_moe",
]


def resolve_targets(
    model_or_targets: nn.Module | Mapping,
    target_modules: Sequence[str] | str = LLAMA_TARGETS,
    layers: Sequence[int] | None = None,
) -> tuple[dict, dict[str, tuple[int, int]], int | None]:
    """``(targets, shapes, num_layers)``; ``targets`` holds modules when they are known."""
    if isinstance(model_or_targets, nn.Module):
        targets = find_targets(model_or_targets, target_modules, layers)
        config = getattr(model_or_targets, "config", None)
        return targets, module_shapes(targets), getattr(config, "num_hidden_layers", None)
    if not isinstance(model_or_targets, Mapping) or not model_or_targets:
        raise TypeError(
            "model_or_targets must be a model, {name: nn.Linear} or {name: (d_in, d_out)}, "
            f"got {type(model_or_targets).__name__}"
        )
    targets = dict(model_or_targets)
    return targets, module_shapes(targets), None


def make_baseline(
    kind: str,
    model_or_targets: nn.Module | Mapping,
    *,
    seed: int | None = None,
    budget: Budget | Mapping | None = None,
    num_layers: int | None = None,
    target_modules: Sequence[str] | str = LLAMA_TARGETS,
    layers: Sequence[int] | None = None,
    scale_mode: str | None = None,
    **kw,
) -> Allocation:
    """The baseline allocation ``kind`` over the targets (see the module docstring)."""
    targets, shapes, model_depth = resolve_targets(model_or_targets, target_modules, layers)
    budget = Budget.from_config(budget, shapes)
    num_layers = num_layers or model_depth
    options = dict(kw)
    name, digits = ("mola", kind.removeprefix("mola_")) if kind.startswith("mola_") else (kind, "")
    if name not in BUILDERS:
        raise ValueError(f"unknown baseline '{kind}'; choose one of {list(KINDS)}")
    if digits:
        options.setdefault("pattern", digits)
    seeded = {"seed": int(seed or 0)} if takes(BUILDERS[name], "seed") else {}
    unknown = sorted(k for k in options if not takes(BUILDERS[name], k))
    if unknown:
        raise TypeError(f"baseline '{kind}' got unknown option(s): {unknown}")
    builder = functools.partial(BUILDERS[name], **seeded, **options)
    # the production rule (train.py runs it too): what the run knows, then the budget
    alloc = build_allocation(
        builder, targets, budget=budget, num_layers=num_layers, scale_mode=scale_mode
    )
    alloc.meta["baseline"] = {"kind": kind, **{k: _plain(v) for k, v in options.items()}}
    if num_layers is not None:
        alloc.meta.setdefault("num_layers", int(num_layers))
    alloc.meta["method"] = method_name(alloc.meta)
    return alloc


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return v
