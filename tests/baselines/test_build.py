"""The one rule that builds and sizes an allocation (guilomo.baselines.build), run by
both train.py (pipeline.build_allocation) and make_baseline."""

from __future__ import annotations

import functools

import pytest
from compose import compose_cfg

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.baselines import build_allocation, make_baseline
from guilomo.budget import Budget
from guilomo.pipeline import build_allocation as build_from_config

SHAPES = {"a": (4, 4), "b": (4, 8)}


def one_rank(targets, num_layers=None):
    """No budget parameter: the run must scale what it returns."""
    return Allocation({n: ModuleAllocation((1,)) for n in targets}, 1, {"depth": num_layers})


def fitted(targets, budget=None, num_layers=None):
    """A budget parameter: it is handed the run's budget and never rescaled."""
    return Allocation({n: ModuleAllocation((1,)) for n in targets}, 1, {"got": budget})


def test_a_builder_without_budget_is_scaled_by_hand_count():
    # rank budget 6 over two modules of rank 1: factor 3 -> ranks 3 and 3
    alloc = build_allocation(one_rank, SHAPES, budget=Budget("rank", 6), num_layers=12)
    assert [m.ranks for m in alloc.modules.values()] == [(3,), (3,)]
    assert alloc.meta["depth"] == 12  # the run's depth, asked for by name


def test_a_builder_with_budget_gets_it_and_is_not_rescaled():
    budget = Budget("rank", 6)
    alloc = build_allocation(fitted, SHAPES, budget=budget, num_layers=12)
    assert alloc.meta["got"] is budget
    assert alloc.total_rank == 2  # what the builder returned, not scaled to 6


def test_an_option_the_config_sets_wins_over_the_run():
    builder = functools.partial(one_rank, num_layers=7)
    alloc = build_allocation(builder, SHAPES, budget=Budget.from_config(None), num_layers=12)
    assert alloc.meta["depth"] == 7
    unset = functools.partial(one_rank, num_layers=None)  # Hydra's `num_layers: null`
    alloc = build_allocation(unset, SHAPES, budget=Budget.from_config(None), num_layers=12)
    assert alloc.meta["depth"] == 12


SMOLLM2 = {
    f"model.layers.{i}.{m}": s
    for i in range(4)
    for m, s in {
        "self_attn.q_proj": (576, 576),
        "self_attn.k_proj": (576, 192),
        "mlp.down_proj": (1536, 576),
    }.items()
}


@pytest.mark.parametrize(
    ("kind", "config", "options", "budget"),
    [
        (
            "uniform",
            ["allocation=uniform", "allocation.experts=2"],
            {"experts": 2},
            ("params", 60000),
        ),
        ("lora", ["allocation=lora"], {}, ("rank", 30)),
        ("mola_2468", ["allocation=mola_2468"], {}, ("experts", 40)),
        ("random", ["allocation=random", "allocation.seed=3"], {}, ("params", 80000)),
        (
            "concentrated",
            ["allocation=concentrated", "allocation.module_kind=k_proj"],
            {"module_kind": "k_proj"},
            ("rank", 40),
        ),
    ],
)
def test_make_baseline_and_train_py_build_the_same_allocation(kind, config, options, budget):
    """The Python shortcut and the training entry point give the same modules and meta."""
    budget = Budget(*budget)
    spec = compose_cfg("train", config).allocation
    from_config = build_from_config(spec, SMOLLM2, 4, budget)
    by_name = make_baseline(kind, SMOLLM2, budget=budget, num_layers=4, seed=3, **options)
    assert by_name.modules == from_config.modules
    assert by_name.top_k == from_config.top_k
    assert by_name.meta.get("scaled") == from_config.meta.get("scaled")
    assert budget.fits(by_name, SMOLLM2)
