"""Builders shared by ``search.py`` and ``train.py``: Hydra config -> objects.

Each builder instantiates one config group (backbone, task, adapter, allocation,
logger, callbacks, trainer) so the two entry points stay short and compose the same way.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from omegaconf import DictConfig, OmegaConf

from guilomo.allocation import Allocation
from guilomo.baselines.scale import scale_to_budget
from guilomo.budget import Budget
from guilomo.checkpointing import enable_gradient_checkpointing
from guilomo.moe import LoraMoEConfig, find_targets, module_shapes
from guilomo.utils.loggers import RunIdentity, with_identity


def build_backbone(cfg: DictConfig):
    """(model, tokenizer) from ``cfg.backbone.loader``; ``gradient_checkpointing`` if set."""
    model, tokenizer = hydra.utils.call(cfg.backbone.loader)
    if cfg.get("gradient_checkpointing"):
        enable_gradient_checkpointing(model)
    return model, tokenizer


def build_targets(cfg: DictConfig, model):
    """``{module path: nn.Linear}`` selected by ``backbone.target_modules`` and ``layers``."""
    layers = cfg.get("layers")
    return find_targets(
        model,
        _plain(cfg.backbone.target_modules),
        None if layers is None else list(layers),
    )


def build_datamodule(cfg: DictConfig, tokenizer):
    return hydra.utils.instantiate(cfg.task.datamodule, tokenizer=tokenizer, _convert_="all")


def build_lora_config(cfg: DictConfig) -> LoraMoEConfig:
    return LoraMoEConfig(**_plain(cfg.adapter))


def build_budget(cfg: DictConfig, shapes=None) -> Budget:
    """``cfg.budget`` as a :class:`Budget` (``budget=match`` measured on ``shapes``)."""
    return Budget.from_config(_plain(cfg.get("budget")), shapes)


# keys an allocation config leaves null for the run to fill in
RUN_BOUND = ("num_layers", "budget")


def build_allocation(
    spec: DictConfig, targets: dict, num_layers: int, budget: Budget
) -> Allocation:
    """The allocation ``spec._target_`` builds for ``targets`` (``conf/allocation/*.yaml``).

    ``spec`` names a function with ``_partial_: true``; it is called with the targets
    (``{name: nn.Linear}`` or ``{name: (d_in, d_out)}``) and with the keys the config
    leaves null that the run knows: ``num_layers`` (the backbone's depth) and ``budget``
    (the run's budget). A builder that takes the budget fits it (random) or checks it
    (file); any other allocation is scaled to an active budget (:func:`scale_to_budget`).
    """
    build = hydra.utils.instantiate(spec, _convert_="all")
    run = {"num_layers": num_layers, "budget": budget}
    bound = {k: run[k] for k in RUN_BOUND if k in spec and spec[k] is None}
    alloc = build(targets, **bound)
    if budget.active and "budget" not in spec:
        alloc = scale_to_budget(alloc, budget, module_shapes(targets))
    return alloc


def build_trainer(
    cfg: DictConfig, identity: RunIdentity | None = None, extra_callbacks=(), **overrides
):
    """Lightning Trainer from ``cfg.trainer`` with the configured loggers and callbacks.

    ``identity`` names the W&B run where the logger config leaves name/group/tags null.
    A run shorter than ``log_every_n_steps`` logs at its last step instead of never.
    """
    loggers = _instantiate_all(with_identity(cfg.get("logger"), identity))
    callbacks = _instantiate_all(cfg.get("callbacks")) + list(extra_callbacks)
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    if not overrides.get("enable_progress_bar", cfg.trainer.get("enable_progress_bar", True)):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    max_steps = overrides.get("max_steps", cfg.trainer.get("max_steps")) or -1
    every = overrides.get("log_every_n_steps", cfg.trainer.get("log_every_n_steps"))
    if every and 0 < max_steps < every:
        overrides["log_every_n_steps"] = max_steps
    return hydra.utils.instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, **overrides
    )


def run_dir(cfg: DictConfig) -> Path:
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _instantiate_all(group) -> list:
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if c and "_target_" in c]


def _plain(node):
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
