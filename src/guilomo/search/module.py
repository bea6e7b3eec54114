"""The search LightningModule: Lightning drives the :class:`SearchLoop`, in manual optimisation.

The algorithm (outer step, inner step, schedules, warm-up prefixes, credit meter,
price) is the :class:`~guilomo.search.loop.SearchLoop`'s; this module only

- builds the loop's optimisers and schedule for Lightning (``configure_optimizers``,
  with the real number of steps) and hands the loop Lightning's backward, clipping and
  inner optimiser step (:class:`LightningDriver`: precision, DDP, ``global_step``);
- fetches each step's (train, val) pair: val batches come from the datamodule's held-out
  split (cycled), or with ``val_source="alternate"`` from every second training
  micro-batch (the reference); either way ``global_step`` and the schedules count real
  steps (only the inner optimiser steps through Lightning);
- logs what the loop returns (``train/*``, ``val/loss``, ``alloc/*``, ``diag/*``,
  ``gsv/*``, ``credit/*``, ``budget/*``, ``modules/*``);
- saves and restores the exact state of a resume: RNG states, the position in the
  held-out pass, an alternate pair's train half, the loop's meter and price and the
  :class:`SearchDiagnostics` (the optimisers and the scheduler are Lightning's to save).
"""

from __future__ import annotations

import math
import warnings

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from guilomo.budget import Budget
from guilomo.guards import guard_callbacks
from guilomo.objective import Objective
from guilomo.search.architect import Architect
from guilomo.search.config import SearchSettings
from guilomo.search.credit import CreditMeter
from guilomo.search.diagnostics import (
    DIAGNOSTICS_KEY,
    SearchDiagnostics,
    SearchWarning,
    Selection,
)
from guilomo.search.lagrangian import BudgetLagrangian
from guilomo.search.loop import SearchLoop
from guilomo.utils.rng import gather_rng_states, process_position, restore_rng_states
from guilomo.validate import FINGERPRINT


def shard_like_train(loader, trainer: L.Trainer):
    """``loader`` with a ``DistributedSampler`` under data parallelism (no shuffling).

    Lightning puts one on the train loader itself; the held-out val loader feeds the
    outer step, not a Lightning loop, so it gets the same sharding here (from the
    strategy's ``distributed_sampler_kwargs``): each process takes its own val
    examples, and the mean hypergradient is that of the global val batch.
    """
    kwargs = trainer.distributed_sampler_kwargs
    if not kwargs or kwargs.get("num_replicas", 1) < 2 or not isinstance(loader, DataLoader):
        return loader
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=DistributedSampler(loader.dataset, shuffle=False, **kwargs),
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
    )


