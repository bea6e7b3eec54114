"""``validate_search(cfg)``: every check of ``search.py`` that needs no weights.

The search's own values are checked here (:func:`check_settings`: every field of
:class:`SearchSettings`, the optimisers, where the held-out batches come from);
:func:`guilomo.validate.validate_stage` runs them after the checks both stages share,
then, on the weight-less backbone, checks that the smallest allocation fits the
budget and that the search adapter fits in memory.
"""

from __future__ import annotations

from omegaconf import DictConfig

from guilomo.allocation import module_params, module_shapes
from guilomo.budget import Budget
from guilomo.search.config import SearchSettings
from guilomo.search.readout import minimum_allocation
from guilomo.utils.checks import ConfigError, check_fields, check_int, check_real, get
from guilomo.utils.runfiles import ALLOCATION_FILE, HEATMAP_FILE
from guilomo.validate import StageChecks, check_memory, prefixed, validate_stage


def search_fingerprint(cfg: DictConfig, num_layers: int, names, settings) -> dict:
    """What a search checkpoint must match to be resumed (stored in it by the module)."""
    return {
        "stage": "search",
        "backbone": get(cfg, "backbone.id"),
        "num_layers": int(num_layers),
        "modules": list(names),
        **{
            k: getattr(settings, k) for k in ("n_max", "r_max", "top_k", "granularity", "rank_mask")
        },
        "adapter": get(cfg, "adapter"),
    }


def check_settings(cfg: DictConfig) -> SearchSettings:
    """``search.*`` as validated :class:`SearchSettings` (types first, then the ranges)."""
    raw = get(cfg, "search")
    check_fields("search", SearchSettings, raw)
    settings = prefixed("search", SearchSettings.from_dict, raw)
    check_real("search.inner.lr", settings.inner.lr, positive=True)
    check_real("search.outer.lr", settings.outer.lr, positive=True)
    check_real("search.inner.weight_decay", settings.inner.weight_decay, lo=0)
    check_real("search.outer.weight_decay", settings.outer.weight_decay, lo=0)
    check_int("search.inner.warmup_steps", settings.inner.warmup_steps, 0)
    check_real("search.inner.grad_clip", settings.inner.grad_clip, positive=True, none_ok=True)
    for part in ("inner", "outer"):
        betas = getattr(settings, part).betas
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(f"search.{part}.betas={list(betas)} must be two numbers in [0, 1)")
    if not 0 <= settings.inner.max_warmup_fraction <= 1:
        raise ConfigError("search.inner.max_warmup_fraction must be in [0, 1]")
    dm = "task.datamodule"
    if (
        settings.val_source == "heldout"
        and not get(cfg, f"{dm}.val_split", None)
        and not get(cfg, f"{dm}.val_size", 0)
    ):
        raise ConfigError(
            f"search.val_source=heldout needs a val split but {dm}.val_size=0 and "
            f"{dm}.val_split=null: set {dm}.val_size (e.g. 0.1) or search.val_source=alternate"
        )
    return settings


def check_model(cfg: DictConfig, settings: SearchSettings, model, targets: dict) -> dict:
    """The budget's minimum and the search adapter's memory; returns the fingerprint."""
    names = list(targets)
    shapes = module_shapes(targets)
    budget = prefixed("budget", Budget.from_config, get(cfg, "budget", None), shapes)
    minimum = minimum_allocation(names, settings.min_experts, settings.top_k)
    prefixed("budget.value", budget.check_minimum, minimum, shapes)
    n, r = settings.n_max, settings.r_max
    # every module at the search space's maximum: n_max experts of rank r_max and a router
    params = sum(module_params([r] * n, d_in, d_out) for d_in, d_out in shapes.values())
    check_memory(
        params,
        f"the search adapter ({len(names)} modules x {n} experts of rank {r})",
        "lower search.n_max / search.r_max, or adapt fewer layers (layers=[...])",
    )
    layers = int(model.config.num_hidden_layers)
    return search_fingerprint(cfg, layers, names, settings)


SEARCH = StageChecks(
    name="search",
    result=ALLOCATION_FILE,
    dirs=("checkpoints",),
    files=(ALLOCATION_FILE, HEATMAP_FILE),
    values=check_settings,
    model=check_model,
    scalars=("val/*", "search/*", "model/*", "budget/*", "alloc/*"),
)


def validate_search(cfg: DictConfig) -> SearchSettings:
    """Every check of ``search.py`` that needs no weights; raises before the backbone loads.
    Returns the validated :class:`SearchSettings`."""
    return validate_stage(cfg, SEARCH)
