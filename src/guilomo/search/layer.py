"""The search-time LoRA-MoE layer and the helpers that put it into a backbone.

Every targeted module starts at ``n_max`` experts of rank ``r_max`` and carries

- ``gsv_expert`` (``n_max``): expert GSV -> additive router-logit mask (:func:`expert_mask`);
- ``gsv_rank`` (``n_max x r_max``): one rank GSV per expert -> rank mask (:func:`rank_mask`);
- ``rank_lambda`` (``n_max x r_max``, init 1): trainable per-rank scale (inner parameter).

Both masks enter through :meth:`LoraMoELinear.search_terms`: the router bias, and the
per-rank gate ``lambda * rank_mask`` that multiplies the rank scaling ``alpha / r_max``.
Where the expert GSV learns from is ``expert_signal``: ``logits`` (the reference: the
router-logit mask's gradient) or ``output``: a gate ``m`` on the experts' outputs,
folded into the per-rank gate (the router mask is then applied without a gradient),
``1`` for kept experts and the rank mask's floor for dropped ones, which also get a
constant routing weight of 1 on every token (:meth:`expert_probe`). So a dropped expert
contributes ``floor`` times its output to every token, trains like a masked rank, and
its ``delta_j = dL/dm_j`` is the first-order value of adding it; a kept expert's
``delta_j`` is what it contributes through its routed tokens.
``expert_credit`` / ``rank_credit`` pick the straight-through rule (:mod:`.gsv`).
The whole module is computed with the production masked path (two GEMMs).

During the search's warm-up (``search.warmup_prefix``) the inner weights can train under
a prefix that is not the GSVs' own: ``full`` (every expert and rank on) or a random one
drawn per step (:meth:`SearchLoraMoELinear.set_prefix`); the masks then carry no GSV
gradient. :func:`init_gsvs` starts the GSVs from the reference's seeded
``softmax(randn)`` or from a seed-free uniform read-out (every module at the same
count and rank, :func:`uniform_gsvs`).

With ``granularity="layer"`` the modules of one decoder layer share one expert GSV
(:func:`tie_expert_gsvs`), so they always keep the same number of experts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from guilomo.allocation import Allocation, layer_of, uniform
from guilomo.moe.config import LoraMoEConfig
from guilomo.moe.inject import inject_adapter
from guilomo.moe.layer import LoraMoELinear, RoutingContext
from guilomo.search.config import (
    EXPERT_SIGNALS,
    GRANULARITIES,
    STARTS,
    WARMUP_PREFIXES,
    SearchSettings,
)
from guilomo.search.gsv import (
    CREDITS,
    EXPERT_DROP,
    EXPERT_KEEP,
    MIN_EXPERTS,
    RANK_FLOORS,
    expert_gate,
    expert_mask,
    gsv_init,
    rank_mask,
    selected_experts,
    selected_ranks,
)

GSV_NAMES = ("gsv_expert", "gsv_rank")
START_MARGIN = 0.1  # logit margin of the start entry of a uniform (seed-free) start


class SearchLoraMoELinear(LoraMoELinear):
    """A frozen linear layer with ``n_max`` experts of rank ``r_max`` plus GSVs and lambda."""

    def __init__(
        self,
        base: nn.Linear,
        ranks: Sequence[int],
        top_k: int,
        config: LoraMoEConfig | None = None,
        context: RoutingContext | None = None,
        rank_mask_mode: str = "soft",
        expert_signal: str = "logits",
        expert_credit: str = "reference",
        rank_credit: str = "reference",
    ):
        ranks = [int(r) for r in ranks]
        if len(ranks) < 2:
            raise ValueError(f"the search needs n_max >= 2 experts per module, got {len(ranks)}")
        if len(set(ranks)) != 1:
            raise ValueError(f"the search starts every expert at r_max; got ranks {ranks}")
        if rank_mask_mode not in RANK_FLOORS:
            raise ValueError(f"rank_mask='{rank_mask_mode}' is not one of {list(RANK_FLOORS)}")
        if expert_signal not in EXPERT_SIGNALS:
            raise ValueError(
                f"expert_signal='{expert_signal}' is not one of {list(EXPERT_SIGNALS)}"
            )
        for key, value in (("expert_credit", expert_credit), ("rank_credit", rank_credit)):
            if value not in CREDITS:
                raise ValueError(f"{key}='{value}' is not one of {list(CREDITS)}")
        super().__init__(base, ranks, top_k, config=config, context=context)
        n, r = len(ranks), ranks[0]
        device = base.weight.device
        self.n_max, self.r_max = n, r
        self.rank_mask_mode = rank_mask_mode
        self.rank_floor = RANK_FLOORS[rank_mask_mode]
        self.expert_signal, self.expert_credit, self.rank_credit = (
            expert_signal,
            expert_credit,
            rank_credit,
        )
        f32 = dict(dtype=torch.float32, device=device)
        self.gsv_expert = nn.Parameter(torch.empty(n, **f32))
        self.gsv_rank = nn.Parameter(torch.empty(n, r, **f32))
        self.rank_lambda = nn.Parameter(torch.ones(n, r, **f32))
        self.track_usage = True
        self.aux_enabled = True  # off for passes whose loss has no aux term (the val loss)
        self.usage: Tensor | None = None  # fraction of top-k assignments per expert (last forward)
        self.probe = "constant"  # how a dropped expert is weighted: constant | routed
        # warm-up: (experts kept, rank kept per expert) that replace the GSVs' prefixes
        self.prefix: tuple[Tensor, Tensor] | None = None
        self.reset_gsvs()

    @torch.no_grad()
    def reset_gsvs(self, generator: torch.Generator | None = None) -> None:
        """GSVs to ``softmax(randn(n))`` (the reference's init); lambda to 1."""
        self.gsv_expert.copy_(gsv_init(self.n_max, generator))
        self.gsv_rank.copy_(gsv_init(self.r_max, generator, shape=(self.n_max,)))
        self.rank_lambda.fill_(1.0)

    # -- the masks ----------------------------------------------------------------------
    def set_prefix(self, prefix: str | None, generator: torch.Generator | None = None) -> None:
        """Warm-up prefixes: ``None`` (the GSVs' own), ``full`` (everything on), ``random``
        (experts uniform in ``MIN_EXPERTS..n_max``, each rank uniform in ``1..r_max``)."""
        if prefix is None or prefix == "current":
            self.prefix = None
            return
        if prefix not in WARMUP_PREFIXES:
            raise ValueError(f"warmup_prefix='{prefix}' is not one of {list(WARMUP_PREFIXES)}")
        n, r = self.n_max, self.r_max
        if prefix == "full":
            experts, ranks = torch.tensor(n), torch.full((n,), r)
        else:
            experts = torch.randint(MIN_EXPERTS, n + 1, (), generator=generator)
            ranks = torch.randint(1, r + 1, (n,), generator=generator)
        device = self.gsv_expert.device
        self.prefix = (experts.to(device), ranks.to(device))

    def _fixed_terms(self) -> tuple[Tensor, Tensor]:
        """The masks of a fixed (warm-up) prefix: the same values, no GSV gradient."""
        experts, ranks = self.prefix
        device = self.gsv_expert.device
        kept_e = torch.arange(self.n_max, device=device) < experts
        kept_r = torch.arange(self.r_max, device=device)[None, :] < ranks[:, None]
        floor = torch.tensor(self.rank_floor, device=device)
        gate = self.rank_lambda * torch.where(kept_r, torch.ones_like(floor), floor)
        bias = torch.where(kept_e, torch.tensor(EXPERT_KEEP), torch.tensor(EXPERT_DROP)).to(device)
        if self.expert_signal == "output":
            gate = gate * torch.where(kept_e, torch.ones_like(floor), floor)[:, None]
        return bias, gate.reshape(-1)

    def search_terms(self) -> tuple[Tensor, Tensor]:
        if self.prefix is not None:
            return self._fixed_terms()
        s_e = torch.sigmoid(self.gsv_expert)
        gate = self.rank_lambda * rank_mask(
            torch.sigmoid(self.gsv_rank), self.rank_floor, self.rank_credit
        )
        if self.expert_signal == "logits":
            bias = expert_mask(s_e, self.expert_credit)
        else:  # route with the same mask, learn from a gate on the experts' outputs
            bias = expert_mask(s_e.detach())
            gate = gate * expert_gate(s_e, self.expert_credit, self.rank_floor)[:, None]
        return bias, gate.reshape(-1)

    def expert_probe(self, x2: Tensor | None = None) -> Tensor | None:
        """``expert_signal="output"`` with a soft floor: a routing weight on every dropped
        expert, 1 on every token (``probe="constant"``) or, given the tokens ``x2``, the
        router's unmasked probability of that expert per token (``probe="routed"``, no
        gradient): its ``delta_j`` is then the value of adding it where it would be routed."""
        if self.expert_signal != "output" or self.rank_floor == 0:
            return None
        experts = self.current_experts() if self.prefix is None else self.prefix[0]
        dropped = (torch.arange(self.n_max, device=self.gsv_expert.device) >= experts).float()
        if self.probe != "routed" or x2 is None:
            return dropped
        with torch.no_grad():
            probs = torch.softmax(x2.float() @ self.router.t().float(), -1)
        return probs * dropped

    @torch.no_grad()
    def current_experts(self) -> Tensor:
        """Experts kept by the current expert GSV (a 0-d tensor, >= 2; no host sync)."""
        return selected_experts(torch.sigmoid(self.gsv_expert))

    @torch.no_grad()
    def current_ranks(self) -> Tensor:
        """Rank of every one of the ``n_max`` experts under the current rank GSVs."""
        return selected_ranks(torch.sigmoid(self.gsv_rank))

    def balance_loss(self, probs: Tensor, top_i: Tensor, mask: Tensor | None) -> Tensor:
        if not self.aux_enabled:
            return probs.new_zeros(())
        loss = super().balance_loss(probs, top_i, mask)
        if self.track_usage:
            sel = top_i if mask is None else top_i[mask]
            counts = torch.zeros(self.num_experts, device=top_i.device).index_add_(
                0, sel.reshape(-1), torch.ones(sel.numel(), device=top_i.device)
            )
            self.usage = counts / counts.sum().clamp(min=1)
        return loss

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, rank_mask={self.rank_mask_mode}, "
            f"expert_signal={self.expert_signal}, expert_credit={self.expert_credit}, "
            f"rank_credit={self.rank_credit}"
        )


