"""The pieces of the budget inside the search, against independent references.

- the read-out cost (``search/cost.py``) equals ``Budget.measure`` of the read-out, and its
  gradient at every GSV entry equals the cost change of moving that boundary there,
  recomputed from scratch by a plain loop;
- the credit meter equals a plain-loop EMA, and its SNR separates a steady credit from
  zero-mean noise;
- the dual ascent raises the price over the budget and lowers it under;
- budget filling adds only units predicted to help, best value per cost first, never over;
- warm-up prefixes and the seed-free start read out what they say.
"""

import math

import pytest
import torch
from torch import nn

from guilomo.allocation import Allocation, ModuleAllocation
from guilomo.budget import Budget
from guilomo.moe import LoraMoEConfig
from guilomo.search.config import SearchSettings
from guilomo.search.cost import module_cost, readout_cost
from guilomo.search.credit import CreditMeter, unit_values
from guilomo.search.fill import ModuleCredits, fill_budget
from guilomo.search.gsv import selected_experts, selected_ranks
from guilomo.search.lagrangian import PRICE_MIN, BudgetLagrangian
from guilomo.search.layer import SearchLoraMoELinear, init_gsvs, uniform_gsvs
from guilomo.search.readout import collect_gsvs, read_allocation

N, R = 5, 4


def layer(d_in: int, d_out: int, seed: int) -> SearchLoraMoELinear:
    torch.manual_seed(seed)
    m = SearchLoraMoELinear(
        nn.Linear(d_in, d_out, bias=False), [R] * N, 2, LoraMoEConfig(dropout=0.0)
    )
    with torch.no_grad():
        m.gsv_expert.copy_(torch.randn(N))
        m.gsv_rank.copy_(torch.randn(N, R))
    return m


def cost_of(experts: int, ranks: list[int], kind: str, d_in: int, d_out: int) -> int:
    """The cost of a module's read-out, by Budget.cost (independent of search/cost.py)."""
    return Budget(kind, 1).cost(ranks[:experts], (d_in, d_out))


