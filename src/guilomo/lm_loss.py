"""The causal-LM loss computed with the LM head only where a label exists.

Fine-tuning and search targets are a few answer tokens after a long prompt; the LM
head (hidden x vocab, ~20% of SmolLM2's compute) is only needed at those positions.
The value equals the model's own mean cross-entropy over non-ignored labels.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from guilomo.data.datamodule import IGNORE
from guilomo.moe.inject import CONTEXT_ATTR


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
    context = getattr(model, CONTEXT_ATTR, None)
    if context is not None:  # the injection's hook sits on the full model, not the decoder
        context.token_mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None
    hidden = model.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=mask, use_cache=False
    ).last_hidden_state
    target = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    keep = target != IGNORE
    logits = model.get_output_embeddings()(hidden[keep]).float()
    return F.cross_entropy(logits, target[keep])