# -- model-level helpers ------------------------------------------------------------------
def search_layers(model: nn.Module) -> dict[str, SearchLoraMoELinear]:
    """The search layers of a model, by module path, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SearchLoraMoELinear)}


@contextmanager
def pass_mode(model: nn.Module, aux: bool = True, dropout: bool = True):
    """Inside: the search layers compute the load-balancing loss only if ``aux`` (the
    val loss has no aux term) and apply adapter dropout only if ``dropout``."""
    layers = list(search_layers(model).values())
    modes = [m.dropout.training for m in layers]
    for m in layers:
        m.aux_enabled = aux
        if not dropout:
            m.dropout.train(False)
    try:
        yield
    finally:
        for m, mode in zip(layers, modes, strict=True):
            m.aux_enabled = True
            m.dropout.train(mode)


def _unique(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def gsv_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The outer parameters: every expert and rank GSV (shared ones once)."""
    return _unique(getattr(m, name) for m in search_layers(model).values() for name in GSV_NAMES)


def inner_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The inner parameters Theta: every trainable tensor that is not a GSV (A, B, lambda, routers)."""
    gsv = {id(p) for p in gsv_parameters(model)}
    return _unique(p for p in model.parameters() if p.requires_grad and id(p) not in gsv)


def tie_expert_gsvs(model: nn.Module) -> int:
    """Make the modules of each decoder layer share one expert GSV; returns the group count."""
    groups: dict[int, SearchLoraMoELinear] = {}
    for name, m in search_layers(model).items():
        first = groups.setdefault(layer_of(name), m)
        if first is not m:
            if first.n_max != m.n_max:
                raise ValueError(f"layer granularity needs one n_max per layer; {name} differs")
            m.gsv_expert = first.gsv_expert
    return len(groups)


def expert_groups(names: Iterable[str], granularity: str) -> dict[str, list[str]]:
    """Modules that share one expert count: one per module, or one group per decoder layer."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity='{granularity}' is not one of {list(GRANULARITIES)}")
    groups: dict[str, list[str]] = {}
    for n in names:
        key = n if granularity == "module" else f"layer{layer_of(n)}"
        groups.setdefault(key, []).append(n)
    return groups


