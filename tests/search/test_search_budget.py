"""The budget inside the search, on constructed problems with a known answer.

Several modules, one budget that cannot satisfy every module, inner weights training,
held-out batches drawn fresh each step, the shipped search settings (uniform start at 2
experts x rank 4, warm-up under the full prefix, Lagrangian pricing, parsimony, routed
probe). What the modules need is planted (tests/search/planted.py):

- ranks: a module that needs a rank-6 map ends with more total rank than one that needs
  rank 1, and three graded needs (6, 3, 1) end in that order;
- experts: a module whose inputs come in 4 clusters with their own maps ends with more
  experts than one with a single shared map;
- nothing to learn anywhere: the search leaves every module at the minimum (2 experts of
  rank 1), however much budget is left; with ``budget_fill=needed`` so does the final
  allocation, with the default ``spend`` the fill then spends the rest (within one unit);
- the post-hoc path (search unconstrained, cut afterwards) still fits the budget.

Each runs in a second or two on one thread; every seed listed must pass (seeds 1-5 are
in the slow suite). The rank and expert problems: both fills are checked.
"""

import pytest
from planted import planted_settings, search, search_modules

from guilomo.budget import Budget
from guilomo.search.loop import SearchLoop

# seed 0 in the fast suite, every seed in the slow one (make test-slow, run by CI)
SEEDS = (0, *(pytest.param(s, marks=pytest.mark.slow) for s in (1, 2, 3, 4, 5)))
# seeds where, through the product's own search loop (issue 25), the claim does not hold;
# strict: they fail the suite the day they pass (docs/search_study.md section 7.1)
LOOP_GAP = "through the product's search loop this seed does not hold (issue 25 re-measure)"


def seeds_except(*failing: int):
    """``SEEDS`` with the seeds in ``failing`` marked as strict expected failures."""
    gap = pytest.mark.xfail(strict=True, reason=LOOP_GAP)
    slow = pytest.mark.slow
    return (
        0,
        *(pytest.param(s, marks=[slow, *([gap] if s in failing else [])]) for s in range(1, 6)),
    )


# the final allocation keeps only what the search values (the default fill spends the rest)
NEEDED = planted_settings(budget_fill="needed")


def total_rank(alloc, name):
    return sum(alloc.modules[name].ranks)


def in_search_space(alloc, s=NEEDED):
    """No fill grows a module past the search's n_max experts or an expert past r_max."""
    return all(m.experts <= s.n_max and max(m.ranks) <= s.r_max for m in alloc.modules.values())


@pytest.mark.parametrize("seed", SEEDS)
def test_rank_goes_to_the_module_that_needs_it(seed):
    budget = Budget("rank", 12)
    read, final = search(["rank:6", "rank:1"], seed, budget, settings=NEEDED)
    _, spent = search(["rank:6", "rank:1"], seed, budget)  # the default fill: spend
    for alloc in (read, final, spent):  # the search itself, then both fills
        assert total_rank(alloc, "m0") > total_rank(alloc, "m1"), alloc.summary()
        assert in_search_space(alloc), alloc.summary()
    assert budget.measure(final, {}) <= 12
    assert budget.measure(spent, {}) == 12  # a rank budget is spent exactly


@pytest.mark.parametrize("seed", seeds_except(1, 3))
def test_graded_rank_needs_are_ranked_in_order(seed):
    budget = Budget("rank", 18)
    read, final = search(["rank:6", "rank:3", "rank:1"], seed, budget, settings=NEEDED)
    _, spent = search(["rank:6", "rank:3", "rank:1"], seed, budget)
    for alloc in (read, final, spent):
        ranks = [total_rank(alloc, f"m{i}") for i in range(3)]
        assert ranks[0] > ranks[1] > ranks[2], ranks
        assert in_search_space(alloc), alloc.summary()
    assert budget.measure(spent, {}) == 18


