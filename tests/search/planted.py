"""Constructed problems with a known answer, searched by the product's search loop.

Each module is one :class:`SearchLoraMoELinear` on a zero base that must learn its own
planted target from its own inputs; the loss is the sum of the modules' squared errors,
so the modules share one outer step, one budget and one price. Kinds (``name:k``):

- ``rank:k``: one orthogonal rank-``k`` map (needs rank ~``k`` on the routed experts);
- ``experts:c``: ``c`` input clusters, each with its own rank-2 map (needs ~``c`` experts);
- ``noise``: targets independent of the input (needs nothing: anything learnt hurts).

:func:`search` runs the product's search loop (:class:`guilomo.search.loop.SearchLoop`: the
shipped :class:`SearchSettings` unless told otherwise, with the problem's own inner learning
rate, :func:`planted_settings`), then ends it as ``search.py`` does (:meth:`SearchLoop.finish`:
read-out, trim, fill). :func:`search_modules` and :func:`run` are its two halves, for
problems that build their own data.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from guilomo.allocation import Allocation
from guilomo.budget import Budget
from guilomo.moe import LoraMoEConfig
from guilomo.search.config import InnerOptim, SearchSettings
from guilomo.search.layer import inject_search_adapter
from guilomo.search.loop import SearchLoop

D, N_MAX, R_MAX = 16, 8, 8
# a toy problem's inner learning rate (the shipped 3e-4 is an LLM's): the peak of the shipped
# schedule (warm-up, linear decay to 0), so its mean is the 1e-2 the harness ran at before
INNER_LR = 2e-2


def planted_settings(**kw) -> SearchSettings:
    """The shipped search settings, uniform start, with the problem's inner learning rate."""
    kw.setdefault("start", "uniform")
    kw.setdefault("inner", InnerOptim(lr=INNER_LR))
    return SearchSettings(**kw)


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
    return sampler(centres, maps, noise=name == "noise")


def sampler(centres: torch.Tensor, maps: list, noise: bool = False):
    """``sample(n, gen) -> {"x", "y"}``: x around a random centre ``c``, y = ``maps[c] @ x``
    (``noise``: y independent of x)."""
    w = torch.stack(maps)

    def sample(n: int, gen: torch.Generator) -> dict:
        c = torch.randint(len(maps), (n,), generator=gen)
        x = centres[c] + torch.randn(n, D, generator=gen)
        y = torch.einsum("nij,nj->ni", w[c], x)
        if noise:
            y = 0.5 * torch.randn(n, D, generator=gen)
        return {"x": x, "y": y}

    return sample


def search_modules(count: int, s: SearchSettings, seed: int) -> nn.ModuleDict:
    """``count`` zero-based linear maps ``m0, m1, ...`` with the search adapter injected by
    the product's :func:`inject_search_adapter` (GSV start from ``s``, seeded by ``seed``)."""
    torch.manual_seed(seed)
    model = nn.ModuleDict({f"m{i}": nn.Linear(D, D, bias=False) for i in range(count)})
    for base in model.values():
        nn.init.zeros_(base.weight)
    config = LoraMoEConfig(dropout=0.0, alpha=16.0)
    return inject_search_adapter(model, list(model), s, config=config, seed=seed)


def run(
    model: nn.ModuleDict,
    s: SearchSettings,
    samples: list,
    seed: int,
    budget: Budget | None = None,
    steps: int = 400,
    batch: int = 128,
) -> SearchLoop:
    """``steps`` real steps of the search loop; module ``i`` learns from ``samples[i]``
    (train and val batches drawn fresh each step); the loss sums the modules' squared errors."""
    mods = list(model.values())

    def loss(batches):
        return sum(
            (m(b["x"]) - b["y"]).pow(2).sum(-1).mean() for m, b in zip(mods, batches, strict=True)
        )

    loop = SearchLoop(model, s, loss, budget=budget, init_seed=seed)
    loop.configure(steps)
    gen = torch.Generator().manual_seed(1000 + seed)
    for step in range(steps):
        train = [f(batch, gen) for f in samples]
        val = [f(batch, gen) for f in samples]
        loop.step(train, val, step)
    return loop


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
    s = settings or planted_settings()
    s = dataclasses.replace(s, start_experts=start[0], start_rank=start[1])
    model = search_modules(len(kinds), s, seed)
    g = torch.Generator().manual_seed(seed)
    samples = [planted(k, g) for k in kinds]
    loop = run(model, s, samples, seed, budget, steps, batch)
    outcome = loop.finish({n: (D, D) for n in model}, steps)
    return outcome.read, outcome.allocation
