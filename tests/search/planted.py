"""Constructed problems with a known answer for search layers driven by an Architect.

Each module is one :class:`SearchLoraMoELinear` on a zero base that must learn its own
planted target from its own inputs; the loss is the sum of the modules' squared errors,
so the modules share one outer step, one budget and one price. Kinds (``name:k``):

- ``rank:k``: one orthogonal rank-``k`` map (needs rank ~``k`` on the routed experts);
- ``experts:c``: ``c`` input clusters, each with its own rank-2 map (needs ~``c`` experts);
- ``noise``: targets independent of the input (needs nothing: anything learnt hurts).

:func:`search` runs the search as :class:`SearchModule` does (warm-up under the full
prefix, linear outer schedule over the GSV steps, the credit meter, the Lagrangian when
a budget is given, parsimony) with the shipped :class:`SearchSettings` unless told
otherwise, then reads out, trims and fills like ``search.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from guilomo.allocation import Allocation
from guilomo.budget import Budget
from guilomo.moe import LoraMoEConfig
from guilomo.search.architect import Architect
from guilomo.search.config import SearchSettings
from guilomo.search.credit import CreditMeter
from guilomo.search.lagrangian import BudgetLagrangian
from guilomo.search.layer import SearchLoraMoELinear, init_gsvs, set_prefixes
from guilomo.search.readout import (
    ModuleCredits,
    collect_gsvs,
    fit_budget,
    read_allocation,
    spend_budget,
)

D, N_MAX, R_MAX = 16, 8, 8


def orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(rows, cols, generator=g))[0]


def planted(kind: str, g: torch.Generator):
    """``sample(n, gen) -> {"x", "y"}`` for the planted target ``kind``."""
    name, _, k = kind.partition(":")
    k = int(k or 0)
    centres = torch.zeros(1, D)
    if name == "rank":
        maps = [orthonormal(D, k, g) @ orthonormal(D, k, g).T]
    elif name == "experts":
        centres = 3 * orthonormal(D, k, g).T
        maps = [orthonormal(D, 2, g) @ orthonormal(D, 2, g).T for _ in range(k)]
    elif name == "noise":
        maps = [torch.zeros(D, D)]
    else:
        raise ValueError(f"unknown planted kind {kind!r}")
    w = torch.stack(maps)

    def sample(n: int, gen: torch.Generator) -> dict:
        c = torch.randint(len(maps), (n,), generator=gen)
        x = centres[c] + torch.randn(n, D, generator=gen)
        y = torch.einsum("nij,nj->ni", w[c], x)
        if name == "noise":
            y = 0.5 * torch.randn(n, D, generator=gen)
        return {"x": x, "y": y}

    return sample


def search(
    kinds: list[str],
    seed: int,
    budget: Budget | None = None,
    steps: int = 400,
    start: tuple[int, int] = (2, 4),
    settings: SearchSettings | None = None,
    batch: int = 128,
) -> tuple[Allocation, Allocation]:
    """Search modules ``kinds`` together; returns (read-out, final allocation after trim/fill)."""
    s = settings or SearchSettings(start="uniform")
    torch.manual_seed(seed)
    layers = nn.ModuleDict()
    for i, _ in enumerate(kinds):
        base = nn.Linear(D, D, bias=False)
        nn.init.zeros_(base.weight)
        layers[f"m{i}"] = SearchLoraMoELinear(
            base,
            [R_MAX] * N_MAX,
            s.top_k,
            LoraMoEConfig(dropout=0.0, alpha=16.0),
            expert_signal=s.expert_signal,
            expert_credit=s.expert_credit,
            rank_credit=s.rank_credit,
        )
        layers[f"m{i}"].probe = s.probe
    init_gsvs(layers, seed, s.start, *start)
    g = torch.Generator().manual_seed(seed)
    samples = [planted(k, g) for k in kinds]
    mods = list(layers.values())

    def loss(batches):
        return sum(
            (m(b["x"]) - b["y"]).pow(2).sum(-1).mean() for m, b in zip(mods, batches, strict=True)
        )

    gsv = [p for m in mods for p in (m.gsv_expert, m.gsv_rank)]
    theta = [p for m in mods for p in (m.lora_A, m.lora_B, m.router, m.rank_lambda)]
    inner = torch.optim.AdamW(theta, lr=1e-2, weight_decay=0.0)
    outer = torch.optim.Adam(gsv, lr=s.outer.lr, betas=s.outer.betas)
    meter = CreditMeter(gsv, s.credit_ema)
    pricing = (
        BudgetLagrangian(mods, budget, lr=s.budget_lr, lam=s.budget_lam)
        if budget is not None and budget.active and s.budget_mode == "lagrangian"
        else None
    )
    architect = Architect(
        theta,
        gsv,
        inner,
        outer,
        loss,
        loss,
        meter=meter,
        smooth=s.smooth_credit,
        pricing=pricing,
        parsimony=s.parsimony if s.smooth_credit else 0.0,
    )
    gen = torch.Generator().manual_seed(1000 + seed)
    prefixes = torch.Generator().manual_seed(seed)
    warmup = s.warmup(steps)
    for step in range(steps):
        train = [f(batch, gen) for f in samples]
        val = [f(batch, gen) for f in samples]
        if step < warmup:
            set_prefixes(layers, s.warmup_prefix, prefixes)
        else:
            set_prefixes(layers, None)
        if s.outer_due(step, steps):
            for group in outer.param_groups:
                group["lr"] = s.outer.lr_at(step - warmup, steps - warmup)
            architect.step(train, val, xi=1e-2)
        inner.zero_grad()
        loss(train).backward(inputs=theta)
        inner.step()

    gsvs = collect_gsvs(layers)
    read = read_allocation(gsvs, top_k=s.top_k)
    if budget is None or not budget.active:
        return read, read
    shapes = {n: (D, D) for n in layers}
    final, _ = fit_budget(read, gsvs, budget, shapes, min_experts=s.min_experts)
    if pricing is not None:
        mean, dev = meter.corrected(), meter.deviation()
        credits = {
            n: ModuleCredits(mean[2 * i], mean[2 * i + 1], dev[2 * i], dev[2 * i + 1])
            for i, n in enumerate(layers)
        }
        final, _ = spend_budget(
            final, credits, budget, shapes, parsimony=s.parsimony, fill=s.budget_fill
        )
    return read, final
