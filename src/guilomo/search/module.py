"""The search LightningModule: bilevel optimisation of the GSVs, in manual optimisation.

Each real step takes a (train batch, val batch) pair:

1. if due (``warmup_outer_steps``, ``outer_every``), the :class:`Architect` makes the
   outer step: GSV hypergradient (first or second order) and Adam on the GSVs;
2. the inner step: ``L_train + aux_coef * L_aux`` on the train batch, backward into
   Theta only, gradient clipping, AdamW, LR scheduler (warm-up, linear decay to 0
   over the real number of steps).

The outer step's losses are those of the deterministic model: L_val has no aux term
and, unless ``outer_dropout`` (the reference), the outer passes run without adapter
dropout; the inner step always trains with dropout and the aux loss.

Val batches come from the datamodule's held-out split (cycled), or with
``val_source="alternate"`` from every second training micro-batch (the reference);
either way ``global_step`` and the schedule count real steps: only the inner
optimiser's step goes through Lightning (the outer one is stepped raw).

With an active budget and ``budget_mode="lagrangian"`` the Architect prices capacity
(:class:`BudgetLagrangian`), so the read-out stays within the budget during the search;
a :class:`CreditMeter` always tracks the credit's moving average and its signal-to-noise
(``credit/*``; :meth:`credit_report` per module). During the warm-up
(``search.warmup(total)`` real steps) no GSV moves and the inner weights train under
``warmup_prefix`` (``full``: every expert and rank on; ``random``: a prefix drawn per
step from a generator seeded by the GSV init seed and the step, so a resume draws the
same ones).

Every real step also updates the :class:`SearchDiagnostics` (distance of the read-out
from step 0, argmax flips, margins; logged as ``diag/*`` and ``gsv/*``), whose state
travels in the checkpoint so a resumed search continues the same diagnostics.
"""

from __future__ import annotations

