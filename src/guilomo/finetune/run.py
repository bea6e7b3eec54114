"""Stage 2: fine-tune a fresh LoRA-MoE from an allocation, evaluate it, write the results.

``run_train(cfg)`` loads the backbone and task, gets the allocation (a file written
by ``search.py`` or a baseline generated for this backbone, optionally scaled to the
budget), scores the untouched backbone (zero-shot), trains, scores again, and writes
``metrics.json``, the adapter folder (with its base weights' record, the tokenizer, the
task's prompt template and a model card holding the test metrics) and Lightning
checkpoints into the run dir.
``allocation=adalora`` trains peft's AdaLoRA at the budget instead of a LoRA-MoE
(:mod:`guilomo.finetune.adalora`; its counts go to ``metrics.json["adalora"]``; peft's
own folder, no LoRA-MoE model card).
Every configured logger gets the resolved config, the allocation (table and heatmap),
the zero-shot and fine-tuned test metrics (``test/<stage>/<metric>``), the final
validation loss, trainable parameters, budget and the router usage per module
(``result["scalars"]`` holds the numbers, under the same names).
"""

from __future__ import annotations

import json
import logging

import lightning as L
from omegaconf import DictConfig, OmegaConf

from guilomo.allocation import Allocation
from guilomo.allocation_view import allocation_scalars, log_allocation, save_heatmap
from guilomo.finetune.adalora import AdaLora, AdaLoraSchedule, is_adalora
from guilomo.finetune.allocation import budget_record, resolve_allocation
from guilomo.finetune.checks import train_fingerprint, validate_train
from guilomo.finetune.evaluation import evaluate_datamodule
from guilomo.finetune.module import FinetuneModule
from guilomo.finetune.usage import COLUMNS as USAGE_COLUMNS
from guilomo.finetune.usage import RouterUsage
from guilomo.moe import inject_adapter, module_shapes, save_adapter, trainable_parameters
from guilomo.moe.io import save_model_card
from guilomo.moe.provenance import backbone_record
from guilomo.pipeline import (
    build_backbone,
    build_budget,
    build_datamodule,
    build_lora_config,
    build_targets,
    build_trainer,
    run_dir,
)
from guilomo.utils.io import atomic_write_text
from guilomo.utils.kept import keep_finished_work, last_checkpoint
from guilomo.utils.loggers import config_params, log_final, log_params, log_table, run_identity
from guilomo.utils.task import task_wrapper

