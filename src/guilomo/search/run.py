"""``run_search(cfg)``: the whole search stage, from a composed Hydra config to ``allocation.json``."""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from guilomo.budget import Budget
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
from guilomo.search.config import SearchSettings
from guilomo.search.diagnostics import SearchWarning, report_lines, report_warnings
from guilomo.search.layer import expert_groups, inject_search_adapter
from guilomo.search.logging import log_heatmap, save_heatmap
from guilomo.search.module import SearchModule
from guilomo.search.readout import collect_gsvs, fit_budget, minimum_allocation, read_allocation
from guilomo.utils.kept import keep_finished_work
from guilomo.validate import search_fingerprint, validate_search

ALLOCATION_FILE = "allocation.json"
HEATMAP_FILE = "allocation_heatmap.png"


def search_settings(cfg: DictConfig) -> SearchSettings:
    return SearchSettings.from_dict(OmegaConf.to_container(cfg.search, resolve=True))


def run_search(cfg: DictConfig) -> Path:
    """Search, read out, fit the budget, write ``<run dir>/allocation.json``; returns its path."""
    started = time.perf_counter()
    settings = validate_search(cfg)  # every check that needs no weights, before the load
    L.seed_everything(cfg.seed, workers=True)
    lora = build_lora_config(cfg)
    if settings.init is not None:  # search-time A/B init may differ from the fine-tune's
        lora = dataclasses.replace(lora, init=settings.init)

    model, tokenizer = build_backbone(cfg)
    targets = build_targets(cfg, model)
    names = list(targets)
    shapes = module_shapes(targets)
    budget: Budget = build_budget(cfg, shapes)
    # fail before training when not even the smallest allocation fits the budget
    budget.check_minimum(minimum_allocation(names, settings.min_experts, settings.top_k), shapes)

    datamodule = build_datamodule(cfg, tokenizer)
    inject_search_adapter(
        model,
        names,
        n_max=settings.n_max,
        r_max=settings.r_max,
        top_k=settings.top_k,
        config=lora,
        rank_mask=settings.rank_mask,
        granularity=settings.granularity,
        seed=cfg.seed,
        expert_signal=settings.expert_signal,
        expert_credit=settings.expert_credit,
        rank_credit=settings.rank_credit,
    )
    module = SearchModule(
        model,
        settings,
        aux_coef=lora.aux_coef,
        aux_reduction=lora.aux_reduction,
        run_info=search_fingerprint(cfg, model.config.num_hidden_layers, names, settings),
    )
    # the search has no validation loop: held-out batches feed the outer step instead
    trainer = build_trainer(cfg, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    search_seconds = time.perf_counter() - started

    out = run_dir(cfg)
    gsvs = collect_gsvs(model)
    if not module.diagnostics.started:  # no step ran
        module.diagnostics.start(module.selection(), trainer.global_step)
    diagnostics = module.diagnostics.report()  # the GSV read-out, before budget fitting
    meta = {
        "source": "guilomo-search",
        "method": "guilomo",
        "backbone": cfg.backbone.id,
        "backbone_name": cfg.backbone.loader.get("name"),
        "num_layers": int(model.config.num_hidden_layers),
        "layers": None if cfg.get("layers") is None else list(cfg.layers),
        "task": cfg.task.id,
        "seed": int(cfg.seed),
        "order": settings.order,
        "granularity": settings.granularity,
        "n_max": settings.n_max,
        "r_max": settings.r_max,
        "steps": int(trainer.global_step),
        "search_seconds": round(search_seconds, 1),
    }
    read = read_allocation(gsvs, top_k=settings.top_k, meta=meta)
    groups = expert_groups(names, settings.granularity)
    allocation, report = fit_budget(read, gsvs, budget, shapes, groups, settings.min_experts)
    allocation.meta.update(
        {
            "budget": budget.to_dict(),
            "budget_spent": budget.measure(allocation, shapes) if budget.active else None,
            "read_out": {"experts": read.total_experts, "total_rank": read.total_rank},
            "budget_fit": report.summary(),
            "trainable_params": allocation.trainable_params(shapes),
            "search": settings.to_dict(),
            "diagnostics": diagnostics,
        }
    )
    path = out / ALLOCATION_FILE
    if not trainer.is_global_zero:  # data-parallel: every process holds the same GSVs
        return path
    allocation.save(path)
    if settings.heatmap:  # a plotting failure names the allocation.json just written
        with keep_finished_work([path]):
            title = f"{cfg.backbone.id} / {cfg.task.id}: {allocation.summary()}"
            image = save_heatmap(allocation, out / HEATMAP_FILE, title=title)
            log_heatmap(trainer.loggers, image)
    print(f"search: {allocation.summary()}, {allocation.meta['trainable_params']} params")
    print("\n".join(report_lines(diagnostics)))
    for warning in report_warnings(diagnostics):
        warnings.warn(warning, SearchWarning, stacklevel=2)
    print(f"allocation: {path}")
    return path
