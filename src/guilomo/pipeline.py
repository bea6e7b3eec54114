"""What ``search.py`` and ``train.py`` share: Hydra config -> objects, and the stage skeleton.

Each builder instantiates one config group (backbone, task, adapter, allocation,
logger, callbacks, trainer) so the two entry points stay short and compose the same way.

Both stages then run on the same skeleton: :func:`open_stage` seeds everything and
builds what they have in common (the run folder, the backbone, the modules it adapts,
the budget) into a :class:`Stage`, whose methods build the Trainer that names the run,
log the resolved config, fit, and write ``metrics.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from omegaconf import DictConfig, OmegaConf
from torch import nn

from guilomo import baselines
from guilomo.allocation import Allocation
from guilomo.budget import Budget
from guilomo.checkpointing import enable_gradient_checkpointing
from guilomo.moe import LoraMoEConfig, find_targets, module_shapes
from guilomo.utils.io import atomic_write_text
from guilomo.utils.loggers import (
    RunIdentity,
    config_params,
    log_params,
    run_identity,
    with_identity,
)
from guilomo.utils.runfiles import METRICS_FILE


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


def build_allocation(
    spec: DictConfig, targets: dict, num_layers: int, budget: Budget
) -> Allocation:
    """The allocation ``spec._target_`` builds for ``targets`` (``conf/allocation/*.yaml``).

    ``spec`` names a function with ``_partial_: true``; the run's depth and budget go to
    it, and it is sized to the budget, by the one rule of
    :func:`guilomo.baselines.build.build_allocation` (a builder that takes the budget
    fits or checks it; any other allocation is scaled to an active budget).
    """
    builder = hydra.utils.instantiate(spec, _convert_="all")
    return baselines.build_allocation(builder, targets, budget=budget, num_layers=num_layers)


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


def search_variant(order: str | None) -> str | None:
    """The variant the runs of a searched allocation carry: its search order."""
    return f"{order}_order" if order else None


@dataclass
class Stage:
    """What both stages build before their own work (:func:`open_stage`)."""

    cfg: DictConfig
    out: Path  # the run folder
    model: nn.Module  # the frozen backbone
    tokenizer: Any
    targets: dict  # {module path: nn.Linear} the adapter goes into
    shapes: dict  # {module path: (d_in, d_out)}
    budget: Budget

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    def trainer(self, stage: str, method: str, budget: dict, variant: str | None, **kwargs):
        """:func:`build_trainer`, the W&B run named after the stage, method, backbone,
        task, ``budget`` (the record the run reports), seed and ``variant``."""
        cfg = self.cfg
        identity = run_identity(
            stage, method, cfg.backbone.id, cfg.task.id, budget, cfg.seed, variant
        )
        return build_trainer(cfg, identity=identity, **kwargs)

    def log_config(self, trainer, **fields) -> dict:
        """Every logger gets the resolved config with ``fields`` on top; returns it."""
        params = config_params(self.cfg, **fields)
        log_params(trainer.loggers, params)
        return params

    def fit(self, trainer, module, datamodule) -> None:
        """``trainer.fit``, resumed from ``ckpt_path`` when one is given."""
        trainer.fit(module, datamodule=datamodule, ckpt_path=self.cfg.get("ckpt_path"))

    def write_metrics(self, result: dict) -> Path:
        """``<run folder>/metrics.json`` (written atomically); returns its path."""
        return atomic_write_text(self.out / METRICS_FILE, json.dumps(result, indent=1) + "\n")


def open_stage(cfg: DictConfig) -> Stage:
    """Seed everything, then build the run folder, the backbone, its targets and the budget.

    The seed comes first: the adapter's initialisation, the data's shuffling and
    dropout draw from the stream it starts, in the order the stage builds them.
    """
    L.seed_everything(cfg.seed, workers=True)
    out = run_dir(cfg)
    model, tokenizer = build_backbone(cfg)
    targets = build_targets(cfg, model)
    shapes = module_shapes(targets)
    budget = build_budget(cfg, shapes)  # once: budget=match reads its file here
    return Stage(cfg, out, model, tokenizer, targets, shapes, budget)
