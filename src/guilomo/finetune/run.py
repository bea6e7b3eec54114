"""Stage 2: fine-tune a fresh LoRA-MoE from an allocation, evaluate it, write the results.

``run_train(cfg)`` loads the backbone and task, gets the allocation (a file written
by ``search.py`` or a baseline generated for this backbone, optionally scaled to the
budget), scores the untouched backbone (zero-shot), trains, scores again, and writes
``metrics.json``, the adapter folder (with its base weights' record, the tokenizer, the
task's prompt template and a model card holding the test metrics) and Lightning
checkpoints into the run dir.
``allocation=adalora`` trains peft's AdaLoRA at the budget instead of a LoRA-MoE
(:mod:`guilomo.finetune.adalora`; its counts go to ``metrics.json["adalora"]``; peft's
own folder, no LoRA-MoE model card): the run sees either through one interface,
:class:`~guilomo.finetune.adapter.TrainedAdapter`.
Every configured logger gets the resolved config, the allocation (table and heatmap),
the zero-shot and fine-tuned test metrics (``test/<stage>/<metric>``), the final
validation loss, trainable parameters, budget and the router usage per module
(``result["scalars"]`` holds the numbers, under the same names).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from omegaconf import DictConfig, OmegaConf

from guilomo.allocation import Allocation
from guilomo.allocation_view import allocation_scalars, log_allocation, save_heatmap
from guilomo.finetune.adapter import TrainedAdapter, build_adapter
from guilomo.finetune.allocation import budget_record, resolve_allocation
from guilomo.finetune.checks import train_fingerprint, validate_train
from guilomo.finetune.evaluation import evaluate_datamodule
from guilomo.finetune.module import FinetuneModule
from guilomo.finetune.usage import COLUMNS as USAGE_COLUMNS
from guilomo.finetune.usage import RouterUsage
from guilomo.moe import LoraMoEConfig
from guilomo.pipeline import (
    Stage,
    build_datamodule,
    build_lora_config,
    open_stage,
    search_variant,
)
from guilomo.utils.kept import keep_finished_work, last_checkpoint
from guilomo.utils.loggers import log_final, log_table
from guilomo.utils.runfiles import ALLOCATION_FILE, HEATMAP_FILE
from guilomo.utils.task import task_wrapper

log = logging.getLogger(__name__)
ADAPTER_DIR = "adapter"


def task_record(cfg: DictConfig, dm) -> dict:
    """The task an adapter was trained on, as ``guilomo.generate`` needs it: its id, the
    prompt template, and the instruction every training example shares (``None`` when
    they differ: the prompt is then the instruction itself)."""
    instructions = {e.instruction for e in dm.train_examples}
    return {
        "id": cfg.task.id,
        "template": cfg.task.datamodule.template,
        "instruction": instructions.pop() if len(instructions) == 1 else None,
    }


def search_record(alloc: Allocation, path: str | None) -> dict | None:
    """For a searched allocation: its file, search time, steps and full ``meta``."""
    if alloc.method != "guilomo":
        return None
    meta = alloc.meta
    return {
        "path": path,
        "seconds": meta.get("search_seconds"),
        "steps": meta.get("steps"),
        "meta": meta,
    }


def result_scalars(result: dict, val: dict | None = None) -> dict[str, float]:
    """The numbers of a result under the names every logger gets."""
    out = {
        f"test/{stage}/{k}": float(v)
        for stage, vals in result["metrics"].items()
        for k, v in vals.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    out["model/trainable_params"] = result["trainable_params"]
    budget = result.get("budget") or {}
    if budget.get("value") is not None:
        out["budget/value"] = budget["value"]
    if budget.get("spent") is not None:
        out["budget/spent"] = budget["spent"]
    out.update({k: float(v) for k, v in (val or {}).items() if k.startswith("val/")})
    return out


@task_wrapper
def run_train(cfg: DictConfig) -> dict:
    """Fine-tune the adapter the allocation names, score the backbone before and the
    adapter after, write the run folder; returns what ``metrics.json`` holds."""
    validate_train(cfg)  # every check that needs no weights, before the backbone loads
    stage = open_stage(cfg)
    plan = plan_run(stage)
    dm = build_datamodule(cfg, stage.tokenizer)
    dm.setup("fit")
    metrics: dict = {}
    if cfg.eval.zero_shot:
        metrics["zero_shot"] = evaluate_datamodule(
            stage.model, stage.tokenizer, dm, cfg.eval, "zero-shot test"
        )
    adapter = add_adapter(stage, plan, dm)
    n_params = adapter.trainable_params(stage.shapes)
    module = finetune_module(stage, plan, adapter)
    params = stage.log_config(
        plan.trainer,
        method=plan.alloc.method,
        variant=plan.variant,
        budget=plan.budget,
        trainable_params=n_params,
    )
    log_allocation(plan.trainer.loggers, plan.alloc, plan.heatmap, step=0)
    stage.fit(plan.trainer, module, dm)
    # the final held-out loss (and router usage): Lightning's validation loop
    val = plan.trainer.validate(module, datamodule=dm, verbose=False)[0] if dm.val_data else {}

    # everything after training: the adapter first, then metrics.json, then the rest;
    # a failure here names the finished work kept on disk
    with keep_finished_work(last_checkpoint(plan.trainer)) as kept:
        metrics["finetuned"] = save_and_test(stage, plan, adapter, dm, kept)
        result = train_result(stage, plan, adapter, metrics, val, n_params)
        if plan.trainer.is_global_zero:  # the gathered metrics are the same on every process
            write_results(stage, plan, adapter, result, params, kept)
    return result


@dataclass
class Plan:
    """What a fine-tune trains and how its run is named and logged."""

    alloc: Allocation
    lora: LoraMoEConfig  # the adapter settings (AdaLoRA takes alpha and dropout)
    budget: dict  # budget_record: the budget and what the allocation spends
    variant: str | None  # a searched allocation's search order
    trainer: L.Trainer
    usage: RouterUsage
    heatmap: Path | None  # the allocation's heatmap (written by rank zero)


def plan_run(stage: Stage) -> Plan:
    """The allocation under the budget, the Trainer that names the run after it, and (on
    rank zero) ``allocation.json`` and its heatmap."""
    cfg = stage.cfg
    alloc = resolve_allocation(cfg, stage.targets, stage.num_layers, stage.budget)
    method, budget = alloc.method, budget_record(stage.budget, alloc, stage.shapes)
    variant = search_variant(alloc.meta.get("order") if method == "guilomo" else None)
    usage = RouterUsage()
    # under DDP/FSDP every process runs this function and only rank zero writes files
    # (the trainer knows its rank before fit); W&B names the run from the allocation
    trainer = stage.trainer("train", method, budget, variant, extra_callbacks=[usage])
    log.info("allocation (%s): %s", method, alloc.summary())
    heatmap = None
    if trainer.is_global_zero:  # data-parallel: one process writes the run's files
        alloc.save(stage.out / ALLOCATION_FILE)
        heatmap = save_heatmap(
            alloc,
            stage.out / HEATMAP_FILE,
            title=f"{method} on {cfg.backbone.id}: {alloc.summary()}",
        )
    return Plan(alloc, build_lora_config(cfg), budget, variant, trainer, usage, heatmap)


def add_adapter(stage: Stage, plan: Plan, dm) -> TrainedAdapter:
    """The adapter the allocation names, in the backbone (its folder records the backbone,
    the tokenizer and the task)."""
    cfg = stage.cfg
    return build_adapter(
        stage.model,
        plan.alloc,
        plan.lora,
        loader=OmegaConf.to_container(cfg.backbone.loader, resolve=True),
        backbone_id=cfg.backbone.id,
        tokenizer=stage.tokenizer,
        task=task_record(cfg, dm),
    )


def finetune_module(stage: Stage, plan: Plan, adapter: TrainedAdapter) -> FinetuneModule:
    """The LightningModule: the optimiser settings, the objective, the adapter's loss term
    and hooks, and the fingerprint a resumed checkpoint must match."""
    cfg = stage.cfg
    total_steps = cfg.trainer.max_steps if (cfg.trainer.max_steps or -1) > 0 else None
    return FinetuneModule(
        stage.model,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        warmup_steps=cfg.optim.warmup_steps,
        total_steps=total_steps,
        aux_coef=plan.lora.aux_coef,
        aux_reduction=plan.lora.aux_reduction,
        sparse_logits=cfg.sparse_logits,
        run_info=train_fingerprint(cfg, stage.num_layers, plan.alloc),
        regularizer=adapter.regularizer,
        callbacks=adapter.callbacks(),
    )


def save_and_test(stage: Stage, plan: Plan, adapter: TrainedAdapter, dm, kept: list) -> dict:
    """The adapter folder (rank zero), then the fine-tuned test metrics (every process
    scores its shard of the test set; the metrics are gathered)."""
    cfg, trainer = stage.cfg, plan.trainer
    # every process holds the same adapter; one writes it
    if cfg.save_adapter and trainer.is_global_zero:
        kept.append(adapter.save(stage.out / ADAPTER_DIR))
    stage.model.eval()
    return evaluate_datamodule(
        stage.model,
        stage.tokenizer,
        dm,
        cfg.eval,
        "fine-tuned test",
        rank=trainer.global_rank,
        world_size=trainer.world_size,
    )


def train_result(
    stage: Stage, plan: Plan, adapter: TrainedAdapter, metrics: dict, val: dict, n_params: int
) -> dict:
    """``metrics.json`` of the fine-tune, its ``scalars`` the numbers every logger gets."""
    cfg, alloc = stage.cfg, plan.alloc
    result = {
        "stage": "train",
        "method": alloc.method,
        "task": cfg.task.id,
        "backbone": cfg.backbone.id,
        "num_layers": stage.num_layers,
        "allocation": {
            "builder": cfg.allocation._target_,
            "source": alloc.meta.get("source", cfg.allocation._target_),
            "summary": alloc.summary(),
        },
        "trainable_params": n_params,
        "budget": plan.budget,
        "search": search_record(alloc, cfg.allocation.get("path")),
        "adalora": adapter.record(stage.shapes),
        "seed": cfg.seed,
        "steps": plan.trainer.global_step,
        "metrics": metrics,
    }
    result["scalars"] = {**result_scalars(result, val), **allocation_scalars(alloc)}
    return result


def write_results(
    stage: Stage, plan: Plan, adapter: TrainedAdapter, result: dict, params: dict, kept: list
) -> None:
    """``metrics.json``, the model card with the test metrics, the loggers' final numbers
    and router usage, the results table in the log."""
    path = stage.write_metrics(result)
    kept.append(path)
    if stage.cfg.save_adapter:  # the model card gets the test metrics
        adapter.save_card(stage.out / ADAPTER_DIR, result["metrics"]["finetuned"])
    trainer, usage = plan.trainer, plan.usage
    log_final(trainer.loggers, params, result["scalars"], step=trainer.global_step)
    if usage.shares:
        log_table(trainer.loggers, "router/usage", USAGE_COLUMNS, usage.rows(), trainer.global_step)
    log.info("results\n%s\nmetrics: %s", format_table(result), path)


def format_table(result: dict) -> str:
    """A small text table: zero-shot vs fine-tuned metrics and trainable parameters."""
    m = result["metrics"]
    skip = {"n", "invalid"}
    names = sorted(
        {
            k
            for part in m.values()
            for k, v in part.items()
            if isinstance(v, float) and k not in skip
        }
    )
    # every column at least 14 wide and 2 wider than its name, so no two names touch
    width = {n: max(14, len(n) + 2) for n in names}
    rows = [f"{'':12s}" + "".join(f"{n:>{width[n]}s}" for n in names) + f"{'trainable':>14s}"]
    for stage, vals in m.items():
        params = result["trainable_params"] if stage == "finetuned" else 0
        cells = "".join(
            f"{vals[n]:>{width[n]}.4f}"
            if isinstance(vals.get(n), (int, float))
            else f"{'-':>{width[n]}s}"
            for n in names
        )
        rows.append(f"{stage:12s}{cells}{params:>14,d}")
    n = next(iter(m.values()), {}).get("n", "?")
    title = f"{result['task']} on {result['backbone']}, {n} test examples ({result['allocation']['summary']})"
    return "\n".join([title, *rows])
