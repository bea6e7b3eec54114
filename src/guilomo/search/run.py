"""``run_search(cfg)``: the whole search stage, from a composed Hydra config to ``allocation.json``.

Besides the allocation (and its heatmap), the run dir gets ``metrics.json``; every
configured logger gets the resolved config, the allocation (table and heatmap) and the
final numbers (``scalars`` of ``metrics.json``): the held-out loss of the searched
model (``val/final_loss``, the outer objective), trainable parameters and the budget.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from guilomo.allocation import uniform
from guilomo.allocation_view import allocation_scalars, log_allocation, save_heatmap
from guilomo.data.datamodule import IGNORE
from guilomo.pipeline import (
    Stage,
    build_datamodule,
    build_lora_config,
    open_stage,
    search_variant,
)
from guilomo.search.checks import search_fingerprint, validate_search
from guilomo.search.config import SearchSettings
from guilomo.search.diagnostics import SearchWarning
from guilomo.search.layer import inject_search_adapter
from guilomo.search.module import SearchModule
from guilomo.search.outcome import SearchOutcome
from guilomo.search.readout import minimum_allocation
from guilomo.utils.kept import keep_finished_work
from guilomo.utils.loggers import log_final
from guilomo.utils.progress import eval_progress
from guilomo.utils.runfiles import ALLOCATION_FILE, HEATMAP_FILE
from guilomo.utils.task import task_wrapper

log = logging.getLogger(__name__)
METHOD = "guilomo"


@torch.no_grad()
def heldout_loss(module: SearchModule, datamodule, progress=None) -> float | None:
    """Mean L_val per target token over the whole held-out split (``None`` if it is empty)."""
    was_training = module.model.training
    module.model.eval()
    total, tokens = 0.0, 0
    try:
        for batch in (progress or iter)(datamodule.val_dataloader()):
            batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != IGNORE).sum())
            total += float(module.val_loss(batch)) * n
            tokens += n
    finally:
        module.model.train(was_training)
    return total / tokens if tokens else None


@task_wrapper
def run_search(cfg: DictConfig) -> Path:
    """Search, read out, fit the budget, write ``<run dir>/allocation.json``; returns its path."""
    started = time.perf_counter()
    settings = validate_search(cfg)  # every check that needs no weights, before the load
    stage = open_stage(cfg)
    check_budget_fits(stage, settings)
    datamodule = build_datamodule(cfg, stage.tokenizer)
    module = build_search_module(stage, settings)
    variant = search_variant(settings.order)
    # no Lightning val loop: held-out batches feed the outer step, heldout_loss scores the split
    trainer = stage.trainer(
        "search",
        METHOD,
        stage.budget.to_dict(),
        variant,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    params = stage.log_config(trainer, method=METHOD, variant=variant)
    stage.fit(trainer, module, datamodule)
    done = read_out(stage, settings, module, trainer, datamodule, started)
    if not trainer.is_global_zero:  # data-parallel: every process holds the same GSVs
        return done.path
    write_results(stage, trainer, params, done, settings.heatmap)
    print("\n".join(done.outcome.report_lines()))
    for warning in done.outcome.warnings():
        warnings.warn(warning, SearchWarning, stacklevel=2)
    print(f"allocation: {done.path}")
    return done.path


@dataclass
class Searched:
    """A search after ``fit``: its outcome, the allocation's path, what the run reports."""

    outcome: SearchOutcome
    path: Path
    val_loss: float | None  # the held-out loss of the searched model
    steps: int
    seconds: float  # the search's time, from the start of the run


def check_budget_fits(stage: Stage, settings: SearchSettings) -> None:
    """Fail before training when not even the smallest allocation fits the budget, and
    (the default fill spends the budget) when the budget is more than the space holds."""
    names, budget = list(stage.targets), stage.budget
    budget.check_minimum(
        minimum_allocation(names, settings.min_experts, settings.top_k), stage.shapes
    )
    if settings.budget_mode == "lagrangian" and settings.budget_fill == "spend":
        budget.check_maximum(
            uniform(names, settings.n_max, settings.r_max, top_k=settings.top_k),
            stage.shapes,
            "raise search.n_max / search.r_max, or set search.budget_fill=needed "
            "(the budget as an upper bound)",
        )


