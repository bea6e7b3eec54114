"""Smoothing the GSV credit over steps, and how much of it is signal (AdaLoRA-style).

One outer step's hypergradient on a GSV entry is a noisy estimate from one held-out
batch. The meter keeps, per GSV entry, the exponential moving averages AdaLoRA keeps
for its importance scores (peft ``RankAllocator``: sensitivity and uncertainty)::

    m_t = beta m_{t-1} + (1 - beta) c_t                  the smoothed credit
    u_t = beta u_{t-1} + (1 - beta) |c_t - m_{t-1}|      its typical deviation

in the sigmoid space of the GSV (``c = dL/ds``: with the neighbour credit, entry ``j``
holds the first-order loss change of moving the boundary to ``j``, so ``c_j - c_{j-1}``
is the value of unit ``j``). The logit-space gradient the Architect hands over is
divided by ``s (1 - s)`` on the way in and multiplied back on the way out.

- ``smoothed(params)``: the bias-corrected ``m`` as logit-space gradients, what the
  outer optimiser steps on when ``search.credit_ema > 0``.
- ``snr``: ``|m| / u`` per entry. A unit whose credit's sign is noise has SNR well
  below 1; :func:`module_snr` summarises it at the moves each GSV is weighing (the
  entries next to its boundary).
- ``unit_values``: ``-(m_j - m_{j-1})`` per entry, the smoothed predicted loss decrease of
  adding unit ``j`` to the prefix ``0..j-1`` (budget filling uses it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from guilomo.search.gsv import MIN_EXPERTS, prefix_index

TINY = 1e-12


def _slope(p: Tensor) -> Tensor:
    s = torch.sigmoid(p.detach().float())
    return (s * (1 - s)).clamp(min=TINY)


class CreditMeter:
    """EMA of the credit and of its deviation, per entry of every GSV parameter."""

    def __init__(self, params: Sequence[Tensor], beta: float = 0.9):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"credit EMA beta={beta} must be in [0, 1)")
        self.beta = float(beta)
        self.mean = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.dev = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        self.steps = 0

    @torch.no_grad()
    def update(self, grads: Sequence[Tensor], params: Sequence[Tensor]) -> None:
        """Take one step's logit-space credit of ``params``."""
        b = self.beta
        for m, u, g, p in zip(self.mean, self.dev, grads, params, strict=True):
            c = g.detach().float() / _slope(p)
            u.mul_(b).add_((c - m).abs(), alpha=1 - b)
            m.mul_(b).add_(c, alpha=1 - b)
        self.steps += 1

    def corrected(self) -> list[Tensor]:
        """Bias-corrected smoothed credit in sigmoid space (zeros before any update)."""
        k = 1 - self.beta**self.steps if self.steps else 1.0
        return [m / k for m in self.mean]

    @torch.no_grad()
    def deviation(self) -> list[Tensor]:
        """Bias-corrected deviation ``u`` in sigmoid space."""
        k = 1 - self.beta**self.steps if self.steps else 1.0
        return [u / k for u in self.dev]

    def smoothed(
        self, params: Sequence[Tensor], parsimony: float | tuple[float, float] = 0.0
    ) -> list[Tensor]:
        """The smoothed credit as logit-space gradients at the current GSVs.

        ``parsimony = z > 0`` takes the pessimistic side of each move by ``z`` deviations:
        ``m_j + z u_j sign(j - k*)``, so a move to a larger prefix must be predicted to
        help by more than its noise, and a move to a smaller one is taken unless it is
        clearly predicted to hurt (a credit whose sign is noise shrinks the module).
        A pair ``(z_expert, z_rank)`` sets it per GSV kind: expert GSVs are the 1-D ones
        (their boundary counts from ``MIN_EXPERTS - 1``), rank GSVs the 2-D ones.
        """
        out = []
        z_expert, z_rank = parsimony if isinstance(parsimony, tuple) else (parsimony, parsimony)
        for c, u, p in zip(self.corrected(), self.deviation(), params, strict=True):
            z = z_expert if p.dim() == 1 else z_rank
            if z:
                s = torch.sigmoid(p.detach().float())
                k = prefix_index(s, MIN_EXPERTS - 1 if p.dim() == 1 else 0)
                side = torch.sign(torch.arange(s.shape[-1], device=s.device) - k)
                c = c + z * u * side
            out.append((c * _slope(p)).to(p.dtype))
        return out

    def snr(self) -> list[Tensor]:
        return [
            m.abs() / u.clamp(min=TINY)
            for m, u in zip(self.corrected(), self.deviation(), strict=True)
        ]

    def state_dict(self) -> dict:
        return {"beta": self.beta, "steps": self.steps, "mean": self.mean, "dev": self.dev}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for dst, src in ((self.mean, state["mean"]), (self.dev, state["dev"])):
            for d, s in zip(dst, src, strict=True):
                d.copy_(s)


def unit_values(credit: Tensor) -> Tensor:
    """``-(c_j - c_{j-1})`` along the last dim (entry 0: ``-c_0``... undefined, set to 0)."""
    v = -(credit[..., 1:] - credit[..., :-1])
    return torch.cat([torch.zeros_like(credit[..., :1]), v], -1)


def boundary_snr(snr: Tensor, s: Tensor, min_index: int = 0) -> Tensor:
    """Per GSV row, the best SNR of the two moves next to its boundary (``k* - 1``, ``k* + 1``)."""
    k = prefix_index(s, min_index)
    n = s.shape[-1]
    lo = (k - 1).clamp(min=min_index)
    hi = (k + 1).clamp(max=n - 1)
    both = torch.cat([snr.gather(-1, lo), snr.gather(-1, hi)], -1)
    # a boundary with no move on one side (at the floor or the top) uses the other one
    both = torch.where(torch.cat([lo == k, hi == k], -1), torch.zeros_like(both), both)
    return both.max(-1).values


def module_snr(expert_snr: Tensor, rank_snr: Tensor, s_e: Tensor, s_r: Tensor) -> dict:
    """SNR at the boundary of a module's expert GSV and mean over its kept experts' rank GSVs."""
    experts = int(prefix_index(s_e, MIN_EXPERTS - 1)) + 1
    rank = boundary_snr(rank_snr[:experts], s_r[:experts])
    return {
        "expert": float(boundary_snr(expert_snr, s_e, MIN_EXPERTS - 1)),
        "rank": float(rank.mean()),
    }