def uniform_gsvs(n: int, start: int, shape: tuple[int, ...] = ()) -> Tensor:
    """Seed-free GSV logits whose read-out is ``start``: zeros, ``START_MARGIN`` at ``start - 1``."""
    g = torch.zeros(*shape, n)
    g[..., start - 1] = START_MARGIN
    return g


def set_prefixes(model: nn.Module, prefix: str | None, generator=None) -> None:
    """:meth:`SearchLoraMoELinear.set_prefix` on every search layer (``None``: the GSVs')."""
    for m in search_layers(model).values():
        m.set_prefix(prefix, generator)


@torch.no_grad()
def init_gsvs(
    model: nn.Module,
    seed: int,
    start: str = "random",
    experts: int | None = None,
    rank: int | None = None,
) -> None:
    """Initial GSVs of every search layer, in module order.

    ``start="random"``: the reference's seeded ``softmax(randn)``, independent of the
    global RNG. ``start="uniform"``: seed-free, every module reads out ``experts`` experts
    of rank ``rank`` (default ``n_max // 2`` and ``r_max // 2``, at least the minimum).
    """
    if start not in STARTS:
        raise ValueError(f"search.start='{start}' is not one of {list(STARTS)}")
    gen = torch.Generator().manual_seed(int(seed))
    seen: set[int] = set()
    for m in search_layers(model).values():
        if start == "random":
            fresh_e = gsv_init(m.n_max, gen)
            fresh_r = gsv_init(m.r_max, gen, shape=(m.n_max,))
        else:
            e = max(MIN_EXPERTS, min(m.n_max, experts or m.n_max // 2))
            fresh_e = uniform_gsvs(m.n_max, e)
            fresh_r = uniform_gsvs(m.r_max, max(1, min(m.r_max, rank or m.r_max // 2)), (m.n_max,))
        if id(m.gsv_expert) not in seen:  # shared expert GSVs are drawn once
            seen.add(id(m.gsv_expert))
            m.gsv_expert.copy_(fresh_e)
        m.gsv_rank.copy_(fresh_r)


def max_allocation(names: Iterable[str], n_max: int, r_max: int, top_k: int, **meta) -> Allocation:
    """The search's starting point: ``n_max`` experts of rank ``r_max`` in every module."""
    return uniform(names, n_max, r_max, top_k=top_k, **meta)


def inject_search_adapter(
    model: nn.Module,
    names: Iterable[str],
    settings: SearchSettings | None = None,
    config: LoraMoEConfig | None = None,
    seed: int = 0,
) -> nn.Module:
    """Freeze ``model`` and wrap the named linear modules with :class:`SearchLoraMoELinear`.

    Sizes, masks, credits, probe, granularity and the GSV start come from ``settings``
    (default: the shipped :class:`SearchSettings`); ``config`` is the adapter's (its A/B
    init replaced by ``settings.init`` when set); ``seed`` seeds a random GSV start."""
    s = settings or SearchSettings()
    names = list(names)
    if s.init is not None:  # the search-time A/B init may differ from the fine-tune's
        config = dataclasses.replace(config or LoraMoEConfig(), init=s.init)

    def factory(base, ranks, k, config=None, context=None):
        return SearchLoraMoELinear(
            base,
            ranks,
            k,
            config=config,
            context=context,
            rank_mask_mode=s.rank_mask,
            expert_signal=s.expert_signal,
            expert_credit=s.expert_credit,
            rank_credit=s.rank_credit,
        )

    allocation = max_allocation(names, s.n_max, s.r_max, s.top_k)
    inject_adapter(model, allocation, config, layer_factory=factory)
    if s.granularity == "layer":
        tie_expert_gsvs(model)
    for m in search_layers(model).values():
        m.probe = s.probe
    init_gsvs(model, seed, s.start, s.start_experts, s.start_rank)
    return model
