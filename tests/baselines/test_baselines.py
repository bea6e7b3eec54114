"""Baseline allocations (LoRA, uniform, MoLA, AlphaLoRA, random) and scaling to a budget.

Module shapes are synthetic (no model needed): 32 layers with LLaMA-2-7B dimensions
and 30 layers with SmolLM2-135M dimensions.
"""

import math

import pytest
import torch
from compose import CONF, compose_cfg
from helpers import tiny_llama
from hydra.utils import get_method
from omegaconf import OmegaConf, open_dict
from torch import nn

from guilomo.allocation import Allocation, ModuleAllocation, layer_of
from guilomo.baselines import (
    alpha_counts,
    alphalora,
    apportion,
    esd,
    hill_alpha,
    ks_alpha,
    layer_alphas,
    make_baseline,
    mola,
    mola_block,
    random_allocation,
    scale_to_budget,
    spectrum_alpha,
)
from guilomo.budget import Budget, BudgetError
from guilomo.pipeline import build_allocation

MODULES = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


def llama_shapes(layers: int, hidden: int, ffn: int, kv: int) -> dict[str, tuple[int, int]]:
    dims = {
        "q_proj": (hidden, hidden),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (hidden, hidden),
        "gate_proj": (hidden, ffn),
        "up_proj": (hidden, ffn),
        "down_proj": (ffn, hidden),
    }
    return {
        f"model.layers.{layer}.{MODULES[n]}.{n}": d
        for layer in range(layers)
        for n, d in dims.items()
    }


LLAMA2_7B = llama_shapes(32, 4096, 11008, 4096)
SMOLLM2 = llama_shapes(30, 576, 1536, 192)


def per_layer(alloc: Allocation, module: str = "q_proj") -> list[int]:
    """Expert counts of one module type, by layer."""
    rows = sorted((layer_of(n), m.experts) for n, m in alloc.modules.items() if n.endswith(module))
    return [c for _, c in rows]


def ranks_of(alloc: Allocation) -> set[int]:
    return {r for m in alloc.modules.values() for r in m.ranks}


# -- LoRA, uniform ----------------------------------------------------------------------


def test_lora_is_one_expert_top1_everywhere():
    a = make_baseline("lora", LLAMA2_7B, rank=8)
    assert set(a.modules) == set(LLAMA2_7B)
    assert all(m.ranks == (8,) for m in a.modules.values())
    assert {a.top_k_of(n) for n in a.modules} == {1}
    # no router with one expert: r * (d_in + d_out) per module
    assert a.trainable_params(LLAMA2_7B) == sum(8 * (i + o) for i, o in LLAMA2_7B.values())


def test_uniform_is_n_experts_of_rank_r():
    a = make_baseline("uniform", SMOLLM2, experts=4, rank=16, top_k=2)
    assert all(m.ranks == (16,) * 4 for m in a.modules.values())
    assert a.top_k == 2 and a.total_experts == 4 * 210


