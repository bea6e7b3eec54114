"""The budget inside the search: a Lagrangian on the read-out's cost, with dual ascent.

All modules draw from one pool. Every outer step adds to the GSVs' loss credit the
gradient of a cost term (CoFiPruning's Lagrangian on the expected size, with the
read-out's exact cost in place of an expectation; :mod:`guilomo.search.cost`)::

    grad_G  +=  price * kappa * dC(G)/dG / unit

- ``C`` is what the current read-out spends in the budget's unit, and ``dC/dG`` at GSV
  entry ``j`` is the cost change of moving that module's boundary to ``j`` (times the
  sigmoid slope, like the loss credit). So every entry's credit carries both what its
  move is predicted to save in loss and what it costs, and one multiplier, the
  ``price``, prices capacity for all modules at once: a module gets a unit only if its predicted loss
  decrease beats the price.
- ``unit`` is one typical unit's cost (a rank row, :func:`unit_cost`) and ``kappa`` a running
  mean of ``|loss credit|`` over all GSV entries, so ``price`` is dimensionless: at
  ``price = 1`` one unit costs what a typical entry's credit is worth.
- Dual ascent (exponentiated, so ``price`` spans orders of magnitude in a few steps, as the
  credit scale differs from task to task)::

      u   = clip(C / B - 1, -1, 1)            relative over-spend of the read-out
      price = clip(price * exp(lr * u), price_min, price_max)

  Over the budget the price rises until enough modules give units back; under it the
  price falls towards ``price_min`` (about free), so modules whose units help grow and
  modules that need nothing still shrink: the budget is an upper bound, not a target.
- With a ``gain`` (``search.budget_gain``, default 0) the controller is proportional-integral
  in log price: the cost term is priced at ``price * exp(gain * u)``, the accumulated price
  moved at once by the current over-spend. The integral alone lags the read-out (the GSVs
  answer a price only after some outer steps), so a fast ``lr`` overshoots below the budget
  and a slow one is still over it when the outer learning rate has decayed
  (docs/results.md Run 4); the proportional part answers the current over-spend without
  accumulating it. ``last["price"]`` is the price the current spend carries after the
  step, ``last["integral"]`` its accumulated part (the same with ``gain=0``).

After the search, :func:`guilomo.search.trim.fit_budget` trims what is still over
(fewest units: the controller keeps the read-out near the budget) and
:func:`guilomo.search.fill.fill_budget` spends what is left on units whose smoothed
credit predicts a loss decrease.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from guilomo.budget import Budget
from guilomo.search.cost import readout_cost, unit_cost

PRICE_MIN, PRICE_MAX = 1e-3, 1e4


def _clip(price: float) -> float:
    return min(PRICE_MAX, max(PRICE_MIN, price))


def _grads(value: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    return list(torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True))


class BudgetLagrangian:
    """Prices capacity during the outer steps so the read-out stays within ``budget``.

    Args:
        layers: the search layers (any set; :class:`SearchLoraMoELinear`).
        budget: an active :class:`Budget` (``experts``, ``rank`` or ``params``).
        lr: step of the exponentiated dual ascent.
        price: initial price (1: a unit is worth a typical credit).
        kappa_beta: EMA factor of the credit scale ``kappa``.
        gain: proportional gain on the log price (0: the dual ascent alone).
    """

    def __init__(
        self,
        layers: Sequence,
        budget: Budget,
        lr: float = 0.3,
        price: float = 1.0,
        kappa_beta: float = 0.9,
        gain: float = 0.0,
    ):
        if not budget.active:
            raise ValueError("a budget-constrained search needs an active budget (budget=...)")
        if lr <= 0 or price <= 0:
            raise ValueError(f"search.budget_lr={lr} and search.budget_price={price} must be > 0")
        if gain < 0:
            raise ValueError(f"search.budget_gain={gain} must be >= 0")
        self.layers = list(layers)
        self.budget = budget
        self.lr, self.price, self.kappa_beta = float(lr), float(price), float(kappa_beta)
        self.gain = float(gain)
        self.unit = unit_cost(self.layers, budget.kind)
        self.kappa: float | None = None
        self.last: dict = {}

    def cost(self) -> Tensor:
        return readout_cost(self.layers, self.budget.kind)

    def penalty(self, gsv: Sequence[Tensor], credit: Sequence[Tensor]) -> list[Tensor]:
        """The cost gradients to add to ``credit`` (the loss credit of ``gsv``), and a dual step."""
        scale = torch.stack([g.detach().abs().mean() for g in credit if g.numel()]).mean()
        scale = float(scale)
        if math.isfinite(scale) and scale > 0:
            b = self.kappa_beta
            self.kappa = scale if self.kappa is None else b * self.kappa + (1 - b) * scale
        kappa = self.kappa or 0.0
        cost = self.cost()
        spent = float(cost.detach())
        grads = _grads(cost, gsv)
        applied = self.applied_price(spent)
        out = [g * (applied * kappa / self.unit) for g in grads]
        self.dual_step(spent)
        return out

    def over(self, spent: float) -> float:
        """Relative over-spend ``clip(spent / budget - 1, -1, 1)``."""
        return max(-1.0, min(1.0, spent / self.budget.value - 1.0))

    def applied_price(self, spent: float) -> float:
        """The price the cost term carries: the accumulated price times ``exp(gain * u)``."""
        return _clip(self.price * math.exp(self.gain * self.over(spent)))

    def dual_step(self, spent: float) -> None:
        over = self.over(spent)
        self.price = _clip(self.price * math.exp(self.lr * over))
        self.last = {
            "spent": spent,
            "over": over,
            "price": self.applied_price(spent),
            "integral": self.price,
            "kappa": self.kappa or 0.0,
        }

    def state_dict(self) -> dict:
        return {"price": self.price, "kappa": self.kappa, "last": dict(self.last)}

    def load_state_dict(self, state: dict) -> None:
        # "lam": the price's name in checkpoints written before it had one name
        self.price = float(state["price"] if "price" in state else state["lam"])
        self.kappa = None if state.get("kappa") is None else float(state["kappa"])
        self.last = dict(state.get("last") or {})
