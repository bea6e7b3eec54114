"""Budget rules: the cost of a module, configs -> Budget, and matching an allocation file."""

import pytest
from compose import compose_cfg
from helpers import base

from guilomo.allocation import Allocation, AllocationError, ModuleAllocation
from guilomo.baselines import make_baseline
from guilomo.budget import Budget, BudgetError
from guilomo.finetune.allocation import resolve_allocation
from guilomo.moe import find_targets, module_shapes
from guilomo.pipeline import build_budget, build_targets

SHAPES = {"model.layers.0.mlp.up_proj": (64, 128), "model.layers.1.mlp.down_proj": (128, 64)}


def test_cost_of_one_module_by_kind():
    ranks, shape = (8, 4, 2), (64, 128)
    assert Budget("experts", 1).cost(ranks, shape) == 3
    assert Budget("rank", 1).cost(ranks, shape) == 14
    # A: 14 x 64, B: 128 x 14, router: 3 x 64
    assert Budget("params", 1).cost(ranks, shape) == 14 * 64 + 128 * 14 + 3 * 64
    assert Budget().cost(ranks, shape) == Budget("params", 1).cost(ranks, shape)
    assert Budget("params", 1).cost((5,), shape) == 5 * (64 + 128)  # one expert: no router
    assert Budget("rank", 1).cost((5,)) == 5  # experts / rank need no shape
    with pytest.raises(BudgetError, match="d_in, d_out"):
        Budget("params", 1).cost((5,))


def test_measure_sums_cost_and_agrees_with_the_allocation():
    alloc = Allocation(
        {
            "model.layers.0.mlp.up_proj": ModuleAllocation((8, 4, 2)),
            "model.layers.1.mlp.down_proj": ModuleAllocation((3,)),
        }
    )
    assert Budget("experts", 1).measure(alloc, SHAPES) == alloc.total_experts == 4
    assert Budget("rank", 1).measure(alloc, SHAPES) == alloc.total_rank == 17
    assert Budget("params", 1).measure(alloc, SHAPES) == alloc.trainable_params(SHAPES)
    assert alloc.trainable_params(SHAPES) == (14 * 192 + 3 * 64) + 3 * 192


def test_from_config():
    assert Budget.from_config(None) == Budget()
    b = Budget("rank", 5)
    assert Budget.from_config(b) is b
    assert Budget.from_config({"kind": "params", "value": 2e6}) == Budget("params", 2_000_000)
    assert Budget.from_config({"kind": "none", "value": None}) == Budget()
    with pytest.raises(BudgetError, match=r"unknown budget key\(s\) \['valu'\]"):
        Budget.from_config({"kind": "params", "valu": 3})
    with pytest.raises(BudgetError, match="needs a positive value"):
        Budget.from_config({"kind": "params", "value": None})
    with pytest.raises(BudgetError, match="must be an integer"):
        Budget.from_config({"kind": "params", "value": 2.5})
    with pytest.raises(BudgetError, match="not one of"):
        Budget.from_config({"kind": "parameters", "value": 3})
    with pytest.raises(BudgetError, match="budget.path"):
        Budget.from_config({"kind": "match", "value": None, "path": None})


def test_match_reads_the_file(tmp_path):
    alloc = make_baseline("uniform", SHAPES, experts=3, rank=4)
    alloc.meta["trainable_params"] = alloc.trainable_params(SHAPES)
    path = alloc.save(tmp_path / "allocation.json")
    b = Budget.from_config({"kind": "params", "value": None, "path": str(path)}, SHAPES)
    assert b == Budget("params", alloc.trainable_params(SHAPES), matched=str(path.resolve()))
    assert b.to_dict() == {"kind": "params", "value": b.value, "matched": str(path.resolve())}
    for kind, value in (("experts", 6), ("rank", 24)):
        assert Budget.from_config({"kind": kind, "path": path}).value == value
    # other modules than the file's: parameters come from its recorded meta
    other = {"model.layers.5.mlp.up_proj": (8, 8)}
    assert Budget.from_config({"kind": "params", "path": path}, other).value == b.value
    del alloc.meta["trainable_params"]
    alloc.save(path)
    with pytest.raises(BudgetError, match="trainable_params"):
        Budget.from_config({"kind": "params", "path": path}, other)
    with pytest.raises(BudgetError, match="both set"):
        Budget.from_config({"kind": "params", "value": 10, "path": path})
    with pytest.raises(AllocationError, match="not found"):
        Budget.from_config({"kind": "params", "path": tmp_path / "missing.json"})


@pytest.fixture(scope="module")
def tiny():
    model, _ = base()
    return model


@pytest.mark.parametrize("kind", ["params", "experts", "rank"])
@pytest.mark.parametrize("baseline", ["lora", "uniform", "mola_2468", "alphalora", "random"])
def test_matched_baseline_lands_within_one_step(tmp_path, tiny, baseline, kind):
    """budget=match: a baseline lands within one allocation step of what the file spends."""
    targets = find_targets(tiny, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"])
    shapes = module_shapes(targets)
    searched = make_baseline("random", shapes, seed=7, n_min=2, n_max=5, r_max=6)
    searched.meta.update(backbone="tiny_llama", num_layers=2, source="guilomo-search")
    path = searched.save(tmp_path / "allocation.json")
    cfg = compose_cfg(
        "train",
        [
            "backbone=tiny_llama",
            "backbone.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj]",
            f"allocation={baseline}",
            "budget=match",
            f"budget.kind={kind}",
            f"searched={path}",
        ],
        tmp_path,
    )
    assert build_targets(cfg, tiny).keys() == targets.keys()
    alloc = resolve_allocation(cfg, targets, 2)
    target = Budget(kind, 1).measure(searched, shapes)
    spent = Budget(kind, 1).measure(alloc, shapes)
    assert build_budget(cfg, shapes).value == target
    # one step: one rank of the widest module, or one new expert of rank 1 with its router
    step = {"experts": 1, "rank": 1, "params": max(2 * i + o for i, o in shapes.values())}[kind]
    assert 0 <= target - spent < step, (baseline, kind, target, spent)
    assert alloc.meta["budget"]["matched"] == str(path.resolve())
    assert alloc.method == {"mola_2468": "mola_2468"}.get(baseline, baseline)
