"""The search loop in plain torch: one bilevel step, and what ends a search.

:class:`SearchLoop` is the one implementation of the GSV search that the product
(:class:`~guilomo.search.module.SearchModule`, under Lightning), the constructed-problem
tests, the studies and the benchmarks all run. Built from a :class:`SearchSettings`, it
owns what a step needs: the inner AdamW on Theta and its schedule (warm-up, linear decay
to 0 over the real steps), gradient clipping, the warm-up prefixes, the outer Adam on the
GSVs and its schedule, the :class:`CreditMeter`, the price of capacity
(:class:`BudgetLagrangian`, with an active budget and ``budget_mode="lagrangian"``) and
the :class:`Architect`. Each real step (:meth:`SearchLoop.step`), on a (train, val) pair:

1. the read-out of the initial GSVs is taken once (the diagnostics' step 0);
2. during the warm-up (``settings.warmup(total)`` real steps) the inner weights train
   under ``warmup_prefix`` (``random``: drawn from a generator seeded by the GSV init seed
   and the step, so a resume draws the same ones) and no GSV moves;
3. if due, the outer step: outer learning rate from its schedule over the GSV steps, the
   hypergradient with ``xi`` = the inner learning rate, credit meter, price, Adam;
4. the inner step: ``L_train + aux_coef * L_aux`` backward into Theta only, clipping,
   AdamW, schedule.

The outer passes see the deterministic model: L_val has no aux term and, unless
``outer_dropout``, no adapter dropout. How a backward, a clip and an optimiser step are
made is the :class:`TorchDriver`'s (Lightning's manual optimisation passes its own, so
precision plugins, DDP and the step counter see them). What ends a search is
:meth:`SearchLoop.finish` (:mod:`guilomo.search.outcome`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from guilomo.allocation_view import short_name
from guilomo.budget import Budget
from guilomo.objective import linear_schedule
from guilomo.search.architect import Architect
from guilomo.search.config import SearchSettings
from guilomo.search.credit import CreditMeter, module_snr
from guilomo.search.diagnostics import SearchDiagnostics, Selection, selection_of
from guilomo.search.fill import ModuleCredits
from guilomo.search.lagrangian import BudgetLagrangian
from guilomo.search.layer import (
    expert_groups,
    gsv_parameters,
    inner_parameters,
    pass_mode,
    search_layers,
    set_prefixes,
)
from guilomo.search.outcome import SearchOutcome, settle
from guilomo.search.readout import collect_gsvs, read_allocation

Loss = Callable[[dict], "Tensor | tuple[Tensor, Tensor, Tensor]"]


class TorchDriver:
    """Backward, clipping and optimiser steps in plain torch."""

    def backward(self, loss: Tensor, inputs: list[Tensor]) -> None:
        loss.backward(inputs=inputs)

    def clip(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()


@dataclass
class StepOutput:
    """One real step: its losses (detached) and the scalars it logs."""

    loss: Tensor
    lm: Tensor
    aux: Tensor
    val_loss: Tensor | None
    stats: dict = field(default_factory=dict)


def _parts(out) -> tuple[Tensor, Tensor, Tensor]:
    """(objective, LM loss, aux loss) of a loss function's output (a tensor: no aux)."""
    if isinstance(out, tuple):
        return out
    return out, out, out.new_zeros(())


