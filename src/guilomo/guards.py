"""Stop a diverging run: a non-finite loss, gradient, weight or GSV raises at once.

:class:`FiniteGuard` is a Lightning callback; both LightningModules add it in
``configure_callbacks`` (:func:`guard_callbacks`), so it runs under any ``callbacks``
config (also ``none`` and ``debug=fast``). Per step it costs one ``isfinite`` reduction per tensor and a single
host sync per check, far cheaper than ``detect_anomaly``. The checks run

- on the loss, before backward;
- on the gradients, before each (inner) optimiser step, so a bad gradient never
  reaches the weights;
- on every trainable tensor (weights, routers, GSVs) at the end of each batch, before
  any checkpoint is written (Lightning runs checkpoint callbacks last),

so the last checkpoint on disk is always from before the divergence and the run
stops before writing ``metrics.json`` or ``allocation.json``.
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import torch
from torch import Tensor

# A GSV is a logit read through a sigmoid: beyond a few tens it is saturated, and a value
# past this bound only comes from an exploding outer step (e.g. search.outer.lr=1e30
# gives finite GSVs of ~1e30 that freeze the allocation at a meaningless read-out).
GSV_LIMIT = 1e6


class NonFiniteError(RuntimeError):
    """A loss, gradient or trained tensor became NaN or Inf; the message names which."""


def first_non_finite(named: Iterable[tuple[str, Tensor]]) -> str | None:
    """Name of the first tensor holding a NaN or Inf, else None (one host sync)."""
    named = [(n, t) for n, t in named if t is not None]
    if not named:
        return None
    flags = torch.stack([torch.isfinite(t).all() for _, t in named])
    if bool(flags.all()):
        return None
    return named[int((~flags).nonzero()[0])][0]


def guard_callbacks(module: L.LightningModule, fix: str) -> list[L.Callback]:
    """What a module's ``configure_callbacks`` returns: a :class:`FiniteGuard` with ``fix``,
    unless its trainer runs one already. Lightning asks again on every ``fit`` /
    ``validate`` of the same trainer; a second guard would replace the first and print
    that it "will override existing callbacks"."""
    trainer = module._trainer  # None outside a trainer (the property would raise)
    if trainer is not None and any(isinstance(c, FiniteGuard) for c in trainer.callbacks):
        return []
    return [FiniteGuard(fix=fix)]


class FiniteGuard(L.Callback):
    """Raise :class:`NonFiniteError` (step, quantity, last checkpoint, fix) on divergence."""

    def __init__(self, fix: str = "lower the learning rate or raise the warm-up"):
        self.fix = fix
        self._names: dict[int, str] | None = None

    def _param_names(self, pl_module) -> dict[int, str]:
        if self._names is None:
            self._names = {id(p): n for n, p in pl_module.named_parameters()}
        return self._names

    def _fail(self, trainer, what: str, problem: str = "is NaN or Inf") -> None:
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        kept = f"; the last checkpoint, from before, is {ckpt}" if ckpt else ""
        raise NonFiniteError(
            f"the run diverged: {what} {problem}{kept}. Nothing was written from the "
            f"diverged state; {self.fix}"
        )

    def on_before_backward(self, trainer, pl_module, loss: Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            self._fail(trainer, f"the loss of step {trainer.global_step + 1} ({loss.item()})")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        names = self._param_names(pl_module)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        bad = first_non_finite((names.get(id(p), "?"), p.grad) for p in params)
        if bad:
            self._fail(trainer, f"the gradient of {bad} at step {trainer.global_step + 1}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        trained = ((n, p.detach()) for n, p in pl_module.named_parameters() if p.requires_grad)
        bad = first_non_finite(trained)
        if bad:
            kind = "the GSV" if "gsv" in bad else "the trained tensor"
            self._fail(trainer, f"{kind} {bad} after step {trainer.global_step}")
        gsvs = [(n, p) for n, p in pl_module.named_parameters() if "gsv" in n]
        if gsvs:
            big = torch.stack([p.detach().abs().max() for _, p in gsvs])
            if bool((big > GSV_LIMIT).any()):
                name, value = gsvs[int((big > GSV_LIMIT).nonzero()[0])][0], big.max().item()
                self._fail(
                    trainer,
                    f"the GSV {name} after step {trainer.global_step}",
                    f"exploded to {value:.3g} (> {GSV_LIMIT:g})",
                )
