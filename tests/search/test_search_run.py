"""search.py's pipeline end to end on the tiny backbone: allocation.json that loads,
validates against the model, fits its budget and can be injected for fine-tuning."""

import csv
import json

import pytest
import torch
from compose import compose_cfg, options
from helpers import base, fast
from omegaconf import OmegaConf

from guilomo.allocation import Allocation
from guilomo.budget import Budget, BudgetError
from guilomo.moe import LoraMoEConfig, find_targets, inject_adapter, module_shapes
from guilomo.search.run import run_search

FAST = [
    *fast(steps=3, examples=24, logger=True),
    "trainer.log_every_n_steps=1",
    "task.datamodule.val_size=8",
    "search.n_max=4",
    "search.r_max=4",
    "search.log_modules_every=1",
]


def check_allocation(path, cfg):
    alloc = Allocation.load(path)
    model, _ = base()
    targets = find_targets(model, list(cfg.backbone.target_modules))
    alloc.check_modules(targets)
    alloc.check_backbone("tiny_llama", model.config.num_hidden_layers)
    assert set(alloc.modules) == set(targets)
    assert all(2 <= m.experts <= 4 and max(m.ranks) <= 4 for m in alloc.modules.values())
    shapes = module_shapes(targets)
    meta = alloc.meta
    assert meta["source"] == "guilomo-search" and meta["backbone"] == "tiny_llama"
    assert meta["num_layers"] == 2 and meta["task"] == cfg.task.id and meta["seed"] == cfg.seed
    assert meta["order"] == cfg.search.order and meta["steps"] == 3
    assert meta["trainable_params"] == alloc.trainable_params(shapes)
    budget = Budget(**meta["budget"])
    assert budget.fits(alloc, shapes)
    # the fine-tune stage's first step: a fresh backbone takes the allocation
    inject_adapter(model, alloc, LoraMoEConfig())
    with torch.no_grad():
        model(input_ids=torch.randint(0, 1000, (2, 5)))
    return alloc


def test_search_writes_a_usable_allocation(tmp_path, capsys):
    cfg = compose_cfg("search", [*FAST, "logger=[csv,tensorboard]"], tmp_path)
    path = run_search(cfg)
    assert path == tmp_path / "allocation.json"
    last = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("allocation: ")][-1]
    assert last == f"allocation: {path}"
    check_allocation(path, cfg)
    assert (tmp_path / "allocation_heatmap.png").stat().st_size > 1000
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    columns = set(rows[0])
    for key in ("train/loss", "val/loss", "alloc/experts_mean", "modules/L0.q_proj/experts"):
        assert key in columns, key
    # the run's record and what every logger got at the end
    saved = json.loads((tmp_path / "metrics.json").read_text())
    alloc = Allocation.load(path)
    assert saved["method"] == "guilomo" and saved["variant"] == "first_order"
    assert saved["scalars"]["model/trainable_params"] == alloc.meta["trainable_params"]
    assert saved["scalars"]["alloc/experts_total"] == alloc.total_experts
    assert 0 < saved["scalars"]["val/final_loss"] < 20  # random tiny model: ~ln(vocab)
    assert saved["budget"] == {
        "kind": "none",
        "value": None,
        "spent": alloc.meta["trainable_params"],
    }
    assert rows[-1]["val/final_loss"] and float(rows[-1]["val/final_loss"]) == pytest.approx(
        saved["scalars"]["val/final_loss"]
    )
    table = list(csv.reader((tmp_path / "csv" / "allocation_table.csv").open()))
    assert len(table) == 1 + len(alloc.modules)
    assert OmegaConf.load(tmp_path / "csv" / "hparams.yaml").search.order == "first"
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and sum(e.stat().st_size for e in events) > 10_000  # includes the heatmap


def test_search_second_order_under_a_params_budget(tmp_path):
    model, _ = base()
    shapes = module_shapes(
        find_targets(
            model, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        )
    )
    # 20% above the minimum allocation (2 experts of rank 1 per module): forces removals
    minimum = sum(2 * (d_in + d_out) + 2 * d_in for d_in, d_out in shapes.values())
    value = int(1.2 * minimum)
    cfg = compose_cfg(
        "search",
        [
            *FAST,
            "logger=none",
            "search.order=second",
            "search.granularity=layer",
            "budget=params",
            f"budget.value={value}",
        ],
        tmp_path,
    )
    alloc = check_allocation(run_search(cfg), cfg)
    assert alloc.meta["budget"] == {"kind": "params", "value": value}
    assert alloc.meta["budget_spent"] <= value
    assert (
        alloc.meta["budget_fit"]["removed_expert_units"]
        + alloc.meta["budget_fit"]["removed_rank_units"]
        > 0
    )
    for layer in (0, 1):  # layer granularity: one expert count per decoder layer
        assert len({m.experts for n, m in alloc.modules.items() if f".{layer}." in n}) == 1


def test_budget_below_the_minimum_fails_before_training(tmp_path):
    cfg = compose_cfg(
        "search", [*FAST, "logger=none", "budget=experts", "budget.value=3"], tmp_path
    )
    with pytest.raises(BudgetError, match="minimum allocation"):
        run_search(cfg)
    assert not (tmp_path / "allocation.json").exists()


def test_budget_above_the_search_space_fails_before_training(tmp_path):
    """A budget the spend fill must spend, larger than n_max x r_max everywhere (here 4 x 4
    in 14 modules = 224 ranks), stops before training with the key and the ways out; as an
    upper bound (budget_fill=needed) the same budget is fine."""
    over = [*FAST, "logger=none", "budget=rank", "budget.value=225"]
    cfg = compose_cfg("search", over, tmp_path)
    with pytest.raises(BudgetError, match=r"set budget.value <= 224.*search.budget_fill=needed"):
        run_search(cfg)
    assert not (tmp_path / "allocation.json").exists()
    cfg = compose_cfg("search", [*over, "search.budget_fill=needed"], tmp_path)
    alloc = check_allocation(run_search(cfg), cfg)
    assert alloc.total_rank <= 224


def test_config_groups_compose():
    assert {"none", "experts", "rank", "params"} <= set(options("budget"))
    cfg = compose_cfg("search", [])
    assert cfg.backbone.id == "smollm2_135m" and cfg.task.id == "chatterbot_topic"
    assert cfg.search.order == "first" and cfg.search.virtual_step == "sgd"
    assert cfg.search.val_source == "heldout" and cfg.search.init == "kaiming"
    assert cfg.budget.kind == "none" and cfg.adapter.aux_coef == 0.001
    reference = compose_cfg("search", ["adapter.init=normal"])
    assert reference.search.init == "normal"
