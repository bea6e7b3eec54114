"""allocation=concentrated: the whole budget on one module kind, LoRA r=1 elsewhere.

Plain shapes, two layers of q (8 -> 8), k (8 -> 4) and v (8 -> 4); one rank row of a
module is ``d_in + d_out`` parameters (q 16, k and v 12), a router ``experts * d_in``.
"""

import json

import pytest
from compose import compose_cfg
from helpers import TARGETS, fast, tiny_llama

from guilomo.allocation import Allocation, ModuleAllocation, uniform
from guilomo.baselines import concentrated, least_valued_kind, make_baseline
from guilomo.budget import Budget, BudgetError
from guilomo.finetune.run import run_train
from guilomo.moe import find_targets, module_shapes
from guilomo.results import collect, summarise

SHAPES = {
    f"model.layers.{i}.self_attn.{k}": s
    for i in range(2)
    for k, s in (("q_proj", (8, 8)), ("k_proj", (8, 4)), ("v_proj", (8, 4)))
}
K0, K1 = "model.layers.0.self_attn.k_proj", "model.layers.1.self_attn.k_proj"


def ranks(alloc: Allocation) -> dict[str, list[int]]:
    return {n: list(m.ranks) for n, m in alloc.modules.items()}


def test_params_budget_by_hand():
    # others: 2 q at 16 + 2 v at 12 = 56; two k of 2 experts of rank r: 2 * (2 * 12 r + 16),
    # so 88 + 48 r in all; 261 = 88 + 48 * 3 + 29: rank 3, then two rows of 12 fit (e0 of
    # each k, in module order) and 5 parameters are left, less than a row
    alloc = concentrated(SHAPES, Budget("params", 261), module_kind="k_proj")
    expect = {n: [1] for n in SHAPES} | {K0: [4, 3], K1: [4, 3]}
    assert ranks(alloc) == expect
    assert alloc.trainable_params(SHAPES) == 256
    assert alloc.top_k == 2 and alloc.top_k_of("model.layers.0.self_attn.q_proj") == 1
    assert alloc.meta["module_kind"] == "k_proj" and alloc.meta["module_kind_from"] is None
    assert alloc.meta["rank"] == 3 and alloc.method == "concentrated"


def test_rank_budget_is_met_exactly():
    # 4 others at rank 1 + 2 k * 2 experts * r: 15 = 4 + 4 * 2 + 3 -> e0 of both k, e1 of k0
    alloc = concentrated(SHAPES, Budget("rank", 15), module_kind="k_proj")
    assert ranks(alloc)[K0] == [3, 3] and ranks(alloc)[K1] == [3, 2]
    assert alloc.total_rank == 15


@pytest.mark.parametrize("value", [136, 137, 147, 148, 183, 184, 500, 1999])
@pytest.mark.parametrize("kind,experts", [("k_proj", 2), ("q_proj", 3), ("v_proj", 1)])
def test_spends_within_one_row_never_over(value, kind, experts):
    budget = Budget("params", value)
    try:
        alloc = concentrated(SHAPES, budget, module_kind=kind, experts=experts)
    except BudgetError:  # only below the minimum: others r=1, the kind r=1 everywhere
        minimum = {n: [1] * (experts if n.endswith(kind) else 1) for n in SHAPES}
        minimum = Allocation({n: ModuleAllocation(r) for n, r in minimum.items()})
        assert minimum.trainable_params(SHAPES) > value
        return
    row = sum(SHAPES[f"model.layers.0.self_attn.{kind}"])
    spent = alloc.trainable_params(SHAPES)
    assert 0 <= value - spent < row
    assert all(m.ranks == (1,) for n, m in alloc.modules.items() if not n.endswith(kind))
    assert all(m.experts == experts for n, m in alloc.modules.items() if n.endswith(kind))


