"""The outer (GSV) step of the bilevel search, first or second order (DARTS).

``Architect.step(train_batch, val_batch, xi)`` sets ``.grad`` of every GSV to the
hypergradient and steps the outer optimiser:

- ``order="first"``: ``grad_G = dL_val(Theta, G)/dG``.
- ``order="second"``: virtual step ``Theta' = Theta - xi * grad_Theta L_train``
  (``virtual_step="sgd"``) or one real step of the inner AdamW
  (``virtual_step="adamw"``, the reference's form); on the val batch
  ``d_G = dL_val(Theta', G)/dG`` and ``v = dL_val(Theta', G)/dTheta'``; Theta is
  restored; then the finite-difference Hessian-vector product with
  ``eps = 0.01 / ||v||``::

      H = [dL_train(Theta + eps v)/dG - dL_train(Theta - eps v)/dG] / (2 eps)
      grad_G = d_G - xi * H

Before the outer optimiser steps, an optional :class:`CreditMeter` takes the
hypergradient (and replaces it by its moving average when ``smooth``), and an optional
:class:`BudgetLagrangian` adds the read-out's priced cost gradient, so a budget is
enforced for any set of search layers an Architect drives.

After the step the inner weights and the inner optimiser's state (``exp_avg``,
``exp_avg_sq``, ``step``) are bit-identical to what they were before; the reference's
restore does nothing, so its Adam moments see every batch twice. The train-loss
passes of one step share one RNG state (the same dropout masks), so the finite
difference sees only the ``eps v`` perturbation, not dropout noise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from guilomo.search.credit import CreditMeter
from guilomo.search.lagrangian import BudgetLagrangian

ORDERS = ("first", "second")
VIRTUAL_STEPS = ("sgd", "adamw")
FD_SCALE = 0.01  # eps = FD_SCALE / ||v||


# -- exact snapshots ----------------------------------------------------------------------
@dataclass
class OptimizerSnapshot:
    state: dict
    groups: list[dict]


def snapshot_optimizer(opt: torch.optim.Optimizer) -> OptimizerSnapshot:
    """Deep copy of an optimiser's per-parameter state and hyperparameters."""
    state = {
        p: {
            k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)
            for k, v in s.items()
        }
        for p, s in opt.state.items()
    }
    groups = [
        {k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in opt.param_groups
    ]
    return OptimizerSnapshot(state, groups)


@torch.no_grad()
def restore_optimizer(opt: torch.optim.Optimizer, snap: OptimizerSnapshot) -> None:
    """Put ``opt`` back exactly as in ``snap`` (tensors copied in place where possible)."""
    for p in [p for p in opt.state if p not in snap.state]:
        del opt.state[p]
    for p, saved in snap.state.items():
        cur = opt.state[p]
        for k in [k for k in cur if k not in saved]:
            del cur[k]
        for k, v in saved.items():
            old = cur.get(k)
            if (
                isinstance(v, Tensor)
                and isinstance(old, Tensor)
                and old.shape == v.shape
                and old.dtype == v.dtype
            ):
                old.copy_(v)
            else:
                cur[k] = v.clone() if isinstance(v, Tensor) else copy.deepcopy(v)
    for g, saved in zip(opt.param_groups, snap.groups, strict=True):
        g.update(copy.deepcopy(saved))


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _grads(loss: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))


def mean_over_processes(
    tensors: list[Tensor], reduce: Callable[[Tensor], Tensor] | None
) -> list[Tensor]:
    """``tensors`` averaged over data-parallel processes with one ``reduce`` call.

    ``reduce`` maps a flat tensor to its mean over processes (the module passes
    Lightning's ``trainer.strategy.reduce``); ``None`` means a single process. Gradients
    taken with ``torch.autograd.grad`` are not all-reduced by DDP, so without this the
    GSVs (and the second order's virtual step and perturbation) would differ per process.
    """
    if reduce is None or not tensors:
        return tensors
    flat = reduce(torch.cat([t.reshape(-1) for t in tensors]))
    return [
        f.view_as(t) for f, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)
    ]