log = logging.getLogger(__name__)
HEATMAP_FILE = "allocation_heatmap.png"


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
    validate_train(cfg)  # every check that needs no weights, before the backbone loads
    L.seed_everything(cfg.seed, workers=True)
    out = run_dir(cfg)
    model, tokenizer = build_backbone(cfg)
    num_layers = model.config.num_hidden_layers
    targets = build_targets(cfg, model)
    shapes = module_shapes(targets)
    run_budget = build_budget(cfg, shapes)  # once: budget=match reads its file here
    alloc = resolve_allocation(cfg, targets, num_layers, run_budget)
    method, budget = alloc.method, budget_record(run_budget, alloc, shapes)
    order = alloc.meta.get("order") if method == "guilomo" else None  # search variant
    variant = f"{order}_order" if order else None
    identity = run_identity(
        "train", method, cfg.backbone.id, cfg.task.id, budget, cfg.seed, variant
    )
    usage = RouterUsage()
    # under DDP/FSDP every process runs this function and only rank zero writes files
    # (the trainer knows its rank before fit); W&B names the run from the allocation
    trainer = build_trainer(cfg, identity=identity, extra_callbacks=[usage])
    log.info("allocation (%s): %s", method, alloc.summary())
    heatmap = None
    if trainer.is_global_zero:  # data-parallel: one process writes the run's files
        alloc.save(out / "allocation.json")
        heatmap = save_heatmap(
            alloc, out / HEATMAP_FILE, title=f"{method} on {cfg.backbone.id}: {alloc.summary()}"
        )

    dm = build_datamodule(cfg, tokenizer)
    dm.setup("fit")
    metrics: dict = {}
    if cfg.eval.zero_shot:
        metrics["zero_shot"] = evaluate_datamodule(model, tokenizer, dm, cfg.eval, "zero-shot test")

    lora_cfg = build_lora_config(cfg)
    adalora = AdaLora(model, alloc, lora_cfg.alpha, lora_cfg.dropout) if is_adalora(alloc) else None
    if adalora is None:
        inject_adapter(model, alloc, lora_cfg)
    # AdaLoRA trains init_r ranks and keeps target_r: its count is the kept (nominal) one
    n_params = trainable_parameters(model) if adalora is None else alloc.trainable_params(shapes)
    total_steps = cfg.trainer.max_steps if (cfg.trainer.max_steps or -1) > 0 else None
    module = FinetuneModule(
        model,
        lr=cfg.optim.lr,
        weight_decay=cfg.optim.weight_decay,
        warmup_steps=cfg.optim.warmup_steps,
        total_steps=total_steps,
        aux_coef=lora_cfg.aux_coef,
        aux_reduction=lora_cfg.aux_reduction,
        sparse_logits=cfg.sparse_logits,
        run_info=train_fingerprint(cfg, num_layers, alloc),
        regularizer=None if adalora is None else adalora.regularizer,
        callbacks=[] if adalora is None else [AdaLoraSchedule(adalora)],
    )
    params = config_params(
        cfg, method=method, variant=variant, budget=budget, trainable_params=n_params
    )
    log_params(trainer.loggers, params)
    log_allocation(trainer.loggers, alloc, heatmap, step=0)
    trainer.fit(module, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    # the final held-out loss (and router usage): Lightning's validation loop
    val = trainer.validate(module, datamodule=dm, verbose=False)[0] if dm.val_data else {}

    # everything after training: the adapter first, then metrics.json, then the rest;
    # a failure here names the finished work kept on disk
    with keep_finished_work(last_checkpoint(trainer)) as kept:
        # every process holds the same adapter; one writes it
        if cfg.save_adapter and trainer.is_global_zero:
            loader = OmegaConf.to_container(cfg.backbone.loader, resolve=True)
            kept.append(
                save_adapter(
                    model,
                    out / "adapter",
                    alloc,
                    lora_cfg,
                    backbone=backbone_record(loader, cfg.backbone.id, model),
                    tokenizer=tokenizer,
                    task=task_record(cfg, dm),
                )
                if adalora is None
                else adalora.save(out / "adapter")
            )
        model.eval()
        # each process scores its shard of the test set; the metrics are gathered
        metrics["finetuned"] = evaluate_datamodule(
            model,
            tokenizer,
            dm,
            cfg.eval,
            "fine-tuned test",
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )
        result = {
            "stage": "train",
            "method": method,
            "task": cfg.task.id,
            "backbone": cfg.backbone.id,
            "num_layers": num_layers,
            "allocation": {
                "builder": cfg.allocation._target_,
                "source": alloc.meta.get("source", cfg.allocation._target_),
                "summary": alloc.summary(),
            },
            "trainable_params": n_params,
            "budget": budget,
            "search": search_record(alloc, cfg.allocation.get("path")),
            "adalora": None if adalora is None else adalora.record(shapes),
            "seed": cfg.seed,
            "steps": trainer.global_step,
            "metrics": metrics,
        }
        result["scalars"] = {**result_scalars(result, val), **allocation_scalars(alloc)}
        if not trainer.is_global_zero:  # the gathered metrics are the same on every process
            return result
        path = atomic_write_text(out / "metrics.json", json.dumps(result, indent=1) + "\n")
        kept.append(path)
        if cfg.save_adapter and adalora is None:  # the model card gets the test metrics
            save_model_card(out / "adapter", metrics["finetuned"])
        log_final(trainer.loggers, params, result["scalars"], step=trainer.global_step)
        if usage.shares:
            log_table(
                trainer.loggers, "router/usage", USAGE_COLUMNS, usage.rows(), trainer.global_step
            )
        log.info("results\n%s\nmetrics: %s", format_table(result), path)
    return result


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
    rows = [f"{'':12s}" + "".join(f"{n:>14s}" for n in names) + f"{'trainable':>14s}"]
    for stage, vals in m.items():
        params = result["trainable_params"] if stage == "finetuned" else 0
        cells = "".join(
            f"{vals[n]:>14.4f}" if isinstance(vals.get(n), (int, float)) else f"{'-':>14s}"
            for n in names
        )
        rows.append(f"{stage:12s}{cells}{params:>14,d}")
    n = next(iter(m.values()), {}).get("n", "?")
    title = f"{result['task']} on {result['backbone']}, {n} test examples ({result['allocation']['summary']})"
    return "\n".join([title, *rows])
