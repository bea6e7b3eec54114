"""Baseline allocations sharing GuiLoMo's harness, and scaling them to a budget.

``make_baseline(kind, model_or_targets, **kw)`` builds any of them by name::

    lora        one expert of rank ``rank`` (8), top-1
    uniform     ``experts`` (8) experts of rank ``rank`` (8) everywhere, top-``top_k`` (2)
    mola        MoLA depth pattern ``pattern`` ([2, 4, 6, 8]) of rank ``rank`` (8), top-2;
                ``mola_2468``, ``mola_8642``, ``mola_5555``, ``mola_8888`` name the patterns
    alphalora   counts per layer from the weights' spectra (``total``, ``beta`` 2.5, ``rank`` 8)
    random      random counts/ranks fitted to the budget (``random_seed``, else ``seed``)
    file        ``Allocation.load(path)``, checked against the targets

``model_or_targets`` is a model (targets found with ``target_modules`` and
``layers``), ``{name: nn.Linear}`` (from :func:`~guilomo.moe.find_targets`), or
``{name: (d_in, d_out)}`` shapes (enough for every kind but ``alphalora``, which
needs the weights unless ``alphas`` is given). Every kind accepts ``seed``,
``num_layers`` (the backbone depth, for depth-dependent kinds) and ``budget`` (a
:class:`~guilomo.budget.Budget` or its config mapping, the one way to size a
baseline): ``random`` is drawn to fit it, a ``file`` must fit it, and every other
kind is scaled to it with :func:`scale_to_budget` (``scale_mode`` "rank" or
"experts"). ``allocation.meta["method"]`` names the result exactly (see
:func:`method_name`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

from torch import nn

from guilomo.allocation import Allocation, method_name
from guilomo.baselines.alphalora import (
    alpha_counts,
    alphalora,
    esd,
    hill_alpha,
    ks_alpha,
    layer_alphas,
    spectrum_alpha,
)
from guilomo.baselines.scale import apportion, scale_to_budget
from guilomo.baselines.simple import (
    MOLA_PATTERNS,
    lora,
    mola,
    mola_block,
    random_allocation,
    uniform_moe,
)
from guilomo.budget import Budget
from guilomo.moe.inject import find_targets, module_shapes

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
KINDS = (
    "lora",
    "uniform",
    "mola",
    *(f"mola_{p}" for p in MOLA_PATTERNS),
    "alphalora",
    "random",
    "file",
)

__all__ = [
    "KINDS",
    "MOLA_PATTERNS",
    "alpha_counts",
    "alphalora",
    "apportion",
    "esd",
    "hill_alpha",
    "ks_alpha",
    "layer_alphas",
    "lora",
    "make_baseline",
    "mola",
    "mola_block",
    "random_allocation",
    "resolve_targets",
    "scale_to_budget",
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
    if all(isinstance(m, nn.Linear) for m in targets.values()):
        return targets, module_shapes(targets), None
    shapes = {}
    for n, s in targets.items():
        if not (isinstance(s, Sequence) and len(s) == 2):
            raise TypeError(f"'{n}': expected nn.Linear or a (d_in, d_out) pair, got {s!r}")
        shapes[n] = (int(s[0]), int(s[1]))
    return targets, shapes, None


def _call(fn, kind: str, *args, **kw):
    params = inspect.signature(fn).parameters
    unknown = sorted(set(kw) - set(params))
    if unknown:
        allowed = [p for p in params if p not in ("names", "shapes", "modules")]
        raise TypeError(f"baseline '{kind}' got unknown option(s) {unknown}; it takes {allowed}")
    return fn(*args, **kw)


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
    names = list(shapes)
    options = {k: v for k, v in kw.items()}
    if kind == "lora":
        alloc = _call(lora, kind, names, **options)
    elif kind == "uniform":
        alloc = _call(uniform_moe, kind, names, **options)
    elif kind == "mola" or kind.startswith("mola_"):
        if kind != "mola":
            pattern = kind.removeprefix("mola_")
            if pattern not in MOLA_PATTERNS:
                raise ValueError(f"unknown MoLA pattern '{pattern}'; known: {list(MOLA_PATTERNS)}")
            options.setdefault("pattern", MOLA_PATTERNS[pattern])
        alloc = _call(mola, kind, names, num_layers=num_layers, **options)
    elif kind == "alphalora":
        alloc = _call(alphalora, kind, targets, **options)
    elif kind == "random":
        own_seed = options.pop("random_seed", None)
        s = own_seed if own_seed is not None else (seed if seed is not None else 0)
        alloc = _call(random_allocation, kind, shapes, budget=budget, seed=int(s), **options)
    elif kind == "file":
        if "path" not in options:
            raise TypeError("baseline 'file' needs path=<allocation.json>")
        alloc = Allocation.load(options.pop("path"))
        if options:
            raise TypeError(f"baseline 'file' got unknown option(s) {sorted(options)}")
        alloc.check_modules(names)
        missing = sorted(set(names) - set(alloc.modules))
        if missing:
            raise ValueError(
                f"the allocation file has no entry for {len(missing)} target(s), e.g. {missing[:3]}"
            )
        budget.check(alloc, shapes)
    else:
        raise ValueError(f"unknown baseline '{kind}'; choose one of {list(KINDS)}")

    if kind != "file":
        alloc.meta["baseline"] = {"kind": kind, **{k: _plain(v) for k, v in options.items()}}
        if kind != "random" and budget.active:
            alloc = scale_to_budget(alloc, budget, shapes, mode=scale_mode)
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