@pytest.mark.parametrize("kind", ["experts", "rank", "params"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cost_forward_is_the_readout_cost_and_gradient_the_cost_of_each_move(kind, seed):
    d_in, d_out = 6, 10
    m = layer(d_in, d_out, seed)
    model = nn.ModuleDict({"a": m})
    read = read_allocation(collect_gsvs(model))
    value = module_cost(m, kind)
    assert float(value.detach()) == Budget(kind, 1).measure(read, {"a": (d_in, d_out)})

    s_e, s_r = torch.sigmoid(m.gsv_expert.detach()), torch.sigmoid(m.gsv_rank.detach())
    experts = int(selected_experts(s_e))
    ranks = selected_ranks(s_r).tolist()  # every expert's rank (kept or not)
    ge, gr = torch.autograd.grad(
        value, [m.gsv_expert, m.gsv_rank], allow_unused=True, materialize_grads=True
    )
    slope_e, slope_r = s_e * (1 - s_e), s_r * (1 - s_r)
    base = cost_of(experts, ranks, kind, d_in, d_out)
    for j in range(N):  # move the expert boundary to j (the read-out keeps at least 2)
        moved = cost_of(max(j + 1, 2), ranks, kind, d_in, d_out) - base
        if j >= 1:  # j = 0 and j = 1 both read 2 experts; the straight-through credit of j=0
            assert float(ge[j]) == pytest.approx(moved * float(slope_e[j]), rel=1e-5, abs=1e-9)
    for i in range(N):
        for j in range(R):
            grown = [*ranks[:i], j + 1, *ranks[i + 1 :]]
            moved = cost_of(experts, grown, kind, d_in, d_out) - base
            assert float(gr[i, j]) == pytest.approx(
                moved * float(slope_r[i, j]), rel=1e-5, abs=1e-9
            )


def test_cost_sums_over_modules():
    layers = [layer(6, 10, 0), layer(8, 4, 1)]
    total = readout_cost(layers, "params")
    assert float(total.detach()) == sum(float(module_cost(m, "params").detach()) for m in layers)


def test_meter_equals_a_plain_loop_ema_and_snr_separates_signal_from_noise():
    p = nn.Parameter(torch.zeros(3))
    meter = CreditMeter([p], beta=0.8)
    gen = torch.Generator().manual_seed(0)
    mean, dev = torch.zeros(3), torch.zeros(3)
    slope = 0.25  # sigmoid(0) * (1 - sigmoid(0))
    for _ in range(200):
        # entry 0: steady credit, entry 1: zero-mean noise, entry 2: noise around a signal
        c = torch.tensor([1.0, 0.0, 1.0]) + torch.randn(3, generator=gen) * torch.tensor(
            [0.05, 1.0, 0.3]
        )
        meter.update([c * slope], [p])  # logit-space credit = sigmoid-space credit x slope
        dev = 0.8 * dev + 0.2 * (c - mean).abs()
        mean = 0.8 * mean + 0.2 * c
    k = 1 - 0.8**200
    assert torch.allclose(meter.corrected()[0], mean / k, atol=1e-5)
    assert torch.allclose(meter.smoothed([p])[0], mean / k * slope, atol=1e-6)
    snr = meter.snr()[0]
    assert snr[0] > 5 and snr[1] < 1 and snr[2] > 1, snr


def test_unit_values_are_the_differences_of_the_neighbour_credit():
    c = torch.tensor([0.0, -0.5, -0.6, 0.2])  # moving the boundary 0 -> j changes the loss by c_j
    assert unit_values(c).tolist() == pytest.approx([0.0, 0.5, 0.1, -0.8])


def test_dual_ascent_raises_the_price_over_budget_and_lowers_it_under():
    layers = [layer(6, 10, 0)]
    spent = float(readout_cost(layers, "rank"))
    over = BudgetLagrangian(layers, Budget("rank", max(1, int(spent) // 2)), lr=0.5)
    under = BudgetLagrangian(layers, Budget("rank", int(spent) * 4), lr=0.5)
    gsv = [layers[0].gsv_expert, layers[0].gsv_rank]
    credit = [torch.ones_like(p) for p in gsv]
    for _ in range(3):
        over.penalty(gsv, credit)
        under.penalty(gsv, credit)
    assert over.price > 1.0 > under.price
    for _ in range(200):
        under.penalty(gsv, credit)
    assert under.price == PRICE_MIN
    # the priced gradient is price * kappa / unit times the cost gradient
    g = over.penalty(gsv, credit)
    raw = torch.autograd.grad(readout_cost(layers, "rank"), gsv)
    price_before = over.last["price"] / torch.exp(torch.tensor(0.5 * over.last["over"])).item()
    factor = price_before * over.kappa / over.unit
    assert torch.allclose(g[1], raw[1] * factor, rtol=1e-4)


def test_fill_adds_helpful_units_best_value_per_cost_first_and_never_over():
    shapes = {"a": (4, 4), "b": (4, 4)}
    alloc = Allocation({"a": ModuleAllocation((1, 1)), "b": ModuleAllocation((1, 1))})
    # neighbour credits c_j (loss change of moving the boundary to j); values -(c_j - c_{j-1})
    ca = ModuleCredits(
        expert=torch.tensor([0.0, 0.0, 0.1, 0.2]),  # a 3rd expert would hurt
        rank=torch.tensor([[0.0, -0.3, -0.4, -0.45]] * 4),  # rank 2 helps 0.3, 3 helps 0.1
    )
    cb = ModuleCredits(
        expert=torch.tensor([0.0, 0.0, -0.2, -0.25]),  # a 3rd expert helps 0.2, a 4th 0.05
        rank=torch.tensor([[0.0, 0.2, 0.3, 0.4]] * 4),  # more rank hurts
    )
    budget = Budget("rank", 4 + 3)  # 3 units left
    filled, report = fill_budget(alloc, {"a": ca, "b": cb}, budget, shapes, n_max=4, r_max=4)
    # best: a's experts' 2nd rank rows (0.3 each), then b's 3rd expert (0.2 at rank 1), not
    # a's 3rd rank rows (0.1)
    assert filled.modules["a"].ranks == (2, 2)
    assert filled.modules["b"].ranks == (1, 1, 1)
    assert budget.measure(filled, shapes) <= budget.value
    assert [u["unit"] for u in report.added] == ["rank", "rank", "expert"]
    # a budget with room for everything still adds only what helps
    big, _ = fill_budget(alloc, {"a": ca, "b": cb}, Budget("rank", 100), shapes, n_max=4, r_max=4)
    assert big.modules["a"].ranks == (4, 4) and big.modules["b"].ranks == (1, 1, 1, 1)
    # spend mode: every unit that fits goes in, the least harmful last, never over
    spend = Budget("rank", 4 + 13)
    full, _ = fill_budget(
        alloc, {"a": ca, "b": cb}, spend, shapes, n_max=4, r_max=4, needed_only=False
    )
    assert spend.measure(full, shapes) == 17
    assert full.modules["b"].ranks[0] == 1  # b's harmful rank rows come after everything else


def test_warmup_prefixes_and_seed_free_start():
    m = layer(6, 10, 0)
    m.set_prefix("full")
    bias, gate = m.search_terms()
    assert bool((bias > 0).all()) and torch.allclose(gate, m.rank_lambda.reshape(-1))
    assert m.expert_probe() is None or float(m.expert_probe().sum()) == 0
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    m.set_prefix("random", gen_a)
    first = (m.prefix[0].clone(), m.prefix[1].clone())
    m.set_prefix("random", gen_b)
    assert torch.equal(first[0], m.prefix[0]) and torch.equal(first[1], m.prefix[1])
    kept = int((m.search_terms()[0] > 0).sum())
    assert kept == int(m.prefix[0]) >= 2
    m.set_prefix(None)
    assert m.prefix is None

    model = nn.ModuleDict({"a": layer(6, 10, 1), "b": layer(6, 10, 2)})
    init_gsvs(model, seed=123, start="uniform", experts=3, rank=2)
    again = nn.ModuleDict({"a": layer(6, 10, 1), "b": layer(6, 10, 2)})
    init_gsvs(again, seed=999, start="uniform", experts=3, rank=2)
    for name in model:
        assert torch.equal(model[name].gsv_expert, again[name].gsv_expert)
        assert int(model[name].current_experts()) == 3
        assert model[name].current_ranks().tolist() == [2] * N
    assert int(uniform_gsvs(8, 5).argmax()) == 4


@pytest.mark.parametrize("factor", [0.5, 4.0])  # the budget at half and at 4x the spend
def test_the_gain_prices_the_current_over_spend_on_top_of_the_accumulated_price(factor):
    """PI in log price: the cost gradient carries price * exp(gain * u), u the clipped
    relative over-spend now, while the accumulated price moves by exp(lr * u) as without it."""
    layers = [layer(6, 10, 0)]
    spent = float(readout_cost(layers, "rank"))
    budget = Budget("rank", max(1, int(spent * factor)))
    gsv = [layers[0].gsv_expert, layers[0].gsv_rank]
    credit = [torch.ones_like(p) for p in gsv]
    plain = BudgetLagrangian(layers, budget, lr=0.2, price=1.5)
    pi = BudgetLagrangian(layers, budget, lr=0.2, price=1.5, gain=2.0)
    g_plain, g_pi = plain.penalty(gsv, credit), pi.penalty(gsv, credit)
    u = max(-1.0, min(1.0, spent / budget.value - 1.0))  # by hand
    assert pi.last["over"] == pytest.approx(u)
    # the same accumulated price, the gradient scaled by exp(gain * u) on top of it
    assert pi.price == pytest.approx(plain.price) == pytest.approx(1.5 * math.exp(0.2 * u))
    assert torch.allclose(g_pi[1], g_plain[1] * math.exp(2.0 * u), rtol=1e-5)
    assert pi.last["price"] == pytest.approx(pi.price * math.exp(2.0 * u))
    assert pi.last["integral"] == pytest.approx(pi.price)
    assert (pi.last["price"] > pi.price) == (u > 0)
    assert plain.last["price"] == pytest.approx(plain.price)  # gain 0: one price, as before


def test_a_negative_gain_is_refused_where_it_is_set():
    with pytest.raises(ValueError, match="search.budget_gain=-1.0 must be >= 0"):
        SearchSettings(budget_gain=-1.0)
    with pytest.raises(ValueError, match="budget_gain"):
        BudgetLagrangian([layer(6, 10, 0)], Budget("rank", 4), gain=-1.0)