import math
import warnings

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from guilomo.allocation_view import short_name
from guilomo.budget import Budget
from guilomo.guards import guard_callbacks
from guilomo.objective import Objective, linear_schedule
from guilomo.search.architect import Architect
from guilomo.search.config import SearchSettings
from guilomo.search.credit import CreditMeter, module_snr
from guilomo.search.diagnostics import (
    DIAGNOSTICS_KEY,
    SearchDiagnostics,
    SearchWarning,
    Selection,
    selection_of,
)
from guilomo.search.lagrangian import BudgetLagrangian
from guilomo.search.layer import (
    gsv_parameters,
    inner_parameters,
    pass_mode,
    search_layers,
    set_prefixes,
)
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
        self.settings = settings or SearchSettings()
        self.objective = Objective(model, aux_coef, aux_reduction, sparse_logits)
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold the adapter and the GSVs only
        self.run_info = run_info  # what the run is (checked before a resume loads the model)
        self.total_steps: int | None = None
        self._val_loader = val_dataloader
        self._val_iter = None
        self._val_taken = 0  # batches drawn from the current pass over the val split
        self._val_resume = 0  # after a resume: batches of the pass to skip
        self._pending: dict | None = None  # alternate: the train half of the pair
        self._architect: Architect | None = None
        self._layers = search_layers(model)
        if not self._layers:
            raise ValueError("model has no search layers: inject them with inject_search_adapter")
        self._names = list(self._layers)
        self.diagnostics = SearchDiagnostics(names=self._names)
        self._theta = inner_parameters(model)
        self._gsv = gsv_parameters(model)
        self.budget = budget or Budget()
        self.init_seed = int(init_seed)
        self.meter = CreditMeter(self._gsv, self.settings.credit_ema)
        self.pricing = (
            BudgetLagrangian(
                list(self._layers.values()),
                self.budget,
                lr=self.settings.budget_lr,
                lam=self.settings.budget_lam,
            )
            if self.budget.active and self.settings.budget_mode == "lagrangian"
            else None
        )
        # DDP must not wait for GSV gradients: the Architect averages them itself
        gsv = {id(p) for p in gsv_parameters(model)}
        self._ddp_params_and_buffers_to_ignore = [
            n for n, p in self.named_parameters() if id(p) in gsv
        ]

    # -- losses -------------------------------------------------------------------------
    def lm_loss(self, batch: dict) -> Tensor:
        """Causal-LM loss (mean over target tokens), equal to the model's own ``loss``."""
        return self.objective.lm(batch)

    def train_objective(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """(L_train + aux_coef * L_aux, L_train, L_aux)."""
        return self.objective(batch)

    def train_loss(self, batch: dict) -> Tensor:
        return self.train_objective(batch)[0]

    def val_loss(self, batch: dict) -> Tensor:
        """L_val: LM loss only (no aux term); adapter dropout only if ``outer_dropout``."""
        with pass_mode(self.model, aux=False, dropout=self.settings.outer_dropout):
            return self.lm_loss(batch)

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        """L_val of a held-out batch, logged as ``val/loss``. ``run_search`` turns Lightning's
        val loop off (``limit_val_batches=0``): the outer step draws the held-out batches
        itself and the run scores the whole split once at the end (``heldout_loss``)."""
        loss = self.val_loss(batch)
        self.log("val/loss", loss, batch_size=batch["input_ids"].shape[0])
        return loss

    def outer_train_loss(self, batch: dict) -> Tensor:
        """L_train as the outer step sees it (virtual step, finite differences)."""
        with pass_mode(self.model, aux=True, dropout=self.settings.outer_dropout):
            return self.train_loss(batch)

    # -- optimisers -----------------------------------------------------------------------
    def configure_callbacks(self):
        fix = "lower search.inner.lr / search.outer.lr or raise search.inner.warmup_steps"
        return guard_callbacks(self, fix=fix)

    def configure_optimizers(self):
        s = self.settings
        inner = torch.optim.AdamW(
            self._theta, lr=s.inner.lr, betas=s.inner.betas, weight_decay=s.inner.weight_decay
        )
        outer = torch.optim.Adam(
            self._gsv,
            lr=s.outer.lr,
            betas=s.outer.betas,
            weight_decay=s.outer.weight_decay,
        )
        self.total_steps = self.count_real_steps()
        warmup = s.inner.warmup(self.total_steps)
        return [inner, outer], [linear_schedule(inner, warmup, self.total_steps)]

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

    @property
    def architect(self) -> Architect:
        if self._architect is None:
            inner, outer = self.optimizers()
            self._architect = Architect(
                self._theta,
                self._gsv,
                inner.optimizer,
                outer.optimizer,  # stepped raw: global_step counts inner steps only
                self.outer_train_loss,
                self.val_loss,
                order=self.settings.order,
                virtual_step=self.settings.virtual_step,
                reduce=self._mean_over_processes if self.trainer.world_size > 1 else None,
                meter=self.meter,
                smooth=self.settings.smooth_credit,
                pricing=self.pricing,
                parsimony=self.settings.parsimony if self.settings.smooth_credit else 0.0,
            )
        return self._architect

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

        inner, outer = self.optimizers()
        sched = self.lr_schedulers()
        step = self.global_step
        if not self.diagnostics.started:  # the read-out of the initial GSVs
            self.diagnostics.start(self.selection(), step)
        val_loss = None
        warmup = self.settings.warmup(self.total_steps)
        if step < warmup:  # the GSVs wait; the inner weights train under the warm-up prefix
            gen = torch.Generator().manual_seed(self.init_seed * 1_000_003 + step)
            set_prefixes(self.model, self.settings.warmup_prefix, gen)
        else:
            set_prefixes(self.model, None)
        if self.settings.outer_due(step, self.total_steps):
            for group in outer.optimizer.param_groups:  # the schedule runs over the GSV steps
                group["lr"] = self.settings.outer.lr_at(step - warmup, self.total_steps - warmup)
            xi = inner.optimizer.param_groups[0]["lr"]
            val_loss = self.architect.step(train_batch, val_batch, xi)

        inner.zero_grad(set_to_none=True)
        loss, lm, aux = self.train_objective(train_batch)
        self.manual_backward(loss, inputs=self._theta)
        clip = self.settings.inner.grad_clip
        if clip:
            self.clip_gradients(inner, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        inner.step()
        sched.step()

        bs = int(train_batch["input_ids"].shape[0])
        self.log("train/loss", lm.detach(), prog_bar=True, batch_size=bs)
        self.log("train/aux_loss", aux.detach(), batch_size=bs)
        if val_loss is not None:
            self.log("val/loss", val_loss, prog_bar=True, batch_size=bs)
        selection = self.selection()
        self.log_dict(self.allocation_stats(selection), batch_size=bs)
        self.log_dict(self.diagnostics.update(selection, step), batch_size=bs)
        if val_loss is not None:
            self.log_dict(self.control_stats(), batch_size=bs)
        every = self.settings.log_modules_every
        if every and step % every == 0:
            self.log_dict(self.module_stats(selection), batch_size=bs)
        return loss.detach()

    # -- what the GSVs select now -----------------------------------------------------------
    def selection(self) -> Selection:
        """The read-out of the GSVs now, all modules at once (on the model's device)."""
        return selection_of(self._layers.values())

    def allocation_stats(self, selection: Selection | None = None) -> dict[str, Tensor]:
        sel = selection or self.selection()
        experts = sel.experts.float()
        stats = {
            "alloc/experts_mean": experts.mean(),
            "alloc/experts_total": experts.sum(),
            "alloc/rank_mean": sel.mean_rank.mean(),
        }
        usage = [m.usage for m in self._layers.values() if m.usage is not None]
        if usage:
            u = torch.stack(usage)
            stats["usage/max_share"] = u.max(-1).values.mean()
            stats["usage/active_experts"] = (u > 0).float().sum(-1).mean()
        return stats

    def credit_report(self) -> dict[str, dict[str, float]]:
        """Per module (short name): the credit's SNR at the moves its GSVs weigh (expert
        boundary, mean over kept experts' rank boundaries); below 1 the sign is noise."""
        snr = dict(zip((id(p) for p in self._gsv), self.meter.snr(), strict=True))
        out = {}
        for name, m in self._layers.items():
            out[short_name(name)] = module_snr(
                snr[id(m.gsv_expert)],
                snr[id(m.gsv_rank)],
                torch.sigmoid(m.gsv_expert.detach()),
                torch.sigmoid(m.gsv_rank.detach()),
            )
        return out

    def control_stats(self) -> dict[str, float]:
        """``credit/*``: mean SNR and the share of modules whose expert / rank credit is noise
        (SNR < 1); ``budget/*``: the price of capacity and what the read-out spends."""
        report = self.credit_report()
        out = {}
        for kind in ("expert", "rank"):
            values = [r[kind] for r in report.values()]
            out[f"credit/{kind}_snr"] = sum(values) / len(values)
            out[f"credit/{kind}_noise_share"] = sum(v < 1 for v in values) / len(values)
        if self.pricing is not None and self.pricing.last:
            out["budget/lam"] = self.pricing.last["lam"]
            out["budget/readout_spent"] = self.pricing.last["spent"]
        return out

    def control_report(self) -> dict:
        """What goes into ``meta.diagnostics``: per-module SNR, its summary and the price."""
        report = {"credit_snr": self.credit_report(), "credit_steps": self.meter.steps}
        if self.meter.steps:
            report.update(self.control_stats())
        if self.pricing is not None:
            report["budget_control"] = {
                "mode": "lagrangian",
                **self.pricing.state_dict()["last"],
            }
        return report

    def module_stats(self, selection: Selection | None = None) -> dict[str, Tensor]:
        sel = selection or self.selection()
        experts, mean_rank = sel.experts.float(), sel.mean_rank
        out = {}
        for i, name in enumerate(self._names):
            out[f"modules/{short_name(name)}/experts"] = experts[i]
            out[f"modules/{short_name(name)}/rank"] = mean_rank[i]
        return out

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
            "meter": self.meter.state_dict(),
            "pricing": None if self.pricing is None else self.pricing.state_dict(),
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "rng" in checkpoint:
            restore_rng_states(checkpoint["rng"], *process_position(self))
        state = checkpoint.get("search_state") or {}
        self._val_iter, self._val_resume = None, int(state.get("val_batches", 0))
        self._pending = state.get("pending")
        if state.get("meter") is not None:
            self.meter.load_state_dict(state["meter"])
        if state.get("pricing") is not None and self.pricing is not None:
            self.pricing.load_state_dict(state["pricing"])
        if DIAGNOSTICS_KEY in checkpoint:
            self.diagnostics.load_state_dict(checkpoint[DIAGNOSTICS_KEY])
        else:
            warnings.warn(
                "the checkpoint holds no search diagnostics: they restart at the resumed step, "
                "with its read-out taken as step 0",
                SearchWarning,
                stacklevel=2,
            )