# -- the outer step -----------------------------------------------------------------------
class Architect:
    """Computes the GSV hypergradient and steps the outer optimiser.

    Args:
        inner_params: Theta (A, B, lambda, routers).
        gsv_params: G (expert and rank GSVs).
        inner_optimizer: the inner optimiser (a plain ``torch.optim`` one); used by the
            ``adamw`` virtual step and always restored exactly.
        outer_optimizer: optimiser of ``gsv_params``.
        train_loss: ``batch -> L_train`` (the inner objective, aux loss included).
        val_loss: ``batch -> L_val``.
        reduce: flat tensor -> its mean over data-parallel processes (``None``: one
            process). Under DDP every process then takes the same outer step, equal
            to the one a single process would take on the global batch (each process
            holding a shard): the virtual step uses the mean train gradient, the
            finite differences the mean ``v`` (so the same ``eps``), and the
            hypergradient is the mean of the per-process ones, which is linear in
            them given the shared Theta' and ``v``.
        meter: tracks the credit's moving average and deviation (diagnostics).
        smooth: step on the meter's moving average instead of this step's credit.
        parsimony: with ``smooth``, the deviations by which every move is judged
            pessimistically (:meth:`CreditMeter.smoothed`): units whose credit is noise go.
        pricing: adds the budget's priced cost gradient (a budget-constrained search).
    """

    def __init__(
        self,
        inner_params: Sequence[nn.Parameter],
        gsv_params: Sequence[nn.Parameter],
        inner_optimizer: torch.optim.Optimizer,
        outer_optimizer: torch.optim.Optimizer,
        train_loss: Callable[[dict], Tensor],
        val_loss: Callable[[dict], Tensor],
        order: str = "first",
        virtual_step: str = "sgd",
        reduce: Callable[[Tensor], Tensor] | None = None,
        meter: CreditMeter | None = None,
        smooth: bool = False,
        pricing: BudgetLagrangian | None = None,
        parsimony: float | tuple[float, float] = 0.0,
    ):
        if order not in ORDERS:
            raise ValueError(f"order='{order}' is not one of {list(ORDERS)}")
        if virtual_step not in VIRTUAL_STEPS:
            raise ValueError(f"virtual_step='{virtual_step}' is not one of {list(VIRTUAL_STEPS)}")
        self.theta = list(inner_params)
        self.gsv = list(gsv_params)
        self.inner_optimizer, self.outer_optimizer = inner_optimizer, outer_optimizer
        self.train_loss, self.val_loss = train_loss, val_loss
        self.order, self.virtual_step = order, virtual_step
        self.reduce = reduce
        if smooth and meter is None:
            raise ValueError("smooth=True needs a CreditMeter (meter=...)")
        self.meter, self.smooth, self.pricing = meter, smooth, pricing
        self.parsimony = parsimony

    def hypergradient(
        self, train_batch: dict, val_batch: dict, xi: float
    ) -> tuple[list[Tensor], Tensor]:
        """(grad_G per GSV, averaged over processes; detached local val loss).

        Weights and optimiser state are left unchanged."""
        if self.order == "first":
            loss = self.val_loss(val_batch)
            return self._mean(_grads(loss, self.gsv)), loss.detach()
        return self._second_order(train_batch, val_batch, xi)

    def _mean(self, tensors: list[Tensor]) -> list[Tensor]:
        return mean_over_processes(tensors, self.reduce)

    def step(self, train_batch: dict, val_batch: dict, xi: float) -> Tensor:
        """One outer step; returns the (detached) validation loss it was computed on."""
        grads, loss = self.hypergradient(train_batch, val_batch, xi)
        if self.meter is not None:
            self.meter.update(grads, self.gsv)
            if self.smooth:
                grads = self.meter.smoothed(self.gsv, self.parsimony)
        if self.pricing is not None:
            extra = self.pricing.penalty(self.gsv, grads)
            grads = [g + e.to(g.dtype) for g, e in zip(grads, extra, strict=True)]
        for p, g in zip(self.gsv, grads, strict=True):
            p.grad = g
        self.outer_optimizer.step()
        self.outer_optimizer.zero_grad(set_to_none=True)
        return loss

    # -- second order ---------------------------------------------------------------------
    def _second_order(
        self, train_batch: dict, val_batch: dict, xi: float
    ) -> tuple[list[Tensor], Tensor]:
        theta, ng = self.theta, len(self.gsv)
        device = theta[0].device if theta else torch.device("cpu")
        saved = [p.detach().clone() for p in theta]
        opt_snap = (
            snapshot_optimizer(self.inner_optimizer) if self.virtual_step == "adamw" else None
        )
        rng = _rng_state(device)
        try:
            # 1. virtual step Theta' on the train batch
            g_train = self._mean(_grads(self.train_loss(train_batch), theta))
            self._virtual_step(g_train, xi)
            # 2. d_G and v on the val batch at Theta'
            loss = self.val_loss(val_batch)
            both = _grads(loss, [*self.gsv, *theta])
            d_g, v = both[:ng], self._mean(both[ng:])  # d_G is averaged with H below
            del both, g_train
            self._restore(saved, opt_snap)
            after_val = _rng_state(device)
            # 3. finite-difference Hessian-vector product at Theta +- eps v (no host sync)
            if not xi or not v:
                return self._mean(d_g), loss.detach()
            norm = torch.sqrt(sum((x.double() ** 2).sum() for x in v))
            eps = torch.where(norm > 0, FD_SCALE / norm, torch.zeros_like(norm))
            with torch.no_grad():
                for p, x in zip(theta, v, strict=True):
                    p.add_(x * eps.to(x.dtype))
            _set_rng_state(rng, device)
            g_pos = _grads(self.train_loss(train_batch), self.gsv)
            with torch.no_grad():
                for p, s, x in zip(theta, saved, v, strict=True):
                    p.copy_(s).sub_(x * eps.to(x.dtype))
            _set_rng_state(rng, device)
            g_neg = _grads(self.train_loss(train_batch), self.gsv)
            coef = torch.where(eps > 0, xi / (2 * eps.clamp(min=1e-30)), torch.zeros_like(eps))
            grads = self._mean(
                [
                    d - (gp - gn) * coef.to(d.dtype)
                    for d, gp, gn in zip(d_g, g_pos, g_neg, strict=True)
                ]
            )
            _set_rng_state(after_val, device)
            return grads, loss.detach()
        finally:
            self._restore(saved, opt_snap)

    @torch.no_grad()
    def _virtual_step(self, g_train: list[Tensor], xi: float) -> None:
        if self.virtual_step == "sgd":
            for p, g in zip(self.theta, g_train, strict=True):
                p.add_(g, alpha=-xi)
            return
        old = [p.grad for p in self.theta]
        for p, g in zip(self.theta, g_train, strict=True):
            p.grad = g
        self.inner_optimizer.step()
        for p, g in zip(self.theta, old, strict=True):
            p.grad = g

    @torch.no_grad()
    def _restore(self, saved: list[Tensor], opt_snap: OptimizerSnapshot | None) -> None:
        for p, s in zip(self.theta, saved, strict=True):
            p.copy_(s)
        if opt_snap is not None:
            restore_optimizer(self.inner_optimizer, opt_snap)
