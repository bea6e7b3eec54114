"""How much collapsing the N-expert modules changes the logits, measured on prompts.

:func:`collapse_measured` collapses every N-expert module to one LoRA
(:mod:`guilomo.moe.collapse`, ``constant`` or ``mean`` gates) and measures the change:
the prompts are split in two, the first half calibrates the mean gates, the second
half is the held-out batch whose logits are compared before and after. Shared by
``python -m guilomo.merge`` and ``python -m guilomo.export_peft``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from guilomo.allocation import Allocation
from guilomo.eval.generate import left_pad, pad_id_of, prompt_ids
from guilomo.moe.collapse import GATES, collapse, constant_gates, logit_difference, mean_gates


def prompt_batches(tokenizer, prompts: Sequence[str], batch_size: int = 8) -> list[dict]:
    """Left-padded model inputs (``input_ids``, ``attention_mask``) of the prompts."""
    pad = pad_id_of(tokenizer)
    ids = [prompt_ids(tokenizer, p) for p in prompts]
    out = []
    for i in range(0, len(ids), batch_size):
        x, mask = left_pad(ids[i : i + batch_size], pad)
        out.append({"input_ids": x, "attention_mask": mask})
    return out


@torch.no_grad()
def _logits(model: nn.Module, batches: list[dict]) -> list[torch.Tensor]:
    return [model(**b).logits for b in batches]


def collapse_measured(
    model: nn.Module, allocation: Allocation, mode: str, tokenizer, prompts: Sequence[str]
) -> tuple[Allocation, dict]:
    """Collapse every N-expert module (``constant`` or ``mean`` gates); returns the new
    allocation and the logit difference on the held-out half of ``prompts``."""
    if mode not in GATES:
        raise ValueError(f"collapse={mode!r} is not one of {list(GATES)}")
    if len(prompts) < 2:
        raise ValueError(
            "collapse needs prompts_file with at least 2 prompts (a calibration and a "
            "held-out half): the logit difference it makes must be measured"
        )
    half = len(prompts) // 2
    calibration = prompt_batches(tokenizer, prompts[:half])
    held_out = prompt_batches(tokenizer, prompts[half:])
    model.eval()
    before = _logits(model, held_out)
    gates = constant_gates(model) if mode == "constant" else mean_gates(model, calibration)
    allocation = collapse(model, allocation, gates)
    after = _logits(model, held_out)
    masks = [b["attention_mask"] for b in held_out]
    diffs = [logit_difference(a, b, m) for a, b, m in zip(before, after, masks, strict=True)]
    n = sum(d["tokens"] for d in diffs)
    report = {
        "collapse": mode,
        "modules": len(gates),
        "held_out_prompts": len(prompts) - half,
        "tokens": n,
        "max_abs": max(d["max_abs"] for d in diffs),
        "mean_abs": sum(d["mean_abs"] * d["tokens"] for d in diffs) / n,
        "top1_agree": sum(d["top1_agree"] * d["tokens"] for d in diffs) / n,
    }
    print(
        f"collapsed {len(gates)} N-expert modules ({mode} gates); logits on {n} held-out tokens "
        f"({report['held_out_prompts']} prompts): max |diff| {report['max_abs']:.4g}, mean "
        f"|diff| {report['mean_abs']:.4g}, top-1 token agreement {report['top1_agree']:.4f}"
    )
    return allocation, report
