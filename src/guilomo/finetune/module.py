"""The fine-tune LightningModule: a backbone with a LoRA-MoE adapter, trained on LM loss + aux.

Only the adapter's trainable tensors go into checkpoints (the frozen backbone is
reloaded from its source), together with the RNG states, so a run resumed from a
checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from guilomo.guards import FiniteGuard
from guilomo.lm_loss import sparse_lm_loss, supports_sparse_logits
from guilomo.moe import aux_loss
from guilomo.utils.rng import rng_state, set_rng_state
from guilomo.validate import FINGERPRINT


def warmup_linear(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up to 1 over ``warmup_steps``, then linear decay to 0."""

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return fn


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
    ):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.aux_coef, self.aux_reduction = aux_coef, aux_reduction
        self.sparse_logits = sparse_logits and supports_sparse_logits(model)
        self.strict_loading = False  # checkpoints hold the adapter only
        self.run_info = run_info  # what the run is (checked before a resume loads the model)

    def forward(self, **batch):
        return self.model(**batch)

    def _loss(self, batch, stage: str):
        # the LM head only where a label exists: same loss, ~20% less compute on SmolLM2
        lm = sparse_lm_loss(self.model, batch) if self.sparse_logits else self.model(**batch).loss
        loss = lm
        if stage == "train" and self.aux_coef > 0:
            aux = aux_loss(self.model, self.aux_reduction).to(loss.device)
            self.log("train/aux_loss", aux, on_step=True, on_epoch=False)
            loss = loss + self.aux_coef * aux
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
        return [FiniteGuard(fix="lower optim.lr or raise optim.warmup_steps")]

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        total = self.total_steps
        if not total or total <= 0:  # max_steps unset: epochs x batches, as Lightning counts them
            total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(self.warmup_steps, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoints: adapter tensors + RNG states only --------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        keep = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in keep}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict()
        if self.run_info is not None:
            checkpoint[FINGERPRINT] = self.run_info
        checkpoint["rng"] = rng_state()

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
            set_rng_state(rng)
