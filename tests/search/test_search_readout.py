"""Read-out of hand-set GSVs, and budget fitting (least confident units first)."""

import pytest
import torch

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.budget import Budget, BudgetError
from guilomo.search.readout import ModuleGSVs, minimum_allocation, read_allocation
from guilomo.search.trim import boundary_confidence, fit_budget

T = torch.tensor
SHAPES = {"a": (10, 20), "b": (10, 20), "c": (40, 40)}


def gsv(expert, ranks, r_max=4):
    rank = torch.full((len(expert), r_max), 0.1)
    for i, row in enumerate(ranks):
        rank[i] = T(row)
    return ModuleGSVs(T(expert), rank)


def test_read_out_follows_section_3():
    gsvs = {
        # argmax 2 -> 3 experts; ranks: argmax+1 of each kept expert's row
        "a": gsv([0.1, 0.2, 0.9, 0.3], [[0.1, 0.8, 0.2, 0.3], [0.9, 0.1, 0.1, 0.1], [0, 0, 0, 1]]),
        # argmax 0 -> still 2 experts
        "b": gsv([0.9, 0.2, 0.1, 0.3], [[0, 0, 1, 0], [0, 1, 0, 0]]),
    }
    alloc = read_allocation(gsvs, top_k=2, meta={"task": "t"})
    assert alloc.modules["a"].ranks == (2, 1, 4)
    assert alloc.modules["b"].ranks == (3, 2)
    assert alloc.top_k == 2 and alloc.meta == {"task": "t"}


def test_read_out_from_logits_uses_the_forward_argmax():
    g = ModuleGSVs.from_logits(T([0.0, 3.0, -1.0]), T([[0.0, 2.0], [1.0, 0.0], [0.0, 0.0]]))
    assert read_allocation({"m": g}).modules["m"].ranks == (2, 1)


def test_confidence_is_the_margin_over_the_best_lower_boundary():
    s = T([0.3, 0.7, 0.5, 0.9])
    assert boundary_confidence(s, 3) == pytest.approx(0.2)  # 0.9 - max(0.3, 0.7, 0.5)
    assert boundary_confidence(s, 2) == pytest.approx(-0.2)  # 0.5 - 0.7: GSV prefers smaller
    assert boundary_confidence(s, 3, lo=2) == pytest.approx(0.4)
    assert boundary_confidence(s, 0) == float("inf")


def test_expert_budget_removes_the_least_confident_expert_first():
    gsvs = {
        "a": gsv([0.1, 0.2, 0.50, 0.52], [[1, 0, 0, 0]] * 4),  # 4 experts, margin 0.02
        "b": gsv([0.1, 0.2, 0.3, 0.90], [[1, 0, 0, 0]] * 4),  # 4 experts, margin 0.6
    }
    alloc = read_allocation(gsvs)
    fitted, report = fit_budget(alloc, gsvs, Budget("experts", 7), SHAPES)
    assert fitted.modules["a"].experts == 3 and fitted.modules["b"].experts == 4
    # a at 3 experts now has confidence 0.50 - 0.2 = 0.3 < b's 0.6: a loses the next one too
    fitted, report = fit_budget(alloc, gsvs, Budget("experts", 6), SHAPES)
    assert [m.experts for m in fitted.modules.values()] == [2, 4]
    assert [r["where"] for r in report.removed] == ["a", "a"]
    assert report.summary() == {"removed_expert_units": 2, "removed_rank_units": 0}
    # never below min_experts=2 per module
    fitted, _ = fit_budget(alloc, gsvs, Budget("experts", 4), SHAPES)
    assert [m.experts for m in fitted.modules.values()] == [2, 2]


def test_rank_budget_removes_the_least_confident_rank_units_first():
    gsvs = {
        "a": gsv(
            [0.1, 0.9],  # 2 experts
            [[0.1, 0.2, 0.45, 0.5], [0.1, 0.2, 0.3, 0.9]],  # ranks 4 (margin .05), 4 (margin .6)
        ),
    }
    alloc = read_allocation(gsvs)
    assert alloc.modules["a"].ranks == (4, 4)
    fitted, report = fit_budget(alloc, gsvs, Budget("rank", 7), SHAPES)
    assert fitted.modules["a"].ranks == (3, 4)
    # expert 0 at rank 3: 0.45 - 0.2 = 0.25 < 0.6, so it shrinks again before expert 1
    fitted, report = fit_budget(alloc, gsvs, Budget("rank", 6), SHAPES)
    assert fitted.modules["a"].ranks == (2, 4)
    assert [r["expert"] for r in report.removed] == [0, 0]