class LightningDriver:
    """The loop's backward, clipping and inner step through Lightning's manual optimisation."""

    def __init__(self, module: L.LightningModule):
        self.module = module

    def _wrapped(self, optimizer: torch.optim.Optimizer):
        return next(o for o in self.module.optimizers() if o.optimizer is optimizer)

    def backward(self, loss: Tensor, inputs: list[Tensor]) -> None:
        self.module.manual_backward(loss, inputs=inputs)

    def clip(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        self.module.clip_gradients(
            self._wrapped(optimizer), gradient_clip_val=max_norm, gradient_clip_algorithm="norm"
        )

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        self._wrapped(optimizer).step()  # counts global_step


class SearchModule(L.LightningModule):
    """Searches expert counts and ranks of the :class:`SearchLoraMoELinear` layers of ``model``.

    Args:
        model: a causal LM with the search adapter injected (:func:`inject_search_adapter`).
        settings: the search settings.
        aux_coef, aux_reduction: weight and reduction of the load-balancing loss.
        val_dataloader: held-out batches; default: ``trainer.datamodule.val_dataloader()``.
        sparse_logits: the LM head only on target positions (same loss, less compute).
        budget: the run's budget; with ``settings.budget_mode="lagrangian"`` it is
            enforced during the outer steps.
        init_seed: seed of the GSV init (the random warm-up prefixes derive from it).
    """

    def __init__(
        self,
        model: nn.Module,
        settings: SearchSettings | None = None,
        aux_coef: float = 0.001,
        aux_reduction: str = "mean",
        val_dataloader=None,
        run_info: dict | None = None,
        sparse_logits: bool = True,
        budget: Budget | None = None,
        init_seed: int = 0,
    ):
        super().__init__()
        self.model = model
        objective = Objective(model, aux_coef, aux_reduction, sparse_logits)
        self.loop = SearchLoop(model, settings, objective, budget=budget, init_seed=init_seed)
        self.loop.driver = LightningDriver(self)
        self.settings = self.loop.settings
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold the adapter and the GSVs only
        self.run_info = run_info  # what the run is (checked before a resume loads the model)
        self._val_loader = val_dataloader
        self._val_iter = None
        self._val_taken = 0  # batches drawn from the current pass over the val split
        self._val_resume = 0  # after a resume: batches of the pass to skip
        self._pending: dict | None = None  # alternate: the train half of the pair
        # DDP must not wait for GSV gradients: the Architect averages them itself
        gsv = {id(p) for p in self.loop.gsv}
        self._ddp_params_and_buffers_to_ignore = [
            n for n, p in self.named_parameters() if id(p) in gsv
        ]

    # -- the loop's parts, by the names the run and the tests use --------------------------
    @property
    def diagnostics(self) -> SearchDiagnostics:
        return self.loop.diagnostics

    @property
    def meter(self) -> CreditMeter:
        return self.loop.meter

    @property
    def pricing(self) -> BudgetLagrangian | None:
        return self.loop.pricing

    @property
    def architect(self) -> Architect | None:
        return self.loop.architect

    @property
    def total_steps(self) -> int | None:
        return self.loop.total_steps

    @property
    def _layers(self) -> dict:
        return self.loop.layers

    @property
    def _names(self) -> list[str]:
        return self.loop.names

    def selection(self) -> Selection:
        return self.loop.selection()

    # -- losses -------------------------------------------------------------------------
    def train_objective(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """(L_train + aux_coef * L_aux, L_train, L_aux)."""
        return self.loop.train(batch)

    def train_loss(self, batch: dict) -> Tensor:
        return self.loop.train(batch)[0]

    def val_loss(self, batch: dict) -> Tensor:
        """L_val: LM loss only (no aux term); adapter dropout only if ``outer_dropout``."""
        return self.loop.val_loss(batch)

    def outer_train_loss(self, batch: dict) -> Tensor:
        """L_train as the outer step sees it (virtual step, finite differences)."""
        return self.loop.outer_train_loss(batch)

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        """L_val of a held-out batch, logged as ``val/loss``. ``run_search`` turns Lightning's
        val loop off (``limit_val_batches=0``): the outer step draws the held-out batches
        itself and the run scores the whole split once at the end (``heldout_loss``)."""
        loss = self.val_loss(batch)
        self.log("val/loss", loss, batch_size=batch["input_ids"].shape[0])
        return loss

    # -- optimisers -----------------------------------------------------------------------
    def configure_callbacks(self):
        fix = "lower search.inner.lr / search.outer.lr or raise search.inner.warmup_steps"
        return guard_callbacks(self, fix=fix)

    def configure_optimizers(self):
        reduce = self._mean_over_processes if self.trainer.world_size > 1 else None
        inner, outer, schedule = self.loop.configure(self.count_real_steps(), reduce)
        return [inner, outer], [{"scheduler": schedule, "interval": "step"}]

    def count_real_steps(self) -> int:
        """Real (inner) steps of the fit: ``max_steps``, or epochs x batches (halved for alternate)."""
        trainer = self.trainer
        trainer.estimated_stepping_batches  # noqa: B018  (sets up the train dataloader)
        batches = trainer.num_training_batches
        per_epoch = batches // 2 if self.settings.val_source == "alternate" else batches
        epochs = trainer.max_epochs
        by_epochs = per_epoch * epochs if epochs not in (None, -1) else math.inf
        by_steps = trainer.max_steps if trainer.max_steps not in (None, -1) else math.inf
        total = min(by_epochs, by_steps)
        if not math.isfinite(total) or total < 1:
            raise ValueError(
                f"cannot tell how many steps the search runs ({batches} batches per epoch, "
                f"max_epochs={epochs}, max_steps={trainer.max_steps}): set trainer.max_steps"
            )
        return int(total)

    def _mean_over_processes(self, flat: Tensor) -> Tensor:
        return self.trainer.strategy.reduce(flat, reduce_op="mean")

    def on_fit_start(self) -> None:
        # backbones load in eval mode and Lightning keeps submodule modes as they are:
        # the search trains with adapter dropout and the load-balancing loss (train mode)
        self.model.train()
        self.diagnostics.window = max(1, int(self.trainer.log_every_n_steps or 1))

    # -- validation batches ---------------------------------------------------------------
    def _val_source(self):
        if self._val_loader is not None:
            return self._val_loader
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            raise ValueError(
                "search.val_source=heldout needs val batches: pass a datamodule with a val split "
                "to trainer.fit, or set search.val_source=alternate"
            )
        self._val_loader = shard_like_train(dm.val_dataloader(), self.trainer)
        return self._val_loader

    def next_val_batch(self) -> dict:
        for _ in range(2):
            if self._val_iter is None:
                source = self._val_source()
                self._val_iter, self._val_taken = iter(source), 0
                skip, self._val_resume = self._val_resume, 0
                skip = skip if skip < len(source) else 0  # the pass had ended: a new one
                for _ in range(skip):  # resumed mid-pass: continue where the checkpoint was
                    next(self._val_iter)
                    self._val_taken += 1
            try:
                batch = next(self._val_iter)
                self._val_taken += 1
                return {
                    k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()
                }
            except StopIteration:
                self._val_iter = None
        raise ValueError(
            "the held-out val split is empty: raise task.datamodule.val_size or set "
            "search.val_source=alternate"
        )

    # -- one step -------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int):
        if self.settings.val_source == "alternate":
            if self._pending is None:
                self._pending = batch
                return None
            train_batch, val_batch, self._pending = self._pending, batch, None
        else:
            train_batch, val_batch = batch, self.next_val_batch()
        out = self.loop.step(train_batch, val_batch, self.global_step)
        bs = int(train_batch["input_ids"].shape[0])
        self.log("train/loss", out.lm, prog_bar=True, batch_size=bs)
        self.log("train/aux_loss", out.aux, batch_size=bs)
        if out.val_loss is not None:
            self.log("val/loss", out.val_loss, prog_bar=True, batch_size=bs)
        self.log_dict(out.stats, batch_size=bs)
        return out.loss

    # -- checkpoints: adapter tensors and GSVs only, plus the diagnostics ----------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {n for n, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        if self.run_info is not None:
            checkpoint[FINGERPRINT] = self.run_info
        checkpoint[DIAGNOSTICS_KEY] = self.diagnostics.state_dict()
        # exact resume: the RNG states (dropout), where the held-out val pass stands, and the
        # train half of an alternate pair; the GSVs are parameters, the optimisers, the
        # scheduler and the train loader's position are saved by Lightning
        checkpoint["rng"] = gather_rng_states(self)  # one state per process
        checkpoint["search_state"] = {
            "val_batches": self._val_taken,
            "pending": self._pending,
            **self.loop.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng" in checkpoint:
            restore_rng_states(checkpoint["rng"], *process_position(self))
        state = checkpoint.get("search_state") or {}
        self._val_iter, self._val_resume = None, int(state.get("val_batches", 0))
        self._pending = state.get("pending")
        self.loop.load_state_dict(state)
        if DIAGNOSTICS_KEY in checkpoint:
            self.diagnostics.load_state_dict(checkpoint[DIAGNOSTICS_KEY])
        else:
            warnings.warn(
                "the checkpoint holds no search diagnostics: they restart at the resumed step, "
                "with its read-out taken as step 0",
                SearchWarning,
                stacklevel=2,
            )
