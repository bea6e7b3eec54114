"""allocation=shuffled|inverted (a searched file's allocations moved between same-shape
modules) and allocation=concentrated_low (the budget on the lowest adapted layers)."""

import json

import pytest

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.baselines import concentrated, inverted, shuffled
from guilomo.baselines.placement import shape_groups
from guilomo.budget import Budget, BudgetError

# three layers of q (8 -> 8) and k (8 -> 4): two shape groups of three modules
SHAPES = {
    f"model.layers.{i}.self_attn.{k}": s
    for i in range(3)
    for k, s in (("q_proj", (8, 8)), ("k_proj", (8, 4)))
}
Q = [f"model.layers.{i}.self_attn.q_proj" for i in range(3)]
K = [f"model.layers.{i}.self_attn.k_proj" for i in range(3)]
SEARCHED = {Q[0]: (2, 1), Q[1]: (4, 4, 4), Q[2]: (3,), K[0]: (1,), K[1]: (8, 2), K[2]: (5,)}


@pytest.fixture
def searched(tmp_path):
    alloc = Allocation(
        {n: ModuleAllocation(r) for n, r in SEARCHED.items()},
        top_k=2,
        meta={"source": "guilomo-search", "diagnostics": {"x": list(range(100))}},
    )
    return alloc.save(tmp_path / "allocation.json")


def ranks(alloc):
    return {n: m.ranks for n, m in alloc.modules.items()}


def test_inverted_by_hand(searched):
    # q by params: Q1 (3 experts, rank 12) > Q0 (2, rank 3) > Q2 (1, rank 3); reversed
    # hand-out: Q1 gets Q2's, Q0 keeps its own (the middle), Q2 gets Q1's.
    # k: K1 (8, 2) > K2 (5) > K0 (1): K1 gets K0's, K2 keeps, K0 gets K1's.
    alloc = inverted(SHAPES, searched)
    assert ranks(alloc) == {
        Q[0]: (2, 1),
        Q[1]: (3,),
        Q[2]: (4, 4, 4),
        K[0]: (8, 2),
        K[1]: (1,),
        K[2]: (5,),
    }
    assert alloc.method == "inverted" and alloc.meta["from_file"] == str(searched)
    assert "diagnostics" not in json.dumps(alloc.meta)  # the searched record, not copied whole


@pytest.mark.parametrize("seed", range(6))
def test_controls_keep_the_searched_size_exactly(searched, seed):
    original = Allocation.load(searched)
    for alloc in (shuffled(SHAPES, searched, seed=seed), inverted(SHAPES, searched)):
        assert alloc.trainable_params(SHAPES) == original.trainable_params(SHAPES)
        assert alloc.total_rank == original.total_rank
        assert alloc.total_experts == original.total_experts
        assert list(alloc.modules) == list(original.modules)
        for names in shape_groups(original, SHAPES).values():  # a permutation within a shape
            assert sorted(alloc.modules[n].ranks for n in names) == sorted(
                original.modules[n].ranks for n in names
            )


def test_inverted_reverses_the_order_of_size_within_each_shape(searched):
    original, alloc = Allocation.load(searched), inverted(SHAPES, searched)
    for shape, names in shape_groups(original, SHAPES).items():
        before = [original.modules[n].params(*shape) for n in names]
        after = [alloc.modules[n].params(*shape) for n in names]
        for a in range(len(names)):
            for b in range(len(names)):
                if before[a] > before[b]:
                    assert after[a] <= after[b]


def test_shuffled_draws_differ_and_repeat(searched):
    draws = [ranks(shuffled(SHAPES, searched, seed=s)) for s in range(8)]
    assert draws[0] == ranks(shuffled(SHAPES, searched, seed=0))
    assert len({json.dumps(sorted(d.items())) for d in draws}) > 1
    assert shuffled(SHAPES, searched, seed=3).meta["seed"] == 3


def test_controls_check_the_file_against_the_run(searched):
    with pytest.raises(Exception, match="allocation.path|searched"):
        inverted(SHAPES, None)
    small = Budget("params", 10)
    with pytest.raises(BudgetError):
        shuffled(SHAPES, searched, seed=0, budget=small)


def test_concentrated_low_by_hand():
    # layer 0 holds the budget: q0 (row 16, router 2*8) and k0 (row 12, router 16);
    # the others (q1, q2, k1, k2) LoRA r=1: 2 * 16 + 2 * 12 = 56.
    # two experts of rank r on q0 and k0: 2 * 16 r + 16 + 2 * 12 r + 16 = 32 + 56 r;
    # 300 = 56 + 32 + 56 * 3 + 44: rank 3, then rows of 16 (q0 e0), 12 (k0 e0) and 16
    # (q0 e1) fit, exactly; k0 e1 (12) does not
    alloc = concentrated(SHAPES, Budget("params", 300), lowest_layers=1)
    assert ranks(alloc) == {
        Q[0]: (4, 4),
        K[0]: (4, 3),
        Q[1]: (1,),
        Q[2]: (1,),
        K[1]: (1,),
        K[2]: (1,),
    }
    assert alloc.trainable_params(SHAPES) == 56 + 32 + 56 * 3 + 16 + 12 + 16 == 300
    assert alloc.method == "concentrated_low" and alloc.meta["lowest_layers"] == 1
    with pytest.raises(BudgetError, match="lowest_layers"):
        concentrated(SHAPES, Budget("params", 300), lowest_layers=3)