@pytest.mark.parametrize("seed", SEEDS)
def test_experts_go_to_the_module_that_needs_them(seed):
    budget = Budget("experts", 6)
    read, final = search(["experts:4", "rank:2"], seed, budget, settings=NEEDED)
    _, spent = search(["experts:4", "rank:2"], seed, budget)
    # the read-out never gives the shared map more; the allocation (after the credit's
    # fill) gives the clustered module more experts, with either fill
    assert read.modules["m0"].experts >= read.modules["m1"].experts, read.summary()
    for alloc in (final, spent):
        assert alloc.modules["m0"].experts > alloc.modules["m1"].experts, alloc.summary()
        assert budget.measure(alloc, {}) <= 6 and in_search_space(alloc)


@pytest.mark.parametrize("seed", seeds_except(2))
def test_nothing_to_learn_leaves_the_minimum(seed):
    budget = Budget("rank", 40)  # room for 20 rank units more than the minimum
    read, spent = search(["noise", "noise"], seed, budget, start=(4, 4))
    for m in read.modules.values():
        assert m.ranks == (1, 1), read.summary()
    assert budget.measure(spent, {}) == 40  # the default fill spends the budget
    assert in_search_space(spent)
    _, final = search(["noise", "noise"], seed, budget, start=(4, 4), settings=NEEDED)
    for m in final.modules.values():
        assert m.ranks == (1, 1), final.summary()


def test_posthoc_budget_mode_still_fits():
    budget = Budget("rank", 10)
    settings = planted_settings(budget_mode="posthoc")
    read, final = search(["rank:6", "rank:1"], 0, budget, steps=120, settings=settings)
    assert budget.measure(final, {}) <= 10


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("value", [20, 48, 90])
def test_a_noise_module_never_ends_with_more_than_a_needy_one(seed, value):
    # one module needs rank 6, one has nothing to learn; at 90 ranks the caps bind (the
    # needy module reaches n_max x r_max = 64 before the noise module may grow)
    budget = Budget("rank", value)
    for settings in (NEEDED, planted_settings()):  # both fills
        _, alloc = search(["rank:6", "noise"], seed, budget, settings=settings)
        needy, noise = alloc.modules["m0"], alloc.modules["m1"]
        assert noise.experts <= needy.experts, alloc.summary()
        assert total_rank(alloc, "m1") <= total_rank(alloc, "m0"), alloc.summary()
        assert max(noise.ranks) <= max(needy.ranks), alloc.summary()
        # the order survives the caps: the noise module stays at the minimum until the
        # needy one is full (n_max experts of rank r_max)
        if total_rank(alloc, "m0") < NEEDED.n_max * NEEDED.r_max:
            assert noise.ranks == (1, 1), alloc.summary()
        assert in_search_space(alloc) and budget.measure(alloc, {}) <= value
        if settings.budget_fill == "spend":  # within one expert of r_max ranks
            assert value - budget.measure(alloc, {}) < NEEDED.r_max


@pytest.mark.parametrize("seed", SEEDS)
def test_a_proportional_price_keeps_the_answer(seed):
    # search.budget_gain (docs/results.md Run 4, V10): the price answers the current
    # over-spend at once; the module that needs rank still gets more, in the search space
    budget = Budget("rank", 12)
    read, final = search(
        ["rank:6", "rank:1"],
        seed,
        budget,
        settings=planted_settings(budget_fill="needed", budget_gain=2.0),
    )
    for alloc in (read, final):
        assert total_rank(alloc, "m0") > total_rank(alloc, "m1"), alloc.summary()
        assert in_search_space(alloc), alloc.summary()
    assert budget.measure(final, {}) <= 12


def test_the_loop_prices_with_the_configured_gain():
    s = planted_settings(budget_gain=2.0, budget_lr=0.2)
    loop = SearchLoop(
        search_modules(2, s, 0), s, objective=lambda batch: 0.0, budget=Budget("rank", 12)
    )
    assert (loop.pricing.gain, loop.pricing.lr) == (2.0, 0.2)