def test_refusals():
    with pytest.raises(BudgetError, match=r"minimum allocation \(136 params"):
        concentrated(SHAPES, Budget("params", 135), module_kind="k_proj")
    with pytest.raises(BudgetError, match="params or rank budget"):
        concentrated(SHAPES, Budget("experts", 10), module_kind="k_proj")
    with pytest.raises(BudgetError, match="params or rank budget"):
        concentrated(SHAPES, None, module_kind="k_proj")
    with pytest.raises(BudgetError, match="module_kind=<kind"):
        concentrated(SHAPES, Budget("params", 500))
    with pytest.raises(BudgetError, match=r"no target module of kind 'o_proj'"):
        concentrated(SHAPES, Budget("params", 500), module_kind="o_proj")


def test_least_valued_kind_from_a_file(tmp_path):
    # per module: q 4 * 16 = 64 each; k 2 * 12 + 16 = 40 each; v 12 and 16 * 12 + 16 = 208
    # (mean 110): k is valued least, though v holds the single smallest module
    spec = {"q_proj": ([4], [4]), "k_proj": ([1, 1], [1, 1]), "v_proj": ([1], [8, 8])}
    searched = Allocation(
        {
            f"model.layers.{i}.self_attn.{k}": ModuleAllocation(tuple(rs[i]))
            for i in range(2)
            for k, rs in spec.items()
        }
    )
    assert least_valued_kind(searched, SHAPES) == "k_proj"
    path = searched.save(tmp_path / "allocation.json")
    alloc = concentrated(SHAPES, Budget("params", 261), from_file=path)
    assert alloc.meta["module_kind"] == "k_proj" and alloc.meta["module_kind_from"] == str(path)
    assert ranks(alloc)[K0] == [4, 3]
    # budget=match reads the same file: the searched allocation's own size
    match = Budget.from_config({"kind": "match", "path": str(path)}, SHAPES)
    alloc = concentrated(SHAPES, match, from_file=path)
    assert 0 <= match.value - alloc.trainable_params(SHAPES) < 12


def test_make_baseline_fits_without_scaling():
    alloc = make_baseline(
        "concentrated", SHAPES, budget={"kind": "params", "value": 261}, module_kind="k_proj"
    )
    assert ranks(alloc)[K0] == [4, 3] and alloc.meta["method"] == "concentrated"
    assert alloc.meta["baseline"]["module_kind"] == "k_proj"


def test_train_py_run_with_budget_match(tmp_path):
    model = tiny_llama()
    shapes = module_shapes(find_targets(model, TARGETS))
    searched = uniform(shapes, 2, 3, backbone="tiny_llama")
    for n in shapes:  # the search's least valued kind: o_proj gets a single rank-1 expert
        if n.endswith("o_proj"):
            searched.modules[n] = ModuleAllocation((1,))
    path = searched.save(tmp_path / "searched.json")
    out = tmp_path / "run"
    overrides = [
        *fast(steps=2),
        "eval.limit=4",
        "eval.zero_shot=false",
        "allocation=concentrated",
        "budget=match",
        f"searched={path}",
    ]
    result = run_train(compose_cfg("train", overrides, out))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert saved["method"] == "concentrated" and saved["steps"] == 2
    value = searched.trainable_params(shapes)
    assert saved["budget"]["value"] == value and saved["budget"]["kind"] == "params"
    width = 64 + 64  # one rank row of o_proj: d_in + d_out of the tiny LLaMA
    assert 0 <= value - saved["trainable_params"] < width
    assert saved["trainable_params"] == saved["budget"]["spent"]
    alloc = Allocation.load(out / "allocation.json")
    assert alloc.meta["module_kind"] == "o_proj" and alloc.meta["method"] == "concentrated"
    assert all(m.experts == 2 for n, m in alloc.modules.items() if n.endswith("o_proj"))
    (row,) = [r for r in summarise(collect([tmp_path])) if r["method"] == "concentrated"]
    assert row["trainable_params"] == saved["trainable_params"]
