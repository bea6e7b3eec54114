"""The objective both stages minimise, and the learning-rate schedule of their optimiser.

``Objective(model, aux_coef, aux_reduction, sparse_logits)(batch)`` returns
``(L_LM + aux_coef * L_aux, L_LM, L_aux)``: the causal-LM loss (mean cross-entropy
over the labelled tokens, equal to the model's own ``loss``) plus the LoRA-MoE
load-balancing loss of the same forward. Fine-tuning trains on it (and validates
on ``Objective.lm``); the search's inner step trains on it and its outer step
uses ``Objective.lm`` as L_val.

With ``sparse_logits`` the LM head runs only where a label exists: targets are a few
answer tokens after a long prompt, and the head (hidden x vocab, ~20% of SmolLM2's
compute) is not needed elsewhere. The value is the same.

``warmup_linear(warmup, total)``: the LR multiplier, linear warm-up to 1 over
``warmup`` steps, then linear decay to 0 at step ``total``; ``linear_schedule`` wraps
it in a per-step ``LambdaLR`` for Lightning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from guilomo.data.datamodule import IGNORE
from guilomo.moe.inject import aux_loss, set_token_mask

MODEL_KEYS = ("input_ids", "attention_mask", "labels")


def supports_sparse_logits(model: nn.Module) -> bool:
    """Whether the logits are ``lm_head(decoder(x))`` with nothing in between (LLaMA, Mistral, ...)."""
    cfg = getattr(model, "config", None)
    plain = not any(getattr(cfg, a, None) for a in ("final_logit_softcapping", "logit_scale"))
    try:
        return (
            plain and model.get_decoder() is not None and model.get_output_embeddings() is not None
        )
    except (AttributeError, NotImplementedError):
        return False


def sparse_lm_loss(model: nn.Module, batch: dict) -> Tensor:
    """The causal-LM loss with the LM head applied only where a (shifted) label exists."""
    labels, mask = batch["labels"], batch.get("attention_mask")
    set_token_mask(model, mask)  # the adapter's mask hook sits on the full model, not the decoder
    hidden = model.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=mask, use_cache=False
    ).last_hidden_state
    target = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]  # position t predicts label t + 1
    keep = target != IGNORE
    logits = model.get_output_embeddings()(hidden[keep]).float()
    return F.cross_entropy(logits, target[keep])


class Objective:
    """``L_LM + aux_coef * L_aux`` of ``model`` (a causal LM with a LoRA-MoE adapter).

    Args:
        model: the adapted model.
        aux_coef, aux_reduction: weight of the load-balancing loss and how the
            per-module losses combine ("mean" | "sum"); 0 leaves the aux term out.
        sparse_logits: the LM head only on labelled positions, where the model allows
            it (:func:`supports_sparse_logits`).
    """

    def __init__(
        self,
        model: nn.Module,
        aux_coef: float = 0.001,
        aux_reduction: str = "mean",
        sparse_logits: bool = True,
    ):
        self.model = model
        self.aux_coef, self.aux_reduction = aux_coef, aux_reduction
        self.sparse_logits = sparse_logits and supports_sparse_logits(model)

    def lm(self, batch: dict) -> Tensor:
        """The causal-LM loss alone (mean over target tokens)."""
        if self.sparse_logits:
            return sparse_lm_loss(self.model, batch)
        return self.model(**{k: batch[k] for k in MODEL_KEYS if k in batch}, use_cache=False).loss

    def __call__(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """``(L_LM + aux_coef * L_aux, L_LM, L_aux)`` of one forward pass."""
        lm = self.lm(batch)
        aux = aux_loss(self.model, self.aux_reduction).to(lm.device)
        return (lm + self.aux_coef * aux if self.aux_coef > 0 else lm), lm, aux


def warmup_linear(warmup_steps: int, total_steps: int):
    """LR multiplier: linear warm-up to 1 over ``warmup_steps``, then linear decay to 0."""

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return fn


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> dict:
    """Lightning's scheduler entry: :func:`warmup_linear` stepped once per optimiser step."""
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(warmup_steps, total_steps))
    return {"scheduler": sched, "interval": "step"}