# -- MoLA -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, pattern, total",
    [
        ("mola_2468", (2, 4, 6, 8), 160),
        ("mola_8642", (8, 6, 4, 2), 160),
        ("mola_5555", (5, 5, 5, 5), 160),
        ("mola_8888", (8, 8, 8, 8), 256),
    ],
)
def test_mola_32_layers_quarters(kind, pattern, total):
    a = make_baseline(kind, LLAMA2_7B)
    for module in MODULES:
        counts = per_layer(a, module)
        assert counts == [pattern[layer // 8] for layer in range(32)]
        assert sum(counts) == total  # the paper's "160 experts" counts one module type
    assert ranks_of(a) == {8} and a.top_k == 2
    assert a.total_experts == 7 * total


def test_mola_30_layers_generalisation():
    a = make_baseline("mola_2468", SMOLLM2)
    counts = per_layer(a)
    assert counts == [2] * 8 + [4] * 7 + [6] * 8 + [8] * 7  # blocks 0-7, 8-14, 15-22, 23-29
    assert sum(counts) == 148
    assert per_layer(make_baseline("mola_8642", SMOLLM2)) == [8] * 8 + [6] * 7 + [4] * 8 + [2] * 7


@pytest.mark.parametrize("depth", range(4, 41))
def test_mola_blocks_are_contiguous_and_balanced(depth):
    blocks = [mola_block(layer, depth) for layer in range(depth)]
    assert blocks == sorted(blocks) and set(blocks) == {0, 1, 2, 3}
    sizes = [blocks.count(b) for b in range(4)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == depth


def test_mola_keeps_full_depth_blocks_when_only_some_layers_are_adapted():
    subset = {n: s for n, s in SMOLLM2.items() if layer_of(n) >= 20}
    a = mola(subset, (2, 4, 6, 8), num_layers=30)
    assert per_layer(a) == [6] * 3 + [8] * 7  # layers 20-22 in block 2, 23-29 in block 3
    with pytest.raises(ValueError):
        mola(subset, (2, 4, 6, 8), num_layers=10)


# -- AlphaLoRA --------------------------------------------------------------------------


def test_hill_formula_by_hand():
    lam = torch.tensor([1.0, math.e**3, math.e, math.e**2])  # any order
    # n = 4, k = 2, threshold lambda_2 = e: sum ln = 2 + 1 = 3 -> 1 + 2/3
    assert hill_alpha(lam) == pytest.approx(1 + 2 / 3)
    assert hill_alpha(lam, k=1) == pytest.approx(1 + 1 / 1)  # ln(e^3 / e^2)
    with pytest.raises(ValueError):
        hill_alpha(torch.ones(8))  # flat spectrum: no tail


def matrix_with_esd(lam: torch.Tensor, d_out: int, d_in: int, seed: int) -> torch.Tensor:
    """W = U diag(sqrt(lam)) V^T (orthonormal U, V): the eigenvalues of W^T W are ``lam``."""
    g = torch.Generator().manual_seed(seed)
    n = lam.numel()
    left, _ = torch.linalg.qr(torch.randn(d_out, n, generator=g, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(d_in, n, generator=g, dtype=torch.float64))
    return ((left * lam.double().sqrt()) @ right.T).float()


def pareto(alpha: float, n: int, seed: int | None) -> torch.Tensor:
    """Density ~ lambda^-alpha above 1: P(lambda > x) = x^-(alpha-1). ``seed=None`` gives
    the exact quantiles ((i + 1/2) / n), otherwise a seeded random sample."""
    if seed is None:
        u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    else:
        u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return u.pow(-1.0 / (alpha - 1.0))


def power_law_matrix(alpha: float, d_out: int, d_in: int, seed: int) -> torch.Tensor:
    return matrix_with_esd(pareto(alpha, min(d_out, d_in), seed), d_out, d_in, seed)


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_hill_recovers_power_law_exponent(alpha):
    n = 256
    # exact power-law quantiles, through a matrix and its SVD: the estimate is (nearly) exact
    w = matrix_with_esd(pareto(alpha, n, None), 384, n, seed=0)
    lam = esd(w)
    assert lam.shape == (n,) and lam.dtype == torch.float32
    assert torch.all(lam[:-1] >= lam[1:])
    assert hill_alpha(lam) == pytest.approx(alpha, abs=0.02)
    # a random power-law sample: the Hill estimate of alpha - 1 has standard error
    # about (alpha - 1) / sqrt(k), k = n / 2
    est = hill_alpha(esd(power_law_matrix(alpha, 384, n, seed=int(alpha * 10))))
    assert abs(est - alpha) < 4 * (alpha - 1) / math.sqrt(n // 2)


def ks_reference(lam, bins=100):
    """The authors' threshold rule written as plain loops (method.md, section 4)."""
    lam = sorted(float(x) for x in lam)
    n_all = len(lam)
    logs10 = [math.log10(x) for x in lam]
    lo, width = logs10[0], (logs10[-1] - logs10[0]) / bins
    counts = [0] * bins
    for v in logs10:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    edge = 10 ** (lo + counts.index(max(counts)) * width)
    best_d, best_alpha = 1.0, None
    for i in range(n_all - 1):
        x = lam[i]
        if x < math.log10(0.95 * edge):
            continue
        if x > 1.5 * edge:
            break
        n = n_all - i
        alpha = 1 + n / sum(math.log(lam[j] / x) for j in range(i, n_all))
        best_alpha = alpha if best_alpha is None else best_alpha
        if alpha > 1:
            d = max(abs(1 - (lam[j] / x) ** (1 - alpha) - (j - i) / n) for j in range(i, n_all))
            if d < best_d:
                best_d, best_alpha = d, alpha
    return best_alpha


def test_ks_threshold_by_hand():
    # ascending 1, 2, 4, 15.84, 16. log10 spans [0, 1.2041] in 100 bins; 15.84 and 16 share
    # the last bin, so its left edge 10^(1.2041 * 0.99) = 15.5625 is the peak: candidates up
    # to 1.5 * 15.5625, and not below log10(0.95 * 15.5625) = 1.170, which drops xmin = 1.
    lam = torch.tensor([16.0, 1.0, 4.0, 15.84, 2.0], dtype=torch.float64)
    # xmin = 2, n = 4: alpha = 1 + 4 / (ln 1 + ln 2 + ln 7.92 + ln 8) = 1.826108
    #   fitted CDF 1 - r^-0.826108 at r = 1, 2, 7.92, 8: 0, .435937, .819058, .820554
    #   empirical 0, .25, .5, .75 -> D = .319058
    # xmin = 4, n = 3: alpha = 1 + 3 / (ln 3.96 + ln 4) = 2.085958; D = |.775653 - 1/3| = .442320
    # xmin = 15.84, n = 2: alpha = 1 + 2 / ln(16 / 15.84) = 199.998; D = 1 - e^-2 - 1/2 = .364665
    # smallest D at xmin = 2
    assert ks_alpha(lam) == pytest.approx(1 + 4 / math.log(2 * 7.92 * 8), rel=1e-9)
    assert ks_alpha(lam) == pytest.approx(1.826108, abs=1e-6)
    # the median rule on the same spectrum: xmin = 4 (k = 2 of 5, descending)
    median = hill_alpha(lam)
    assert median == pytest.approx(1 + 2 / math.log(4 * 3.96), rel=1e-9)
    assert spectrum_alpha(lam, "median") == median and spectrum_alpha(lam) == ks_alpha(lam)
    with pytest.raises(ValueError, match="median"):
        spectrum_alpha(lam, "ks", k=2)
    with pytest.raises(ValueError, match="not one of"):
        spectrum_alpha(lam, "hill")


@pytest.mark.parametrize("seed", range(6))
def test_ks_matches_the_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    kind = seed % 3
    if kind == 0:  # Marchenko-Pastur bulk (a random matrix)
        lam = esd(torch.randn(96, 64, generator=g))
    elif kind == 1:  # a heavy-tailed sample
        lam = pareto(2.5 + seed / 3, 80, seed)
    else:  # bulk plus a few spikes, as in trained weights
        lam = torch.cat([esd(torch.randn(120, 48, generator=g)), torch.tensor([300.0, 900.0])])
    assert ks_alpha(lam, chunk=7) == pytest.approx(ks_reference(lam.tolist()), rel=1e-9)


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_ks_recovers_power_law_exponent(alpha):
    est = ks_alpha(esd(power_law_matrix(alpha, 384, 256, seed=int(alpha * 10))))
    assert abs(est - alpha) < 0.2 * (alpha - 1)


def test_esd_is_eigenvalues_of_wtw():
    w = torch.randn(40, 24, generator=torch.Generator().manual_seed(0))
    ref = torch.linalg.eigvalsh(w.double().T @ w.double()).flip(0)
    assert torch.allclose(esd(w).double(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threshold", ["ks", "median"])
def test_alphalora_layers_with_larger_alpha_get_more_experts(threshold):
    alphas = {0: 2.0, 1: 5.0, 2: 3.0, 3: 4.0}
    modules = {}
    for layer, a in alphas.items():
        for j, name in enumerate(("self_attn.q_proj", "mlp.up_proj")):
            lin = nn.Linear(96, 192 if j else 96, bias=False)
            with torch.no_grad():
                lin.weight.copy_(power_law_matrix(a, lin.out_features, 96, seed=10 * layer + j))
            modules[f"model.layers.{layer}.{name}"] = lin
    measured = layer_alphas(modules, threshold=threshold)
    # layer alpha is the mean over the layer's modules
    one = {n: spectrum_alpha(esd(m.weight), threshold) for n, m in modules.items()}
    assert measured[1] == pytest.approx(
        (one["model.layers.1.self_attn.q_proj"] + one["model.layers.1.mlp.up_proj"]) / 2
    )
    order = sorted(measured, key=measured.get)
    assert order == [0, 2, 3, 1]  # the spectra keep the intended ordering

    a = alphalora(modules, total=24, beta=2.5, rank=8, threshold=threshold)
    assert a.meta["threshold"] == threshold
    counts = {layer: c for layer, c in zip(range(4), per_layer(a), strict=True)}
    assert sum(counts.values()) == 24
    assert [counts[layer] for layer in order] == sorted(counts.values())
    assert counts[order[-1]] > counts[order[0]]
    assert counts == alpha_counts(measured, 24, 2.5)
    assert ranks_of(a) == {8}
    # both modules of a layer share the layer's count
    assert per_layer(a, "up_proj") == per_layer(a, "q_proj")


def test_alpha_counts_proportional_total_and_minimum():
    alphas = {layer: 2.0 + 0.1 * layer for layer in range(32)}
    counts = alpha_counts(alphas)  # default total 5 * 32
    assert sum(counts.values()) == 160
    ideal = [160 * a**2.5 / sum(b**2.5 for b in alphas.values()) for a in alphas.values()]
    assert all(abs(c - q) < 1 for c, q in zip(counts.values(), ideal, strict=True))
    assert list(counts.values()) == sorted(counts.values())
    # a layer whose share is below one expert still gets one; the total stays exact
    skewed = alpha_counts({0: 1.01, 1: 1.01, 2: 50.0}, total=10)
    assert skewed == {0: 1, 1: 1, 2: 8}


def test_alphalora_top_k_and_depth_30():
    alphas = {layer: (1.2 if layer < 5 else 4.0) for layer in range(30)}
    a = make_baseline("alphalora", SMOLLM2, alphas=alphas)
    counts = per_layer(a)
    assert sum(counts) == 150 and min(counts) >= 1
    assert max(counts[:5]) < min(counts[5:])
    for n in a.modules:
        assert a.top_k_of(n) == (1 if a.modules[n].experts == 1 else 2)
    assert 1 in counts  # the low-alpha layers fall to a single expert, i.e. top-1
    with pytest.raises(TypeError, match="weights"):
        make_baseline("alphalora", SMOLLM2)  # shapes alone carry no spectrum


def test_apportion_exact_and_rounding():
    assert apportion([1, 1, 1], 10) == [4, 3, 3]  # ties: lower index first
    assert apportion([0, 0], 5) == [3, 2]
    assert apportion([3, 1], 8, minimum=2) == [6, 2]
    with pytest.raises(BudgetError):
        apportion([1, 1, 1], 2)


# -- scaling to a budget ------------------------------------------------------------------


def test_scale_experts_budget_exact():
    u = make_baseline("uniform", SMOLLM2)
    b = scale_to_budget(u, Budget("experts", 1000), SMOLLM2)
    assert b.total_experts == 1000
    assert {m.experts for m in b.modules.values()} <= {4, 5}  # 8 * 1000/1680 = 4.76
    assert ranks_of(b) == {8}


def test_scale_rank_budget_exact():
    m = make_baseline("mola_2468", SMOLLM2)
    b = scale_to_budget(m, Budget("rank", 5000), SMOLLM2)
    assert b.total_rank == 5000
    assert [x.experts for x in b.modules.values()] == [x.experts for x in m.modules.values()]
    assert max(ranks_of(b)) - min(ranks_of(b)) <= 1  # uniform ranks stay (nearly) uniform


@pytest.mark.parametrize("shapes", [LLAMA2_7B, SMOLLM2], ids=["llama2_7b", "smollm2"])
@pytest.mark.parametrize("kind", ["lora", "mola_2468", "uniform"])
def test_scale_params_rank_mode_within_one_rank(shapes, kind):
    alloc = make_baseline(kind, shapes)
    target = make_baseline("mola_8642", shapes).trainable_params(shapes) // 3
    b = scale_to_budget(alloc, Budget("params", target), shapes)
    spent = b.trainable_params(shapes)
    one_rank = min(i + o for i, o in shapes.values())
    assert 0 <= target - spent < one_rank
    assert [x.experts for x in b.modules.values()] == [x.experts for x in alloc.modules.values()]
    assert b.meta["scaled"]["after"] == spent


def test_scale_params_experts_mode_within_one_expert():
    alloc = make_baseline("uniform", SMOLLM2, experts=8, rank=8)
    target = 7_654_321
    b = scale_to_budget(alloc, Budget("params", target), SMOLLM2, mode="experts")
    spent = b.trainable_params(SMOLLM2)
    one_expert = min(8 * (i + o) + i for i, o in SMOLLM2.values())
    assert 0 <= target - spent < one_expert
    assert ranks_of(b) == {8}


def test_scale_up_and_errors():
    lora = make_baseline("lora", SMOLLM2, rank=8)
    up = scale_to_budget(lora, Budget("rank", 210 * 32), SMOLLM2)
    assert ranks_of(up) == {32}
    assert scale_to_budget(lora, Budget(), SMOLLM2) is lora
    with pytest.raises(BudgetError):
        scale_to_budget(lora, Budget("rank", 100), SMOLLM2)  # < one rank per module
    with pytest.raises(BudgetError):
        scale_to_budget(lora, Budget("experts", 300), SMOLLM2, mode="rank")


def _uneven(shapes, seed):
    """Experts of uneven ranks 1..6 and counts 2..5, seeded (a search's kind of result)."""
    g = torch.Generator().manual_seed(seed)
    modules = {}
    for n in shapes:
        k = int(torch.randint(2, 6, (1,), generator=g))
        modules[n] = ModuleAllocation(tuple(int(r) for r in torch.randint(1, 7, (k,), generator=g)))
    return Allocation(modules, top_k=2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scale_with_a_cap_stays_under_it_and_is_maximal(seed):
    """Capped rank growth: no rank above the cap, within the budget, no expert below the
    cap could take one more rank within it, and the order between experts is kept."""
    alloc = _uneven(SMOLLM2, seed)
    cap = 8
    most = sum(
        cap * (i + o) * m.experts + i * m.experts
        for m, (i, o) in zip(alloc.modules.values(), SMOLLM2.values(), strict=True)
    )
    target = (alloc.trainable_params(SMOLLM2) + most) // 2  # the plain rule would pass the cap
    plain = scale_to_budget(alloc, Budget("params", target), SMOLLM2)
    assert max(ranks_of(plain)) > cap
    b = scale_to_budget(alloc, Budget("params", target), SMOLLM2, cap=cap)
    spent = b.trainable_params(SMOLLM2)
    assert max(ranks_of(b)) == cap and spent <= target
    for n, m in b.modules.items():
        assert m.experts == alloc.modules[n].experts
        i, o = SMOLLM2[n]
        assert all(r >= r0 for r, r0 in zip(m.ranks, alloc.modules[n].ranks, strict=True))
        if any(r < cap for r in m.ranks):
            assert spent + i + o > target  # one more rank of this module does not fit
    # a larger rank at the start never ends smaller (the order between experts is kept)
    pairs = [
        (r0, r)
        for n, m in b.modules.items()
        for r0, r in zip(alloc.modules[n].ranks, m.ranks, strict=True)
    ]
    for r0, r in pairs:
        for q0, q in pairs:
            if r0 > q0:
                assert r >= q


def test_scale_with_a_cap_that_is_never_reached_is_the_plain_rule():
    alloc = _uneven(SMOLLM2, 3)
    target = alloc.trainable_params(SMOLLM2) * 3 // 2
    plain = scale_to_budget(alloc, Budget("params", target), SMOLLM2)
    capped = scale_to_budget(alloc, Budget("params", target), SMOLLM2, cap=64)
    assert capped.modules == plain.modules


def test_scale_with_a_cap_below_the_budget_ends_all_at_the_cap():
    alloc = _uneven(SMOLLM2, 4)
    b = scale_to_budget(alloc, Budget("rank", 10**6), SMOLLM2, cap=8)
    assert ranks_of(b) == {8}
    e = scale_to_budget(alloc, Budget("experts", 10**6), SMOLLM2, cap=6)
    assert {m.experts for m in e.modules.values()} == {6}


def test_make_baseline_scaled_to_a_params_budget():
    target = 5_000_000
    a = make_baseline("mola_2468", SMOLLM2, budget={"kind": "params", "value": target})
    assert 0 <= target - a.trainable_params(SMOLLM2) < 768
    assert a.meta["scaled"]["budget"] == {"kind": "params", "value": target}


# -- random --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, value",
    [("experts", 1000), ("rank", 4000), ("params", 9_000_000), ("params", 15_000_000)],
)
def test_random_fits_budget(kind, value):
    a = random_allocation(SMOLLM2, Budget(kind, value), seed=3)
    spent = Budget(kind, value).measure(a, SMOLLM2)
    if kind == "params":
        one_step = max(2 * i + o for i, o in SMOLLM2.values())
        assert 0 <= value - spent < one_step
    else:
        assert spent == value
    assert all(2 <= m.experts <= 8 for m in a.modules.values())
    assert all(1 <= r <= 8 for r in ranks_of(a))
    assert set(a.modules) == set(SMOLLM2)


def test_random_is_seeded_and_varied():
    b = Budget("rank", 4000)
    a1, a2 = random_allocation(SMOLLM2, b, seed=1), random_allocation(SMOLLM2, b, seed=1)
    a3 = random_allocation(SMOLLM2, b, seed=2)
    assert a1.to_dict()["modules"] == a2.to_dict()["modules"]
    assert a1.to_dict()["modules"] != a3.to_dict()["modules"]
    assert len({m.experts for m in a1.modules.values()}) > 3 and len(ranks_of(a1)) > 3
    free = random_allocation(SMOLLM2, None, seed=0)  # no budget: the plain draw
    assert all(2 <= m.experts <= 8 for m in free.modules.values())
    with pytest.raises(BudgetError):
        random_allocation(SMOLLM2, Budget("experts", 300))  # below 2 per module
    with pytest.raises(BudgetError):
        random_allocation(SMOLLM2, Budget("experts", 8 * 210 + 1))


# -- registry and the Hydra allocation configs -----------------------------------------------


def test_every_allocation_config_builds(tmp_path):
    files = sorted((CONF / "allocation").glob("*.yaml"))
    names = {f.stem for f in files}
    assert {
        "file",
        "lora",
        "uniform",
        "mola_2468",
        "mola_8642",
        "mola_5555",
        "mola_8888",
        "alphalora",
        "random",
        "concentrated",
        "concentrated_low",
        "shuffled",
        "inverted",
    } <= names
    saved = make_baseline("uniform", SMOLLM2, experts=4).save(tmp_path / "allocation.json")
    alphas = {layer: 2.0 + layer / 10 for layer in range(30)}
    for f in files:
        spec = OmegaConf.load(f)
        # each file names the function it builds with; the run binds the targets later
        assert spec._partial_ is True and callable(get_method(spec._target_)), f.name
        assert "kind" not in spec, f.name
        # one way to size a baseline: the run's `budget`, never an option of its own
        assert not {"scale_to_params", "budget_kind", "budget_value"} & set(spec), f.name
        spec = compose_cfg("train", [f"allocation={f.stem}"]).allocation
        if f.stem == "file":
            assert OmegaConf.to_container(OmegaConf.load(f))["path"] == "${searched}"
            spec.path = str(saved)
        if f.stem == "alphalora":
            with open_dict(spec):
                spec.alphas = alphas
        # adalora and concentrated size ranks only: a params or rank budget
        ranks_only = ("adalora", "concentrated", "concentrated_low")
        budget = Budget("rank" if f.stem in ranks_only else "experts", 900)
        if f.stem in ("shuffled", "inverted"):  # placements of a searched file, its size
            assert OmegaConf.to_container(OmegaConf.load(f))["from_file"] == "${searched}"
            spec.from_file = str(saved)
        if f.stem == "concentrated":
            assert OmegaConf.to_container(OmegaConf.load(f))["from_file"] == "${searched}"
            spec.module_kind = "k_proj"
        # the way the training entry point calls it: the run's depth and budget
        a = build_allocation(spec, SMOLLM2, 30, budget)
        assert set(a.modules) == set(SMOLLM2), f.name
        if f.stem == "random":
            assert a.total_experts == 900
        if f.stem in ("shuffled", "inverted"):
            assert a.total_experts == 4 * len(SMOLLM2) and a.method == f.stem
        if f.stem == "concentrated_low":
            assert a.method == "concentrated_low" and a.total_rank <= 900
    assert per_layer(make_baseline("lora", SMOLLM2)) == [1] * 30


def test_make_baseline_errors():
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline("moe", SMOLLM2)
    with pytest.raises(TypeError, match="unknown option"):
        make_baseline("lora", SMOLLM2, experts=4)


def test_make_baseline_on_a_model():
    model = tiny_llama(vocab_size=128)
    a = make_baseline("alphalora", model, total=5)
    assert len(a.modules) == 14 and sum(per_layer(a)) == 5
    assert all(math.isfinite(float(v)) and v > 1 for v in a.meta["layer_alpha"].values())
    assert a.meta["num_layers"] == 2
    m = make_baseline("mola_2468", model)
    assert per_layer(m) == [2, 6]  # 2 layers: blocks 0 and 2


# -- scale_to_budget's documented rule, by hand-computed allocations ----------------------
def test_scale_first_factor_leaves_the_routers_out():
    # one module (d_in 30, d_out 10): a rank row costs 40, a router row 30 per expert;
    # ranks (1, 1, 1, 5): M = 8 x 40 + 4 x 30 = 440 of which F = 120 does not scale, so
    # for 760: s = (760 - 120) / (440 - 120) = 2 exactly (T / M = 1.73 would give 3, 2, 2, 9)
    alloc = Allocation({"a": ModuleAllocation((1, 1, 1, 5))})
    out = scale_to_budget(alloc, Budget("params", 760), {"a": (30, 10)})
    assert out.modules["a"].ranks == (2, 2, 2, 10)
    assert out.meta["scaled"]["factor"] == 2.0


def test_scale_leftover_units_go_to_the_largest_remainders():
    # ranks (1, 2) to a rank budget of 4: s = 4 / 3, shares 1.33 and 2.67, floors (1, 2):
    # the one unit left goes to the larger remainder (0.67), the second expert
    alloc = Allocation({"a": ModuleAllocation((1, 2))})
    out = scale_to_budget(alloc, Budget("rank", 4), {"a": (8, 8)})
    assert out.modules["a"].ranks == (1, 3)