def test_params_budget_fits_and_mixes_unit_kinds():
    torch.manual_seed(0)
    gsvs = {n: ModuleGSVs(torch.rand(6), torch.rand(6, 5)) for n in SHAPES}
    alloc = read_allocation(gsvs)
    spent = alloc.trainable_params(SHAPES)
    floor = minimum_allocation(list(SHAPES)).trainable_params(SHAPES)
    kinds = set()
    for value in (spent, spent - 1, spent // 2, spent // 5, floor, floor - 1):
        budget = Budget("params", value)
        if value < floor:
            with pytest.raises(BudgetError):
                fit_budget(alloc, gsvs, budget, SHAPES)
            continue
        fitted, report = fit_budget(alloc, gsvs, budget, SHAPES)
        kinds |= {r["unit"] for r in report.removed}
        assert budget.fits(fitted, SHAPES)
        assert all(m.experts >= 2 and min(m.ranks) >= 1 for m in fitted.modules.values())
        for n, m in fitted.modules.items():  # only ever shrinks
            assert m.experts <= alloc.modules[n].experts
            assert all(r <= r0 for r, r0 in zip(m.ranks, alloc.modules[n].ranks, strict=False))
        if value == spent:
            assert fitted is alloc and not report.removed
        if value == floor:
            assert fitted.trainable_params(SHAPES) == floor
    assert kinds == {"expert", "rank"}


def test_budget_below_the_minimum_allocation_raises():
    gsvs = {n: gsv([0.1, 0.9], [[0, 1, 0, 0]] * 2) for n in ("a", "b")}
    alloc = read_allocation(gsvs)
    with pytest.raises(BudgetError, match="minimum allocation"):
        fit_budget(alloc, gsvs, Budget("experts", 3), SHAPES)
    with pytest.raises(BudgetError, match=r"set budget.value >= 4"):
        fit_budget(alloc, gsvs, Budget("rank", 3), SHAPES)
    # with the hard floor of one expert, 2 experts total fit
    fitted, _ = fit_budget(alloc, gsvs, Budget("experts", 2), SHAPES, min_experts=1)
    assert fitted.total_experts == 2 and fitted.top_k_of("a") == 1


def test_layer_groups_lose_experts_together():
    gsvs = {
        "model.layers.0.q": gsv([0.1, 0.2, 0.9], [[1, 0, 0, 0]] * 3),
        "model.layers.0.v": gsv([0.1, 0.2, 0.9], [[1, 0, 0, 0]] * 3),
        "model.layers.1.q": gsv([0.1, 0.2, 0.95], [[1, 0, 0, 0]] * 3),
    }
    shapes = dict.fromkeys(gsvs, (8, 8))
    groups = {"layer0": ["model.layers.0.q", "model.layers.0.v"], "layer1": ["model.layers.1.q"]}
    alloc = read_allocation(gsvs)
    fitted, report = fit_budget(alloc, gsvs, Budget("experts", 8), shapes, groups)
    assert [m.experts for m in fitted.modules.values()] == [2, 2, 3]
    assert len(report.removed) == 1 and report.removed[0]["where"] == "layer0"


# -- the documented rules, by hand-computed allocations (each pins one rule) -------------
def alloc_of(**ranks):
    return Allocation({n: ModuleAllocation(tuple(r)) for n, r in ranks.items()})


# every expert's rank GSV: boundary at rank 2 with confidence s[1] - s[0] = 0.1
TWO = [0.5, 0.6, 0.1, 0.1]


def test_fit_ties_go_to_the_larger_saving_then_to_module_order():
    gsvs = {n: gsv([0.1, 0.9, 0.1, 0.1], [TWO, TWO]) for n in "ab"}
    # equal confidence; b's rank row saves 16 parameters, a's 8: b's first expert gives one
    shapes = {"a": (4, 4), "b": (8, 8)}
    total = Budget("params", 1).measure(alloc_of(a=(2, 2), b=(2, 2)), shapes)
    fitted, _ = fit_budget(alloc_of(a=(2, 2), b=(2, 2)), gsvs, Budget("params", total - 1), shapes)
    assert fitted.modules["a"].ranks == (2, 2) and fitted.modules["b"].ranks == (1, 2)
    # equal confidence and saving: module order, then expert order (a's first expert)
    shapes = {"a": (4, 4), "b": (4, 4)}
    fitted, _ = fit_budget(alloc_of(a=(2, 2), b=(2, 2)), gsvs, Budget("rank", 7), shapes)
    assert fitted.modules["a"].ranks == (1, 2) and fitted.modules["b"].ranks == (2, 2)
    # ... for expert units as well: a's third expert goes, not b's
    gsvs = {n: gsv([0.1, 0.2, 0.5, 0.1], []) for n in "ab"}
    fitted, _ = fit_budget(alloc_of(a=(1, 1, 1), b=(1, 1, 1)), gsvs, Budget("rank", 5), shapes)
    assert fitted.modules["a"].ranks == (1, 1) and fitted.modules["b"].ranks == (1, 1, 1)


def test_expert_confidence_compares_with_the_counts_the_gsv_could_still_select():
    # a keeps 3 experts (boundary 2); removing one moves it to 1 (2 experts), never to 0:
    # confidence = s[2] - max(s[1..1]) = 0.5 - 0.2 = 0.3 (not 0.5 - 0.9 = -0.4), so b's rank
    # unit (confidence 0.1) goes first
    gsvs = {"a": gsv([0.9, 0.2, 0.5, 0.1], []), "b": gsv([0.1, 0.9, 0.1, 0.1], [TWO, TWO])}
    shapes = {"a": (4, 4), "b": (4, 4)}
    fitted, _ = fit_budget(alloc_of(a=(1, 1, 1), b=(2, 2)), gsvs, Budget("rank", 6), shapes)
    assert fitted.modules["a"].ranks == (1, 1, 1) and fitted.modules["b"].ranks == (1, 2)
    # s[2] - s[1] = 0.8 - 0.9 < 0: the GSV itself prefers 2 experts, its expert goes first
    gsvs["a"] = gsv([0.1, 0.9, 0.8, 0.05], [])
    fitted, _ = fit_budget(alloc_of(a=(1, 1, 1), b=(2, 2)), gsvs, Budget("rank", 6), shapes)
    assert fitted.modules["a"].ranks == (1, 1) and fitted.modules["b"].ranks == (2, 2)