class SearchLoop:
    """The GSV search of the search layers of ``model``, step by step.

    Args:
        model: a module holding :class:`SearchLoraMoELinear` layers
            (:func:`inject_search_adapter`).
        settings: the search settings.
        objective: ``batch -> (L_train + aux_coef * L_aux, L_train, L_aux)`` (an
            :class:`guilomo.objective.Objective`), or ``batch -> L`` (no aux term).
        lm_loss: ``batch -> L`` without the aux term; default ``objective.lm`` if it has
            one, else the objective's first value.
        budget: the run's budget (enforced during the outer steps under ``lagrangian``).
        init_seed: seed of the GSV init (the random warm-up prefixes derive from it).
    """

    def __init__(
        self,
        model: nn.Module,
        settings: SearchSettings | None = None,
        objective: Loss | None = None,
        lm_loss: Callable[[dict], Tensor] | None = None,
        budget: Budget | None = None,
        init_seed: int = 0,
    ):
        if objective is None:
            raise ValueError("SearchLoop needs an objective (batch -> loss)")
        self.model = model
        self.settings = settings or SearchSettings()
        self.objective = objective
        self.lm_loss = lm_loss or getattr(objective, "lm", None) or (lambda b: self.train(b)[0])
        self.layers = search_layers(model)
        if not self.layers:
            raise ValueError("model has no search layers: inject them with inject_search_adapter")
        self.names = list(self.layers)
        self.theta = inner_parameters(model)
        self.gsv = gsv_parameters(model)
        self.budget = budget or Budget()
        self.init_seed = int(init_seed)
        s = self.settings
        self.meter = CreditMeter(self.gsv, s.credit_ema)
        priced = self.budget.active and s.budget_mode == "lagrangian"
        self.pricing = (
            BudgetLagrangian(
                list(self.layers.values()),
                self.budget,
                s.budget_lr,
                s.budget_price,
                gain=s.budget_gain,
            )
            if priced
            else None
        )
        self.diagnostics = SearchDiagnostics(names=self.names)
        self.driver = TorchDriver()
        self.total_steps: int | None = None
        self.inner: torch.optim.Optimizer | None = None
        self.outer: torch.optim.Optimizer | None = None
        self.schedule = None
        self.architect: Architect | None = None

    # -- losses -------------------------------------------------------------------------
    def train(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """(L_train + aux_coef * L_aux, L_train, L_aux): the inner step's objective."""
        return _parts(self.objective(batch))

    def val_loss(self, batch: dict) -> Tensor:
        """L_val: the LM loss only (no aux term); adapter dropout only if ``outer_dropout``."""
        with pass_mode(self.model, aux=False, dropout=self.settings.outer_dropout):
            return self.lm_loss(batch)

    def outer_train_loss(self, batch: dict) -> Tensor:
        """L_train as the outer step sees it (virtual step, finite differences)."""
        with pass_mode(self.model, aux=True, dropout=self.settings.outer_dropout):
            return self.train(batch)[0]

    # -- set-up -------------------------------------------------------------------------
    def configure(
        self, total_steps: int, reduce: Callable[[Tensor], Tensor] | None = None
    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, object]:
        """Optimisers, the inner schedule and the Architect for ``total_steps`` real steps;
        ``reduce``: mean over data-parallel processes (``None``: one process)."""
        s = self.settings
        self.total_steps = int(total_steps)
        self.inner = torch.optim.AdamW(
            self.theta, lr=s.inner.lr, betas=s.inner.betas, weight_decay=s.inner.weight_decay
        )
        self.outer = torch.optim.Adam(
            self.gsv, lr=s.outer.lr, betas=s.outer.betas, weight_decay=s.outer.weight_decay
        )
        warmup = s.inner.warmup(self.total_steps)
        self.schedule = linear_schedule(self.inner, warmup, self.total_steps)["scheduler"]
        self.architect = Architect(
            self.theta,
            self.gsv,
            self.inner,
            self.outer,  # stepped raw: only inner steps count as real steps
            self.outer_train_loss,
            self.val_loss,
            order=s.order,
            virtual_step=s.virtual_step,
            reduce=reduce,
            meter=self.meter,
            smooth=s.smooth_credit,
            pricing=self.pricing,
            parsimony=s.parsimony if s.smooth_credit else 0.0,
        )
        return self.inner, self.outer, self.schedule

    # -- one real step ------------------------------------------------------------------
    def step(self, train_batch: dict, val_batch: dict, step: int) -> StepOutput:
        """Real step ``step`` (0-based): the outer step if due, then the inner step."""
        if self.architect is None:
            raise RuntimeError("call SearchLoop.configure(total_steps) before the first step")
        s, total = self.settings, self.total_steps
        if not self.diagnostics.started:  # the read-out of the initial GSVs
            self.diagnostics.start(self.selection(), step)
        warmup = s.warmup(total)
        if step < warmup:  # the GSVs wait; the inner weights train under the warm-up prefix
            gen = torch.Generator().manual_seed(self.init_seed * 1_000_003 + step)
            set_prefixes(self.model, s.warmup_prefix, gen)
        else:
            set_prefixes(self.model, None)
        val_loss = None
        if s.outer_due(step, total):
            for group in self.outer.param_groups:  # the schedule runs over the GSV steps
                group["lr"] = s.outer.lr_at(step - warmup, total - warmup)
            xi = self.inner.param_groups[0]["lr"]
            val_loss = self.architect.step(train_batch, val_batch, xi)

        self.inner.zero_grad(set_to_none=True)
        loss, lm, aux = self.train(train_batch)
        self.driver.backward(loss, self.theta)
        if s.inner.grad_clip:
            self.driver.clip(self.inner, s.inner.grad_clip)
        self.driver.step(self.inner)
        self.schedule.step()
        stats = self.stats(step, outer=val_loss is not None)
        return StepOutput(loss.detach(), lm.detach(), aux.detach(), val_loss, stats)

    def run(self, batches, total_steps: int | None = None) -> None:
        """Plain-torch driving: ``batches`` yields (train, val) pairs, one per real step."""
        if self.architect is None:
            self.configure(total_steps)
        for step, (train_batch, val_batch) in enumerate(batches):
            if step >= self.total_steps:
                break
            self.step(train_batch, val_batch, step)

    # -- what the GSVs select now ----------------------------------------------------------
    def selection(self) -> Selection:
        """The read-out of the GSVs now, all modules at once (on the model's device)."""
        return selection_of(self.layers.values())

    def stats(self, step: int, outer: bool) -> dict:
        """The scalars real step ``step`` logs: allocation, diagnostics, credit and price
        (after an outer step), per module every ``log_modules_every`` steps."""
        selection = self.selection()
        out = self.allocation_stats(selection)
        out.update(self.diagnostics.update(selection, step))
        if outer:
            out.update(self.control_stats())
        every = self.settings.log_modules_every
        if every and step % every == 0:
            out.update(self.module_stats(selection))
        return out

    def allocation_stats(self, selection: Selection | None = None) -> dict[str, Tensor]:
        sel = selection or self.selection()
        experts = sel.experts.float()
        stats = {
            "alloc/experts_mean": experts.mean(),
            "alloc/experts_total": experts.sum(),
            "alloc/rank_mean": sel.mean_rank.mean(),
        }
        usage = [m.usage for m in self.layers.values() if m.usage is not None]
        if usage:
            u = torch.stack(usage)
            stats["usage/max_share"] = u.max(-1).values.mean()
            stats["usage/active_experts"] = (u > 0).float().sum(-1).mean()
        return stats

    def module_stats(self, selection: Selection | None = None) -> dict[str, Tensor]:
        sel = selection or self.selection()
        experts, mean_rank = sel.experts.float(), sel.mean_rank
        out = {}
        for i, name in enumerate(self.names):
            out[f"modules/{short_name(name)}/experts"] = experts[i]
            out[f"modules/{short_name(name)}/rank"] = mean_rank[i]
        return out

    def _by_gsv(self, values: list[Tensor]) -> dict[int, Tensor]:
        return dict(zip((id(p) for p in self.gsv), values, strict=True))

    def credit_report(self) -> dict[str, dict[str, float]]:
        """Per module (short name): the credit's SNR at the moves its GSVs weigh (expert
        boundary, mean over kept experts' rank boundaries); below 1 the sign is noise."""
        snr = self._by_gsv(self.meter.snr())
        return {
            short_name(name): module_snr(
                snr[id(m.gsv_expert)],
                snr[id(m.gsv_rank)],
                torch.sigmoid(m.gsv_expert.detach()),
                torch.sigmoid(m.gsv_rank.detach()),
            )
            for name, m in self.layers.items()
        }

    def credits(self) -> dict[str, ModuleCredits]:
        """The meter's smoothed credit and deviation of every module (for budget filling)."""
        mean, dev = self._by_gsv(self.meter.corrected()), self._by_gsv(self.meter.deviation())
        return {
            n: ModuleCredits(
                mean[id(m.gsv_expert)].cpu(),
                mean[id(m.gsv_rank)].cpu(),
                dev[id(m.gsv_expert)].cpu(),
                dev[id(m.gsv_rank)].cpu(),
            )
            for n, m in self.layers.items()
        }

    def control_stats(self) -> dict[str, float]:
        """``credit/*``: the modules' median SNR (``_snr``; >= 1: most modules' credit is
        heard), their mean SNR (``_snr_mean``, pulled up by a few loud modules) and the share
        of modules whose expert / rank credit is noise (SNR < 1); ``budget/*``: the price of
        capacity and what the read-out spends."""
        report = self.credit_report()
        out = {}
        for kind in ("expert", "rank"):
            values = [r[kind] for r in report.values()]
            out[f"credit/{kind}_snr"] = statistics.median(values)
            out[f"credit/{kind}_snr_mean"] = statistics.fmean(values)
            out[f"credit/{kind}_noise_share"] = sum(v < 1 for v in values) / len(values)
        if self.pricing is not None and self.pricing.last:
            out["budget/price"] = self.pricing.last["price"]
            out["budget/readout_spent"] = self.pricing.last["spent"]
        return out

    def control_report(self) -> dict:
        """What goes into ``meta.diagnostics``: per-module SNR, its summary and the price."""
        report = {"credit_snr": self.credit_report(), "credit_steps": self.meter.steps}
        if self.meter.steps:
            report.update(self.control_stats())
        if self.pricing is not None:
            report["budget_control"] = {"mode": "lagrangian", **self.pricing.state_dict()["last"]}
        return report

    # -- the end ------------------------------------------------------------------------
    def finish(
        self, shapes: dict[str, tuple[int, int]], step: int, meta: dict | None = None
    ) -> SearchOutcome:
        """Read out the GSVs, trim to the budget, spend what it leaves by the credit
        (:func:`guilomo.search.outcome.settle`); ``meta`` plus the search's record go
        into the allocation's ``meta``. ``step``: real steps made."""
        if not self.diagnostics.started:  # no step ran
            self.diagnostics.start(self.selection(), step)
        diagnostics = self.diagnostics.report()  # the GSV read-out, before budget fitting
        diagnostics.update(self.control_report())
        s, budget = self.settings, self.budget
        gsvs = collect_gsvs(self.model)
        read = read_allocation(gsvs, top_k=s.top_k, meta=meta)
        credits = self.credits() if self.pricing is not None else None
        groups = expert_groups(self.names, s.granularity)
        allocation, fit = settle(read, gsvs, credits, budget, shapes, groups, s)
        allocation.meta.update(
            {
                "budget": budget.to_dict(),
                "budget_spent": budget.measure(allocation, shapes) if budget.active else None,
                "read_out": {"experts": read.total_experts, "total_rank": read.total_rank},
                "budget_fit": fit,
                "trainable_params": allocation.trainable_params(shapes),
                "search": s.to_dict(),
                "diagnostics": diagnostics,
            }
        )
        return SearchOutcome(read, allocation, diagnostics, budget)

    # -- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The meter's and the price's state (the optimisers are the caller's to save)."""
        return {
            "meter": self.meter.state_dict(),
            "pricing": None if self.pricing is None else self.pricing.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("meter") is not None:
            self.meter.load_state_dict(state["meter"])
        if state.get("pricing") is not None and self.pricing is not None:
            self.pricing.load_state_dict(state["pricing"])
