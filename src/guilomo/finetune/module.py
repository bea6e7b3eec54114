"""The fine-tune LightningModule: a backbone with a LoRA-MoE adapter, trained on the
:class:`~guilomo.objective.Objective` (LM loss + aux) with the warm-up/linear schedule.
An adapter with a loss term of its own (AdaLoRA's orthogonality) passes it as
``regularizer`` (added to the training loss, logged as ``train/reg_loss``) and its
training hooks as ``callbacks``.

Only the adapter's trainable tensors go into checkpoints (the frozen backbone is
reloaded from its source), together with the RNG states, so a run resumed from a
checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from torch import nn

from guilomo.guards import guard_callbacks
from guilomo.objective import Objective, linear_schedule
from guilomo.utils.rng import gather_rng_states, process_position, restore_rng_states
from guilomo.validate import FINGERPRINT


class FinetuneModule(L.LightningModule):
    def __init__(
        self,
        model: nn.Module,
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        total_steps: int | None = None,
        aux_coef: float = 0.001,
        aux_reduction: str = "mean",
        sparse_logits: bool = True,
        run_info: dict | None = None,
        regularizer: Callable[[], torch.Tensor] | None = None,
        callbacks: Sequence[L.Callback] = (),
    ):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.objective = Objective(model, aux_coef, aux_reduction, sparse_logits)
        self.strict_loading = False  # checkpoints hold the adapter only
        self.run_info = run_info  # what the run is (checked before a resume loads the model)
        self.regularizer, self.adapter_callbacks = regularizer, list(callbacks)

    def forward(self, **batch):
        return self.model(**batch)

    def _loss(self, batch, stage: str):
        if stage == "train":
            loss, lm, aux = self.objective(batch)
            if self.objective.aux_coef > 0:
                self.log("train/aux_loss", aux, on_step=True, on_epoch=False)
            if self.regularizer is not None:
                reg = self.regularizer()
                self.log("train/reg_loss", reg, on_step=True, on_epoch=False)
                loss = loss + reg
        else:
            loss = lm = self.objective.lm(batch)
        bs = batch["input_ids"].shape[0]
        self.log(
            f"{stage}/lm_loss",
            lm,
            prog_bar=True,
            batch_size=bs,
            on_step=stage == "train",
            on_epoch=stage != "train",
        )
        return loss

    def on_fit_start(self) -> None:
        self.model.train()  # backbones load in eval mode; Lightning keeps submodule modes

    def training_step(self, batch, batch_idx):
        return self._loss(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._loss(batch, "val")

    def configure_callbacks(self):
        guards = guard_callbacks(self, fix="lower optim.lr or raise optim.warmup_steps")
        trainer = self._trainer  # asked again on trainer.validate: add each callback once
        running = [] if trainer is None else trainer.callbacks
        return [*guards, *(c for c in self.adapter_callbacks if c not in running)]

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = self.total_steps
        if not total or total <= 0:  # max_steps unset: epochs x batches, as Lightning counts them
            total = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": linear_schedule(opt, self.warmup_steps, total)}

    # -- checkpoints: adapter tensors + RNG states only --------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        keep = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in keep}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict()
        if self.run_info is not None:
            checkpoint[FINGERPRINT] = self.run_info
        checkpoint["rng"] = gather_rng_states(self)  # one state per process

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        expected = set(self.trainable_state_dict())
        got = set(checkpoint["state_dict"])
        if expected != got:
            raise ValueError(
                f"checkpoint does not match this adapter ({len(expected - got)} missing, "
                f"{len(got - expected)} unexpected tensors): resume with the same allocation, "
                "backbone and adapter settings as the run that wrote it"
            )
        rng = checkpoint.get("rng")
        if rng:
            restore_rng_states(rng, *process_position(self))
