"""``run_search(cfg)``: the whole search stage, from a composed Hydra config to ``allocation.json``.

Besides the allocation (and its heatmap), the run dir gets ``metrics.json``; every
configured logger gets the resolved config, the allocation (table and heatmap) and the
final numbers (``scalars`` of ``metrics.json``): the held-out loss of the searched
model (``val/final_loss``, the outer objective), trainable parameters and the budget.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig

from guilomo.allocation import uniform
from guilomo.allocation_view import allocation_scalars, log_allocation, save_heatmap
from guilomo.budget import Budget
from guilomo.data.datamodule import IGNORE
from guilomo.moe import module_shapes
from guilomo.pipeline import (
    build_backbone,
    build_budget,
    build_datamodule,
    build_lora_config,
    build_targets,
    build_trainer,
    run_dir,
)
from guilomo.search.checks import search_fingerprint, validate_search
from guilomo.search.diagnostics import SearchWarning
from guilomo.search.layer import inject_search_adapter
from guilomo.search.module import SearchModule
from guilomo.search.readout import minimum_allocation
from guilomo.utils.io import atomic_write_text
from guilomo.utils.kept import keep_finished_work
from guilomo.utils.loggers import config_params, log_final, log_params, run_identity
from guilomo.utils.progress import eval_progress
from guilomo.utils.task import task_wrapper

log = logging.getLogger(__name__)
ALLOCATION_FILE = "allocation.json"
HEATMAP_FILE = "allocation_heatmap.png"
METRICS_FILE = "metrics.json"


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
    L.seed_everything(cfg.seed, workers=True)
    lora = build_lora_config(cfg)

    model, tokenizer = build_backbone(cfg)
    targets = build_targets(cfg, model)
    names = list(targets)
    shapes = module_shapes(targets)
    budget: Budget = build_budget(cfg, shapes)
    # fail before training when not even the smallest allocation fits the budget
    budget.check_minimum(minimum_allocation(names, settings.min_experts, settings.top_k), shapes)
    if settings.budget_mode == "lagrangian" and settings.budget_fill == "spend":
        # ... and when the budget, which this fill spends, is more than the space holds
        budget.check_maximum(
            uniform(names, settings.n_max, settings.r_max, top_k=settings.top_k),
            shapes,
            "raise search.n_max / search.r_max, or set search.budget_fill=needed "
            "(the budget as an upper bound)",
        )

    datamodule = build_datamodule(cfg, tokenizer)
    # the GSV init's seed apart from the data's (cfg.seed: shuffling, dropout), so each
    # can be varied alone
    init_seed = int(cfg.seed if settings.init_seed is None else settings.init_seed)
    inject_search_adapter(model, names, settings, config=lora, seed=init_seed)
    module = SearchModule(
        model,
        settings,
        aux_coef=lora.aux_coef,
        aux_reduction=lora.aux_reduction,
        run_info=search_fingerprint(cfg, model.config.num_hidden_layers, names, settings),
        sparse_logits=cfg.sparse_logits,
        budget=budget,
        init_seed=init_seed,
    )
    method, variant = "guilomo", f"{settings.order}_order"
    identity = run_identity(
        "search", method, cfg.backbone.id, cfg.task.id, budget.to_dict(), cfg.seed, variant
    )
    # no Lightning val loop: held-out batches feed the outer step, heldout_loss scores the split
    trainer = build_trainer(cfg, identity=identity, limit_val_batches=0, num_sanity_val_steps=0)
    params = config_params(cfg, method=method, variant=variant)
    log_params(trainer.loggers, params)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    search_seconds = time.perf_counter() - started
    show = bool(cfg.trainer.get("enable_progress_bar", True))
    val_loss = heldout_loss(module, datamodule, eval_progress("held-out loss", show))

    out = run_dir(cfg)
    meta = {
        "source": "guilomo-search",
        "method": "guilomo",
        "backbone": cfg.backbone.id,
        "backbone_name": cfg.backbone.loader.get("name"),
        "num_layers": int(model.config.num_hidden_layers),
        "layers": None if cfg.get("layers") is None else list(cfg.layers),
        "task": cfg.task.id,
        "seed": int(cfg.seed),
        "init_seed": init_seed,
        "order": settings.order,
        "granularity": settings.granularity,
        "n_max": settings.n_max,
        "r_max": settings.r_max,
        "steps": int(trainer.global_step),
        "search_seconds": round(search_seconds, 1),
    }
    outcome = module.loop.finish(shapes, trainer.global_step, meta)
    allocation, diagnostics = outcome.allocation, outcome.diagnostics
    path = out / ALLOCATION_FILE
    if not trainer.is_global_zero:  # data-parallel: every process holds the same GSVs
        return path
    allocation.save(path)
    image = None
    # a failure after this point (plot, loggers, metrics.json) names the allocation kept
    with keep_finished_work([path]) as kept:
        if settings.heatmap:
            title = f"{cfg.backbone.id} / {cfg.task.id}: {allocation.summary()}"
            image = save_heatmap(allocation, out / HEATMAP_FILE, title=title)
        spent = budget.measure(allocation, shapes)
        result = {
            "stage": "search",
            "method": method,
            "variant": variant,
            "task": cfg.task.id,
            "backbone": cfg.backbone.id,
            "allocation": {"path": str(path), "summary": allocation.summary()},
            "trainable_params": allocation.meta["trainable_params"],
            "budget": {**budget.to_dict(), "spent": spent},
            "seed": int(cfg.seed),
            "steps": int(trainer.global_step),
            "search_seconds": round(search_seconds, 1),
        }
        scalars = {
            "model/trainable_params": result["trainable_params"],
            "budget/spent": spent,
            **({"budget/value": budget.value} if budget.active else {}),
            **({"val/final_loss": val_loss} if val_loss is not None else {}),
            "search/seconds": result["search_seconds"],
            **allocation_scalars(allocation),
            # did the search move off its seeded start (issue 12's diagnostics)
            **{
                f"search/{k}": float(diagnostics[k])
                for k in ("unchanged", "converged", "expert_flips", "rank_flips")
                if isinstance(diagnostics.get(k), (bool, int, float))
            },
        }
        result["scalars"] = scalars
        log_allocation(trainer.loggers, allocation, image, step=trainer.global_step)
        log_final(trainer.loggers, params, scalars, step=trainer.global_step)
        kept.append(atomic_write_text(out / METRICS_FILE, json.dumps(result, indent=1) + "\n"))
        log.info(
            "search: %s, %d params, held-out loss %s",
            allocation.summary(),
            result["trainable_params"],
            "-" if val_loss is None else f"{val_loss:.4f}",
        )
    print("\n".join(outcome.report_lines()))
    for warning in outcome.warnings():
        warnings.warn(warning, SearchWarning, stacklevel=2)
    print(f"allocation: {path}")
    return path