def build_search_module(stage: Stage, settings: SearchSettings) -> SearchModule:
    """Search layers into every target (GSVs drawn with the init seed), in a SearchModule."""
    cfg, names = stage.cfg, list(stage.targets)
    lora = build_lora_config(cfg)
    # the GSV init's seed apart from the data's (cfg.seed: shuffling, dropout), so each
    # can be varied alone
    init_seed = int(cfg.seed if settings.init_seed is None else settings.init_seed)
    inject_search_adapter(stage.model, names, settings, config=lora, seed=init_seed)
    return SearchModule(
        stage.model,
        settings,
        aux_coef=lora.aux_coef,
        aux_reduction=lora.aux_reduction,
        run_info=search_fingerprint(cfg, stage.num_layers, names, settings),
        sparse_logits=cfg.sparse_logits,
        budget=stage.budget,
        init_seed=init_seed,
    )


def read_out(
    stage: Stage,
    settings: SearchSettings,
    module: SearchModule,
    trainer,
    datamodule,
    started: float,
) -> Searched:
    """The held-out loss of the searched model, then the read-out (trimmed and filled to
    the budget) with the run's ``meta``."""
    steps, seconds = trainer.global_step, round(time.perf_counter() - started, 1)
    show = bool(stage.cfg.trainer.get("enable_progress_bar", True))
    val_loss = heldout_loss(module, datamodule, eval_progress("held-out loss", show))
    meta = search_meta(stage, settings, module.loop.init_seed, steps, seconds)
    outcome = module.loop.finish(stage.shapes, steps, meta)
    path = stage.out / ALLOCATION_FILE
    return Searched(outcome, path, val_loss, steps, seconds)


def write_results(stage: Stage, trainer, params: dict, done: Searched, heatmap: bool) -> None:
    """``allocation.json``, then its heatmap, the loggers' allocation and final numbers and
    ``metrics.json``; a failure after the allocation names it kept."""
    allocation = done.outcome.allocation
    allocation.save(done.path)
    with keep_finished_work([done.path]) as kept:
        image = None
        if heatmap:
            title = f"{stage.cfg.backbone.id} / {stage.cfg.task.id}: {allocation.summary()}"
            image = save_heatmap(allocation, stage.out / HEATMAP_FILE, title=title)
        result = search_result(stage, done)
        log_allocation(trainer.loggers, allocation, image, step=trainer.global_step)
        log_final(trainer.loggers, params, result["scalars"], step=trainer.global_step)
        kept.append(stage.write_metrics(result))
        log.info(
            "search: %s, %d params, held-out loss %s",
            allocation.summary(),
            result["trainable_params"],
            "-" if done.val_loss is None else f"{done.val_loss:.4f}",
        )


def search_meta(
    stage: Stage, settings: SearchSettings, init_seed: int, steps: int, seconds: float
) -> dict:
    """The run's part of ``allocation.json``'s ``meta`` (the read-out adds its own)."""
    cfg = stage.cfg
    return {
        "source": "guilomo-search",
        "method": METHOD,
        "backbone": cfg.backbone.id,
        "backbone_name": cfg.backbone.loader.get("name"),
        "num_layers": int(stage.num_layers),
        "layers": None if cfg.get("layers") is None else list(cfg.layers),
        "task": cfg.task.id,
        "seed": int(cfg.seed),
        "init_seed": init_seed,
        "order": settings.order,
        "granularity": settings.granularity,
        "n_max": settings.n_max,
        "r_max": settings.r_max,
        "steps": int(steps),
        "search_seconds": seconds,
    }


def search_result(stage: Stage, done: Searched) -> dict:
    """``metrics.json`` of the search, its ``scalars`` the numbers every logger gets."""
    cfg, budget, allocation = stage.cfg, stage.budget, done.outcome.allocation
    spent = budget.measure(allocation, stage.shapes)
    result = {
        "stage": "search",
        "method": METHOD,
        "variant": search_variant(allocation.meta.get("order")),  # as the fine-tunes name it
        "task": cfg.task.id,
        "backbone": cfg.backbone.id,
        "allocation": {"path": str(done.path), "summary": allocation.summary()},
        "trainable_params": allocation.meta["trainable_params"],
        "budget": {**budget.to_dict(), "spent": spent},
        "seed": int(cfg.seed),
        "steps": int(done.steps),
        "search_seconds": done.seconds,
    }
    diagnostics = done.outcome.diagnostics
    result["scalars"] = {
        "model/trainable_params": result["trainable_params"],
        "budget/spent": spent,
        **({"budget/value": budget.value} if budget.active else {}),
        **({"val/final_loss": done.val_loss} if done.val_loss is not None else {}),
        "search/seconds": done.seconds,
        **allocation_scalars(allocation),
        # did the search move off its seeded start (issue 12's diagnostics)
        **{
            f"search/{k}": float(diagnostics[k])
            for k in ("unchanged", "converged", "expert_flips", "rank_flips")
            if isinstance(diagnostics.get(k), (bool, int, float))
        },
    }
    return result
